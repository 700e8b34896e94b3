"""The ego vehicle of the embedded simulator: a kinematic bicycle driven by CARLA controls.

Reference point: the centre of the bounding box, taken as the centre of gravity; slip angle
``beta = atan(lr / L * tan(delta))`` gives the lateral velocity that the reward's
``|v_lat|`` term sees in turns.  Longitudinal model (documented so the CARLA backend's feel can
be compared):

    a = A_THROTTLE * throttle * (1 - v / V_MAX) - A_BRAKE * brake - ROLL - DRAG * v^2   [m/s^2]

so the discrete actions' ``acc = +2`` (throttle 0.67) accelerates at ~2.2 m/s^2 from rest and
``acc = -2`` (brake 0.67) decelerates at ~5.5 m/s^2; the car never reverses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from carla_safe_envs.backends.base import EGO_LENGTH, EGO_WIDTH, STATE_DIM, Control, Pose

WHEELBASE = 2.875  # [m] Tesla Model 3
LR = 1.44  # CG to rear axle [m]
MAX_STEER = 0.6  # front wheel angle at steer = 1 [rad] (~34 deg)
A_THROTTLE = 3.5  # [m/s^2] at full throttle from rest
A_BRAKE = 8.0  # [m/s^2] at full brake
V_MAX = 40.0  # [m/s]
ROLL = 0.1  # rolling resistance [m/s^2]
DRAG = 4e-4  # aerodynamic drag [1/m]


@dataclass
class Ego:
    """Mutable ego state; ``substeps`` Euler sub-steps per ``dt``."""

    x: float
    y: float
    z: float
    yaw: float  # [rad]
    v: float  # forward speed [m/s]
    beta: float = 0.0  # slip angle [rad]
    length: float = EGO_LENGTH
    width: float = EGO_WIDTH

    @classmethod
    def from_pose(cls, pose: Pose) -> Ego:
        return cls(pose.x, pose.y, pose.z, pose.yaw, pose.speed)

    def step(self, control: Control, dt: float, substeps: int = 2) -> None:
        delta = MAX_STEER * control.steer
        h = dt / substeps
        for _ in range(substeps):
            acc = (
                A_THROTTLE * control.throttle * (1.0 - self.v / V_MAX)
                - A_BRAKE * control.brake
                - ROLL
                - DRAG * self.v * self.v
            )
            self.beta = math.atan(LR / WHEELBASE * math.tan(delta))
            heading = self.yaw + self.beta
            self.x += self.v * math.cos(heading) * h
            self.y += self.v * math.sin(heading) * h
            self.yaw = math.remainder(
                self.yaw + self.v / WHEELBASE * math.cos(self.beta) * math.tan(delta) * h, math.tau
            )
            self.v = max(self.v + acc * h, 0.0)

    def state(self) -> np.ndarray:
        """(8,) state in the snapshot columns X..WIDTH."""
        heading = self.yaw + self.beta
        out = np.empty(STATE_DIM)
        out[:] = (
            self.x,
            self.y,
            self.z,
            self.yaw,
            self.v * math.cos(heading),
            self.v * math.sin(heading),
            self.length,
            self.width,
        )
        return out
