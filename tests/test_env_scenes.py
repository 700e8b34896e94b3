"""Reward, cost and termination in constructed scenes with known answers; bad input."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import carla_safe_envs
from carla_safe_envs.backends.base import Pose, TrafficSpec

COAST = 7  # acc 0, steer 0
BRAKE = 2  # acc -2, steer 0

# Four Lane, rightmost lane (x ~ 15.9 at y = 100), heading north (-y).
LANE_X, START_Y, NORTH = 15.92, 100.0, -math.pi / 2


def four_lane_scene(ego_speed=0.0, ego_dx=0.0, placed=()):
    env = gym.make("CarlaFourLane-v0", stretch_min=200.0, stretch_max=200.0)  # no lane change
    options = {
        "ego": Pose(LANE_X + ego_dx, START_Y, NORTH, speed=ego_speed),
        "traffic": TrafficSpec(kind="placed", placed=tuple(placed)),
    }
    obs, info = env.reset(seed=0, options=options)
    return env, obs, info


def test_collision_reward_cost_and_termination():
    # a stopped car 10 m ahead, the ego coasting at 8 m/s: it hits within ~1 s
    env, _, _ = four_lane_scene(
        ego_speed=8.0, placed=[Pose(LANE_X, START_Y - 10.0, NORTH, speed=0.0)]
    )
    for _ in range(30):
        _, reward, terminated, truncated, info = env.step(COAST)
        if terminated:
            break
    assert terminated and not truncated and info["collision"]
    assert info["reward_terms"]["collision"] == pytest.approx(-30.0 * info["speed"])
    assert info["speed"] > 6.0
    assert info["cost_terms"]["collision"] == 1.0 and info["cost"] == 1.0
    assert info["ttc"] == 0.0


def test_out_of_lane_term_for_lateral_error():
    env, _, _ = four_lane_scene(ego_dx=-1.2)  # 1.2 m left of the route
    _, _, terminated, _, info = env.step(BRAKE)
    e = info["lateral_error"]
    assert 1.1 < e < 1.3 and not terminated
    assert info["reward_terms"]["out_of_lane"] == pytest.approx(-3.0 * (e - 0.5))
    assert info["out_of_lane"] and info["cost_terms"]["out_of_lane"] == 1.0


def test_leaving_the_route_terminates():
    env, _, _ = four_lane_scene(ego_dx=-3.5)  # a whole lane to the left
    _, _, terminated, _, info = env.step(BRAKE)
    assert terminated and info["off_route"] and not info["collision"]


def test_time_limit_truncates_not_terminates():
    env = gym.make("CarlaLeftTurn-v0", difficulty="simple")
    env.reset(seed=0)
    for t in range(500):
        _, _, terminated, truncated, info = env.step(BRAKE)  # stays at the start
        assert not terminated
        assert truncated == (t == 499)
    assert info["waypoints_reached"] == 0


def test_ttc_cost_for_a_closing_vehicle():
    # a car 20 m ahead at rest, the ego at 10 m/s: bumper gap ~15.3 m, TTC ~1.5 s
    env, _, info = four_lane_scene(
        ego_speed=10.0, placed=[Pose(LANE_X, START_Y - 20.0, NORTH, speed=0.0)]
    )
    assert info["cost"] == 0.0  # zero at reset whatever the scene
    _, _, _, _, info = env.step(COAST)
    assert 1.2 < info["ttc"] < 1.8 and info["cost_terms"]["ttc"] == 1.0


def test_waypoint_and_speed_terms_on_a_straight_drive():
    env, _, _ = four_lane_scene(ego_speed=4.0)
    total = 0
    for _ in range(10):
        _, _, _, _, info = env.step(COAST)
        total += info["reward_terms"]["waypoint"] / 2.0
        v = info["speed"]
        assert info["reward_terms"]["speed"] == pytest.approx(0.5 * (4 - abs(v - 4)), abs=0.05)
    assert total == info["waypoints_reached"]
    assert 3.0 < info["distance"] < 4.1 and abs(info["waypoints_reached"] - info["distance"]) <= 1.0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "unreal"}, "unknown backend 'unreal'.*'sim'"),
        ({"backend": "carla", "backend_options": {"port": 70000}}, "port=70000 is out of range"),
        ({"difficulty": "insane"}, "unknown difficulty 'insane'.*simple"),
        ({"action_mode": "analog"}, "unknown action_mode"),
    ],
)
def test_bad_make_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gym.make("CarlaLeftTurn-v0", **kwargs)


def test_unsupported_render_mode():
    from carla_safe_envs.env import CarlaSafeEnv

    with pytest.raises(ValueError, match="unsupported render_mode 'human'"):
        CarlaSafeEnv("CarlaLeftTurn-v0", render_mode="human")


def test_unknown_task_option_lists_accepted_ones():
    with pytest.raises(TypeError, match=r"unknown task option\(s\) \['lanes'\].*num_vehicles"):
        gym.make("CarlaFourLane-v0", lanes=3)
    with pytest.raises(ValueError, match="num_vehicles=-1 is out of range"):
        gym.make("CarlaNavigation-v0", num_vehicles=-1)


@pytest.mark.parametrize("action", [15, -1, 3.5, np.array([1, 2]), "7"])
def test_bad_discrete_actions(action):
    env = gym.make("CarlaLeftTurn-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="discrete action"):
        env.step(action)


@pytest.mark.parametrize("action", [[1.2, 0.0], [0.0, -1.2], [1.0], [[0.0, 0.0]], [np.nan, 0.0]])
def test_bad_continuous_actions(action):
    env = gym.make("CarlaLeftTurn-v0", action_mode="continuous")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="continuous action"):
        env.step(np.asarray(action, dtype=np.float32))


def test_step_before_reset_and_bad_reset_options():
    env = gym.make("CarlaLeftTurn-v0").unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"weather": "rain"})
    with pytest.raises(TypeError, match="must be a Pose"):
        env.reset(options={"ego": (0, 0, 0)})
    with pytest.raises(ValueError, match="unknown traffic kind"):
        TrafficSpec(kind="swarm")


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    env_id=st.sampled_from(carla_safe_envs.TASK_IDS),
    seed=st.integers(0, 2**31 - 1),
    actions=st.lists(st.integers(0, 14), min_size=1, max_size=60),
)
def test_fuzz_random_seeds_and_actions(env_id, seed, actions):
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        assert env.observation_space.contains(obs)
        assert math.isfinite(reward) and math.isfinite(info["cost"]) and info["cost"] >= 0
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    actions=st.lists(st.tuples(st.floats(-1, 1), st.floats(-1, 1)), min_size=1, max_size=40),
)
def test_fuzz_continuous_actions(seed, actions):
    env = gym.make("CarlaNavigation-v0", action_mode="continuous")
    env.reset(seed=seed)
    for acc, steer in actions:
        obs, reward, terminated, truncated, info = env.step(np.array([acc, steer], np.float32))
        assert math.isfinite(reward) and info["cost"] >= 0
        if terminated or truncated:
            env.reset()
    env.close()
