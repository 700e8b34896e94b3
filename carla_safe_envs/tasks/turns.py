"""Left Turn and Right Turn: Town03 junction 1221 with an oncoming junction flow.

CarDreamer (commit c75ae3e) coordinates: Left Turn starts at (6, -101) heading north and
ends at (-26.5, -139), crossing an eastbound flow that enters at (-22.4, -135.4) yaw 0;
Right Turn starts at (-33.8, -135.1) and ends at (-5, -110.3), merging into a southbound
flow that enters at (-3.4, -151.2) yaw 90.  Start poses are projected onto the lane centre.
``difficulty``: ``simple`` (no cars), ``medium`` (bumper gaps 8-16 m), ``hard`` (6-8 m).
The flow gives way to the ego once the ego is inside the junction (see :mod:`..junction`).

Variants (options of the same ids): ``density`` ``low`` / ``base`` / ``high`` multiplies the
difficulty's gap range by :data:`DENSITY_GAP_SCALE` (sparser / as is / denser; ``simple`` stays
empty), so ``difficulty`` picks the flow and ``density`` shifts it; ``town`` puts the turn on
another town, at the sites of :func:`.layouts.turn_sites` (one drawn per episode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from carla_safe_envs.backends.base import Pose, Scenario, TrafficSpec
from carla_safe_envs.junction import zone_around
from carla_safe_envs.route import Route, lane_polyline, resample
from carla_safe_envs.tasks.base import DENSITY_LEVELS, Task, TaskOptions, option
from carla_safe_envs.tasks.layouts import turn_sites

TURN_TOWNS = ("Town03", "Town01", "Town02", "Town05", "Town10HD")
JUNCTION = 1221  # the Town03 junction of both turns, centre ~(2.9, -136.5)
DIFFICULTY_GAPS: dict[str, tuple[float, float] | None] = {
    "simple": None,
    "medium": (8.0, 16.0),
    "hard": (6.0, 8.0),
}
# density level -> factor on the difficulty's bumper gaps (> 1: sparser flow)
DENSITY_GAP_SCALE: dict[str, float] = {"low": 1.5, "base": 1.0, "high": 0.75}
assert tuple(DENSITY_GAP_SCALE) == DENSITY_LEVELS


@dataclass(frozen=True)
class TurnOptions(TaskOptions):
    difficulty: str = option("medium", doc="junction flow density", choices=DIFFICULTY_GAPS)
    flow_speed: float = option(6.0, doc="desired speed of the flow [m/s]", range=(0.5, 20.0))
    density: str = option(
        "base", doc="scales the difficulty's gaps (DENSITY_GAP_SCALE)", choices=DENSITY_LEVELS
    )
    town: str = option("Town03", doc="town of the junction", choices=TURN_TOWNS)


class JunctionTurn(Task):
    town = "Town03"
    towns = TURN_TOWNS
    Options = TurnOptions
    side: ClassVar[str]  # "left" or "right"
    start: ClassVar[tuple[float, float]]
    goal: ClassVar[tuple[float, float]]
    flow: ClassVar[tuple[float, float, float]]  # x, y, yaw [deg]

    def __init__(self, road, **options):
        super().__init__(road, **options)
        # per site: route points, route widths, ego start pose, flow pose, yield zone
        self.sites: list[tuple[np.ndarray, np.ndarray, Pose, Pose, tuple]] = []
        if self.town == "Town03":
            lane0, s0, start_pose = self.snap(*self.start)
            lane1, s1, _ = self.snap(*self.goal)
            lanes = road.shortest_path(lane0, lane1)
            fx, fy, fyaw = self.flow
            self._add_site(lanes, s0, s1, start_pose, Pose(fx, fy, math.radians(fyaw)), JUNCTION)
        else:
            for site in turn_sites(road, self.side):
                p, yaw = road.point_at(site.lanes[0], site.s_start)
                start_pose = Pose(float(p[0]), float(p[1]), yaw, z=float(p[2]))
                fx, fy, fyaw = site.flow
                flow_pose = Pose(fx, fy, fyaw)
                self._add_site(
                    list(site.lanes),
                    site.s_start,
                    site.s_goal,
                    start_pose,
                    flow_pose,
                    site.junction,
                )
            if not self.sites:
                raise ValueError(f"{self.name}: {self.town} has no {self.side} turn site")
        gap = DIFFICULTY_GAPS[self.options.difficulty]
        scale = DENSITY_GAP_SCALE[self.options.density]
        self.gap = None if gap is None else (gap[0] * scale, gap[1] * scale)  # [m]

    def _add_site(self, lanes, s0, s1, start_pose, flow_pose, junction) -> None:
        road = self.road
        points = resample(lane_polyline(road, lanes, s0, s1))
        width = road.width[
            [road.locate(*p[:2], radius=4.0, lanes=np.array(lanes)).index for p in points]
        ]
        self.sites.append((points, width, start_pose, flow_pose, zone_around(road, junction)))

    def episode(self, rng: np.random.Generator) -> tuple[Scenario, Route]:
        if len(self.sites) == 1:  # no draw: Town03's episodes stay CarDreamer's
            points, width, start_pose, flow_pose, zone = self.sites[0]
        else:
            points, width, start_pose, flow_pose, zone = self.sites[
                int(rng.integers(len(self.sites)))
            ]
        traffic = TrafficSpec(
            kind="flow",
            spawn=flow_pose,
            gap=self.gap,
            speed=self.options.flow_speed,
            yield_zone=zone,
        )
        scenario = Scenario(town=self.town, ego=start_pose, traffic=traffic)
        return scenario, Route(points, width)


class LeftTurn(JunctionTurn):
    name = "CarlaLeftTurn-v0"
    side = "left"
    start = (6.0, -101.0)
    goal = (-26.5, -139.0)
    flow = (-22.4, -135.4, 0.0)


class RightTurn(JunctionTurn):
    name = "CarlaRightTurn-v0"
    side = "right"
    start = (-33.8, -135.1)
    goal = (-5.0, -110.3)
    flow = (-3.4, -151.2, 90.0)
    steer_values = (-0.9, -0.3, 0.0, 0.3, 0.9)  # CarDreamer's right-turn steering
