"""Lane geometry of a CARLA town as plain numpy arrays, with the queries the tasks need.

The arrays are compiled from OpenDRIVE by :mod:`carla_safe_envs.maps.compile`; see its
docstring for the layout.  A :class:`RoadMap` is immutable and shared by both backends, the
BEV renderer, the tasks and the expert; it pickles as its town name (workers reload it from the
per-process cache).

Frames: CARLA world coordinates (x east, y south, left-handed), yaw = atan2(dy, dx) in
radians.  Seen from a driver heading ``yaw``, the right-hand side is ``(-sin yaw, cos yaw)``.
"""

from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
_GRID = 4.0  # spatial-index cell size [m]


def wrap_angle(a):
    """Wrap an angle (or array of angles) to (-pi, pi]."""
    return np.arctan2(np.sin(a), np.cos(a))


@dataclass(frozen=True)
class LanePoint:
    """Where a pose lies relative to one lane."""

    lane: int  # lane index
    index: int  # global index of the nearest centre-line point
    s: float  # arc length along the lane [m]
    lateral: float  # signed offset from the centre line, + to the driver's right [m]
    distance: float  # distance to the centre line in the plane [m]
    heading_error: float  # pose yaw - lane yaw, wrapped [rad]


class RoadMap:
    """Driving lanes of one town: centre lines, widths, markings, neighbours and successors."""

    def __init__(self, town: str, arrays: dict[str, np.ndarray]):
        self.town = town
        for key, value in arrays.items():
            value.setflags(write=False)
            setattr(self, key, value)
        self.n_lanes = len(self.lane_start) - 1
        # lane of each point
        self.point_lane = np.repeat(
            np.arange(self.n_lanes, dtype=np.int32), np.diff(self.lane_start)
        )
        self.lane_length = self.s[self.lane_start[1:] - 1].astype(np.float64)
        self.lane_z = np.array(
            [
                self.pts[a:b, 2].mean()
                for a, b in zip(self.lane_start[:-1], self.lane_start[1:], strict=True)
            ]
        )
        xy = self.pts[:, :2].astype(np.float64)
        self.bounds = (xy.min(0) - 20.0, xy.max(0) + 20.0)  # (xmin, ymin), (xmax, ymax) [m]
        # Spatial index: points bucketed in _GRID cells, cells in CSR order (x-major).
        self._origin = self.bounds[0]
        self._nx, self._ny = (
            np.ceil((self.bounds[1] - self._origin) / _GRID).astype(int) + 1
        ).tolist()
        cells = np.floor((xy - self._origin) / _GRID).astype(np.int64)
        cid = cells[:, 0] * self._ny + cells[:, 1]
        self._order = np.argsort(cid, kind="stable")
        self._cell_start = np.searchsorted(cid[self._order], np.arange(self._nx * self._ny + 1))
        # Global arc coordinate: lane i occupies [lane_base[i], lane_base[i] + length_i], so one
        # searchsorted locates (lane, s) pairs of many vehicles at once (see `poses_at`).
        self.lane_base = np.concatenate([[0.0], np.cumsum(self.lane_length + 10.0)[:-1]])
        self._g = self.s.astype(np.float64) + self.lane_base[self.point_lane]
        seg = np.diff(self.pts[:, :2].astype(np.float64), axis=0)
        self._seg_yaw = np.append(np.arctan2(seg[:, 1], seg[:, 0]), 0.0)
        # float64 points, the step to the next point and 1 / its arc length: poses_at interpolates
        # with two gathers and one multiply-add per call
        self._p64 = self.pts.astype(np.float64)
        self._dp = np.append(np.diff(self._p64, axis=0), np.zeros((1, 3)), axis=0)
        self._inv_dg = 1.0 / np.maximum(np.append(np.diff(self._g), 1.0), 1e-6)

    # ----------------------------------------------------------------- pickling
    def __reduce__(self):
        return (load_town, (self.town,))

    # ------------------------------------------------------------- lane access
    def lane_slice(self, lane: int) -> slice:
        return slice(int(self.lane_start[lane]), int(self.lane_start[lane + 1]))

    def successors(self, lane: int) -> np.ndarray:
        return self.succ[self.succ_start[lane] : self.succ_start[lane + 1]]

    def lanes_of_road(self, road_id: int) -> np.ndarray:
        return np.flatnonzero(self.lane_road == road_id)

    def point_at(self, lane: int, s: float) -> tuple[np.ndarray, float]:
        """Interpolated centre point ``(x, y, z)`` and yaw at arc length ``s`` of ``lane``."""
        xyz, yaw = self.poses_at(np.array([lane]), np.array([s], dtype=np.float64))
        return xyz[0], float(yaw[0])

    # ------------------------------------------------------------ spatial queries
    def candidates(self, x: float, y: float, radius: float) -> np.ndarray:
        """Global indices of centre-line points in the grid cells within ``radius`` of (x, y)."""
        r = int(np.ceil(radius / _GRID))
        cx = int((x - self._origin[0]) // _GRID)
        cy = int((y - self._origin[1]) // _GRID)
        y0, y1 = max(cy - r, 0), min(cy + r, self._ny - 1)
        if y1 < y0:
            return np.empty(0, dtype=np.int64)
        cs = self._cell_start
        out = [
            self._order[cs[ix * self._ny + y0] : cs[ix * self._ny + y1 + 1]]
            for ix in range(max(cx - r, 0), min(cx + r, self._nx - 1) + 1)
        ]
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def poses_at(self, lanes: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Centre-line points ``(K, 3)`` and segment yaws ``(K,)`` at arc lengths ``s`` of ``lanes``.

        Vectorized over many (lane, s) pairs; ``s`` is clipped to the lane.
        """
        lanes = np.asarray(lanes, dtype=np.int64)
        q = self.lane_base[lanes] + np.minimum(np.maximum(s, 0.0), self.lane_length[lanes])
        i = np.searchsorted(self._g, q, side="right") - 1
        i = np.minimum(np.maximum(i, self.lane_start[lanes]), self.lane_start[lanes + 1] - 2)
        t = (q - self._g[i]) * self._inv_dg[i]
        return self._p64[i] + self._dp[i] * t[:, None], self._seg_yaw[i]

    def on_road(self, x: float, y: float, z: float | None = None) -> bool:
        """Whether (x, y) lies on a driving lane (at height ``z`` +- 4 m when given).

        Point-wise test against the centre-line samples (1 m apart): inside when within
        sqrt((width / 2)^2 + 0.5^2) of one, i.e. half a sample spacing of slack along the lane.
        """
        idx = self.candidates(x, y, 3.0)
        if len(idx) == 0:
            return False
        p = self.pts[idx]
        d2 = (p[:, 0] - x) ** 2 + (p[:, 1] - y) ** 2
        inside = d2 <= (0.5 * self.width[idx]) ** 2 + 0.25
        if z is not None:
            inside &= np.abs(p[:, 2] - z) < 4.0
        return bool(inside.any())

    def locate(
        self,
        x: float,
        y: float,
        z: float | None = None,
        yaw: float | None = None,
        *,
        radius: float = 6.0,
        max_heading_error: float = np.pi / 2,
        lanes: np.ndarray | None = None,
    ) -> LanePoint | None:
        """The lane the pose is on: nearest centre line with a compatible heading and level.

        ``yaw`` (if given) rejects lanes heading more than ``max_heading_error`` away, which
        separates overlapping junction lanes and opposite directions; ``z`` (if given)
        rejects lanes more than 4 m above or below (bridges).  ``lanes`` restricts the search.
        Returns ``None`` when no lane point lies within ``radius``.
        """
        idx = self.candidates(x, y, radius)
        if lanes is not None and len(idx):
            idx = idx[np.isin(self.point_lane[idx], lanes)]
        if len(idx) == 0:
            return None
        p = self.pts[idx]
        d2 = (p[:, 0] - x) ** 2 + (p[:, 1] - y) ** 2
        ok = d2 <= radius * radius
        if z is not None:
            ok &= np.abs(p[:, 2] - z) < 4.0
        if yaw is not None:
            ok &= np.abs(wrap_angle(self.yaw[idx] - yaw)) <= max_heading_error
        if not ok.any():
            return None
        j = int(idx[ok][np.argmin(d2[ok])])
        return self._project(j, x, y, yaw)

    def _project(self, j: int, x: float, y: float, yaw: float | None) -> LanePoint:
        """Project (x, y) on the centre-line segments around global point ``j``."""
        lane = int(self.point_lane[j])
        a, b = int(self.lane_start[lane]), int(self.lane_start[lane + 1])
        best = None
        for i0 in (j - 1, j):
            if i0 < a or i0 + 1 >= b:
                continue
            x0, y0, x1, y1 = (float(v) for v in self.pts[i0 : i0 + 2, :2].ravel())
            dx, dy = x1 - x0, y1 - y0
            seg2 = max(dx * dx + dy * dy, 1e-12)
            t = min(max(((x - x0) * dx + (y - y0) * dy) / seg2, 0.0), 1.0)
            qx, qy = x0 + t * dx, y0 + t * dy
            dist = math.hypot(x - qx, y - qy)
            if best is None or dist < best[0]:
                lateral = ((x - qx) * -dy + (y - qy) * dx) / math.sqrt(seg2)
                best = (dist, i0, t, lateral, math.atan2(dy, dx))
        if best is None:  # single-point lane (not produced by the compiler)
            return LanePoint(lane, j, float(self.s[j]), 0.0, 0.0, 0.0)
        dist, i0, t, lateral, seg_yaw = best
        s = float(self.s[i0]) + t * float(self.s[i0 + 1] - self.s[i0])
        herr = math.remainder(yaw - seg_yaw, math.tau) if yaw is not None else 0.0
        return LanePoint(lane, j, s, lateral, dist, herr)

    # ------------------------------------------------------------------ graph
    def shortest_path(
        self, start: int, goal: int, *, lane_change_cost: float | None = None
    ) -> list[int]:
        """Lanes from ``start`` to ``goal`` following successors (Dijkstra on lane length).

        With ``lane_change_cost`` set, moving to a same-direction neighbour is allowed at that
        cost [m].  Raises ``ValueError`` when ``goal`` cannot be reached.
        """
        dist = {start: 0.0}
        prev: dict[int, int] = {}
        heap = [(0.0, start)]
        while heap:
            d, u = heapq.heappop(heap)
            if u == goal:
                break
            if d > dist.get(u, np.inf):
                continue
            edges = [(int(v), self.lane_length[u]) for v in self.successors(u)]
            if lane_change_cost is not None:
                edges += [
                    (int(v), lane_change_cost)
                    for v in (self.lane_left[u], self.lane_right[u])
                    if v >= 0
                ]
            for v, w in edges:
                nd = d + w
                if nd < dist.get(v, np.inf):
                    dist[v] = nd
                    prev[v] = u
                    heapq.heappush(heap, (nd, v))
        if goal not in dist:
            raise ValueError(f"{self.town}: lane {goal} is not reachable from lane {start}")
        path = [goal]
        while path[-1] != start:
            path.append(prev[path[-1]])
        return path[::-1]


@functools.cache
def load_town(town: str) -> RoadMap:
    """The compiled geometry of ``town`` (cached per process)."""
    path = DATA_DIR / f"{town}.npz"
    if not path.exists():
        known = sorted(p.stem for p in DATA_DIR.glob("*.npz"))
        raise ValueError(f"unknown town {town!r}: compiled maps are {known} (see `make maps`)")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    return RoadMap(town, arrays)
