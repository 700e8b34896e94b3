"""The seam between the environment and a simulator backend.

A backend advances the world by one 0.1 s step and reports a :class:`WorldSnapshot`: poses,
sizes and velocities of the ego and every other vehicle, and whether the ego collided.  All
task logic (routes, reward, cost, termination), the BEV renderer and the metrics read only the
snapshot and the shared :class:`~carla_safe_envs.maps.RoadMap`, so the embedded simulator and
the real CARLA server share one code path above this line.  Backends never import each other
and tasks never import a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# Columns of WorldSnapshot.ego / .others; world frame (CARLA: x east, y south, left-handed).
X, Y, Z, YAW, VX, VY, LENGTH, WIDTH = range(8)  # [m, m, m, rad, m/s, m/s, m, m]
STATE_DIM = 8

DT = 0.1  # one environment step [s]

EGO_LENGTH = 4.79  # [m] CARLA vehicle.tesla.model3 bounding box
EGO_WIDTH = 2.16  # [m]


@dataclass(frozen=True)
class Control:
    """Vehicle control as CARLA applies it."""

    throttle: float  # [0, 1]
    brake: float  # [0, 1]
    steer: float  # [-1, 1], + turns right (clockwise yaw in CARLA's frame)


@dataclass(frozen=True)
class Pose:
    x: float  # [m]
    y: float  # [m]
    yaw: float  # [rad]
    z: float = 0.0  # [m]
    speed: float = 0.0  # initial forward speed [m/s]


TRAFFIC_KINDS = ("none", "autopilot", "flow", "placed")


@dataclass(frozen=True)
class TrafficSpec:
    """Background traffic a task asks for; each backend realizes it its own way.

    kind:
      ``"none"``      no other vehicles.
      ``"autopilot"`` ``count`` vehicles that follow lanes with car-following and lane
                      changes, spawned on ``lanes`` (lane indices of the RoadMap) within
                      ``radius`` metres of the ego start, and kept around the ego;
                      no spawn closer than ``spacing`` [m] to another vehicle (centres).
      ``"flow"``      a stream of vehicles entering at ``spawn`` and following the
                      straightest lane path from there, with bumper-to-bumper gaps drawn
                      uniformly from ``gap`` [m]; ``gap=None`` spawns nothing ("simple").
      ``"placed"``    one vehicle at each pose of ``placed`` (snapped to its lane), driving
                      straight on at the pose's ``speed`` with car following: scripted scenes.
    """

    kind: str = "none"  # one of TRAFFIC_KINDS
    count: int = 0
    lanes: tuple[int, ...] = ()
    radius: float = 150.0  # [m]
    spacing: float = 12.0  # least centre distance of a spawned autopilot car to any other [m]
    lane_changes: bool = True
    spawn: Pose | None = None
    gap: tuple[float, float] | None = None  # [m]
    speed: float = 6.0  # desired speed of the traffic [m/s]
    # (x, y, radius) [m] of a junction where traffic gives way to the ego: while the ego's
    # centre is inside, vehicles outside that can still stop comfortably wait at its edge.
    yield_zone: tuple[float, float, float] | None = None
    placed: tuple[Pose, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TRAFFIC_KINDS:
            raise ValueError(
                f"unknown traffic kind {self.kind!r}: expected one of {list(TRAFFIC_KINDS)}"
            )
        if not self.spacing > 0.0:
            raise ValueError(f"traffic spacing must be > 0 m, got {self.spacing}")


@dataclass(frozen=True)
class Scenario:
    """Everything a backend needs to set up one episode."""

    town: str
    ego: Pose
    traffic: TrafficSpec = field(default_factory=TrafficSpec)


@dataclass
class WorldSnapshot:
    """The world after a step, in the columns X..WIDTH above."""

    time: float  # simulated time since reset [s]
    ego: np.ndarray  # (8,) float64
    others: np.ndarray  # (K, 8) float64
    collision: bool = False  # the ego collided during the last step
    collision_speed: float = 0.0  # ego speed at the collision [m/s]

    @property
    def ego_speed(self) -> float:
        return float(np.hypot(self.ego[VX], self.ego[VY]))


class BackendInterrupted(RuntimeError):
    """The simulator lost the running episode (e.g. the CARLA server died or hung).

    Raised by :meth:`Backend.step` after the backend has tried to recover (reconnected, or
    relaunched its server); the environment ends the episode as truncated, merges ``info`` into
    the step's info dict, and the next ``reset()`` starts a fresh episode.
    """

    def __init__(self, message: str, *, info: dict | None = None):
        super().__init__(message)
        self.info = dict(info or {})


class Backend(Protocol):
    """What the environment needs from a simulator."""

    name: str

    def reset(self, scenario: Scenario, rng: np.random.Generator) -> WorldSnapshot: ...

    def step(self, control: Control) -> WorldSnapshot:
        """Advance 0.1 s; raises :class:`BackendInterrupted` when the episode was lost."""
        ...

    def close(self) -> None: ...
