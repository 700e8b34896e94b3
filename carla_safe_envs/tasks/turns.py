"""Left Turn and Right Turn: Town03 junction 1221 with an oncoming junction flow.

CarDreamer (commit c75ae3e) coordinates: Left Turn starts at (6, -101) heading north and
ends at (-26.5, -139), crossing an eastbound flow that enters at (-22.4, -135.4) yaw 0;
Right Turn starts at (-33.8, -135.1) and ends at (-5, -110.3), merging into a southbound
flow that enters at (-3.4, -151.2) yaw 90.  Start poses are projected onto the lane centre.
``difficulty``: ``simple`` (no cars), ``medium`` (bumper gaps 8-16 m), ``hard`` (6-8 m).
The flow gives way to the ego once the ego is inside the junction (see :mod:`..junction`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from carla_safe_envs.backends.base import Pose, Scenario, TrafficSpec
from carla_safe_envs.junction import zone_around
from carla_safe_envs.route import Route, lane_polyline, resample
from carla_safe_envs.tasks.base import Task, TaskOptions, option

JUNCTION = 1221  # the Town03 junction of both turns, centre ~(2.9, -136.5)
DIFFICULTY_GAPS: dict[str, tuple[float, float] | None] = {
    "simple": None,
    "medium": (8.0, 16.0),
    "hard": (6.0, 8.0),
}


@dataclass(frozen=True)
class TurnOptions(TaskOptions):
    difficulty: str = option("medium", doc="junction flow density", choices=DIFFICULTY_GAPS)
    flow_speed: float = option(6.0, doc="desired speed of the flow [m/s]", range=(0.5, 20.0))


class JunctionTurn(Task):
    town = "Town03"
    Options = TurnOptions
    start: ClassVar[tuple[float, float]]
    goal: ClassVar[tuple[float, float]]
    flow: ClassVar[tuple[float, float, float]]  # x, y, yaw [deg]

    def __init__(self, road, **options):
        super().__init__(road, **options)
        lane0, s0, self.start_pose = self.snap(*self.start)
        lane1, s1, _ = self.snap(*self.goal)
        lanes = road.shortest_path(lane0, lane1)
        points = resample(lane_polyline(road, lanes, s0, s1))
        width = road.width[
            [road.locate(*p[:2], radius=4.0, lanes=np.array(lanes)).index for p in points]
        ]
        self._route_points, self._route_width = points, width
        fx, fy, fyaw = self.flow
        self.flow_pose = Pose(fx, fy, math.radians(fyaw))
        self.yield_zone = zone_around(road, JUNCTION)

    def episode(self, rng: np.random.Generator) -> tuple[Scenario, Route]:
        traffic = TrafficSpec(
            kind="flow",
            spawn=self.flow_pose,
            gap=DIFFICULTY_GAPS[self.options.difficulty],
            speed=self.options.flow_speed,
            yield_zone=self.yield_zone,
        )
        scenario = Scenario(town=self.town, ego=self.start_pose, traffic=traffic)
        return scenario, Route(self._route_points, self._route_width)


class LeftTurn(JunctionTurn):
    name = "CarlaLeftTurn-v0"
    start = (6.0, -101.0)
    goal = (-26.5, -139.0)
    flow = (-22.4, -135.4, 0.0)


class RightTurn(JunctionTurn):
    name = "CarlaRightTurn-v0"
    start = (-33.8, -135.1)
    goal = (-5.0, -110.3)
    flow = (-3.4, -151.2, 90.0)
    steer_values = (-0.9, -0.3, 0.0, 0.3, 0.9)  # CarDreamer's right-turn steering
