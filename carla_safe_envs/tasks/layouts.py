"""Task layouts on towns other than the CarDreamer ones, chosen by rules on the lane graph.

CarDreamer fixes its tasks by coordinates on Town03 / Town04; on the other CARLA towns the
same tasks are laid out by the rules below (deterministic: the same map gives the same
layouts, in the order given here).  The rules read only the compiled :class:`RoadMap`.

* **Multi-lane stretch** (Four Lane): a group of ``k >= 2`` side-by-side same-direction lanes
  (the leftmost lane outside a junction, at ground level, and its right neighbours), each
  followed along its straightest successors; the stretch lasts while every lane stays within
  0.75 m of ``rank x lane width`` from the leftmost one.  The chosen group has the most
  lanes, then reaches the wanted length, then crosses the fewest junction lanes, then has the
  lowest lane index.
* **Turn sites** (Left / Right Turn): a junction connector lane turning 60-120 degrees left
  (right) whose approach lane outside the junction has ``APPROACH`` metres before it and whose
  exit has ``EXIT`` metres after it; its **flow** is a straight connector (turning < 20
  degrees) of the same junction entering from the ego's left (its heading 70-110 degrees
  clockwise of the ego's approach heading) that crosses the left turn's path, or, for a right
  turn, ends on the same exit lane.  The flow enters ``FLOW_BACK`` metres before its connector.
  Every such site is kept; each episode draws one.
* **Followable turns** (Navigation): a random route never takes a junction lane tighter than
  ``MIN_TURN_RADIUS`` (its length over its heading change) when its lane has another
  successor: CarDreamer's discrete steering (at most 0.6 x 34 degrees) turns no tighter.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from carla_safe_envs.maps import RoadMap
from carla_safe_envs.route import lane_polyline, resample, straightest_successor

PARALLEL_TOLERANCE = 0.75  # [m] lanes of a stretch stay this close to rank x width apart
APPROACH = 30.0  # the ego starts this far before the junction connector [m]
EXIT = 25.0  # the goal is this far past the connector's end [m]
FLOW_BACK = 12.0  # the flow enters this far before its connector [m]
LEFT, RIGHT = (-120.0, -60.0), (60.0, 120.0)  # turn angles [deg] (CARLA yaw is clockwise)
STRAIGHT = 20.0  # [deg]
MIN_TURN_RADIUS = 8.0  # [m] ~ the 2.875 m wheelbase / tan(0.6 x 34 deg) = 7.75 m


@dataclass(frozen=True)
class Stretch:
    """Side-by-side lanes: ``lanes[r]`` is the point ``(n, 3)`` array of lane rank ``r``
    (0 leftmost), every point ``i`` on one cross-section, 1 m apart along the leftmost lane."""

    lanes: tuple[np.ndarray, ...]
    lane_ids: tuple[int, ...]  # the lane indices every rank drives through
    junction_lanes: int  # junction lanes on the way

    @property
    def length(self) -> float:
        return float(len(self.lanes[0]) - 1)


def _yaw_at_end(road: RoadMap, lane: int) -> float:
    return float(road.yaw[road.lane_start[lane + 1] - 1])


def _yaw_at_start(road: RoadMap, lane: int) -> float:
    return float(road.yaw[road.lane_start[lane]])


def _turn(road: RoadMap, lane: int) -> float:
    """Heading change along ``lane`` [deg], + clockwise (a right turn in CARLA's frame)."""
    return math.degrees(
        math.remainder(_yaw_at_end(road, lane) - _yaw_at_start(road, lane), math.tau)
    )


def followable_successors(road: RoadMap) -> list[np.ndarray]:
    """Per lane, its successors without the junction lanes turning tighter than
    ``MIN_TURN_RADIUS`` (all of them when every successor is that tight)."""
    out = []
    for lane in range(road.n_lanes):
        succ = road.successors(lane)
        ok = [
            int(j)
            for j in succ
            if road.lane_junction[j] < 0
            or road.lane_length[j] >= MIN_TURN_RADIUS * abs(math.radians(_turn(road, int(j))))
        ]
        out.append(np.asarray(ok if ok else succ, dtype=succ.dtype))
    return out


def _chain(road: RoadMap, lane: int, length: float) -> list[int]:
    lanes, total = [lane], float(road.lane_length[lane])
    while total < length:
        succ = road.successors(lanes[-1])
        if len(succ) == 0:
            break
        lanes.append(straightest_successor(road, lanes[-1]))
        total += float(road.lane_length[lanes[-1]])
    return lanes


def _nearest_on(line: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``points`` (n, 2), the nearest sample of ``line`` (m, 3) and its distance."""
    d2 = ((points[:, None, :2] - line[None, :, :2]) ** 2).sum(-1)
    k = d2.argmin(axis=1)
    return line[k], np.sqrt(d2[np.arange(len(points)), k])


@functools.cache  # maps are cached per process: the layouts of a town are computed once
def multi_lane_stretches(road: RoadMap, length: float) -> tuple[Stretch, ...]:
    """Every multi-lane stretch of ``road`` (see the module docstring), best first."""
    found = []
    leftmost = np.flatnonzero(
        (road.lane_junction < 0)
        & (road.lane_left < 0)
        & (road.lane_right >= 0)
        & (np.abs(road.lane_z) < 1.0)
    )
    for lane in leftmost.tolist():
        group = [lane]
        while road.lane_right[group[-1]] >= 0 and len(group) < 6:
            group.append(int(road.lane_right[group[-1]]))
        chains = [_chain(road, g, length + 5.0) for g in group]
        ref = resample(lane_polyline(road, chains[0], 0.0))[: int(length) + 1]
        ranks, n = [ref], len(ref)
        for r, chain in enumerate(chains[1:], start=1):
            dense = resample(lane_polyline(road, chain, 0.0), step=0.25)
            near, dist = _nearest_on(dense, ref)
            width = float(road.width[road.lane_start[group[r]]])
            bad = np.flatnonzero(np.abs(dist - r * width) > PARALLEL_TOLERANCE)
            n = min(n, int(bad[0]) if len(bad) else n)
            ranks.append(near)
        if n < 40:
            continue
        ids = sorted({lid for c in chains for lid in c})
        found.append(
            Stretch(
                lanes=tuple(r[:n] for r in ranks),
                lane_ids=tuple(ids),
                junction_lanes=int(np.sum(road.lane_junction[ids] >= 0)),
            )
        )
    found.sort(
        key=lambda s: (-len(s.lanes), -min(s.length, length), s.junction_lanes, s.lane_ids[0])
    )
    return tuple(found)


@dataclass(frozen=True)
class TurnSite:
    """Where a turn task runs: the ego's lanes from start to goal and the crossing flow."""

    junction: int
    lanes: tuple[int, ...]  # approach, connector, exit lanes
    s_start: float  # on the first lane [m]
    s_goal: float  # on the last lane [m]
    flow: tuple[float, float, float]  # x, y [m], yaw [rad] where the flow enters


def _back(road: RoadMap, preds: dict[int, list[int]], lane: int, dist: float):
    """Lanes (ending with ``lane``) and the arc length on the first one, ``dist`` metres
    before the start of ``lane`` along single predecessors outside junctions; None if the
    road branches or enters a junction first."""
    lanes, need = [lane], dist
    while True:
        p = preds.get(lanes[0], [])
        if len(p) != 1 or road.lane_junction[p[0]] >= 0:
            return None
        lanes.insert(0, p[0])
        if road.lane_length[p[0]] >= need:
            return lanes, float(road.lane_length[p[0]] - need)
        need -= float(road.lane_length[p[0]])


def _forward(road: RoadMap, lane: int, dist: float):
    lanes, need = [], dist
    cur = lane
    while True:
        succ = road.successors(cur)
        if len(succ) != 1 or road.lane_junction[succ[0]] >= 0:
            return None
        cur = int(succ[0])
        lanes.append(cur)
        if road.lane_length[cur] >= need:
            return lanes, need
        need -= float(road.lane_length[cur])


@functools.cache
def turn_sites(road: RoadMap, side: str) -> tuple[TurnSite, ...]:
    """Every ``side`` ("left" or "right") turn site of ``road`` (see the module docstring)."""
    lo, hi = LEFT if side == "left" else RIGHT
    preds: dict[int, list[int]] = {}
    for lane in range(road.n_lanes):
        for s in road.successors(lane).tolist():
            preds.setdefault(int(s), []).append(lane)
    sites = []
    for c in np.flatnonzero(road.lane_junction >= 0).tolist():
        if not lo <= _turn(road, c) <= hi or abs(road.lane_z[c]) > 1.0:
            continue
        back = _back(road, preds, c, APPROACH)
        fwd = _forward(road, c, EXIT)
        if back is None or fwd is None:
            continue
        junction = int(road.lane_junction[c])
        ego_yaw = _yaw_at_start(road, c)
        path = road.pts[road.lane_slice(c), :2]
        flows = []
        for f in np.flatnonzero(road.lane_junction == junction).tolist():
            if abs(_turn(road, f)) > STRAIGHT:
                continue
            rel = math.degrees(math.remainder(_yaw_at_start(road, f) - ego_yaw, math.tau))
            if not 70.0 <= rel <= 110.0:
                continue
            if side == "left":
                fp = road.pts[road.lane_slice(f), :2]
                if np.sqrt(((fp[:, None] - path[None]) ** 2).sum(-1)).min() > 1.0:
                    continue
            elif not set(road.successors(f).tolist()) & set(road.successors(c).tolist()):
                continue
            fb = _back(road, preds, f, FLOW_BACK)
            if fb is not None:
                flows.append(fb)
        if not flows:
            continue
        (flow_lanes, flow_s) = flows[0]
        p, yaw = road.point_at(flow_lanes[0], flow_s)
        lanes, s_start = back
        exit_lanes, s_goal = fwd
        sites.append(
            TurnSite(
                junction=junction,
                lanes=(*lanes, *exit_lanes),
                s_start=s_start,
                s_goal=s_goal,
                flow=(float(p[0]), float(p[1]), yaw),
            )
        )
    return tuple(sites)
