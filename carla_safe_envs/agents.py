"""The agent seam: the ``Agent`` protocol every model implements, and where models are found.

An agent is made for one task (``make_agent("ppo", "CarlaLeftTurn-v0", preset="debug")``),
trained with ``fit`` (online in the environment, or offline from a dataset file), queried with
``act`` (stable-baselines3's ``predict`` convention, batched, recurrent state carried by the
caller) and stored with ``save(dir)`` / ``load_agent(dir)``.  A saved agent is a directory with
``agent.json`` (model, task, preset, the full typed config, seed, environment options,
package versions, training summary) next to the files the implementation writes.

Implementations subclass :class:`BaseAgent`, which does the bookkeeping (presets, config
overrides, input checks, the metadata file, round trips) and leaves four methods:
``_fit``, ``act``, ``_save`` and ``_load``.  Which models exist and which class implements
each is the registry (:mod:`carla_safe_envs.agent_registry`, re-exported here: ``AGENTS``,
``AgentSpec``, ``register``, ``get_spec``, ``TABLE_MODELS``).

This module lives in ``carla_safe_envs`` beside :class:`~carla_safe_envs.evaluation.Policy`
(the part of the protocol the evaluation loop needs) so that every implementation -- the
``baselines`` zoo, ``vlsafe``, a model of your own -- depends on it and none owns it; it
needs numpy and the standard library only (no torch, no RL library).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from carla_safe_envs.agent_registry import (
    AGENTS,
    TABLE_MODELS,
    ActionMode,
    AgentError,
    AgentSpec,
    Training,
    get_spec,
    register,
)
from carla_safe_envs.evaluation import Policy

__all__ = [
    "AGENTS",
    "AGENT_FORMAT",
    "METADATA_FILE",
    "PRESET_NAMES",
    "TABLE_MODELS",
    "ActionMode",
    "Agent",
    "AgentError",
    "AgentSpec",
    "BaseAgent",
    "BudgetUnit",
    "Training",
    "TrainingHook",
    "config_from_dict",
    "get_spec",
    "load_agent",
    "make_agent",
    "read_metadata",
    "register",
    "versions",
]

AGENT_FORMAT = "carla-safe/agent-v1"
METADATA_FILE = "agent.json"
PRESET_NAMES: tuple[str, ...] = ("debug", "small", "cpu", "paper")

BudgetUnit = Literal["updates", "env_steps"]

#: ``hook(done, total, unit)``: called by ``fit`` when training has reached each of the
#: evenly spaced points of its budget (``done`` of ``total`` updates or env steps); the agent
#: can act at that moment (``benchmarks learn-check`` evaluates it there).
TrainingHook = Callable[[int, int, BudgetUnit], None]


@runtime_checkable
class Agent(Policy, Protocol):
    """What the evaluation loop, the CLI and the benchmark grid need from a model: a
    :class:`~carla_safe_envs.evaluation.Policy` (``act``) that can also fit and save."""

    name: ClassVar[str]
    task_id: str
    action_mode: ActionMode

    def fit(
        self,
        dataset: str | os.PathLike | None = None,
        *,
        log_dir: str | os.PathLike | None = None,
        progress: bool = True,
        hook: TrainingHook | None = None,
        hook_points: int = 10,
    ) -> dict[str, Any]: ...

    def save(self, path: str | os.PathLike) -> Path: ...


def make_agent(
    name: str,
    task_id: str,
    *,
    preset: str = "small",
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> BaseAgent:
    """A new, untrained ``name`` agent for ``task_id`` (``config`` overrides preset fields)."""
    cls = get_spec(name).load_class()
    return cls(task_id, preset=preset, seed=seed, env_kwargs=env_kwargs, config=config)


def load_agent(path: str | os.PathLike) -> BaseAgent:
    """The agent saved in directory ``path`` by :meth:`BaseAgent.save`."""
    meta = read_metadata(path)
    cls = get_spec(meta["model"]).load_class()
    return cls.load(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """``agent.json`` of a saved agent directory, checked for its format."""
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise AgentError(
            f"{path} is not a saved agent: it has no {METADATA_FILE}. Train one with "
            "`python -m benchmarks train --model M --task T --out DIR`."
        )
    meta = json.loads(file.read_text())
    if meta.get("format") != AGENT_FORMAT:
        raise AgentError(
            f"{file} has format {meta.get('format')!r}; this version of carla-safe reads "
            f"{AGENT_FORMAT!r} (retrain the model with this version)"
        )
    return meta


#: the project's code, relative to its root: what :func:`source_commit` calls dirty when changed
CODE_PATHS = ("carla_safe_envs", "vlsafe", "baselines", "benchmarks", "pyproject.toml")


@functools.cache
def source_commit(root: str | os.PathLike | None = None) -> str | None:
    """The git commit of the carla-safe source tree at ``root`` (default: this package's
    checkout), with ``-dirty`` appended when tracked code (:data:`CODE_PATHS`) differs from
    it; None outside a git checkout (an installed wheel) or without git.  Cached: a process
    records the commit of the code it first ran."""
    import subprocess

    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    git = ["git", "-C", str(root)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if changed else "")


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on (those that are installed), and
    ``carla-safe-commit``: the source tree's git commit (:func:`source_commit`) when known."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("carla-safe", "numpy", "gymnasium", "torch", "stable-baselines3", "d3rlpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    commit = source_commit()
    if commit is not None:
        out["carla-safe-commit"] = commit
    return out


def config_from_dict(base: Any, overrides: Mapping[str, Any] | None) -> Any:
    """``base`` (a frozen dataclass) with ``overrides`` applied; JSON lists become tuples
    where the field holds a tuple, and an unknown field is an error naming the valid ones."""
    if not overrides:
        return base
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise AgentError(
            f"unknown config field(s) {unknown} for {type(base).__name__}; "
            f"valid fields: {', '.join(sorted(fields))}"
        )
    values = {}
    for key, value in overrides.items():
        current = getattr(base, key)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return dataclasses.replace(base, **values)


class BaseAgent:
    """Bookkeeping shared by every agent; subclasses set the class attributes and implement
    ``_fit``, ``act``, ``_save`` and ``_load``.

    Class attributes:
        name: the registry name.
        presets: preset name -> config dataclass instance (``debug``, ``small``, ``paper``).
    """

    name: ClassVar[str] = ""
    presets: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        task_id: str,
        *,
        preset: str = "small",
        seed: int = 0,
        env_kwargs: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        import carla_safe_envs

        if task_id not in carla_safe_envs.TASK_IDS:
            raise AgentError(
                f"unknown task {task_id!r}; choose one of: {', '.join(carla_safe_envs.TASK_IDS)}"
            )
        if preset not in self.presets:
            raise AgentError(
                f"unknown preset {preset!r} for {self.name}; choose one of: "
                f"{', '.join(self.presets)}"
            )
        self.spec = get_spec(self.name)
        env_kwargs = dict(env_kwargs or {})
        mode = env_kwargs.setdefault("action_mode", self.spec.action_mode)
        if mode != self.spec.action_mode:
            raise AgentError(
                f"{self.name} acts in the {self.spec.action_mode!r} action mode, not {mode!r}"
                + (
                    "; use sac or iql for continuous control"
                    if self.spec.action_mode == "discrete"
                    else "; use ppo, dqn, bc or cql for discrete control"
                )
            )
        self.task_id = task_id
        self.preset = preset
        self.seed = int(seed)
        self.env_kwargs = env_kwargs
        self.action_mode: ActionMode = self.spec.action_mode
        self.config = config_from_dict(self.presets[preset], config)
        self.train_info: dict[str, Any] = {}
        self._hook: TrainingHook | None = None
        self._hook_points = 0
        self._hook_next = 1  # index of the next budget point to report

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task_id!r}, preset={self.preset!r}, seed={self.seed})"

    # ---------------------------------------------------------------- training
    def make_env(self, **overrides: Any):
        """A new environment of the agent's task with its ``env_kwargs``."""
        import gymnasium as gym

        import carla_safe_envs  # noqa: F401 (registers the ids)

        return gym.make(self.task_id, **{**self.env_kwargs, **overrides})

    def fit(
        self,
        dataset: str | os.PathLike | None = None,
        *,
        log_dir: str | os.PathLike | None = None,
        progress: bool = True,
        hook: TrainingHook | None = None,
        hook_points: int = 10,
    ) -> dict[str, Any]:
        """Train with the preset's budget; a summary (steps, seconds, final losses).

        Online agents train in the environment and refuse a dataset; offline agents need the
        dataset file of their task and action mode (and, for VL-SAFE, its safety labels).
        ``log_dir`` receives the training log (CSV or TensorBoard, by named keys).
        ``hook(done, total, unit)`` is called once training passes each of ``hook_points``
        evenly spaced points of the budget (the last one at its end), with the agent ready
        to act; time spent in the hook is not training time but is in ``seconds``.
        """
        if hook is not None and hook_points < 1:
            raise AgentError(f"hook_points must be >= 1, got {hook_points}")
        self._hook, self._hook_points, self._hook_next = hook, hook_points, 1
        training = self.spec.training
        if training != "offline" and dataset is not None and not self.spec.dataset_optional:
            raise AgentError(
                f"{self.name} trains online in the environment and takes no dataset; "
                "offline models: "
                + ", ".join(n for n, s in AGENTS.items() if s.training == "offline")
            )
        opened = None
        if training == "offline" or dataset is not None:
            if dataset is None:
                raise AgentError(
                    f"{self.name} trains offline and needs a dataset: `python -m benchmarks "
                    f"collect --task {self.task_id} --action-mode {self.action_mode} --out FILE` "
                    "then pass it (--dataset FILE)"
                )
            opened = self.check_dataset(dataset)
        log_path = Path(log_dir) if log_dir is not None else None
        if log_path is not None:
            log_path.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            summary = dict(self._fit(opened, log_dir=log_path, progress=progress) or {})
        finally:
            self._hook = None
            if opened is not None:
                opened.close()
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        if dataset is not None:
            summary["dataset"] = str(dataset)
        self.train_info = summary
        return summary

    def report_progress(self, done: int, total: int, unit: BudgetUnit) -> None:
        """Called by the implementations as training advances (``done`` of ``total``
        updates or env steps, as often as they like): runs the ``fit`` hook once when
        ``done`` has reached the next budget point ``k * total / hook_points`` (once, not
        once per point, when a call passes several)."""
        if self._hook is None or total < 1 or self._hook_next > self._hook_points:
            return
        reached = min(done * self._hook_points // total, self._hook_points)
        if reached >= self._hook_next:
            self._hook_next = reached + 1
            self._hook(int(done), int(total), unit)

    def check_dataset(self, path: str | os.PathLike):
        """The opened dataset, after checking that it fits this agent (task, action mode,
        costs, safety labels); the error says which command fixes a mismatch."""
        from carla_safe_envs.datasets import OfflineDataset

        data = OfflineDataset(path)
        try:
            if data.task != self.task_id:
                raise AgentError(
                    f"{path} holds {data.task} data but the agent is for {self.task_id}"
                )
            mapped = data.action_mode == "discrete" and self.spec.accepts_discrete_dataset
            if data.action_mode != self.action_mode and not mapped:
                raise AgentError(
                    f"{path} has {data.action_mode} actions but {self.name} needs "
                    f"{self.action_mode} ones: collect with --action-mode {self.action_mode}"
                )
            if self.spec.needs_safety and data.safety is None:
                raise AgentError(
                    f"{path} has no safety labels, which {self.name} needs: run "
                    f"`python -m benchmarks label --dataset {path} --labeler clip` "
                    "(or --labeler oracle without CLIP weights)"
                )
        except Exception:
            data.close()
            raise
        return data

    def _fit(self, dataset: Any, *, log_dir: Path | None, progress: bool) -> Mapping[str, Any]:
        raise NotImplementedError

    # ---------------------------------------------------------------- acting
    def act(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    # ---------------------------------------------------------------- storage
    def metadata(self) -> dict[str, Any]:
        return {
            "format": AGENT_FORMAT,
            "model": self.name,
            "task": self.task_id,
            "preset": self.preset,
            "seed": self.seed,
            "action_mode": self.action_mode,
            "env_kwargs": self.env_kwargs,
            "config": dataclasses.asdict(self.config),
            "train": self.train_info,
            "versions": versions(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the agent to directory ``path`` (created); the directory."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._save(path)
        text = json.dumps(self.metadata(), indent=2, sort_keys=True, default=_json_default)
        (path / METADATA_FILE).write_text(text + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseAgent:
        """The agent saved in ``path``; a directory of another model is an error."""
        meta = read_metadata(path)
        if meta["model"] != cls.name:
            raise AgentError(
                f"{path} holds a {meta['model']!r} agent, not {cls.name!r}: load it with "
                "carla_safe_envs.agents.load_agent(path), which picks the right class"
            )
        agent = cls(
            meta["task"],
            preset=meta["preset"],
            seed=meta["seed"],
            env_kwargs=meta["env_kwargs"],
            config=meta["config"],
        )
        agent.train_info = meta.get("train", {})
        agent._load(Path(path))
        return agent

    def _save(self, path: Path) -> None:
        raise NotImplementedError

    def _load(self, path: Path) -> None:
        raise NotImplementedError


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
