"""Oriented-box geometry: corners, overlap and time to collision on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from carla_safe_envs.backends.base import LENGTH, STATE_DIM, VX, VY, WIDTH, YAW, Z
from carla_safe_envs.geometry import box_corners, boxes_overlap, time_to_collision

L, W = 4.0, 2.0  # [m] box size used throughout


def state(
    x: float = 0.0,
    y: float = 0.0,
    *,
    yaw: float = 0.0,
    vx: float = 0.0,
    vy: float = 0.0,
    z: float = 0.0,
    length: float = L,
    width: float = W,
) -> np.ndarray:
    return np.array([x, y, z, yaw, vx, vy, length, width], dtype=np.float64)


def stack(*states: np.ndarray) -> np.ndarray:
    return np.stack(states) if states else np.empty((0, STATE_DIM))


# --- box_corners ---------------------------------------------------------------------------


def test_corners_axis_aligned() -> None:
    corners = box_corners(stack(state(10.0, 5.0)))
    assert corners.shape == (1, 4, 2)
    expected = {(12.0, 6.0), (12.0, 4.0), (8.0, 4.0), (8.0, 6.0)}
    assert {tuple(np.round(c, 9)) for c in corners[0]} == expected


def test_corners_rotated_quarter_turn() -> None:
    # Heading +y (south): the length now runs along y.
    corners = box_corners(stack(state(yaw=math.pi / 2)))[0]
    assert np.allclose(np.sort(np.abs(corners[:, 0])), [1.0] * 4)
    assert np.allclose(np.sort(np.abs(corners[:, 1])), [2.0] * 4)
    front = corners[:2].mean(axis=0)
    assert np.allclose(front, [0.0, 2.0])  # the first two corners are the front ones


def test_corners_reject_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\(K, 8\)"):
        box_corners(np.zeros((3, 7)))


# --- boxes_overlap -------------------------------------------------------------------------


def test_overlap_near_and_far() -> None:
    ego = state()
    # Centres 1 m apart overlap; bumper-to-bumper gaps of 0 (touching) overlap, 10 m don't.
    others = stack(state(1.0), state(L, 0.0), state(L + 10.0, 0.0), state(0.0, W + 0.01))
    assert boxes_overlap(ego, others).tolist() == [True, True, False, False]


def test_overlap_rotated_corner() -> None:
    # A box turned 45 degrees whose corner points at the ego's front face (x = 2).
    half_diag_x = (L / 2 + W / 2) / math.sqrt(2)  # extent of the rotated box along x [m]
    yaw = math.pi / 4

    def corner_at(x_tip: float) -> np.ndarray:
        return state(x_tip + half_diag_x, 0.0, yaw=yaw)

    others = stack(corner_at(L / 2 - 0.05), corner_at(L / 2 + 0.05))
    assert boxes_overlap(state(), others).tolist() == [True, False]
    # The corners themselves agree: the first box has a corner inside the ego.
    tip = box_corners(others[:1])[0][np.argmin(box_corners(others[:1])[0][:, 0])]
    assert tip[0] < L / 2 and abs(tip[1]) < W / 2


def test_overlap_needs_all_axes() -> None:
    # Circles overlap and the ego's own axes do not separate, but the other's diagonal one does.
    # The other box's side faces the ego's front-left corner along the diagonal (1, 1)/sqrt(2);
    # on that axis the ego spans 3/sqrt(2) = 2.12 m and the other 1 m: contact at 3.12 m.
    diagonal = np.array([1.0, 1.0]) / math.sqrt(2)
    apart = state(*(3.3 * diagonal), yaw=-math.pi / 4)
    touching = state(*(3.0 * diagonal), yaw=-math.pi / 4)
    assert boxes_overlap(state(), stack(apart, touching)).tolist() == [False, True]


def test_overlap_other_level() -> None:
    assert not boxes_overlap(state(), stack(state(z=11.0)))[0]
    assert boxes_overlap(state(), stack(state(z=2.0)))[0]


def test_overlap_empty() -> None:
    assert boxes_overlap(state(), stack()).shape == (0,)


def test_overlap_is_symmetric() -> None:
    rng = np.random.default_rng(0)
    boxes = random_states(rng, 300, spread=6.0)
    for a, b in zip(boxes[::2], boxes[1::2], strict=True):
        assert boxes_overlap(a, b[None])[0] == boxes_overlap(b, a[None])[0]


def test_overlap_matches_corner_containment_when_one_box_is_inside() -> None:
    big = state(length=10.0, width=10.0)
    small = state(1.0, 1.0, yaw=0.3, length=1.0, width=0.5)
    assert boxes_overlap(big, stack(small))[0] and boxes_overlap(small, stack(big))[0]


# --- time_to_collision ---------------------------------------------------------------------


def test_ttc_head_on() -> None:
    # Bumper-to-bumper gap 25 m, closing at 10 m/s: contact at 2.5 s.
    ego = state(vx=5.0)
    other = state(L + 25.0, yaw=math.pi, vx=-5.0)
    assert time_to_collision(ego, stack(other)) == pytest.approx(2.5, abs=0.1)
    assert time_to_collision(ego, stack(other), dt=0.01) == pytest.approx(2.5, abs=0.01)


def test_ttc_first_sample_after_contact() -> None:
    other = state(L + 25.05, yaw=math.pi, vx=-5.0)  # contact at 2.505 s
    ego = state(vx=5.0)
    assert time_to_collision(ego, stack(other), dt=0.1) == pytest.approx(2.6)
    assert time_to_collision(ego, stack(other), dt=0.001) == pytest.approx(2.505, abs=0.0011)


def test_ttc_parallel_same_speed_is_inf() -> None:
    ego = state(vx=8.0)
    others = stack(state(0.0, 3.5, vx=8.0), state(10.0, 0.0, vx=8.0), state(-8.0, 0.0, vx=8.0))
    assert time_to_collision(ego, others) == math.inf


def test_ttc_already_overlapping_is_zero() -> None:
    assert time_to_collision(state(), stack(state(1.0))) == 0.0


def test_ttc_beyond_horizon() -> None:
    other = state(L + 60.0, vx=-10.0)  # contact at 6 s
    assert time_to_collision(state(), stack(other), horizon=5.0) == math.inf
    assert time_to_collision(state(), stack(other), horizon=7.0) == pytest.approx(6.0)


def test_ttc_receding_vehicle() -> None:
    other = state(-L - 1.0, vx=-3.0)  # behind and driving away
    assert time_to_collision(state(vx=3.0), stack(other)) == math.inf


def test_ttc_crossing_traffic_and_miss() -> None:
    # A vehicle crossing from the side reaches the ego's path; one 8 m further passes behind.
    ego = state(vx=10.0)
    hit = state(20.0, -20.0, yaw=math.pi / 2, vy=10.0)
    miss = state(12.0, -20.0 - 8.0, yaw=math.pi / 2, vy=10.0)
    ttc_hit = time_to_collision(ego, stack(hit), dt=0.01)
    assert 1.5 < ttc_hit < 2.0
    assert time_to_collision(ego, stack(miss)) == math.inf
    assert time_to_collision(ego, stack(miss, hit), dt=0.01) == pytest.approx(ttc_hit)


def test_ttc_bridge_vehicle_ignored() -> None:
    # Same x, y on the bridge 11 m above: neither overlapping now nor later.
    other = state(z=11.0, vx=-5.0)
    assert time_to_collision(state(vx=5.0), stack(other)) == math.inf


def test_ttc_no_others() -> None:
    assert time_to_collision(state(), stack()) == math.inf


@pytest.mark.parametrize(("horizon", "dt"), [(5.0, 0.0), (5.0, -0.1), (-1.0, 0.1)])
def test_ttc_rejects_bad_sampling(horizon: float, dt: float) -> None:
    with pytest.raises(ValueError, match="dt > 0"):
        time_to_collision(state(), stack(state(1.0)), horizon=horizon, dt=dt)


def random_states(rng: np.random.Generator, k: int, *, spread: float) -> np.ndarray:
    states = np.zeros((k, STATE_DIM))
    states[:, :2] = rng.uniform(-spread, spread, (k, 2))
    states[:, Z] = rng.choice([0.0, 0.0, 0.0, 11.0], k)
    states[:, YAW] = rng.uniform(-math.pi, math.pi, k)
    states[:, VX : VY + 1] = rng.uniform(-10.0, 10.0, (k, 2))
    states[:, LENGTH] = rng.uniform(3.0, 6.0, k)
    states[:, WIDTH] = rng.uniform(1.5, 2.5, k)
    return states


def sampled_ttc(ego: np.ndarray, others: np.ndarray, horizon: float, dt: float) -> float:
    """Reference: move every box step by step and test overlap at each sample."""
    for k in range(int(round(horizon / dt)) + 1):
        t = k * dt
        moved_ego, moved = ego.copy(), others.copy()
        moved_ego[:2] += t * ego[VX : VY + 1]
        moved[:, :2] += t * others[:, VX : VY + 1]
        if boxes_overlap(moved_ego, moved).any():
            return t
    return math.inf


@pytest.mark.parametrize("seed", range(4))
def test_ttc_matches_sampled_rollout(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(50):
        ego = random_states(rng, 1, spread=0.0)[0]
        ego[Z] = 0.0
        others = random_states(rng, 5, spread=40.0)
        expected = sampled_ttc(ego, others, 5.0, 0.1)
        assert time_to_collision(ego, others, horizon=5.0, dt=0.1) == pytest.approx(expected)


def test_overlap_agrees_with_polygon_clipping() -> None:
    """SAT against an independent test: any corner inside the other box or any edges crossing."""
    rng = np.random.default_rng(7)
    boxes = random_states(rng, 400, spread=5.0)
    boxes[:, Z] = 0.0
    corners = box_corners(boxes)
    for i in range(0, 400, 2):
        expected = polygons_intersect(corners[i], corners[i + 1])
        assert boxes_overlap(boxes[i], boxes[i + 1 : i + 2])[0] == expected


def polygons_intersect(p: np.ndarray, q: np.ndarray) -> bool:
    def inside(point: np.ndarray, poly: np.ndarray) -> bool:
        edges = np.roll(poly, -1, axis=0) - poly
        rel = point - poly
        cross = edges[:, 0] * rel[:, 1] - edges[:, 1] * rel[:, 0]
        return bool(np.all(cross >= 0) or np.all(cross <= 0))

    def segments_cross(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> bool:
        def orient(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> float:
            return float((v[0] - u[0]) * (w[1] - u[1]) - (v[1] - u[1]) * (w[0] - u[0]))

        return orient(a, b, c) * orient(a, b, d) < 0 and orient(c, d, a) * orient(c, d, b) < 0

    if any(inside(c, q) for c in p) or any(inside(c, p) for c in q):
        return True
    return any(
        segments_cross(p[i], p[(i + 1) % 4], q[j], q[(j + 1) % 4])
        for i in range(4)
        for j in range(4)
    )
