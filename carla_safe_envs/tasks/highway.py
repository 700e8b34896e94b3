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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carla_safe_envs.backends.base import Pose, Scenario, TrafficSpec
from carla_safe_envs.route import Route, lane_polyline, resample, straightest_successor
from carla_safe_envs.tasks.base import Task, TaskOptions, option

FOUR_LANE_ROAD = 1072  # Town04 road of the start (lanes -1..-4)
START_Y, END_Y = 100.0, -58.0  # [m]


@dataclass(frozen=True)
class TrafficOptions(TaskOptions):
    """Options of the tasks with autopilot traffic."""

    num_vehicles: int = option(50, doc="background vehicles around the ego", range=(0, 200))
    traffic_speed: float = option(
        6.0, doc="mean desired speed of the traffic [m/s]", range=(0.5, 30.0)
    )


@dataclass(frozen=True)
class FourLaneOptions(TrafficOptions):
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
    Options = FourLaneOptions

    def __init__(self, road, **options):
        super().__init__(road, **options)
        if self.options.stretch_min > self.options.stretch_max:
            raise ValueError("stretch_min must not exceed stretch_max")
        # The four lanes from the start row to past the end row, resampled 1 m apart in y.
        starts = sorted(
            road.lanes_of_road(FOUR_LANE_ROAD), key=lambda i: road.pts[road.lane_start[i], 0]
        )
        ys = np.arange(START_Y, END_Y - 0.5, -1.0)
        self.lane_xy = []  # per lane, (x, y, z) at each y of `ys`
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
            self.lane_xy.append(np.stack([x, ys, z], axis=1))
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
        self.spawn_lanes = tuple(sorted(spawn_lanes | set(near)))

    def episode(self, rng: np.random.Generator) -> tuple[Scenario, Route]:
        o = self.options
        n = len(self.lane_xy[0])
        lane = int(rng.integers(len(self.lane_xy)))
        start_lane = lane
        offsets = np.zeros(n)  # fractional lane index along the route
        i = 0
        while i < n:
            stretch = int(rng.uniform(o.stretch_min, o.stretch_max))
            offsets[i : i + stretch] = lane
            i += stretch
            if i >= n:
                break
            moves = [m for m in (-1, 1) if 0 <= lane + m < len(self.lane_xy)]
            new = lane + int(rng.choice(moves))
            k = int(o.change_length)
            offsets[i : i + k] = lane + (new - lane) * (np.arange(1, k + 1)[: n - i] / k)
            lane, i = new, i + k
        stack = np.stack(self.lane_xy)  # (4, n, 3)
        lo = np.floor(offsets).astype(int).clip(0, len(self.lane_xy) - 1)
        hi = np.minimum(lo + 1, len(self.lane_xy) - 1)
        t = (offsets - lo)[:, None]
        idx = np.arange(n)
        points = resample(stack[lo, idx] * (1 - t) + stack[hi, idx] * t)
        start = self.lane_xy[start_lane][0]
        ego = Pose(float(start[0]), float(start[1]), -np.pi / 2, z=float(start[2]))
        traffic = TrafficSpec(
            kind="autopilot",
            count=o.num_vehicles,
            lanes=self.spawn_lanes,
            radius=150.0,
            speed=o.traffic_speed,
        )
        return Scenario(town=self.town, ego=ego, traffic=traffic), Route(points, 3.5)


@dataclass(frozen=True)
class NavigationOptions(TrafficOptions):
    route_length: float = option(
        1000.0, doc="length of the random route [m]", range=(20.0, 10000.0)
    )


class Navigation(Task):
    name = "CarlaNavigation-v0"
    town = "Town04"
    Options = NavigationOptions

    def __init__(self, road, **options):
        super().__init__(road, **options)
        # start lanes: outside junctions, at ground level, long enough to start on
        self.start_lanes = np.flatnonzero(
            (road.lane_junction < 0) & (road.lane_length > 30.0) & (np.abs(road.lane_z) < 1.0)
        )

    def episode(self, rng: np.random.Generator) -> tuple[Scenario, Route]:
        road, o = self.road, self.options
        lane = int(self.start_lanes[rng.integers(len(self.start_lanes))])
        s0 = float(rng.uniform(0.0, road.lane_length[lane] - 20.0))
        lanes, total = [lane], road.lane_length[lane] - s0
        while total < o.route_length + 1.0:
            succ = road.successors(lanes[-1])
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
            speed=o.traffic_speed,
        )
        return Scenario(town=self.town, ego=ego, traffic=traffic), Route(points, 3.5)
