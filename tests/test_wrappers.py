"""SafetyGymnasiumWrapper on a tiny stand-in environment."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from carla_safe_envs.metrics import MissingInfoKeyError
from carla_safe_envs.wrappers import DownsampleObservation, SafetyGymnasiumWrapper


class CountingEnv(gym.Env[np.ndarray, int]):
    """Counts steps; cost 1.0 on action 1, 0.0 otherwise; ends after 3 steps."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, *, report_cost: bool = True) -> None:
        self.observation_space = gym.spaces.Box(0, 10, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.report_cost = report_cost
        self.t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {"cost": 0.0} if self.report_cost else {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        info: dict[str, Any] = {"other": "kept"}
        if self.report_cost:
            info["cost"] = np.float32(action)  # any float-like value
        return np.full(1, self.t, np.float32), 0.5 * self.t, self.t >= 3, False, info


def test_six_tuple() -> None:
    env = SafetyGymnasiumWrapper(CountingEnv())
    obs, info = env.reset(seed=0)
    assert obs.tolist() == [0.0] and info == {"cost": 0.0}
    out = env.step(1)
    assert len(out) == 6
    obs, reward, cost, terminated, truncated, info = out
    assert obs.tolist() == [1.0] and reward == 0.5
    assert cost == 1.0 and type(cost) is float
    assert (terminated, truncated) == (False, False)
    assert info["other"] == "kept" and info["cost"] == 1.0
    assert env.step(0)[2] == 0.0
    assert env.step(0)[3] is True


def test_spaces_pass_through() -> None:
    inner = CountingEnv()
    env = SafetyGymnasiumWrapper(inner)
    assert env.action_space is inner.action_space
    assert env.observation_space is inner.observation_space
    assert env.unwrapped is inner


def test_missing_cost_is_an_error() -> None:
    env = SafetyGymnasiumWrapper(CountingEnv(report_cost=False))
    env.reset(seed=0)
    with pytest.raises(MissingInfoKeyError, match="'cost'") as error:
        env.step(0)
    assert "SafetyGymnasiumWrapper.step" in str(error.value)
    assert "other" in str(error.value)  # lists the keys that were there


def test_downsample_observation_wraps_a_task_env() -> None:
    from gymnasium.utils.env_checker import check_env

    import carla_safe_envs  # noqa: F401 (registers the ids)
    from carla_safe_envs.bev import downsample

    full = gym.make("CarlaLeftTurn-v0")
    env = DownsampleObservation(gym.make("CarlaLeftTurn-v0"), 64)
    assert env.observation_space.shape == (64, 64, 3)
    obs, _ = env.reset(seed=3)
    reference, _ = full.reset(seed=3)
    np.testing.assert_array_equal(obs, downsample(reference, 64))
    step = env.step(7)[0]
    np.testing.assert_array_equal(step, downsample(full.step(7)[0], 64))
    check_env(env, skip_render_check=True)
    with pytest.raises(ValueError, match="must divide"):
        DownsampleObservation(gym.make("CarlaLeftTurn-v0"), 48)
    with pytest.raises(ValueError, match="uint8 image space"):
        DownsampleObservation(CountingEnv(), 1)


@pytest.mark.skipif(
    not hasattr(gym.vector, "VectorWrapper"), reason="Gymnasium 0.28's vector envs are Envs"
)
def test_vector_six_tuple_and_the_error_for_a_vector_env() -> None:
    from carla_safe_envs.wrappers import SafetyGymnasiumVectorWrapper

    kwargs = {"render_observation": False, "num_vehicles": 0}
    with pytest.raises(TypeError, match="SafetyGymnasiumVectorWrapper"):
        SafetyGymnasiumWrapper(gym.make_vec("CarlaFourLane-v0", num_envs=2, **kwargs))
    envs = SafetyGymnasiumVectorWrapper(gym.make_vec("CarlaFourLane-v0", num_envs=2, **kwargs))
    single = SafetyGymnasiumWrapper(gym.make("CarlaFourLane-v0", **kwargs))
    envs.reset(seed=[3, 4])
    single.reset(seed=4)
    for _ in range(5):
        out = envs.step(np.array([2, 12]))
        expected = single.step(12)
        assert len(out) == 6 and out[2].shape == (2,)
        assert out[2][1] == expected[2] and out[1][1] == expected[1]
    envs.close()


def test_clip_action_makes_unsquashed_actions_valid() -> None:
    env = gym.make("CarlaLeftTurn-v0", action_mode="continuous", render_observation=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="out of range"):
        env.step(np.array([1.7, -2.0], dtype=np.float32))
    clipped = gym.wrappers.ClipAction(env)
    clipped.reset(seed=0)
    reference = gym.make("CarlaLeftTurn-v0", action_mode="continuous", render_observation=False)
    reference.reset(seed=0)
    for _ in range(3):
        a = clipped.step(np.array([1.7, -2.0], dtype=np.float32))
        b = reference.step(np.array([1.0, -1.0], dtype=np.float32))
        assert a[1] == b[1] and a[4]["speed"] == b[4]["speed"]
