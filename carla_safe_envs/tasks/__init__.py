"""The four tasks, by environment id."""

from carla_safe_envs.tasks.base import ACC_VALUES, STEER_VALUES, Task, TaskOptions
from carla_safe_envs.tasks.highway import FourLane, Navigation
from carla_safe_envs.tasks.turns import LeftTurn, RightTurn

TASKS: dict[str, type[Task]] = {t.name: t for t in (FourLane, LeftTurn, RightTurn, Navigation)}

__all__ = ["ACC_VALUES", "STEER_VALUES", "TASKS", "Task", "TaskOptions"]
