"""Adapters from the Gymnasium API to other conventions.

carla-safe environments follow Gymnasium: ``step`` returns the 5-tuple and the per-step safety
cost is the float ``info["cost"]``.  :class:`SafetyGymnasiumWrapper` gives safety-gymnasium's
(and OmniSafe's) 6-tuple ``(obs, reward, cost, terminated, truncated, info)``.
:class:`DownsampleObservation` hands the agents' low-resolution presets the BEV at 64 px (or
another divisor of 128), area-averaged exactly as their training data is.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from carla_safe_envs.bev import downsample
from carla_safe_envs.metrics import MissingInfoKeyError

__all__ = ["DownsampleObservation", "SafetyGymnasiumVectorWrapper", "SafetyGymnasiumWrapper"]


class SafetyGymnasiumWrapper(gym.Wrapper):
    """Return safety-gymnasium's 6-tuple from ``step``, cost taken from ``info["cost"]``.

    ``reset`` is unchanged (``(obs, info)``); ``info`` is passed on as it is, ``cost`` included.

    Example::

        env = SafetyGymnasiumWrapper(gym.make("CarlaFourLane-v0"))
        obs, info = env.reset(seed=0)
        obs, reward, cost, terminated, truncated, info = env.step(env.action_space.sample())

    Policies whose Gaussian actions are not squashed (OmniSafe's, for instance) can leave
    ``[-1, 1]``, which the continuous mode refuses (``ValueError``); wrap the env in
    ``gymnasium.wrappers.ClipAction`` first to clip them into the box.  A vector env takes
    :class:`SafetyGymnasiumVectorWrapper`.

    Raises (from ``step``):
        MissingInfoKeyError: the wrapped environment did not put ``cost`` in ``info``; a
            missing cost is an error, never read as 0.
    """

    def __init__(self, env: gym.Env):
        if isinstance(env, gym.vector.VectorEnv):
            raise TypeError(
                "SafetyGymnasiumWrapper wraps one env, got a vector env "
                f"({type(env).__name__}): use SafetyGymnasiumVectorWrapper(gym.make_vec(...))"
            )
        super().__init__(env)

    def step(  # type: ignore[override]  # safety-gymnasium's 6-tuple by design
        self, action: Any
    ) -> tuple[Any, float, float, bool, bool, dict[str, Any]]:
        """Step the wrapped env; returns ``(obs, reward, cost, terminated, truncated, info)``."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "cost" not in info:
            raise MissingInfoKeyError("cost", where=f"{type(self).__name__}.step", info=info)
        cost: SupportsFloat = info["cost"]
        return obs, float(reward), float(cost), bool(terminated), bool(truncated), info


# Gymnasium 1.x: VectorWrapper; 0.28 / 0.29: VectorEnvWrapper (the core package supports both)
_VectorWrapper = getattr(gym.vector, "VectorWrapper", None) or gym.vector.VectorEnvWrapper


class SafetyGymnasiumVectorWrapper(_VectorWrapper):
    """The 6-tuple of :class:`SafetyGymnasiumWrapper` for a vector env:
    ``(obs, rewards, costs, terminations, truncations, infos)``, ``costs`` ``(n_envs,)``
    float64 from the vector infos' ``cost`` array.

    Example::

        envs = SafetyGymnasiumVectorWrapper(gym.make_vec("CarlaFourLane-v0", num_envs=2))
        obs, infos = envs.reset(seed=0)
        obs, rewards, costs, terminated, truncated, infos = envs.step(envs.action_space.sample())

    Raises (from ``step``):
        MissingInfoKeyError: a sub-env's info had no ``cost`` (vector infos mark each key's
            present entries in ``_cost``).
    """

    def step(self, actions: Any):  # type: ignore[override]  # the 6-tuple by design
        obs, rewards, terminations, truncations, infos = self.env.step(actions)
        present = infos.get("_cost")
        if "cost" not in infos or present is None or not np.all(present):
            raise MissingInfoKeyError("cost", where=f"{type(self).__name__}.step", info=infos)
        costs = np.asarray(infos["cost"], dtype=np.float64)
        return obs, rewards, costs, terminations, truncations, infos


class DownsampleObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The BEV observation area-averaged to ``size`` x ``size`` px
    (:func:`carla_safe_envs.bev.downsample`; ``size`` must divide the frame side).

    Example::

        env = DownsampleObservation(gym.make("CarlaLeftTurn-v0"), 64)  # obs (64, 64, 3) uint8
    """

    def __init__(self, env: gym.Env, size: int):
        gym.utils.RecordConstructorArgs.__init__(self, size=size)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if (
            not isinstance(space, gym.spaces.Box)
            or space.dtype != np.uint8
            or len(space.shape) != 3
        ):
            raise ValueError(
                f"DownsampleObservation needs an (S, S, 3) uint8 image space, got {space}"
            )
        side = space.shape[0]
        if size < 1 or side % size:
            raise ValueError(
                f"size must divide the {side} px observation (e.g. 64, 32), got {size}"
            )
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (size, size, space.shape[2]), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return downsample(observation, self.size)
