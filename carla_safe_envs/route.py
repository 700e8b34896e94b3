"""Planned routes: polylines of waypoints 1 m apart, and the tracker that follows the ego.

A route is built by a task from lane centre lines of the :class:`RoadMap`; the environment
projects the ego onto it every step to count waypoints reached (WC), the lateral error that
the reward's out-of-lane term and the cost read, and whether the ego left the route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from carla_safe_envs.maps import RoadMap

WAYPOINT_SPACING = 1.0  # [m]


def resample(points: np.ndarray, step: float = WAYPOINT_SPACING) -> np.ndarray:
    """Points ``(N, D)`` re-spaced every ``step`` metres of planar arc length (last point kept)."""
    seg = np.hypot(*np.diff(points[:, :2], axis=0).T)
    keep = np.concatenate([[True], seg > 1e-6])
    points, arc = points[keep], np.concatenate([[0.0], np.cumsum(seg[seg > 1e-6])])
    n = max(int(arc[-1] // step), 1)
    at = (
        np.append(np.arange(n + 1) * step, arc[-1])
        if arc[-1] - n * step > 0.25 * step
        else np.arange(n + 1) * step
    )
    return np.stack([np.interp(at, arc, points[:, k]) for k in range(points.shape[1])], axis=1)


def lane_polyline(
    road: RoadMap, lanes: list[int], s_start: float, s_end: float | None = None
) -> np.ndarray:
    """Centre line ``(N, 3)`` along consecutive ``lanes`` from ``s_start`` on the first lane to
    ``s_end`` on the last (its end when ``None``)."""
    parts = []
    for k, lane in enumerate(lanes):
        sl = road.lane_slice(lane)
        s = road.s[sl]
        lo = s_start if k == 0 else 0.0
        hi = s_end if (k == len(lanes) - 1 and s_end is not None) else float(s[-1])
        inner = road.pts[sl][(s > lo) & (s < hi)]
        p_lo, _ = road.point_at(lane, lo)
        p_hi, _ = road.point_at(lane, hi)
        parts.append(np.vstack([p_lo[None], inner, p_hi[None]]))
    return np.concatenate(parts).astype(np.float64)


def straightest_successor(road: RoadMap, lane: int) -> int:
    """The successor of ``lane`` that turns least (where the road goes straight on)."""
    succ = road.successors(lane)
    end_yaw = float(road.yaw[road.lane_start[lane + 1] - 1])
    turns = [
        abs(math.remainder(float(road.yaw[road.lane_start[j]]) - end_yaw, math.tau)) for j in succ
    ]
    return int(succ[int(np.argmin(turns))])


@dataclass(frozen=True)
class Projection:
    progress: float  # route position in waypoints (fractional index)
    lateral: float  # signed distance to the route, + right of it [m]
    yaw: float  # route tangent at the projection [rad]
    width: float  # lane width there [m]


class Route:
    """Waypoints ``(R, 3)`` 1 m apart with lane widths, and the ego's progress along them."""

    WINDOW_BACK, WINDOW_AHEAD = 3, 12  # segments searched around the last projection

    def __init__(self, points: np.ndarray, width: np.ndarray | float = 3.5):
        if len(points) < 2:
            raise ValueError("a route needs at least two waypoints")
        self.points = np.asarray(points, dtype=np.float64)
        d = np.diff(self.points[:, :2], axis=0)
        self.seg = d  # (R-1, 2)
        self.seg_len2 = np.maximum((d**2).sum(1), 1e-12)
        self.seg_yaw = np.arctan2(d[:, 1], d[:, 0])
        self.width = np.broadcast_to(np.asarray(width, dtype=np.float64), (len(points),)).copy()
        self.cursor = 0  # segment of the last projection
        # plain floats: projecting on a dozen segments is faster in Python than in numpy
        self._segments = list(
            zip(
                *(
                    a.tolist()
                    for a in (
                        self.points[:-1, 0],
                        self.points[:-1, 1],
                        d[:, 0],
                        d[:, 1],
                        self.seg_len2,
                    )
                ),
                strict=True,
            )
        )

    def __len__(self) -> int:
        return len(self.points)

    @property
    def length(self) -> float:
        return float(np.sqrt(self.seg_len2).sum())

    def project(self, x: float, y: float, *, search_all: bool = False) -> Projection:
        """Project (x, y) on the route near the last projection (monotone along the route), or
        on the whole route with ``search_all`` (at the start of an episode)."""
        a = 0 if search_all else max(self.cursor - self.WINDOW_BACK, 0)
        b = (
            len(self._segments)
            if search_all
            else min(self.cursor + self.WINDOW_AHEAD, len(self._segments))
        )
        best = (math.inf, a, 0.0, 0.0, 0.0)
        for i in range(a, b):
            x0, y0, dx, dy, l2 = self._segments[i]
            t = min(max(((x - x0) * dx + (y - y0) * dy) / l2, 0.0), 1.0)
            ex, ey = x - x0 - t * dx, y - y0 - t * dy
            dist2 = ex * ex + ey * ey
            if dist2 < best[0]:
                best = (dist2, i, t, ex, ey)
        _, i, t, ex, ey = best
        self.cursor = i
        _, _, dx, dy, l2 = self._segments[i]
        return Projection(
            progress=i + t,
            lateral=(ey * dx - ex * dy) / math.sqrt(l2),  # + to the right of the route
            yaw=float(self.seg_yaw[i]),
            width=float(self.width[i]),
        )

    def ahead(self, progress: float, back: int = 12, forward: int = 40) -> np.ndarray:
        """Waypoints from ``back`` behind to ``forward`` ahead of ``progress`` (for drawing)."""
        i = int(progress)
        return self.points[max(i - back, 0) : i + forward + 1]
