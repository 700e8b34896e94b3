"""Pure translations between CARLA's API values and the backend-agnostic snapshot.

Frames: CARLA's world frame is left-handed (x east, y south, z up) and its rotations are in
degrees, yaw turning from +x towards +y (clockwise seen from above).  The compiled maps, the
tasks and the snapshot use the same x, y, z unchanged and the same yaw in radians, wrapped to
(-pi, pi], so the heading vector is ``(cos yaw, sin yaw)`` in CARLA's x, y -- exactly
``Transform.get_forward_vector()``.  Nothing is mirrored.

Reference point: a snapshot row holds the centre of the vehicle's bounding box (as the
embedded simulator does), i.e. the actor's location plus its box offset rotated by the yaw;
``z`` is the actor's location (the ground under the car), which the BEV and the bridge logic
compare with lane heights.

The functions take the ``carla`` module (or a stand-in with the same value classes) as
``api`` where they build CARLA objects, and read CARLA objects by attribute only, so they run
on recorded values and in tests without a server.
"""

from __future__ import annotations

import math
import re

import numpy as np

from carla_safe_envs.backends.base import STATE_DIM, Control, Pose

SPAWN_LIFT = 0.3  # spawn this far above the lane centre so the wheels drop onto the road [m]
KMH_PER_MPS = 3.6


def yaw_from_carla(yaw_deg: float) -> float:
    """CARLA yaw [deg], any range (the API reports e.g. -450.2) -> yaw [rad] in (-pi, pi]."""
    a = math.remainder(math.radians(yaw_deg), math.tau)
    return math.pi if a == -math.pi else a


def yaw_to_carla(yaw: float) -> float:
    """Yaw [rad] -> CARLA yaw [deg] (same direction of rotation, no mirroring)."""
    return math.degrees(yaw)


def state_row(transform, velocity, bounding_box) -> np.ndarray:
    """(8,) snapshot row ``X..WIDTH`` of a vehicle from its CARLA ``Transform``, world-frame
    ``velocity`` (``Vector3D`` [m/s]) and ``bounding_box`` (local offset and half extents)."""
    loc, yaw = transform.location, yaw_from_carla(transform.rotation.yaw)
    c, s = math.cos(yaw), math.sin(yaw)
    off, ext = bounding_box.location, bounding_box.extent
    row = np.empty(STATE_DIM)
    row[:] = (
        loc.x + c * off.x - s * off.y,
        loc.y + s * off.x + c * off.y,
        loc.z,
        yaw,
        velocity.x,
        velocity.y,
        2.0 * ext.x,
        2.0 * ext.y,
    )
    return row


def pose_transform(api, pose: Pose, lift: float = SPAWN_LIFT):
    """The CARLA ``Transform`` that spawns a vehicle at ``pose`` (``lift`` metres up)."""
    return api.Transform(
        api.Location(x=float(pose.x), y=float(pose.y), z=float(pose.z) + lift),
        api.Rotation(yaw=yaw_to_carla(pose.yaw)),
    )


def velocity_vector(api, yaw: float, speed: float):
    """World-frame ``Vector3D`` [m/s] of a vehicle driving forward at ``speed`` along ``yaw``."""
    return api.Vector3D(x=speed * math.cos(yaw), y=speed * math.sin(yaw), z=0.0)


def vehicle_control(api, control: Control):
    """The ``VehicleControl`` of a :class:`Control` (ranges clipped as CARLA expects them).

    Both use CARLA's convention: ``steer`` > 0 turns right, i.e. the yaw grows (clockwise).
    """
    return api.VehicleControl(
        throttle=min(max(float(control.throttle), 0.0), 1.0),
        steer=min(max(float(control.steer), -1.0), 1.0),
        brake=min(max(float(control.brake), 0.0), 1.0),
        hand_brake=False,
        reverse=False,
        manual_gear_shift=False,
    )


def town_of(map_name: str) -> str:
    """``"Carla/Maps/Town03"`` or ``"/Game/Carla/Maps/Town03"`` -> ``"Town03"``."""
    return map_name.rstrip("/").rsplit("/", 1)[-1]


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``"0.9.15"``, ``"0.9.16-dirty"`` -> ``(0, 9, 16)``; ``None`` when it is no version."""
    m = re.match(r"\s*v?(\d+)\.(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None
