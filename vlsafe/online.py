"""Online training of the world-model agents: a replay of env steps and the collection loop.

DreamerV3 trains online (and FOSP's optional fine-tuning does too): the current policy drives
the environment through the one episode loop (:func:`carla_safe_envs.evaluation.run_episode`),
every step goes into a :class:`SequenceReplay`, and training updates run in between at a fixed
*train ratio* (replayed steps per environment step, DreamerV3's knob: each update replays
``batch_size x seq_len`` steps).  Before training starts the replay is prefilled with
``prefill`` steps of uniformly random actions (DreamerV3).

The replay stores steps in time order in the dataset's layout (DSRL alignment, see
:class:`carla_safe_envs.datasets.Sequences`) and serves windows with the same
``sample_sequences`` call as :class:`~carla_safe_envs.datasets.OfflineDataset`, so the agents'
update code does not know where a batch came from.  Unlike the dataset reader, a window may
span the end of one episode and the start of the next (DreamerV3's replay does the same):
``is_first`` marks the boundary, the world model resets there and the learners cut
transitions there, and short episodes (a crash after a few steps) are still sampled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from carla_safe_envs.bev import downsample
from carla_safe_envs.datasets import Sequences
from carla_safe_envs.evaluation import RandomPolicy

OBS_SHAPE = (128, 128, 3)


class SequenceReplay:
    """A FIFO buffer of the last ``capacity`` env steps, sampled as windows of T steps.

    Frames are stored area-averaged to ``frame_size`` px (:func:`carla_safe_envs.bev.downsample`;
    128 keeps them as the env renders them).  Memory per step: 48 KiB at 128 px (capacity
    100,000 = 4.9 GB), 12 KiB at 64 px; allocated lazily.
    """

    def __init__(self, capacity: int, action_mode: str, frame_size: int = OBS_SHAPE[0]):
        if capacity < 2:
            raise ValueError(f"replay capacity must be >= 2 steps, got {capacity}")
        if OBS_SHAPE[0] % frame_size:
            raise ValueError(f"frame_size must divide {OBS_SHAPE[0]}, got {frame_size}")
        self.capacity, self.action_mode = int(capacity), action_mode
        self.frame_size = frame_size
        action_shape: tuple[int, ...] = () if action_mode == "discrete" else (2,)
        action_dtype = np.int64 if action_mode == "discrete" else np.float32
        self.obs = np.empty((self.capacity, frame_size, frame_size, 3), np.uint8)
        self.actions = np.zeros((self.capacity, *action_shape), action_dtype)
        self.rewards = np.zeros(self.capacity, np.float32)
        self.costs = np.zeros(self.capacity, np.float32)
        self.terminals = np.zeros(self.capacity, bool)
        self.timeouts = np.zeros(self.capacity, bool)
        self.is_first = np.zeros(self.capacity, bool)
        self.size = 0  # steps held
        self.added = 0  # steps ever added

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        action: Any,
        reward: float,
        cost: float,
        terminated: bool,
        truncated: bool,
        is_first: bool,
    ) -> None:
        """Append one step: ``action`` taken in ``obs``, its ``reward``, ``cost`` and ends."""
        i = self.added % self.capacity
        self.obs[i] = downsample(np.asarray(obs), self.frame_size)
        self.actions[i] = action
        self.rewards[i], self.costs[i] = reward, cost
        self.terminals[i], self.timeouts[i] = terminated, truncated
        self.is_first[i] = is_first
        self.added += 1
        self.size = min(self.size + 1, self.capacity)

    def sample_sequences(self, batch_size: int, length: int, rng: np.random.Generator) -> Sequences:
        """B windows of ``length`` consecutive stored steps, uniform over window starts."""
        if self.size < length:
            raise ValueError(f"the replay holds {self.size} steps, fewer than a window ({length})")
        oldest = (self.added - self.size) % self.capacity
        starts = rng.integers(0, self.size - length + 1, size=batch_size)
        rows = (oldest + starts[:, None] + np.arange(length)) % self.capacity  # (B, T)
        is_first = self.is_first[rows].copy()
        is_first[:, 0] |= starts == 0  # the oldest step may have lost its episode start
        return Sequences(
            observations=self.obs[rows],
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            costs=self.costs[rows],
            terminals=self.terminals[rows],
            timeouts=self.timeouts[rows],
            is_first=is_first,
            safety=None,
        )


class MixedSource:
    """Windows drawn from two sources: ``fraction`` of each batch from ``first`` (e.g. the
    offline dataset), the rest from ``second`` (the online replay).  Safety labels are
    dropped when either part has none (the world model then skips the safety loss)."""

    def __init__(self, first: Any, second: Any, fraction: float):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.first, self.second, self.fraction = first, second, fraction

    def sample_sequences(self, batch_size: int, length: int, rng: np.random.Generator) -> Sequences:
        n_first = int(round(self.fraction * batch_size))
        parts = []
        if n_first:
            parts.append(self.first.sample_sequences(n_first, length, rng))
        if batch_size - n_first:
            parts.append(self.second.sample_sequences(batch_size - n_first, length, rng))
        if len(parts) == 1:
            return parts[0]
        fields = {}
        for name in Sequences._fields:
            values = [getattr(p, name) for p in parts]
            fields[name] = None if any(v is None for v in values) else np.concatenate(values)
        return Sequences(**fields)


class PrefillThenPolicy:
    """Random actions while fewer than ``prefill`` steps were driven, then ``policy``
    (stochastic); the switch mid-episode starts the policy's recurrent state afresh."""

    def __init__(self, policy: Any, random: RandomPolicy, prefill: int, steps: Callable[[], int]):
        self.policy, self.random, self.prefill, self.steps = policy, random, prefill, steps
        self._started = False

    def act(self, obs, state=None, episode_start=None, deterministic=True):
        if self.steps() < self.prefill:
            return self.random.act(obs)
        if not self._started:
            self._started, state = True, None
            episode_start = np.ones(len(obs), dtype=bool)
        return self.policy.act(obs, state, episode_start, deterministic=False)


