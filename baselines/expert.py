"""The expert driver as an :class:`~carla_safe_envs.agents.Agent` (model name ``expert``).

It is the privileged policy that collects the offline datasets: it reads the simulator state
(route, traffic) rather than the BEV, so it only acts inside the evaluation loop, which hands
it the environment through ``attach(env)``.  Nothing is learned; ``fit`` returns at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carla_safe_envs.agents import PRESET_NAMES, BaseAgent
from carla_safe_envs.expert import ExpertPolicy


@dataclass(frozen=True)
class ExpertConfig:
    noise: float = 0.0  # probability per step of starting a random / reckless action burst


class ExpertAgent(BaseAgent):
    name = "expert"
    presets = dict.fromkeys(PRESET_NAMES, ExpertConfig())

    def __init__(self, task_id: str, **kwargs: Any) -> None:
        super().__init__(task_id, **kwargs)
        self._policy = ExpertPolicy(noise=self.config.noise, seed=self.seed)

    def _fit(self, dataset, *, log_dir, progress):
        return {"steps": 0}

    def attach(self, env) -> None:
        self._policy.attach(env)

    def act(self, obs, state=None, episode_start=None, deterministic=True):
        if np.asarray(obs).shape[0] != 1:
            raise ValueError("the expert drives one environment at a time (batch size 1)")
        return self._policy.act(obs, state, episode_start, deterministic)

    def _save(self, path: Path) -> None:
        pass  # agent.json holds everything

    def _load(self, path: Path) -> None:
        pass
