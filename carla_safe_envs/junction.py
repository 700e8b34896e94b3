"""The junction give-way rule shared by the embedded traffic and the expert's predictions.

CARLA's traffic manager lets a vehicle that is already in a junction finish crossing; the
embedded simulator models that with a *yield zone* around a junction (a circle): while the
ego's centre is inside it, every other vehicle still outside that can stop at the circle's
edge with at most ``YIELD_DECEL`` waits there; vehicles inside, or too close to stop, go on.
"""

from __future__ import annotations

import numpy as np

from carla_safe_envs.backends.base import LENGTH, VX, VY, YAW, X, Y

YIELD_DECEL = 5.0  # the hardest braking a vehicle accepts to give way [m/s^2]
STOP_MARGIN = 1.0  # stop this far before the zone's edge [m]


def zone_around(road, junction_id: int, margin: float = 0.5) -> tuple[float, float, float]:
    """The smallest circle around the bounding box centre of a junction's lanes (+ margin)."""
    lanes = np.flatnonzero(road.lane_junction == junction_id)
    if len(lanes) == 0:
        raise ValueError(f"{road.town} has no junction {junction_id}")
    pts = np.concatenate([road.pts[road.lane_slice(i), :2] for i in lanes])
    c = (pts.min(0) + pts.max(0)) / 2
    return float(c[0]), float(c[1]), float(np.hypot(*(pts - c).T).max() + margin)


def in_zone(zone, x, y):
    cx, cy, r = zone
    return (np.asarray(x) - cx) ** 2 + (np.asarray(y) - cy) ** 2 < r * r


def gap_to_zone(zone, states: np.ndarray) -> np.ndarray:
    """(K,) distance [m] each vehicle can still drive before its front stops at the zone's edge
    (``inf`` for vehicles inside the zone, heading away from it, or unable to stop in time)."""
    cx, cy, r = zone
    dx, dy = cx - states[:, X], cy - states[:, Y]
    dist = np.hypot(dx, dy)
    hx, hy = np.cos(states[:, YAW]), np.sin(states[:, YAW])
    toward = (dx * hx + dy * hy) > 0.3 * dist
    gap = dist - r - states[:, LENGTH] / 2 - STOP_MARGIN
    speed = np.hypot(states[:, VX], states[:, VY])
    can_stop = speed * speed <= 2.0 * YIELD_DECEL * np.maximum(gap, 0.0) + 0.25
    return np.where((dist >= r) & toward & can_stop, np.maximum(gap, 0.0), np.inf)
