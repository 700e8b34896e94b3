"""carla-safe environments: the four CarDreamer safe-driving tasks as Gymnasium environments.

Importing the package registers ``CarlaFourLane-v0``, ``CarlaLeftTurn-v0``,
``CarlaRightTurn-v0`` and ``CarlaNavigation-v0`` (idempotently; Gymnasium 1.x no longer loads
entry points)::

    import gymnasium as gym
    import carla_safe_envs

    env = gym.make("CarlaLeftTurn-v0", difficulty="medium")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    info["cost"], info["cost_terms"]
"""

from __future__ import annotations

import gymnasium as gym

from carla_safe_envs.tasks import TASKS

__version__ = "0.1.0"

TASK_IDS: tuple[str, ...] = tuple(TASKS)
MAX_EPISODE_STEPS = 500


def register_envs() -> None:
    """Register the four task ids with Gymnasium (safe to call more than once)."""
    for env_id in TASK_IDS:
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="carla_safe_envs.env:CarlaSafeEnv",
                kwargs={"task": env_id},
                max_episode_steps=MAX_EPISODE_STEPS,
            )


register_envs()

__all__ = ["MAX_EPISODE_STEPS", "TASK_IDS", "register_envs"]
