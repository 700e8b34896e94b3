"""Conformance of the four registered environments, in both action modes."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import carla_safe_envs
from carla_safe_envs.env import COST_TERMS, REWARD_TERMS

IDS = carla_safe_envs.TASK_IDS
MODES = ("discrete", "continuous")
INFO_KEYS = {
    "cost", "cost_terms", "reward_terms", "speed", "collision", "out_of_lane", "off_road",
    "arrived", "waypoints_reached", "distance", "ttc", "lateral_error", "backend",
}  # fmt: skip


def test_registered_ids():
    assert IDS == (
        "CarlaFourLane-v0",
        "CarlaLeftTurn-v0",
        "CarlaRightTurn-v0",
        "CarlaNavigation-v0",
    )
    for env_id in IDS:
        spec = gym.spec(env_id)
        assert spec.max_episode_steps == 500
    carla_safe_envs.register_envs()  # idempotent


def test_make_with_module_prefix_without_prior_import():
    code = (
        "import sys, gymnasium as gym\n"
        "assert 'carla_safe_envs' not in sys.modules\n"
        "env = gym.make('carla_safe_envs:CarlaLeftTurn-v0')\n"
        "print(env.spec.id, env.observation_space.shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "CarlaLeftTurn-v0 (128, 128, 3)"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_id", IDS)
def test_check_env_no_warnings(env_id, mode):
    env = gym.make(env_id, action_mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_rollout(env_id, mode):
    a, b = gym.make(env_id, action_mode=mode), gym.make(env_id, action_mode=mode)
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    assert np.array_equal(oa, ob)
    a.action_space.seed(3)
    for _ in range(200):
        act = a.action_space.sample()
        ra, rb = a.step(act), b.step(act)
        assert np.array_equal(ra[0], rb[0]) and ra[1:4] == rb[1:4]
        assert ra[4]["cost"] == rb[4]["cost"]
        if ra[2] or ra[3]:
            oa, _ = a.reset()
            ob, _ = b.reset()
            assert np.array_equal(oa, ob)
    a.close()
    b.close()


@pytest.mark.parametrize("env_id", IDS)
def test_reset_info_has_zero_cost_and_every_key(env_id):
    env = gym.make(env_id)
    _, info = env.reset(seed=0)
    assert INFO_KEYS <= set(info)
    assert info["cost"] == 0.0 and set(info["cost_terms"]) == set(COST_TERMS)
    assert all(v == 0.0 for v in info["cost_terms"].values())
    assert set(info["reward_terms"]) == set(REWARD_TERMS)
    _, reward, *_, info = env.step(env.action_space.sample())
    assert reward == pytest.approx(sum(info["reward_terms"].values()))
    assert info["cost"] == max(info["cost_terms"].values()) and info["cost"] in (0.0, 1.0)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_pickle_round_trip_continues_identically(env_id):
    env = gym.make(env_id)
    env.reset(seed=1)
    for _ in range(5):
        env.step(7)
    clone = pickle.loads(pickle.dumps(env))
    for _ in range(20):
        a, b = env.step(12), clone.step(12)
        assert np.array_equal(a[0], b[0]) and a[1] == b[1]


@pytest.mark.parametrize("vectorization_mode", ["sync", "async"])
def test_vector_env_reports_cost_array(vectorization_mode):
    envs = gym.make_vec("CarlaLeftTurn-v0", num_envs=2, vectorization_mode=vectorization_mode)
    obs, info = envs.reset(seed=0)
    assert obs.shape == (2, 128, 128, 3) and obs.dtype == np.uint8
    for _ in range(3):
        obs, reward, term, trunc, info = envs.step(np.array([12, 7]))
    assert info["cost"].dtype == np.float64 and info["cost"].shape == (2,)
    assert np.all(info["cost"] >= 0)
    envs.close()


def test_render_rgb_array_is_larger_bev():
    env = gym.make("CarlaRightTurn-v0", render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
    env.close()


def test_render_observation_off_returns_black_frames():
    env = gym.make("CarlaFourLane-v0", render_observation=False)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (128, 128, 3) and not obs.any()
    obs, *_ = env.step(7)
    assert not obs.any()
    env.close()


def test_speed_cue_draws_the_info_speed_and_nothing_else():
    plain = gym.make("CarlaLeftTurn-v0")
    cued = gym.make("CarlaLeftTurn-v0", speed_cue=True)
    a, _ = plain.reset(seed=3)
    b, info = cued.reset(seed=3)
    assert info["speed"] == 0.0 and np.array_equal(a, b)  # at rest: no bar
    for _ in range(25):  # full throttle, straight
        a, *_ = plain.step(12)
        b, _, _, _, info = cued.step(12)
    assert info["speed"] > 4.0
    magenta = np.all(b[:, :4] == (255, 0, 255), axis=2).all(axis=1)
    assert magenta.sum() == int(128 * info["speed"] / 10.0)
    assert np.array_equal(a[:, 4:], b[:, 4:])  # the rest of the view is untouched
    with pytest.raises(TypeError, match="speed_cue"):
        gym.make("CarlaLeftTurn-v0", speed_cue="yes")
    plain.close()
    cued.close()


def test_safety_gymnasium_wrapper_six_tuple():
    from carla_safe_envs.wrappers import SafetyGymnasiumWrapper

    env = SafetyGymnasiumWrapper(gym.make("CarlaLeftTurn-v0"))
    env.reset(seed=0)
    obs, reward, cost, terminated, truncated, info = env.step(12)
    assert cost == info["cost"] and isinstance(cost, float)
    env.close()