def run_online(
    env: Any,
    policy: Any,
    replay: SequenceReplay,
    *,
    env_steps: int,
    prefill: int,
    train_ratio: float,
    replayed_per_update: int,
    window: int,
    train: Callable[[], None],
    seed: int,
    on_env_step: Callable[[], None] | None = None,
    on_episode: Callable[[dict[str, float]], None] | None = None,
) -> int:
    """Drive ``env`` for ``env_steps`` steps into ``replay`` and call ``train()`` at the train
    ratio once the replay holds ``prefill`` steps and at least one ``window`` (seq_len).

    ``prefill`` steps of random actions come first, then ``policy`` (sampling actions).
    Episode ``k`` resets with seed ``seed + k``.  ``train_ratio`` replayed steps per env step
    means ``train_ratio / replayed_per_update`` updates per env step (fractions carry over).
    Returns the number of env steps driven.
    """
    from carla_safe_envs.evaluation import run_episode

    if env_steps < 1 or train_ratio < 0:
        raise ValueError(
            f"need env_steps >= 1 and train_ratio >= 0, got {env_steps}, {train_ratio}"
        )
    driven, credit, episode = 0, 0.0, 0
    behaviour = PrefillThenPolicy(
        policy, RandomPolicy(env.action_space, seed), prefill, lambda: driven
    )
    min_size = max(prefill, window)
    while driven < env_steps:
        first = True

        def on_step(step: dict[str, Any]) -> None:
            nonlocal driven, credit, first
            replay.add(
                step["obs"],
                step["action"],
                step["reward"],
                float(step["info"]["cost"]),
                step["terminated"],
                step["truncated"],
                first,
            )
            first = False
            driven += 1
            if on_env_step is not None:
                on_env_step()
            if len(replay) >= min_size:
                credit += train_ratio / replayed_per_update
                while credit >= 1.0:
                    credit -= 1.0
                    train()

        metrics, _ = run_episode(
            env,
            behaviour,
            seed=seed + episode,
            deterministic=False,
            max_steps=env_steps - driven,
            on_step=on_step,
        )
        episode += 1
        if on_episode is not None:
            on_episode({"return": metrics.return_, "cost": metrics.cost, "length": metrics.steps})
    return driven
