"""Oriented-box geometry for vehicles: corners, overlap and time to collision.

Every function reads vehicle states in the columns of :mod:`carla_safe_envs.backends.base`
(``X, Y, Z, YAW, VX, VY, LENGTH, WIDTH``; CARLA world frame, x east, y south, yaw =
``atan2(dy, dx)`` in radians, the pose is the box centre) and is vectorized over the other
vehicles with numpy.

Overlap is the separating-axis test (SAT) for two rectangles: they are disjoint exactly when
their projections on one of the four edge normals do not meet.  Writing ``d`` for the centre
offset, ``n`` for an axis and ``r`` for the sum of both boxes' projected half extents on it,
the boxes overlap iff ``|d . n| <= r`` on all four axes (touching counts as overlap).

When both boxes keep their velocity and heading, the axes and ``r`` stay fixed and only the
offset moves, ``d(t) = d0 + dv t``; so :func:`time_to_collision` projects ``d0`` and ``dv``
once per pair and tests ``|d0 . n + (dv . n) t| <= r`` for every pair, axis and time sample in
one array.  Cost is a few dozen numpy calls whatever the number of vehicles (per-call overhead
dominates at K ~ 50), which is why the code favours fewer, larger array operations.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from carla_safe_envs.backends.base import LENGTH, STATE_DIM, VX, VY, WIDTH, YAW, X, Y, Z

LEVEL_SEPARATION = 3.0  # [m] boxes this far apart in z are on different road levels (bridges)

# The SAT code below reads (dx, dy) and (dvx, dvy) as one (2, 2) view of a state difference.
if (X, Y, Z, YAW, VX, VY, LENGTH, WIDTH) != tuple(range(STATE_DIM)):
    raise ImportError("carla_safe_envs.geometry expects state columns X..WIDTH = 0..7")

_DIFF_MASK = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # keep the other's size
# Angles of the four SAT axes relative to the first box's yaw: a's heading and normal, then the
# other's.  Row 0 gives x = cos(angle), row 1 gives y = sin(angle) = cos(angle - 90 deg).
_AXIS_ANGLES = np.array([[0.0, 0.5, 0.0, 0.5], [-0.5, 0.0, -0.5, 0.0]]) * math.pi  # (2, 4)
_OTHER_AXES = np.array([[0.0, 0.0, 1.0, 1.0]] * 2)  # (2, 4) axes that turn with the other box
_SNAP = 1e-9  # [samples] round-off slack when counting the samples in the horizon


def _as_states(others: np.ndarray) -> np.ndarray:
    """``others`` as a float (K, 8) array; raises on any other shape."""
    others = np.asarray(others, dtype=np.float64)
    if others.ndim != 2 or others.shape[1] != STATE_DIM:
        raise ValueError(
            f"expected vehicle states of shape (K, {STATE_DIM}) in the columns "
            f"X, Y, Z, YAW, VX, VY, LENGTH, WIDTH; got shape {others.shape}"
        )
    return others


def _as_state(state: np.ndarray) -> np.ndarray:
    state = np.asarray(state, dtype=np.float64)
    if state.shape != (STATE_DIM,):
        raise ValueError(f"expected one vehicle state of shape ({STATE_DIM},); got {state.shape}")
    return state


def box_corners(states: np.ndarray) -> np.ndarray:
    """Corners of each vehicle's box.

    Args:
        states: (K, 8) vehicle states.

    Returns:
        (K, 4, 2) corner (x, y) in metres, in perimeter order: front (+y side of the heading
        in the vehicle frame), front (-y side), rear (-y side), rear (+y side).
    """
    states = _as_states(states)
    cos, sin = np.cos(states[:, YAW]), np.sin(states[:, YAW])
    half_l, half_w = 0.5 * states[:, LENGTH], 0.5 * states[:, WIDTH]
    # Corner offsets in the vehicle frame (forward, lateral), then rotated into the world.
    fwd = np.array([1.0, 1.0, -1.0, -1.0])[None, :] * half_l[:, None]  # (K, 4) [m]
    lat = np.array([1.0, -1.0, -1.0, 1.0])[None, :] * half_w[:, None]  # (K, 4) [m]
    x = states[:, None, 0] + fwd * cos[:, None] - lat * sin[:, None]
    y = states[:, None, 1] + fwd * sin[:, None] + lat * cos[:, None]
    return np.stack([x, y], axis=-1)  # (K, 4, 2)


def _near(a: np.ndarray, others: np.ndarray, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Vehicles that can touch box ``a`` within ``horizon`` seconds, and their differences.

    A pair can only touch when the centre distance minus the closing speed x horizon is at
    most the sum of the two half diagonals, and when both are on one road level.

    Returns:
        near: (k,) indices into ``others``.
        diff: (k, 8) ``others[near] - a`` with the other's own size kept in the last two
              columns: dx, dy, dz, dyaw, dvx, dvy [m, m, m, rad, m/s, m/s], length, width [m].
    """
    diff = others - a * _DIFF_MASK  # (K, 8)
    pairs = diff.reshape(-1, 4, 2)  # (K, [(dx, dy), (dz, dyaw), (dvx, dvy), (l, w)], 2) view
    norms = np.hypot(pairs[:, :, 0], pairs[:, :, 1])  # (K, 4): distance, -, speed, diagonal
    gap = norms @ np.array((1.0, 0.0, -horizon, -0.5))  # (K,) [m]
    reach = 0.5 * math.hypot(a[LENGTH], a[WIDTH])  # [m]
    near = np.flatnonzero((gap <= reach) & (np.abs(diff[:, Z]) < LEVEL_SEPARATION))
    return near, diff[near]


