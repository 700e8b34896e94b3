"""The one episode loop: every policy (expert, baselines, world-model agents) is driven and
measured here, for evaluation and for data collection alike.

A :class:`Policy` follows stable-baselines3's ``predict`` convention so that SB3 models and
recurrent world-model agents fit the same loop::

    actions, state = policy.act(obs_batch, state, episode_start, deterministic)

``obs_batch`` has a leading batch axis (the loop uses batch 1), ``state`` is whatever the
policy carries between steps (``None`` for memoryless policies) and ``episode_start`` is a bool
array, true on an episode's first step, so a recurrent policy can reset its state.  A policy
that needs the environment itself (the privileged expert) defines ``attach(env)``; the loop
calls it after every reset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from carla_safe_envs.metrics import EpisodeMetrics, EpisodeRecorder

log = logging.getLogger(__name__)


@runtime_checkable
class Policy(Protocol):
    """Anything that maps a batch of observations to a batch of actions."""

    def act(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]: ...


class Step(dict):
    """One step as the loop saw it: ``obs`` (before the action), ``action``, ``reward``,
    ``terminated``, ``truncated`` and ``info`` (a dict, so callbacks can keep what they need)."""


OnStep = Callable[[Step], None]


class RandomPolicy:
    """Uniformly random actions of ``space``, seeded once (the online agents' prefill and
    the learn-check's reference policy)."""

    def __init__(self, space: gym.Space, seed: int):
        self.space = space
        self.space.seed(seed)

    def act(self, obs, state=None, episode_start=None, deterministic=True):
        return np.stack([self.space.sample() for _ in range(len(obs))]), None


class StandStillPolicy:
    """Full brake, wheel straight, every step: the car never moves from its start (the
    learn-check's floor; discrete ``action`` 2 = (-2 m/s^2, steer 0), continuous (-1, 0))."""

    def __init__(self, space: gym.Space):
        if isinstance(space, gym.spaces.Discrete):
            self.action: np.ndarray = np.asarray(2)  # acc index 0 (brake) x steer index 2 (0)
        else:
            self.action = np.array([-1.0, 0.0], dtype=np.float32)

    def act(self, obs, state=None, episode_start=None, deterministic=True):
        return np.stack([self.action] * len(obs)), None


def run_episode(
    env: gym.Env,
    policy: Policy,
    *,
    seed: int | None = None,
    deterministic: bool = True,
    max_steps: int | None = None,
    on_step: OnStep | None = None,
    render: bool = False,
    reset_options: Mapping[str, Any] | None = None,
) -> tuple[EpisodeMetrics, list[np.ndarray]]:
    """Drive one episode of ``env`` with ``policy``; its metrics and (``render``) its frames.

    ``max_steps`` cuts the episode early (the last step is then reported to ``on_step`` as
    truncated).  The frames are ``env.render()`` after every step.
    """
    obs, info = env.reset(seed=seed, options=dict(reset_options) if reset_options else None)
    attach = getattr(policy, "attach", None)
    if attach is not None:
        attach(env)
    recorder = EpisodeRecorder()
    frames: list[np.ndarray] = []
    state: Any = None
    start = np.ones(1, dtype=bool)
    steps, done = 0, False
    while not done:
        actions, state = policy.act(obs[None], state, start, deterministic)
        action = _single(actions, env.action_space)
        next_obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
        if max_steps is not None and steps >= max_steps and not terminated:
            truncated = True
        recorder.add(float(reward), info)
        if on_step is not None:
            on_step(
                Step(
                    obs=obs,
                    action=action,
                    reward=float(reward),
                    terminated=bool(terminated),
                    truncated=bool(truncated),
                    info=info,
                )
            )
        if render:
            frames.append(env.render())
        obs, done = next_obs, bool(terminated or truncated)
        start = np.zeros(1, dtype=bool)
    return recorder.result(), frames


def _single(actions: Any, space: gym.Space) -> Any:
    """The first action of a batch, in the form ``space`` expects."""
    action = np.asarray(actions)[0]
    if isinstance(space, gym.spaces.Discrete):
        return int(action)
    return action.astype(space.dtype, copy=False)


def evaluate(
    env: gym.Env | str,
    policy: Policy,
    *,
    episodes: int,
    seed: int = 0,
    deterministic: bool = True,
    video_episodes: int = 0,
    progress: bool = False,
    **env_kwargs: Any,
) -> tuple[list[EpisodeMetrics], list[np.ndarray]]:
    """``episodes`` episodes with reset seeds ``seed, seed + 1, ...``: the per-episode metrics
    (aggregate them with :func:`carla_safe_envs.metrics.aggregate`) and the rendered frames of
    the first ``video_episodes`` episodes.

    ``env`` is an environment or an id (then made with ``env_kwargs`` and closed afterwards;
    with ``video_episodes`` it is made with ``render_mode="rgb_array"``).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    owned = isinstance(env, str)
    if owned:
        if video_episodes:
            env_kwargs.setdefault("render_mode", "rgb_array")
        env = gym.make(env, **env_kwargs)
    elif env_kwargs:
        raise TypeError("env_kwargs are only used when env is an id, not an environment")
    from carla_safe_envs.progress import progress_bar

    name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
    results, frames = [], []
    try:
        with progress_bar(episodes, f"evaluate {name}", progress) as bar:
            for ep in range(episodes):
                metrics, ep_frames = run_episode(
                    env,
                    policy,
                    seed=seed + ep,
                    deterministic=deterministic,
                    render=ep < video_episodes,
                )
                results.append(metrics)
                frames.extend(ep_frames)
                log.info("%s episode %d/%d: %s", name, ep + 1, episodes, metrics)
                if bar is not None:
                    bar.update()
    finally:
        if owned:
            env.close()
    return results, frames
