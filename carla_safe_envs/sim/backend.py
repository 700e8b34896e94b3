"""The embedded simulator backend (``backend="sim"``, the default): no server, deterministic.

One step advances the ego (kinematic bicycle, :mod:`.vehicle`) and the background traffic
(IDM / MOBIL, :mod:`.traffic`) by 0.1 s on the real lane geometry of the town, then tests the
ego's oriented box against every other box (separating axes).  Everything random is drawn from
the generator handed to :meth:`SimBackend.reset`, so equal seeds give equal episodes.
"""

from __future__ import annotations

import numpy as np

from carla_safe_envs.backends.base import (
    DT,
    LENGTH,
    WIDTH,
    Control,
    Scenario,
    WorldSnapshot,
    X,
    Y,
)
from carla_safe_envs.geometry import boxes_overlap
from carla_safe_envs.maps import load_town
from carla_safe_envs.sim.traffic import Traffic
from carla_safe_envs.sim.vehicle import Ego

GROUND_PERIOD = 5  # the ego's height follows the road every 5 steps (ramps rise < 0.1 m a step)


class SimBackend:
    """Embedded kinematic simulator; see the module docstring."""

    name = "sim"

    def __init__(self, **options):
        if options:
            raise TypeError(
                f"backend 'sim' takes no options, got {sorted(options)}; "
                "(host/port/timeout options belong to backend='carla')"
            )
        self._ego: Ego | None = None
        self._traffic: Traffic | None = None
        self._time = 0.0

    def reset(self, scenario: Scenario, rng: np.random.Generator) -> WorldSnapshot:
        self.road = load_town(scenario.town)
        self._ego = Ego.from_pose(scenario.ego)
        self._time = 0.0
        self._steps = 0
        self._traffic = Traffic(self.road, scenario.traffic, rng, self._ego.state())
        return self._snapshot(collision=False)

    def step(self, control: Control) -> WorldSnapshot:
        if self._ego is None:
            raise RuntimeError("SimBackend.step() called before reset()")
        self._traffic.step(self._ego.state())
        self._ego.step(control, DT)
        self._steps += 1
        if self._steps % GROUND_PERIOD == 0:
            self._ego.z = self._ground_z(self._ego.x, self._ego.y, self._ego.z)
        self._time += DT
        return self._snapshot(collision=None)

    def _ground_z(self, x: float, y: float, z: float) -> float:
        """Height of the nearest lane point at the ego's level (ramps, bridges)."""
        idx = self.road.candidates(x, y, 2.0)
        if len(idx) == 0:
            return z
        p = self.road.pts[idx]
        near = np.abs(p[:, 2] - z) < 2.0
        if not near.any():
            return z
        p = p[near]
        return float(p[np.argmin((p[:, 0] - x) ** 2 + (p[:, 1] - y) ** 2), 2])

    def _snapshot(self, collision: bool | None) -> WorldSnapshot:
        ego = self._ego.state()
        others = self._traffic.states()
        if collision is None:  # boxes can only touch within the sum of their half diagonals
            reach = 0.5 * (
                np.hypot(others[:, LENGTH], others[:, WIDTH]) + np.hypot(ego[LENGTH], ego[WIDTH])
            )
            near = others[
                (others[:, X] - ego[X]) ** 2 + (others[:, Y] - ego[Y]) ** 2 <= reach * reach
            ]
            collision = bool(len(near)) and bool(boxes_overlap(ego, near).any())
        return WorldSnapshot(
            time=self._time,
            ego=ego,
            others=others,
            collision=collision,
            collision_speed=self._ego.v if collision else 0.0,
        )

    def close(self) -> None:
        self._ego = self._traffic = None
