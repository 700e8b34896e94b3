"""What is specific to the stable-baselines3 agents (``baselines.sb3``, ``baselines.sb3_configs``);
the behaviour every model shares (fit, act, save/load, evaluation) is in ``test_agents.py``."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import CallbackList  # noqa: E402
from stable_baselines3.common.logger import Logger, configure  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from baselines.sb3 import (  # noqa: E402
    EPISODE_KEYS,
    DQNAgent,
    EpisodeLogCallback,
    PPOAgent,
    ProgressCallback,
    SACAgent,
)
from baselines.sb3_configs import DQNConfig, PPOConfig, ReplayConfig, SACConfig  # noqa: E402
from carla_safe_envs.agents import PRESET_NAMES, AgentError, make_agent  # noqa: E402

AGENT_CLASSES = {PPOAgent: PPOConfig, DQNAgent: DQNConfig, SACAgent: SACConfig}
TASK = "CarlaLeftTurn-v0"


class ScriptedEnv(gym.Env[np.ndarray, Any]):
    """Episodes of ``length`` steps: reward t and cost 1 on even steps t = 1..length, a
    collision on the last step when ``crash``; so each episode's sums are known."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self, length: int, crash: bool, image: bool = False, continuous: bool = False
    ) -> None:
        shape = (36, 36, 3) if image else (2,)
        self.observation_space = (
            gym.spaces.Box(0, 255, shape, np.uint8)
            if image
            else gym.spaces.Box(-1.0, 1.0, shape, np.float32)
        )
        self.action_space = (
            gym.spaces.Box(-1.0, 1.0, (2,), np.float32) if continuous else gym.spaces.Discrete(15)
        )
        self.length, self.crash, self.t = length, crash, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample() * 0, {"cost": 0.0, "collision": False}

    def step(self, action: Any):
        self.t += 1
        done = self.t >= self.length
        info = {"cost": float(self.t % 2 == 0), "collision": bool(done and self.crash)}
        return self.observation_space.sample() * 0, float(self.t), done, False, info

    @staticmethod
    def expected(length: int, crash: bool) -> dict[str, float]:
        values = (length * (length + 1) / 2, length // 2, float(crash), length)
        return dict(zip(EPISODE_KEYS, map(float, values), strict=True))


class CountingBar:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n


# ---------------------------------------------------------------------------- presets
@pytest.mark.parametrize("cls", AGENT_CLASSES, ids=lambda c: c.name)
def test_presets_are_typed_distinct_and_ordered(cls: type) -> None:
    presets = cls.presets
    assert tuple(sorted(presets)) == tuple(sorted(PRESET_NAMES))
    assert all(type(p) is AGENT_CLASSES[cls] for p in presets.values())
    assert len({dataclasses.astuple(p) for p in presets.values()}) == len(PRESET_NAMES)
    debug, small, paper = (presets[n].total_timesteps for n in ("debug", "small", "paper"))
    assert debug <= 1_000 < small < paper
    assert debug < presets["cpu"].total_timesteps < paper and presets["cpu"].image_size == 64
    if isinstance(presets["paper"], ReplayConfig):
        # a debug buffer fits in memory anywhere; small and cpu stay under 3 GB on a CPU
        assert presets["debug"].replay_bytes < 50e6
        assert presets["small"].replay_bytes < 3e9
        assert presets["cpu"].replay_bytes < 3e9  # SAC: 4 stacked 64 px frames, 2.0 GB
        assert presets["debug"].learning_starts < presets["debug"].total_timesteps


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("cls", AGENT_CLASSES, ids=lambda c: c.name)
def test_sb3_accepts_every_preset(cls: type, preset: str) -> None:
    """Each preset's fields map onto constructor arguments the SB3 class takes."""
    config = cls.presets[preset]
    continuous = cls is SACAgent
    venv = DummyVecEnv(
        [lambda: ScriptedEnv(5, False, image=True, continuous=continuous)] * config.n_envs
    )
    kwargs = config.algorithm_kwargs() | {"device": "cpu"}
    model = cls.algorithm(config.policy(), venv, seed=0, **kwargs)
    assert model.gamma == config.gamma and model.seed == 0
    if isinstance(config, ReplayConfig):
        assert model.replay_buffer.optimize_memory_usage == config.optimize_memory_usage
    else:
        assert model.n_steps == config.n_steps and model.n_epochs == config.n_epochs
    venv.close()


@pytest.mark.parametrize(
    ("config_cls", "fields", "match"),
    [
        (PPOConfig, {"batch_size": 300, "n_steps": 16, "n_envs": 2}, "larger than a rollout"),
        (PPOConfig, {"vec_env": "threads"}, "vec_env must be one of dummy, subproc"),
        (DQNConfig, {"total_timesteps": 0}, "total_timesteps must be >= 1"),
        (SACConfig, {"buffer_size": 0}, "buffer_size must be >= 1"),
        (SACConfig, {"gamma": 1.5}, r"gamma must be in \(0, 1\]"),
        (SACConfig, {"augment_shift": 16, "image_size": 64}, r"augment_shift must be in \[0, "),
        (SACConfig, {"frame_stack": 0}, "frame_stack must be >= 1"),
    ],
)
def test_bad_config_values_raise(config_cls: type, fields: dict, match: str) -> None:
    with pytest.raises(AgentError, match=match):
        config_cls(**fields)


def test_unknown_config_field_names_the_valid_ones() -> None:
    with pytest.raises(AgentError, match="valid fields: .*buffer_size"):
        make_agent("dqn", TASK, preset="debug", config={"bufer_size": 10})


# ---------------------------------------------------------------------------- input errors
@pytest.mark.parametrize(
    ("name", "mode", "match"),
    [
        ("sac", "discrete", "'continuous' action mode, not 'discrete'"),
        ("ppo", "continuous", "'discrete' action mode, not 'continuous'"),
        ("dqn", "continuous", "'discrete' action mode, not 'continuous'"),
    ],
)
def test_wrong_action_mode_raises(name: str, mode: str, match: str) -> None:
    with pytest.raises(AgentError, match=match):
        make_agent(name, TASK, preset="debug", env_kwargs={"action_mode": mode})


@pytest.mark.parametrize("name", ["ppo", "dqn", "sac"])
def test_online_agent_refuses_a_dataset_and_acts_only_when_trained(name: str) -> None:
    agent = make_agent(name, TASK, preset="debug")
    with pytest.raises(AgentError, match="trains online in the environment"):
        agent.fit("data.h5", progress=False)
    with pytest.raises(AgentError, match="has no model yet"):
        agent.act(np.zeros((1, 128, 128, 3), np.uint8))


# ---------------------------------------------------------------------------- the callback
def test_episode_callback_sums_reward_cost_collisions_and_length(tmp_path: Path) -> None:
    """Two environments with known episodes (3 steps with a crash, 4 without): each finished
    episode is recorded with its sums, and the CSV row holds their means."""
    venv = DummyVecEnv([lambda: ScriptedEnv(3, True), lambda: ScriptedEnv(4, False)])
    model = PPO("MlpPolicy", venv, n_steps=12, batch_size=24, n_epochs=1, seed=0, device="cpu")
    model.set_logger(configure(str(tmp_path), ["csv"]))
    episodes, bar = EpisodeLogCallback(), CountingBar()
    model.learn(24, callback=CallbackList([episodes, ProgressCallback(bar)]))
    model.logger.close()

    crash, calm = ScriptedEnv.expected(3, True), ScriptedEnv.expected(4, False)
    assert sorted(episodes.episodes, key=lambda e: e["episode/length"]) == [crash] * 4 + [calm] * 3
    assert bar.n == 24
    summary = episodes.summary()
    assert summary["episodes"] == 7
    assert summary["cost_mean"] == pytest.approx(round((4 * 1 + 3 * 2) / 7, 4))
    assert summary["collision_rate"] == pytest.approx(round(4 / 7, 4))

    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(EPISODE_KEYS) <= set(rows[0])
    first = rows[0]  # the rollout's row: all seven episodes ended in it
    assert float(first["episode/cost"]) == pytest.approx((4 * 1 + 3 * 2) / 7)
    assert float(first["episode/return"]) == pytest.approx((4 * 6 + 3 * 10) / 7)
    assert float(first["episode/length"]) == pytest.approx((4 * 3 + 3 * 4) / 7)
    assert int(float(rows[-1]["episode/count"])) == 7


def test_episode_callback_refuses_a_missing_cost() -> None:
    class NoCost(ScriptedEnv):
        def step(self, action: Any):
            obs, reward, terminated, truncated, info = super().step(action)
            del info["cost"]
            return obs, reward, terminated, truncated, info

    model = PPO("MlpPolicy", DummyVecEnv([lambda: NoCost(3, False)]), n_steps=8, batch_size=8)
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default writes to /tmp
    with pytest.raises(AgentError, match=r"info has no \['cost'\]"):
        model.learn(8, callback=EpisodeLogCallback())


# ---------------------------------------------------------------------------- in the task env
def test_fit_writes_named_keys_and_summarizes_training_episodes(tmp_path: Path) -> None:
    """DQN's debug run ends episodes (its random warm-up actions leave the route): the CSV
    has one row per finished episode, and the summary's means are those rows' means."""
    agent = make_agent("dqn", TASK, preset="debug", seed=0, config={"learning_starts": 250})
    summary = agent.fit(log_dir=tmp_path, progress=False)
    assert summary["steps"] == agent.config.total_timesteps
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(EPISODE_KEYS) <= set(rows[0])
    ended = [r for r in rows if r["episode/cost"] != ""]
    assert summary["episodes"] == len(ended) >= 1
    for key, field in (("episode/cost", "cost_mean"), ("episode/return", "return_mean")):
        assert summary[field] == pytest.approx(np.mean([float(r[key]) for r in ended]), abs=1e-3)
    assert summary["cost_mean"] > 0  # episodes that leave the route carry out-of-lane cost

    with pytest.raises(ValueError, match=r"expects a batch of BEV frames of shape \(B, 128"):
        agent.act(np.zeros((128, 128, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype uint8"):
        agent.act(np.zeros((2, 128, 128, 3), np.float32))


def test_training_envs_are_seeded_from_the_agent_seed() -> None:
    """Same seed, same starts (also in worker processes); env i is seeded ``seed + i``."""
    config = {"n_envs": 2}
    first = make_agent("ppo", "CarlaFourLane-v0", preset="debug", seed=3, config=config)
    subproc = make_agent(
        "ppo", "CarlaFourLane-v0", preset="debug", seed=3, config={**config, "vec_env": "subproc"}
    )
    other = make_agent("ppo", "CarlaFourLane-v0", preset="debug", seed=4, config=config)
    observations = []
    for agent in (first, subproc, other):
        venv = agent.make_vec_env()
        observations.append(venv.reset())
        venv.close()
    a, b, c = observations
    assert a.shape == (2, 128, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[1], c[0])  # seed 3 + 1 == seed 4 + 0
    assert not np.array_equal(a[0], a[1])


def test_frame_stack_acts_on_the_stacks_it_was_trained_on() -> None:
    """With ``frame_stack`` 3 the training envs hand the policy the last 3 frames (SB3's
    ``VecFrameStack``), and ``act``, fed only each step's newest frame, rebuilds exactly those
    stacks (zeros before an episode's first frame, reset at ``episode_start``) and so picks
    the actions the model picks on the training observation."""
    agent = make_agent("ppo", TASK, preset="debug", seed=0, config={"frame_stack": 3})
    agent.fit(progress=False)
    assert agent.model is not None and agent.model.observation_space.shape == (9, 128, 128)
    venv = agent.make_vec_env()
    stacked = venv.reset()  # (2, 128, 128, 9): the debug preset steps 2 envs
    assert stacked.shape == (2, 128, 128, 9) and not stacked[..., :6].any()
    state, starts = None, np.ones(2, bool)
    for _ in range(40):
        newest = np.ascontiguousarray(stacked[..., -3:])
        actions, state = agent.act(newest, state, starts)
        np.testing.assert_array_equal(state, stacked.transpose(0, 3, 1, 2))
        expected, _ = agent.model.predict(stacked, deterministic=True)
        np.testing.assert_array_equal(actions, expected)
        stacked, _, starts, _ = venv.step(actions)
    venv.close()
    assert state.shape == (2, 9, 128, 128)
    single = make_agent("ppo", TASK, preset="debug", seed=0)
    single.fit(progress=False)
    assert single.act(newest)[1] is None  # one frame: nothing to carry
