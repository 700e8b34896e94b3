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

__all__ = ["DownsampleObservation", "SafetyGymnasiumWrapper"]


class SafetyGymnasiumWrapper(gym.Wrapper):
    """Return safety-gymnasium's 6-tuple from ``step``, cost taken from ``info["cost"]``.

    ``reset`` is unchanged (``(obs, info)``); ``info`` is passed on as it is, ``cost`` included.

    Example::

        env = SafetyGymnasiumWrapper(gym.make("CarlaFourLane-v0"))
        obs, info = env.reset(seed=0)
        obs, reward, cost, terminated, truncated, info = env.step(env.action_space.sample())

    Raises (from ``step``):
        MissingInfoKeyError: the wrapped environment did not put ``cost`` in ``info``; a
            missing cost is an error, never read as 0.
    """

    def step(  # type: ignore[override]  # safety-gymnasium's 6-tuple by design
        self, action: Any
    ) -> tuple[Any, float, float, bool, bool, dict[str, Any]]:
        """Step the wrapped env; returns ``(obs, reward, cost, terminated, truncated, info)``."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "cost" not in info:
            raise MissingInfoKeyError("cost", where=f"{type(self).__name__}.step", info=info)
        cost: SupportsFloat = info["cost"]
        return obs, float(reward), float(cost), bool(terminated), bool(truncated), info


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
