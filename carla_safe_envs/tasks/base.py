"""What a task is: a small overlay of hooks and options on the one environment class.

A task names its town, validates its options (a frozen dataclass: unknown or invalid options
raise), and for each episode draws a :class:`~carla_safe_envs.backends.base.Scenario` (ego start,
traffic) and a :class:`~carla_safe_envs.route.Route` from the episode's generator.  Tasks only
use the shared :class:`~carla_safe_envs.maps.RoadMap`, never a backend.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from carla_safe_envs.backends.base import Pose, Scenario
from carla_safe_envs.maps import RoadMap
from carla_safe_envs.route import Route

STEER_VALUES = (-0.6, -0.2, 0.0, 0.2, 0.6)  # CarDreamer's discrete steering
ACC_VALUES = (-2.0, 0.0, 2.0)  # [m/s^2]
DENSITY_LEVELS = ("low", "base", "high")  # named traffic levels; "base" is CarDreamer's


@dataclass(frozen=True)
class TaskOptions:
    """Options every task accepts (subclasses add their own)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ValueError(f"unknown {f.name} {value!r}: expected one of {list(choices)}")
            lo, hi = f.metadata.get("range", (None, None))
            if lo is not None and not (lo <= value <= hi):
                raise ValueError(
                    f"{f.name}={value!r} is out of range: expected {lo} <= {f.name} <= {hi}"
                )


def option(default, *, doc: str, choices=None, range=None):  # noqa: A002 - mirrors dataclass.field
    meta = {"doc": doc}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if range is not None:
        meta["range"] = range
    return dataclasses.field(default=default, metadata=meta)


class Task(abc.ABC):
    """Base class of the four tasks; see the module docstring."""

    name: ClassVar[str]
    town: ClassVar[str]  # the CarDreamer town, the default of the ``town`` option
    towns: ClassVar[tuple[str, ...]] = ()  # every town it can be laid out on, ``town`` first
    Options: ClassVar[type[TaskOptions]] = TaskOptions
    steer_values: ClassVar[tuple[float, ...]] = STEER_VALUES

    @classmethod
    def town_for(cls, options: Mapping[str, Any]) -> str:
        """The town that task ``options`` (as given to ``gym.make``) put the task on."""
        town = options.get("town", cls.town)
        towns = cls.towns or (cls.town,)
        if town not in towns:
            raise ValueError(f"{cls.name}: unknown town {town!r}: expected one of {list(towns)}")
        return town

    def __init__(self, road: RoadMap, **options):
        town = self.town_for(options)
        if road.town != town:
            raise ValueError(
                f"{self.name} with town={town!r} runs on {town}, got a {road.town} map"
            )
        valid = [f.name for f in dataclasses.fields(self.Options)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(
                f"{self.name}: unknown task option(s) {unknown}; accepted options are {valid}"
            )
        self.options = self.Options(**options)
        self.road = road
        self.town = town  # the instance's town (the class attribute is the default)

    @abc.abstractmethod
    def episode(self, rng: np.random.Generator) -> tuple[Scenario, Route]:
        """The scenario and planned route of a new episode."""

    # -- helpers shared by the tasks -------------------------------------------------
    def snap(self, x: float, y: float, yaw: float | None = None) -> tuple[int, float, Pose]:
        """The lane at (x, y), the arc length there, and the pose on its centre line."""
        lp = self.road.locate(x, y, 0.0, yaw, radius=4.0)
        if lp is None:
            raise ValueError(f"{self.name}: ({x}, {y}) is not on a {self.town} driving lane")
        p, lane_yaw = self.road.point_at(lp.lane, lp.s)
        return lp.lane, lp.s, Pose(float(p[0]), float(p[1]), lane_yaw, z=float(p[2]))
