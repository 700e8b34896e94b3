"""The benchmark grid: presets (typed, frozen) and the model x task x seed cells they expand to.

A grid preset fixes everything a result depends on besides the model, task and seed: the
agent preset each model is made with (``carla_safe_envs.agents.PRESET_NAMES``), the offline dataset
(steps, collection seed, expert noise levels), the safety labeler, and the evaluation
(episodes, reset seeds) and the generalization shifts every trained cell is also evaluated
under (``shifts``: the levels of :mod:`benchmarks.generalize`, stored as extra rows of the
cell).  These presets ship in :data:`PRESETS`:

- ``smoke``: every model on every task, 1 seed, agent preset ``debug``, 600-step datasets,
  1 evaluation episode.  Checks that the whole pipeline runs; its numbers say nothing about
  the methods.  ``make run`` runs it with two workers: 8.4 minutes for the 36 cells on the
  2-core CI machine kind (2026-11-25, while other work shared the cores), against a budget
  of 10.
- ``small``: a CPU overnight run: agent preset ``small`` (its network sizes) with the
  training budgets of :data:`SMALL_BUDGETS` (~12 minutes of one core per cell), 3 seeds,
  20,000-step datasets, 10 evaluation episodes.
- ``cpu``: the agents' ``cpu`` presets (each model's best within ~30-45 minutes of one
  core, chosen with ``python -m benchmarks learn-check``), 3 seeds, 20,000-step datasets, 20
  evaluation episodes, each cell also evaluated at ``density=low`` and ``density=high`` (20
  episodes each): 108 cells, ~55-80 core-hours (not run yet).
- ``cpu-paper``: the ``cpu`` grid (agent presets, speed cue, density shift, 20 evaluation
  episodes) on data like the paper's: the ``paper`` dataset mix of behaviour profiles
  (:mod:`carla_safe_envs.profiles`: autopilot-like driving, fast and imperfect), 5 seeds.
  ``python -m benchmarks calibrate`` checks its BC cells against the paper's BC row.
- ``paper``: the budgets of a GPU cluster: agent preset ``paper``, 5 seeds, 100,000-step
  datasets, 20 evaluation episodes (documented; not run in CI).

Every cell of a grid evaluates on the same episodes (reset seeds ``eval_seed + k``), so models
are compared on common random numbers; datasets are one per task and action mode, shared by
every model and seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from benchmarks.published import TABLE_TASKS

LabelerChoice = Literal["auto", "clip", "oracle"]


class GridError(ValueError):
    """An unknown preset, model or task, or an invalid seed list; the message lists the
    valid choices."""


@dataclass(frozen=True)
class GridPreset:
    """The budgets and protocol of one benchmark grid.

    Attributes:
        name: the preset's name (``--preset``).
        agent_preset: the agent preset every model is made with (``debug``, ``small``,
            ``paper``: each model's own budget for that size).
        seeds: training seeds of every model x task cell (``--seeds`` overrides).
        episodes: evaluation episodes per cell (reset seeds ``eval_seed + k``).
        eval_seed: reset seed of the first evaluation episode; far from the collection seeds.
        dataset_steps: steps of each offline dataset (expert driving, one per task and
            action mode) [steps].
        dataset_seed: collection seed: episode k of a dataset resets with ``dataset_seed + k``.
        dataset_noise: expert noise levels cycled over the dataset's episodes (when
            ``dataset_mix`` is None).
        dataset_mix: a named dataset mix of behaviour profiles
            (:data:`carla_safe_envs.profiles.MIXES`: ``paper``, ``frontier``, ...) the
            datasets are collected with instead of the expert at ``dataset_noise``.
        offline_optional: models that train online but can learn from the dataset instead
            (``AgentSpec.dataset_optional``: DreamerV3) get the dataset, as in VL-SAFE's
            offline setting.
        labeler: safety labeler of the datasets' p(s) column: ``clip`` (needs CLIP weights on
            this machine), ``oracle`` (privileged, no weights), ``auto`` (``clip`` when the
            weights are found locally, else ``oracle``; the table's caption says which).
        env_kwargs: task id -> extra environment options (none: the tasks' defaults).
        shifts: generalization shifts (:data:`benchmarks.generalize.SHIFTS`: ``density``,
            ``town``) under which every trained cell is evaluated again, on each level but
            its training one, with the same episodes and reset seeds (``--shift``
            overrides); the rows carry the level in ``condition``.
        agent_config: model name -> overrides of its agent preset's fields (the training
            budget a grid can afford; see ``SMALL_BUDGETS``), passed to ``make_agent``.
    """

    name: str
    agent_preset: str
    seeds: tuple[int, ...]
    episodes: int
    eval_seed: int = 10_000
    dataset_steps: int = 20_000
    dataset_seed: int = 0
    dataset_noise: tuple[float, ...] = (0.0, 0.1, 0.3)
    dataset_mix: str | None = None
    offline_optional: bool = True
    labeler: LabelerChoice = "auto"
    env_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    shifts: tuple[str, ...] = ()
    agent_config: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from carla_safe_envs.agents import PRESET_NAMES

        if self.agent_preset not in PRESET_NAMES:
            raise GridError(
                f"preset {self.name!r}: unknown agent preset {self.agent_preset!r}; choose one "
                f"of: {', '.join(PRESET_NAMES)}"
            )
        if self.episodes < 1 or self.dataset_steps < 1 or not self.seeds:
            raise GridError(
                f"preset {self.name!r} needs episodes >= 1, dataset_steps >= 1 and at least one "
                f"seed; got episodes={self.episodes}, dataset_steps={self.dataset_steps}, "
                f"seeds={self.seeds}"
            )
        if self.dataset_mix is not None:
            from carla_safe_envs.profiles import MIX_NAMES

            if self.dataset_mix not in MIX_NAMES:
                raise GridError(
                    f"preset {self.name!r}: unknown dataset mix {self.dataset_mix!r}; choose "
                    f"one of: {', '.join(MIX_NAMES)}"
                )
        if self.labeler not in ("auto", "clip", "oracle"):
            raise GridError(f"labeler must be auto, clip or oracle, got {self.labeler!r}")
        from benchmarks.generalize import SHIFTS

        unknown = [s for s in self.shifts if s not in SHIFTS]
        if unknown or len(set(self.shifts)) != len(self.shifts):
            raise GridError(
                f"preset {self.name!r}: shifts must be distinct names of "
                f"{', '.join(SHIFTS)}; got {list(self.shifts)}"
                + (f" ({', '.join(map(repr, unknown))} unknown)" if unknown else "")
            )

    def protocol(self) -> dict[str, Any]:
        """Every field that makes results comparable (all but ``seeds``), JSON-ready: a
        result directory holds the results of one protocol."""
        out = dataclasses.asdict(self)
        out.pop("seeds")
        out["dataset_noise"] = list(self.dataset_noise)
        out["shifts"] = list(self.shifts)
        out["env_kwargs"] = {task: dict(kw) for task, kw in sorted(self.env_kwargs.items())}
        out["agent_config"] = {m: dict(kw) for m, kw in sorted(self.agent_config.items())}
        return out


#: Training budgets of the ``small`` grid: the agents' ``small`` networks, with as many steps
#: or updates as fit ~12 minutes of one core each (rates measured on the 2-vCPU CI machine
#: kind, one math thread, 2026-11-25: PPO 75 env steps/s, DQN 46, SAC 16; BC ~4 updates/s,
#: CQL ~1.2, IQL ~0.4; the world-model agents ~0.3), so that 9 models x 4 tasks x 3 seeds
#: with 10 evaluation episodes each finish overnight (~12-14 h) with ``--workers 2``.  The
#: agents' own ``small`` presets are the budgets of one model trained for hours.
SMALL_BUDGETS: dict[str, dict[str, Any]] = {
    "ppo": {"total_timesteps": 50_000},
    "dqn": {"total_timesteps": 30_000, "learning_starts": 2_000},
    "sac": {"total_timesteps": 10_000, "learning_starts": 1_000},
    "bc": {"n_steps": 3_000, "n_steps_per_epoch": 500},
    "cql": {"n_steps": 1_000, "n_steps_per_epoch": 250},
    "iql": {"n_steps": 300, "n_steps_per_epoch": 100},
    "dreamerv3": {"updates": 200, "pretrain_updates": 50, "checkpoint_every": 100},
    "fosp": {"updates": 200, "pretrain_updates": 50, "checkpoint_every": 100},
    "vlsafe": {"updates": 200, "pretrain_updates": 50, "checkpoint_every": 100},
}

PRESETS: dict[str, GridPreset] = {
    p.name: p
    for p in (
        GridPreset(
            name="smoke",
            agent_preset="debug",
            seeds=(0,),
            episodes=1,
            dataset_steps=600,
            dataset_noise=(0.1, 0.3),
        ),
        GridPreset(
            name="small",
            agent_preset="small",
            seeds=(0, 1, 2),
            episodes=10,
            agent_config=SMALL_BUDGETS,
        ),
        GridPreset(
            name="cpu",
            agent_preset="cpu",
            seeds=(0, 1, 2),
            episodes=20,
            shifts=("density",),
            # the ego's speed drawn into every BEV (``speed_cue``, not CarDreamer's): with it
            # the offline DreamerV3 stopped collapsing to full throttle late in training
            # (README, learn-check), and every model of the grid sees the same observation
            env_kwargs={task: {"speed_cue": True} for task in TABLE_TASKS},
        ),
        GridPreset(
            name="cpu-paper",
            agent_preset="cpu",
            seeds=(0, 1, 2, 3, 4),
            episodes=20,
            dataset_mix="paper",
            shifts=("density",),
            env_kwargs={task: {"speed_cue": True} for task in TABLE_TASKS},
        ),
        GridPreset(
            name="paper",
            agent_preset="paper",
            seeds=(0, 1, 2, 3, 4),
            episodes=20,
            dataset_steps=100_000,
        ),
    )
}


class Cell(NamedTuple):
    """One model trained on one task with one seed, then evaluated."""

    model: str
    task: str
    seed: int

    @property
    def key(self) -> str:
        """``task/model/seed-S``: the cell's relative path in the result directory."""
        return f"{self.task}/{self.model}/seed-{self.seed}"

    def __str__(self) -> str:
        return f"{self.model} {self.task} seed {self.seed}"


class DatasetKey(NamedTuple):
    """An offline dataset: one task, one action mode, the preset's size, seed and dataset mix
    (None: the expert at the preset's noise levels)."""

    task: str
    action_mode: str
    steps: int
    seed: int
    mix: str | None = None

    @property
    def filename(self) -> str:
        mix = f"_{self.mix}" if self.mix is not None else ""
        return f"{self.task}_{self.action_mode}_{self.steps}steps_seed{self.seed}{mix}.h5"


def get_preset(name: str) -> GridPreset:
    """The preset called ``name``; an unknown name lists the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise GridError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def default_models() -> tuple[str, ...]:
    """The nine models of the seed's comparison table."""
    from carla_safe_envs.agents import TABLE_MODELS

    return TABLE_MODELS


def check_models(models: Iterable[str]) -> tuple[str, ...]:
    """``models`` as a tuple (duplicates dropped), each a registered model name."""
    from carla_safe_envs.agents import AGENTS

    models = tuple(dict.fromkeys(models))
    unknown = [m for m in models if m not in AGENTS]
    if unknown or not models:
        raise GridError(
            f"unknown model(s) {unknown or '(none given)'}; choose from: {', '.join(AGENTS)}"
        )
    return models


def check_tasks(tasks: Iterable[str]) -> tuple[str, ...]:
    """``tasks`` as a tuple of task ids (duplicates dropped), each a registered task."""
    import carla_safe_envs

    tasks = tuple(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in carla_safe_envs.TASK_IDS]
    if unknown or not tasks:
        raise GridError(
            f"unknown task(s) {unknown or '(none given)'}; choose from: "
            f"{', '.join(carla_safe_envs.TASK_IDS)}"
        )
    return tasks


def make_cells(
    preset: GridPreset,
    *,
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Cell]:
    """The cells of ``preset`` (default: the nine table models, the four tasks in the table's
    order, the preset's seeds), ordered task by task so that a task's datasets are used by
    consecutive cells."""
    models = check_models(default_models() if models is None else models)
    tasks = check_tasks(tuple(TABLE_TASKS) if tasks is None else tasks)
    seeds = tuple(dict.fromkeys(preset.seeds if seeds is None else seeds))
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise GridError(f"seeds must be non-negative integers, got {list(seeds)}")
    return [Cell(m, t, s) for t in tasks for m in models for s in seeds]


def uses_dataset(model: str, preset: GridPreset) -> bool:
    """Whether ``model`` learns from the offline dataset under ``preset``."""
    from carla_safe_envs.agents import get_spec

    spec = get_spec(model)
    return spec.training == "offline" or (spec.dataset_optional and preset.offline_optional)


def dataset_for(cell: Cell, preset: GridPreset) -> DatasetKey | None:
    """The dataset ``cell``'s model learns from, or None for online / untrained models."""
    from carla_safe_envs.agents import get_spec

    if not uses_dataset(cell.model, preset):
        return None
    mode = get_spec(cell.model).action_mode
    return DatasetKey(
        cell.task, mode, preset.dataset_steps, preset.dataset_seed, preset.dataset_mix
    )


def needs_labels(cells: Iterable[Cell], preset: GridPreset) -> set[DatasetKey]:
    """The datasets that need a safety column for the models of ``cells``."""
    from carla_safe_envs.agents import get_spec

    out = set()
    for cell in cells:
        key = dataset_for(cell, preset)
        if key is not None and get_spec(cell.model).needs_safety:
            out.add(key)
    return out
