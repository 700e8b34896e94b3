"""The embedded simulator's parts: ego dynamics, IDM, traffic invariants, the yield zone."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

from carla_safe_envs.backends.base import DT, Control, Pose, Scenario, TrafficSpec
from carla_safe_envs.junction import gap_to_zone, in_zone
from carla_safe_envs.sim.backend import SimBackend
from carla_safe_envs.sim.traffic import IDM_S0, MAX_DECEL, idm_acceleration
from carla_safe_envs.sim.vehicle import MAX_STEER, WHEELBASE, Ego

BRAKE = 2  # discrete acc -2, steer 0


def test_ego_accelerates_brakes_and_never_reverses():
    ego = Ego(0.0, 0.0, 0.0, 0.0, 0.0)
    for _ in range(20):  # 2 s of throttle 2/3 (the discrete +2)
        ego.step(Control(2 / 3, 0.0, 0.0), DT)
    assert 3.5 < ego.v < 5.0 and abs(ego.y) < 1e-9 and ego.x > 3.0
    for _ in range(30):
        ego.step(Control(0.0, 2 / 3, 0.0), DT)
    assert ego.v == 0.0


def test_ego_turn_radius_matches_the_bicycle_model():
    steer = 0.5
    ego = Ego(0.0, 0.0, 0.0, 0.0, 5.0)
    for _ in range(200):
        ego.step(Control(0.0, 0.0, steer), DT)
        ego.v = 5.0  # hold the speed
    # after many laps the centre of gravity circles at R = lr-corrected wheelbase / tan(delta)
    delta = steer * MAX_STEER
    beta = math.atan(0.5 * math.tan(delta))
    radius = WHEELBASE / (math.cos(beta) * math.tan(delta))
    xs, ys = [], []
    for _ in range(100):
        ego.step(Control(0.0, 0.0, steer), DT)
        ego.v = 5.0
        xs.append(ego.x)
        ys.append(ego.y)
    assert (max(xs) - min(xs)) / 2 == pytest.approx(radius, rel=0.05)
    assert ego.yaw == pytest.approx(math.remainder(ego.yaw, math.tau))  # kept wrapped


def test_idm_free_road_and_emergency():
    assert idm_acceleration(0.0, 6.0, math.inf, 0.0) == pytest.approx(1.5)  # free road: a_max
    assert idm_acceleration(6.0, 6.0, math.inf, 0.0) == pytest.approx(0.0)  # at desired speed
    assert idm_acceleration(6.0, 6.0, 1.0, 6.0) == -MAX_DECEL  # about to hit a standing car
    # standing still behind a standing car at the standstill gap: no push forward
    assert idm_acceleration(0.0, 6.0, IDM_S0, 0.0) == pytest.approx(0.0, abs=1e-9)


def run(env_id, steps, **kwargs):
    env = gym.make(env_id, render_observation=False, **kwargs)
    env.reset(seed=3)
    traffic = env.unwrapped.backend._traffic
    seen = set()
    for _ in range(steps):
        *_, terminated, truncated, _ = env.step(BRAKE)  # the ego waits at its start
        assert np.all(np.isfinite(traffic.v)) and np.all(np.isfinite(traffic.s))
        assert np.all(traffic.v[traffic.alive] >= 0.0)
        seen.update(map(tuple, np.round(traffic.states()[:, :2])))
        if terminated or truncated:
            break
    return env, traffic


def test_flow_spawns_leaves_and_stays_finite():
    env, traffic = run("CarlaLeftTurn-v0", 400, difficulty="hard")
    assert traffic.alive.sum() >= 3
    # bumper gaps along the flow stay positive (car following works)
    st = traffic.states()
    order = np.argsort(st[:, 0])
    gaps = np.diff(st[order, 0]) - (st[order[1:], 6] + st[order[:-1], 6]) / 2
    assert np.all(gaps[np.abs(np.diff(st[order, 1])) < 1.0] > 0.5)


def test_autopilot_keeps_its_count_and_changes_lanes():
    env, traffic = run("CarlaFourLane-v0", 300)
    assert traffic.alive.sum() >= 40
    changes = 0
    for _ in range(200):
        env.step(BRAKE)
        changes += int((traffic.d != 0).sum())
    assert changes > 0  # MOBIL moved someone


def test_yield_zone_rule():
    zone = (0.0, 0.0, 10.0)
    assert in_zone(zone, 3.0, 4.0) and not in_zone(zone, 8.0, 8.0)
    # columns X, Y, Z, YAW, VX, VY, LENGTH, WIDTH
    approaching = np.array([[-30.0, 0.0, 0.0, 0.0, 5.0, 0.0, 4.0, 2.0]])  # heading east, 20 m out
    leaving = np.array([[-30.0, 0.0, 0.0, math.pi, -5.0, 0.0, 4.0, 2.0]])
    too_fast = np.array([[-12.5, 0.0, 0.0, 0.0, 15.0, 0.0, 4.0, 2.0]])  # 0.5 m to stop from 15 m/s
    inside = np.array([[-5.0, 0.0, 0.0, 0.0, 5.0, 0.0, 4.0, 2.0]])
    assert gap_to_zone(zone, approaching)[0] == pytest.approx(30 - 10 - 2 - 1)
    assert math.isinf(gap_to_zone(zone, leaving)[0])
    assert math.isinf(gap_to_zone(zone, too_fast)[0])
    assert math.isinf(gap_to_zone(zone, inside)[0])


def test_backend_rejects_options_and_unknown_lane_poses():
    with pytest.raises(TypeError, match="backend 'sim' takes no options"):
        SimBackend(host="localhost")
    backend = SimBackend()
    far = Pose(10_000.0, 10_000.0, 0.0)
    traffic = TrafficSpec(kind="placed", placed=(far,))
    with pytest.raises(ValueError, match="not on a Town03 lane"):
        backend.reset(
            Scenario("Town03", Pose(6.0, -101.0, -math.pi / 2), traffic), np.random.default_rng(0)
        )
    with pytest.raises(RuntimeError, match="before reset"):
        SimBackend().step(Control(0, 0, 0))
