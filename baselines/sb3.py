"""The stable-baselines3 baselines: PPO and DQN (discrete actions) and SAC (continuous mode).

One generic :class:`SB3Agent` drives all three; each subclass only names its registry entry,
its SB3 algorithm and its presets.  The policy is SB3's ``CnnPolicy`` (the Nature-DQN CNN) on
the raw BEV: observations stay ``(128, 128, 3)`` uint8 until the network, SB3 wraps the
training environments in ``VecTransposeImage`` (channel-first) and divides by 255 inside the
policy.  ``frame_stack`` (default 1) stacks the last k frames on the channel axis with SB3's
``VecFrameStack`` and rebuilds the same stacks in ``act``: one BEV frame shows the route
and the traffic but not the ego's speed (SAC's ``cpu`` preset stacks 4).

Hyperparameters are typed, frozen dataclasses (:mod:`baselines.sb3_configs`) whose defaults
are the ``paper`` preset, derived from rl-baselines3-zoo's recommended image settings; each
class docstring says where and why ours differ.

These algorithms maximize the return only, but the safety cost is recorded while they train:
:class:`EpisodeLogCallback` writes each training episode's return, cost (the sum of
``info["cost"]``), collisions and length to SB3's logger under the ``episode/*`` keys (CSV,
plus TensorBoard when ``tensorboard`` is installed, under ``log_dir``), and ``fit`` returns
their means.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from stable_baselines3 import DQN, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack

from baselines.sb3_configs import (
    DQN_PRESETS,
    PPO_PRESETS,
    SAC_PRESETS,
    ReplayConfig,
    SB3Config,
    VecEnvKind,
)
from carla_safe_envs.agents import AgentError, BaseAgent
from carla_safe_envs.bev import downsample, stack_frames
from carla_safe_envs.progress import Progress, progress_bar

log = logging.getLogger(__name__)

MODEL_FILE = "model.zip"
EPISODE_KEYS = ("episode/return", "episode/cost", "episode/collisions", "episode/length")
SUMMARY_WINDOW = 100  # fit's means cover the last 100 training episodes, like SB3's rollout/*

_VEC_ENV_CLASSES: dict[VecEnvKind, type[VecEnv]] = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}


# ---------------------------------------------------------------------------- callbacks
class EpisodeLogCallback(BaseCallback):
    """Logs every finished training episode's return, cost, collisions and length.

    Reads the vectorized step's ``rewards``, ``dones`` and ``infos`` (SB3 hands every
    callback the collecting loop's locals), sums per environment, and at each episode end
    records the sums with ``logger.record_mean`` under :data:`EPISODE_KEYS`, so that each
    log row holds the means over the episodes that ended since the last row.  ``episodes``
    keeps one dict per finished episode for ``fit``'s summary.  A step without
    ``info["cost"]`` is an error: a missing cost is never read as 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[dict[str, float]] = []
        self._sums: np.ndarray | None = None  # (n_envs, 4): return, cost, collisions, length

    def _on_training_start(self) -> None:
        self._sums = np.zeros((self.training_env.num_envs, len(EPISODE_KEYS)), np.float64)

    def _on_step(self) -> bool:
        assert self._sums is not None
        rewards, dones, infos = self.locals["rewards"], self.locals["dones"], self.locals["infos"]
        for i, info in enumerate(infos):
            missing = [key for key in ("cost", "collision") if key not in info]
            if missing:
                raise AgentError(
                    f"the training environment's info has no {missing} (keys: {sorted(info)}); "
                    "carla-safe environments always report them: is the env wrapped by "
                    "something that drops infos?"
                )
            self._sums[i] += (float(rewards[i]), float(info["cost"]), bool(info["collision"]), 1)
            if dones[i]:
                episode = dict(zip(EPISODE_KEYS, self._sums[i].tolist(), strict=True))
                for key, value in episode.items():
                    self.logger.record_mean(key, value)
                self.episodes.append(episode)
                self._sums[i] = 0.0
        self.logger.record("episode/count", len(self.episodes))
        return True

    def _on_training_end(self) -> None:
        # A last row: the episodes (and PPO's losses) since the last dump would wait for a
        # dump that never comes.
        self.logger.record("episode/count", len(self.episodes))
        self.logger.dump(self.num_timesteps)

    def summary(self) -> dict[str, Any]:
        """Episodes finished and the means over the last :data:`SUMMARY_WINDOW` of them
        (``None`` when no episode ended during training)."""
        last = self.episodes[-SUMMARY_WINDOW:]

        def mean(key: str) -> float | None:
            return round(float(np.mean([e[key] for e in last])), 4) if last else None

        return {
            "episodes": len(self.episodes),
            "summary_episodes": len(last),
            "return_mean": mean("episode/return"),
            "cost_mean": mean("episode/cost"),
            "collision_rate": mean("episode/collisions"),
            "length_mean": mean("episode/length"),
        }


