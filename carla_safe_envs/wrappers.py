"""Adapters from the Gymnasium API to other conventions.

carla-safe environments follow Gymnasium: ``step`` returns the 5-tuple and the per-step safety
cost is the float ``info["cost"]``.  :class:`SafetyGymnasiumWrapper` gives safety-gymnasium's
(and OmniSafe's) 6-tuple ``(obs, reward, cost, terminated, truncated, info)``.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym

from carla_safe_envs.metrics import MissingInfoKeyError

__all__ = ["SafetyGymnasiumWrapper"]


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
