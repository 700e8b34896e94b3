"""Four Lane and Navigation: Town04 with autopilot traffic (IDM + MOBIL lane changes).

Four Lane (CarDreamer, commit c75ae3e): the four northbound highway lanes at x ~ 5.8 / 9.0 /
12.2 / 15.6, start at y = 100 heading north (yaw -90 deg) on a random lane, route to y = -58
that changes to a random neighbouring lane after every 15-30 m stretch over 8 m; 50 vehicles on
the highway in both directions around the ego.  Road 39 crosses on a bridge (z = 11 m) at
y = 6-40: it is drawn and simulated on its own level.

Navigation: a random start on a Town04 lane outside junctions, a random route following the
lane graph (long horizon: by default 1 km, more than 500 steps at the 4 m/s reward speed), and
autopilot traffic on the route's lanes and their neighbours, re-spawned out of view to stay
within 100 m of the ego.

Variants (options of the same ids): ``density`` ``low`` / ``base`` / ``high`` sets
``num_vehicles``, ``traffic_speed`` and ``traffic_spacing`` (:data:`TRAFFIC_DENSITY`; values
given explicitly win);
``town`` lays Four Lane out on a multi-lane stretch of another town and starts Navigation's
random routes there (see :mod:`.layouts` for the rules).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carla_safe_envs.backends.base import Pose, Scenario, TrafficSpec
from carla_safe_envs.route import Route, lane_polyline, resample, straightest_successor
from carla_safe_envs.tasks.base import DENSITY_LEVELS, Task, TaskOptions, option
from carla_safe_envs.tasks.layouts import followable_successors, multi_lane_stretches

FOUR_LANE_ROAD = 1072  # Town04 road of the start (lanes -1..-4)
START_Y, END_Y = 100.0, -58.0  # [m]
STRETCH_LENGTH = 140.0  # [m] on other towns: the expert arrives within 500 steps (Town10HD)
FOUR_LANE_TOWNS = ("Town04", "Town05", "Town10HD")  # Town01/02 have one lane each way
NAVIGATION_TOWNS = ("Town04", "Town01", "Town02", "Town05", "Town10HD")
# density level -> (num_vehicles, traffic_speed [m/s], traffic_spacing [m]); "base" is
# CarDreamer's 50 vehicles.  "high" also spawns closer: at 12 m the spawner fills the lanes near
# the ego already at "base" and extra vehicles land far away (docs/generalization.md measures
# the vehicles within 40 m of the ego: Four Lane 10.9 at "base", 10.8 at 100 vehicles 12 m
# apart, 20.6 at 100 vehicles 7 m apart).
TRAFFIC_DENSITY: dict[str, tuple[int, float, float]] = {
    "low": (20, 7.0, 12.0),
    "base": (50, 6.0, 12.0),
    "high": (100, 5.0, 7.0),
}
assert tuple(TRAFFIC_DENSITY) == DENSITY_LEVELS


@dataclass(frozen=True)
class TrafficOptions(TaskOptions):
    """Options of the tasks with autopilot traffic.

    ``num_vehicles``, ``traffic_speed`` and ``traffic_spacing`` default to the ``density``
    level's values; given explicitly they win over it.
    """

    density: str = option("base", doc="traffic level (TRAFFIC_DENSITY)", choices=DENSITY_LEVELS)
    num_vehicles: int = option(None, doc="background vehicles around the ego", range=(0, 200))
    traffic_speed: float = option(
        None, doc="mean desired speed of the traffic [m/s]", range=(0.5, 30.0)
    )
    traffic_spacing: float = option(
        None, doc="least centre distance of a spawned vehicle to any other [m]", range=(5.0, 50.0)
    )

    def __post_init__(self) -> None:
        level = TRAFFIC_DENSITY.get(self.density)
        if level is not None:  # an unknown level is reported by the base class
            names = ("num_vehicles", "traffic_speed", "traffic_spacing")
            for name, value in zip(names, level, strict=True):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        super().__post_init__()


@dataclass(frozen=True)
class FourLaneOptions(TrafficOptions):
    town: str = option("Town04", doc="town of the stretch", choices=FOUR_LANE_TOWNS)
    stretch_min: float = option(
        15.0, doc="shortest straight stretch between lane changes [m]", range=(1.0, 500.0)
    )
    stretch_max: float = option(
        30.0, doc="longest straight stretch between lane changes [m]", range=(1.0, 500.0)
    )
    change_length: float = option(8.0, doc="length of a lane change [m]", range=(1.0, 50.0))


class FourLane(Task):
    name = "CarlaFourLane-v0"
    town = "Town04"
    towns = FOUR_LANE_TOWNS
    Options = FourLaneOptions

    def __init__(self, road, **options):
        super().__init__(road, **options)
        if self.options.stretch_min > self.options.stretch_max:
            raise ValueError("stretch_min must not exceed stretch_max")
        if self.town == "Town04":
            self.layouts = [self._town04_layout(road)]
        else:
            self.layouts = self._stretch_layouts(road)

    @staticmethod
    def _town04_layout(road) -> tuple[list[np.ndarray], tuple[int, ...], float]:
        """CarDreamer's stretch: per lane (x, y, z) 1 m apart in y, the traffic lanes, the
        start yaw."""
        # The four lanes from the start row to past the end row, resampled 1 m apart in y.
        starts = sorted(
            road.lanes_of_road(FOUR_LANE_ROAD), key=lambda i: road.pts[road.lane_start[i], 0]
        )
        ys = np.arange(START_Y, END_Y - 0.5, -1.0)
        lane_xy = []  # per lane, (x, y, z) at each y of `ys`
        spawn_lanes: set[int] = set()
        for lane in starts:
            path = [int(lane)]
            while road.pts[road.lane_start[path[-1] + 1] - 1, 1] > END_Y - 20.0:
                path.append(straightest_successor(road, path[-1]))
            spawn_lanes.update(path)
            line = lane_polyline(road, path, 0.0)
            order = np.argsort(line[:, 1])
            x = np.interp(ys, line[order, 1], line[order, 0])
            z = np.interp(ys, line[order, 1], line[order, 2])
            lane_xy.append(np.stack([x, ys, z], axis=1))
        # Traffic on the highway both ways: every lane with points near the start/end corridor.
        near = [
            int(i)
            for i in range(road.n_lanes)
            if abs(road.lane_z[i]) < 4.0
            and np.any(
                (np.abs(road.pts[road.lane_slice(i), 0] - 10.0) < 22.0)
                & (road.pts[road.lane_slice(i), 1] < START_Y + 120)
                & (road.pts[road.lane_slice(i), 1] > END_Y - 120)
            )
        ]
        return lane_xy, tuple(sorted(spawn_lanes | set(near))), -np.pi / 2

    def _stretch_layouts(self, road) -> list[tuple[list[np.ndarray], tuple[int, ...], float]]:
        """Every best multi-lane stretch of another town (:func:`.layouts.multi_lane_stretches`:
        most lanes, full length, fewest junction lanes), with the lanes of its traffic: lanes
        running along it either way within 10 m of its outer lanes, at its level."""
        length = STRETCH_LENGTH
        found = multi_lane_stretches(road, length)
        if not found:
            raise ValueError(f"{self.name}: {self.town} has no multi-lane stretch")
        best = found[0]
        chosen = [
            st
            for st in found
            if len(st.lanes) == len(best.lanes)
            and min(st.length, length) == min(best.length, length)
            and st.junction_lanes == best.junction_lanes
        ]
        layouts = []
        for st in chosen:
            corridor = np.concatenate(st.lanes)[:, :2]
            ref = st.lanes[0]
            d = np.diff(ref[:, :2], axis=0)
            seg_yaw = np.arctan2(d[:, 1], d[:, 0])
            lo, hi = corridor.min(0) - 10.0, corridor.max(0) + 10.0
            box = np.flatnonzero(
                np.all((road.pts[:, :2] > lo) & (road.pts[:, :2] < hi), axis=1)
                & (np.abs(road.pts[:, 2] - ref[0, 2]) < 4.0)
            )
            d2 = ((road.pts[box, None, :2] - corridor[None]) ** 2).sum(-1)  # (P, C)
            near_pt = box[d2.min(axis=1) < 10.0**2]
            # heading along the stretch (either way) at the nearest reference segment
            ref_i = np.minimum(
                (((road.pts[near_pt, None, :2] - ref[None, :, :2]) ** 2).sum(-1)).argmin(1),
                len(seg_yaw) - 1,
            )
            along = np.abs(np.cos(road.yaw[near_pt] - seg_yaw[ref_i])) > 0.9
            lanes = set(st.lane_ids) | set(road.point_lane[near_pt[along]].tolist())
            yaw0 = float(seg_yaw[0])
            layouts.append((list(st.lanes), tuple(sorted(int(i) for i in lanes)), yaw0))
        return layouts

    def episode(self, rng: np.random.Generator) -> tuple[Scenario, Route]:
        o = self.options
        if len(self.layouts) == 1:  # no draw: Town04's episodes stay CarDreamer's
            lane_xy, spawn_lanes, yaw0 = self.layouts[0]
        else:
            lane_xy, spawn_lanes, yaw0 = self.layouts[int(rng.integers(len(self.layouts)))]
        n = len(lane_xy[0])
        lane = int(rng.integers(len(lane_xy)))
        start_lane = lane
        offsets = np.zeros(n)  # fractional lane index along the route
        i = 0
        while i < n:
            stretch = int(rng.uniform(o.stretch_min, o.stretch_max))
            offsets[i : i + stretch] = lane
            i += stretch
            if i >= n:
                break
            moves = [m for m in (-1, 1) if 0 <= lane + m < len(lane_xy)]
            new = lane + int(rng.choice(moves))
            k = int(o.change_length)
            offsets[i : i + k] = lane + (new - lane) * (np.arange(1, k + 1)[: n - i] / k)
            lane, i = new, i + k
        stack = np.stack(lane_xy)  # (lanes, n, 3)
        lo = np.floor(offsets).astype(int).clip(0, len(lane_xy) - 1)
        hi = np.minimum(lo + 1, len(lane_xy) - 1)
        t = (offsets - lo)[:, None]
        idx = np.arange(n)
        points = resample(stack[lo, idx] * (1 - t) + stack[hi, idx] * t)
        start = lane_xy[start_lane][0]
        ego = Pose(float(start[0]), float(start[1]), yaw0, z=float(start[2]))
        traffic = TrafficSpec(
            kind="autopilot",
            count=o.num_vehicles,
            lanes=spawn_lanes,
            radius=150.0,
            spacing=o.traffic_spacing,
            speed=o.traffic_speed,
        )
        return Scenario(town=self.town, ego=ego, traffic=traffic), Route(points, 3.5)


@dataclass(frozen=True)
class NavigationOptions(TrafficOptions):
    town: str = option("Town04", doc="town of the routes", choices=NAVIGATION_TOWNS)
    route_length: float = option(
        1000.0, doc="length of the random route [m]", range=(20.0, 10000.0)
    )


class Navigation(Task):
    name = "CarlaNavigation-v0"
    town = "Town04"
    towns = NAVIGATION_TOWNS
    Options = NavigationOptions

    def __init__(self, road, **options):
        super().__init__(road, **options)
        # start lanes: outside junctions, at ground level, long enough to start on
        self.start_lanes = np.flatnonzero(
            (road.lane_junction < 0) & (road.lane_length > 30.0) & (np.abs(road.lane_z) < 1.0)
        )
        # On other towns the route avoids turns tighter than the discrete steering can follow
        # (:func:`.layouts.followable_successors`); Town04's routes stay CarDreamer's.
        self.successors = (
            road.successors if self.town == "Town04" else followable_successors(road).__getitem__
        )

    def episode(self, rng: np.random.Generator) -> tuple[Scenario, Route]:
        road, o = self.road, self.options
        lane = int(self.start_lanes[rng.integers(len(self.start_lanes))])
        s0 = float(rng.uniform(0.0, road.lane_length[lane] - 20.0))
        lanes, total = [lane], road.lane_length[lane] - s0
        while total < o.route_length + 1.0:
            succ = self.successors(lanes[-1])
            lanes.append(int(succ[rng.integers(len(succ))]))
            total += road.lane_length[lanes[-1]]
        points = resample(lane_polyline(road, lanes, s0))[: int(o.route_length) + 1]
        p, yaw = road.point_at(lane, s0)
        ego = Pose(float(p[0]), float(p[1]), yaw, z=float(p[2]))
        # traffic on the route's lanes and their same-direction neighbours, kept around the ego
        lanes_near = set(lanes)
        for lane_id in lanes:
            lanes_near.update(
                int(n) for n in (road.lane_left[lane_id], road.lane_right[lane_id]) if n >= 0
            )
        traffic = TrafficSpec(
            kind="autopilot",
            count=o.num_vehicles,
            lanes=tuple(sorted(lanes_near)),
            radius=100.0,
            spacing=o.traffic_spacing,
            speed=o.traffic_speed,
        )
        return Scenario(town=self.town, ego=ego, traffic=traffic), Route(points, 3.5)