def _projections(a: np.ndarray, diff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Separating-axis terms of box ``a`` against each box described by ``diff``.

    Args:
        a: (8,) one state.
        diff: (k, 8) differences from :func:`_near`.

    Returns:
        p: (k, 4) centre offset projected on the four axes (``a``'s heading and normal, then
           the other box's) [m];
        q: (k, 4) relative velocity projected on them [m/s];
        r: (k, 4) sum of both boxes' full extents projected on them [m]; the boxes overlap
           iff ``|p| <= r / 2`` on every axis.
    """
    k = len(diff)
    # axes[:, 0, j] / axes[:, 1, j] are the x / y components of axis j; one cos call.
    angles = diff[:, YAW, None, None] * _OTHER_AXES + (_AXIS_ANGLES + a[YAW])
    axes = np.cos(angles)  # (k, xy, axis)
    offset_velocity = diff[:, :6].reshape(k, 3, 2)[:, ::2]  # (k, [d, dv], xy) view
    pq = offset_velocity @ axes  # (k, [d, dv], axis)
    # A box of length l and width w along its axes u, v spans l |u . n| + w |v . n| on axis n;
    # the |dot products| between the four axes are |axes^T axes|.
    cross = np.abs(axes.transpose(0, 2, 1) @ axes)  # (k, axis n, axis u) |n . u|
    r = cross[:, :, :2] @ a[LENGTH:] + (cross[:, :, 2:] @ diff[:, LENGTH:, None])[:, :, 0]
    return pq[:, 0], pq[:, 1], r


def boxes_overlap(a: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Whether box ``a`` overlaps each of ``others`` (separating-axis test).

    Pairs whose centres are further apart than the sum of their half diagonals are rejected
    before the SAT, and boxes whose heights differ by ``LEVEL_SEPARATION`` (3 m) or more never
    overlap (a bridge over a road).  Touching boxes count as overlapping.

    Args:
        a: (8,) one vehicle state.
        others: (K, 8) vehicle states.

    Returns:
        (K,) bool.
    """
    a, others = _as_state(a), _as_states(others)
    out = np.zeros(len(others), dtype=bool)
    near, diff = _near(a, others, 0.0)
    if near.size:
        p, _, r = _projections(a, diff)
        out[near] = (2.0 * np.abs(p) <= r).all(axis=1)
    return out


@functools.lru_cache(maxsize=8)
def _sample_times(horizon: float, dt: float) -> np.ndarray:
    """(N,) sample times 0, dt, ..., <= horizon [s]."""
    if not (dt > 0.0 and horizon >= 0.0):
        raise ValueError(f"need dt > 0 and horizon >= 0 [s]; got dt={dt}, horizon={horizon}")
    times = np.arange(int(math.floor(horizon / dt + _SNAP)) + 1) * dt
    times.flags.writeable = False
    return times


def time_to_collision(
    ego: np.ndarray,
    others: np.ndarray,
    *,
    horizon: float = 5.0,
    dt: float = 0.1,
) -> float:
    """Earliest sample time at which the ego box overlaps another box at constant velocities.

    Every vehicle keeps its current velocity (``VX``, ``VY``) and heading; the boxes are tested
    at t = 0, dt, 2 dt, ... up to the horizon, all samples and vehicles in one array.  Vehicles
    on another road level, and those that cannot reach the ego within the horizon (centre
    distance above ``horizon x closing speed + both half diagonals``), are discarded first.

    Args:
        ego: (8,) the ego state.
        others: (K, 8) the other vehicles' states.
        horizon: look-ahead [s].
        dt: sampling period [s] (a contact that begins and ends between two samples is missed).

    Returns:
        Time to collision [s], a multiple of ``dt``; ``0.0`` when already overlapping;
        ``math.inf`` when no overlap happens within the horizon.
    """
    ego, others = _as_state(ego), _as_states(others)
    times = _sample_times(float(horizon), float(dt))  # (N,) [s]
    near, diff = _near(ego, others, horizon)
    if near.size == 0:
        return math.inf
    p, q, r = _projections(ego, diff)
    # Centre offset on each axis at each sample: p + q t; the boxes overlap where it is
    # within the half extents on all four axes.
    offset = np.abs(p[:, :, None] + q[:, :, None] * times)  # (k, axis, N) [m]
    inside = offset <= 0.5 * r[:, :, None]  # (k, axis, N)
    hit = inside.all(axis=1).any(axis=0)  # (N,) any vehicle overlaps at this sample
    first = int(hit.argmax())
    return float(times[first]) if hit[first] else math.inf