class ProgressCallback(BaseCallback):
    """Advances a :func:`carla_safe_envs.progress.progress_bar` by the environment steps
    taken (the project's one progress bar: tqdm when installed, else a counter; SB3's own
    ``progress_bar=True`` would also need ``rich``)."""

    def __init__(self, bar: Progress) -> None:
        super().__init__()
        self.bar = bar

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True


class HookCallback(BaseCallback):
    """Hands the agent's ``fit`` hook the env steps taken (``BaseAgent.report_progress``)."""

    def __init__(self, agent: BaseAgent, start: int) -> None:
        super().__init__()
        self.agent, self.start = agent, start

    def _on_step(self) -> bool:
        total = self.agent.config.total_timesteps
        self.agent.report_progress(self.num_timesteps - self.start, total, "env_steps")
        return True


# ---------------------------------------------------------------------------- the agent
def _make_env(task_id: str, env_kwargs: Mapping[str, Any], image_size: int = 128) -> gym.Env:
    """The agent's environment, as :meth:`BaseAgent.make_env` makes it (its observation
    area-averaged to ``image_size`` px), from a picklable factory: ``SubprocVecEnv`` pickles
    the factory into each worker, and pickling the agent itself would ship its model and
    replay buffer."""
    import carla_safe_envs  # noqa: F401 (registers the ids in a fresh worker)
    from carla_safe_envs.wrappers import DownsampleObservation

    env = gym.make(task_id, **env_kwargs)
    return env if image_size == 128 else DownsampleObservation(env, image_size)


class SB3Agent(BaseAgent):
    """A stable-baselines3 algorithm with a ``CnnPolicy`` on the BEV, trained online.

    Subclasses set ``name``, ``presets`` and ``algorithm`` (the SB3 class).  ``fit`` trains in
    ``n_envs`` vectorized environments seeded ``seed, seed + 1, ...`` (the model's own
    randomness is seeded with ``seed`` too); a second ``fit`` continues training the same
    model for another ``total_timesteps`` (a loaded model starts with an empty replay
    buffer: SB3 does not save it).
    """

    algorithm: ClassVar[type[BaseAlgorithm]]
    config: SB3Config

    def __init__(self, task_id: str, **kwargs: Any) -> None:
        super().__init__(task_id, **kwargs)
        self.model: BaseAlgorithm | None = None

    # ---------------------------------------------------------------- training
    def make_vec_env(self) -> VecEnv:
        """The training environments: ``n_envs`` copies with ``Monitor``, seeded from the
        agent's seed, their frames stacked ``frame_stack`` deep on the channel axis."""
        factory = functools.partial(
            _make_env, self.task_id, dict(self.env_kwargs), self.config.image_size
        )
        env = make_vec_env(
            factory,
            n_envs=self.config.n_envs,
            seed=self.seed,
            vec_env_cls=_VEC_ENV_CLASSES[self.config.vec_env],
        )
        k = self.config.frame_stack
        return env if k == 1 else VecFrameStack(env, k, channels_order="last")

    def _fit(self, dataset: Any, *, log_dir: Path | None, progress: bool) -> Mapping[str, Any]:
        cfg = self.config
        if isinstance(cfg, ReplayConfig):
            log.info(
                "%s replay buffer: %d transitions, ~%.1f GB of BEV frames",
                self.name,
                cfg.buffer_size,
                cfg.replay_bytes / 1e9,
            )
        env = self.make_vec_env()
        logger = _make_logger(log_dir)
        episodes = EpisodeLogCallback()
        try:
            if self.model is None:
                self.model = self.algorithm(
                    cfg.policy(), env, seed=self.seed, verbose=0, **cfg.algorithm_kwargs()
                )
            else:
                self.model.set_env(env)
            self.model.set_logger(logger)
            start = self.model.num_timesteps
            with progress_bar(cfg.total_timesteps, f"train {self.name}", progress) as bar:
                callbacks: list[BaseCallback] = [episodes, HookCallback(self, start)]
                if bar is not None:
                    callbacks.append(ProgressCallback(bar))
                self.model.learn(
                    cfg.total_timesteps,
                    callback=CallbackList(callbacks),
                    log_interval=1,
                    reset_num_timesteps=start == 0,
                )
        finally:
            env.close()
            logger.close()
        summary = {"steps": self.model.num_timesteps - start, **episodes.summary()}
        log.info("%s on %s: %s", self.name, self.task_id, summary)
        return summary

    # ---------------------------------------------------------------- acting
    def act(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Actions for a batch of BEV frames ``(B, 128, 128, 3)`` uint8: ``(B,)`` ints in
        discrete mode, ``(B, 2)`` floats in ``[-1, 1]`` in continuous mode.  Frames are
        area-averaged to the policy's ``image_size`` first, as in training; with
        ``frame_stack`` k > 1 ``state`` carries the last k frames (None: a new episode)."""
        model = self._trained_model()
        obs = np.asarray(obs)
        if obs.ndim != 4 or obs.shape[1:] != (128, 128, 3) or obs.dtype != np.uint8:
            raise ValueError(
                f"{self.name}.act expects a batch of BEV frames of shape (B, 128, 128, 3) "
                f"and dtype uint8, got shape {obs.shape} and dtype {obs.dtype} "
                "(one frame: pass obs[None])"
            )
        _, h, _ = model.observation_space.shape  # SB3 stores the transposed image space
        frames = downsample(obs, h).transpose(0, 3, 1, 2)  # (B, 3, h, h), as SB3 feeds it
        x, state = stack_frames(frames, state, episode_start, self.config.frame_stack)
        actions, _ = model.predict(x, deterministic=deterministic)
        space = model.action_space
        if isinstance(space, gym.spaces.Box):
            actions = np.clip(actions, space.low, space.high)  # float rounding of the squash
        return actions, state

    def _trained_model(self) -> BaseAlgorithm:
        if self.model is None:
            raise AgentError(
                f"{self.name} has no model yet: call fit() or load a trained one "
                "(carla_safe_envs.agents.load_agent(dir))"
            )
        return self.model

    # ---------------------------------------------------------------- storage
    def _save(self, path: Path) -> None:
        self._trained_model().save(path / MODEL_FILE)

    def _load(self, path: Path) -> None:
        file = path / MODEL_FILE
        if not file.is_file():
            raise AgentError(f"{path} has no {MODEL_FILE}: it was not saved by a trained agent")
        self.model = self.algorithm.load(file, device=self.config.device)


def _make_logger(log_dir: Path | None) -> Logger:
    """SB3's logger writing CSV (and TensorBoard when installed) to ``log_dir``; silent
    without one."""
    if log_dir is None:
        return Logger(folder=None, output_formats=[])
    formats = ["csv"]
    if importlib.util.find_spec("tensorboard") is not None:
        formats.append("tensorboard")
    return configure(str(log_dir), formats)


class PPOAgent(SB3Agent):
    """PPO with a ``CnnPolicy`` on the BEV, discrete actions; its config:
    :class:`~baselines.sb3_configs.PPOConfig`."""

    name = "ppo"
    algorithm = PPO
    presets = PPO_PRESETS


class DQNAgent(SB3Agent):
    """DQN with a ``CnnPolicy`` on the BEV, discrete actions; its config:
    :class:`~baselines.sb3_configs.DQNConfig`."""

    name = "dqn"
    algorithm = DQN
    presets = DQN_PRESETS


class SACAgent(SB3Agent):
    """SAC with a ``CnnPolicy`` on the BEV, continuous actions; its config:
    :class:`~baselines.sb3_configs.SACConfig`."""

    name = "sac"
    algorithm = SAC
    presets = SAC_PRESETS


__all__ = [
    "DQNAgent",
    "EPISODE_KEYS",
    "EpisodeLogCallback",
    "HookCallback",
    "PPOAgent",
    "ProgressCallback",
    "SACAgent",
    "SB3Agent",
]
