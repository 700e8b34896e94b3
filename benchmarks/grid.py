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
- ``cpu-paper-ablation``: the ``cpu`` grid without its density shifts, with the variants of
  :data:`ABLATION_VARIANTS` (VL-SAFE's p(s) ablation, issue 28; not run yet).

Every cell of a grid evaluates on the same episodes (reset seeds ``eval_seed + k``), so models
are compared on common random numbers; datasets are one per task and action mode, shared by
every model and seed.

Variants.  A cell is (model, task, seed, variant): a variant (:class:`Variant`, registered in
:data:`VARIANTS`) is a named set of agent-config overrides and/or a label source of p(s)
(:mod:`vlsafe.label_sources`) for the models it changes; the default variant
(:data:`DEFAULT_VARIANT`) is the preset as it is, and its cells keep the layout and rows of a
grid without variants.  A preset's ``variants`` are run besides the default (``run
--variants`` picks others); each variant cell is stored beside the default one
(``task/model@variant/seed-S``) and is a row of its own in the tables.  The
``cpu-paper-ablation`` preset is VL-SAFE's p(s) ablation of issue 28 (its labels, the cost
branch, the world-model actor without weighting) at ``cpu`` budgets.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from benchmarks.published import TABLE_TASKS

LabelerChoice = Literal["auto", "clip", "oracle"]
DEFAULT_VARIANT = "default"  # the preset as it is: the main cells
_VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


class GridError(ValueError):
    """An unknown preset, model or task, or an invalid seed list; the message lists the
    valid choices."""


@dataclass(frozen=True)
class Variant:
    """A named change to some models of a grid: agent-config overrides and/or the label
    source their p(s) is made from.

    Attributes:
        name: the variant's name (``--variants``; lower case, digits, ``_ . -``): the
            ``variant`` column of its rows and the ``@name`` of its cells' paths.
        config: model name -> overrides of its agent config, on top of the preset's
            ``agent_config`` (dotted keys for nested fields: ``weighted_actor.beta_r``).
        labels: a label source spec (:func:`vlsafe.label_sources.parse_label_source`:
            ``frame``, ``constant:1``, ``shuffled``, ``noisy:0.3``, ...): the models that
            train on p(s) (``AgentSpec.needs_safety``) get these labels instead of the
            dataset's, made from the dataset with the cell's seed; None keeps the dataset's.
        summary: one line saying what the variant tests.
    """

    name: str
    config: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    labels: str | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if not _VARIANT_NAME.fullmatch(self.name) or self.name == DEFAULT_VARIANT:
            raise GridError(
                f"variant name {self.name!r}: use lower-case letters, digits and _ . - "
                f"(it names folders), and not {DEFAULT_VARIANT!r}"
            )
        if not self.config and self.labels is None:
            raise GridError(f"variant {self.name!r} changes nothing: give config or labels")
        if self.labels is not None:
            from vlsafe.label_sources import LabelSourceError, parse_label_source

            try:
                parse_label_source(self.labels)
            except LabelSourceError as exc:
                raise GridError(f"variant {self.name!r}: {exc}") from None

    def applies_to(self, model: str) -> bool:
        """Whether the variant changes ``model`` (its config, or its labels where the model
        trains on p(s))."""
        from carla_safe_envs.agents import get_spec

        return model in self.config or (self.labels is not None and get_spec(model).needs_safety)

    def definition(self) -> dict[str, Any]:
        """What the variant changes, JSON-ready (recorded in the store's manifest)."""
        return {
            "config": {m: dict(kw) for m, kw in sorted(self.config.items())},
            "labels": self.labels,
        }


#: The registered variants: VL-SAFE's p(s) ablation (issue 28).
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "oracle",
            labels="oracle",
            summary="the oracle labels made afresh (the main cells' when no CLIP weights)",
        ),
        Variant(
            "frame",
            labels="frame",
            summary="frame-only labels: the state's own TTC and lane error, no future cost",
        ),
        Variant("constant-1", labels="constant:1", summary="p(s) = 1: the reward branch only"),
        Variant("constant-0", labels="constant:0", summary="p(s) = 0: the cost branch only"),
        Variant(
            "shuffled",
            labels="shuffled",
            summary="the oracle's labels permuted across states: same marginal, no link",
        ),
        Variant(
            "noisy-0.3",
            labels="noisy:0.3",
            summary="the oracle's labels flipped with probability 0.3 (an imperfect VLM)",
        ),
        Variant(
            "beta-0",
            config={"vlsafe": {"weighted_actor.beta_r": 0.0, "weighted_actor.beta_c": 0.0}},
            summary="beta_r = beta_c = 0: w = 1, the same world-model actor imitating the data",
        ),
    )
}


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; an unknown name lists the valid ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise GridError(
            f"unknown variant {name!r}; choose {DEFAULT_VARIANT!r} or one of: {', '.join(VARIANTS)}"
        ) from None


def row_key(model: str, variant: str = DEFAULT_VARIANT) -> str:
    """The table's row of a model under a variant: ``model`` for the default, else
    ``model@variant``."""
    return model if variant == DEFAULT_VARIANT else f"{model}@{variant}"


def split_row_key(key: str) -> tuple[str, str]:
    """``(model, variant)`` of a :func:`row_key`."""
    model, _, variant = key.partition("@")
    return model, variant or DEFAULT_VARIANT


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
        variants: names of :data:`VARIANTS` run besides the default variant (``run
            --variants`` overrides).  Not part of :meth:`protocol`: a variant adds cells
            to a store of the same protocol, and the store records each variant's
            definition (:meth:`benchmarks.store.ResultStore.record_variants`).
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
    variants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from carla_safe_envs.agents import PRESET_NAMES

        if DEFAULT_VARIANT in self.variants or len(set(self.variants)) != len(self.variants):
            raise GridError(
                f"preset {self.name!r}: variants must be distinct and leave out "
                f"{DEFAULT_VARIANT!r} (always run); got {list(self.variants)}"
            )
        for name in self.variants:
            get_variant(name)

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
        """Every field that makes results comparable (all but ``seeds`` and ``variants``),
        JSON-ready: a result directory holds the results of one protocol."""
        out = dataclasses.asdict(self)
        out.pop("seeds")
        out.pop("variants")
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

#: VL-SAFE's p(s) ablation (issue 28): besides the main cells (the dataset's oracle labels),
#: frame-only labels, p(s) = 1 and 0, shuffled and 30%-flipped labels, and no weighting.
#: ``run --preset cpu-paper --models vlsafe --seeds 0 1 2 --variants ...`` adds them as
#: variant rows of the ``cpu-paper`` store, beside its main VL-SAFE cells (72 cells, ~14
#: minutes of one core each at ``cpu`` budgets, plus the density-shift evaluations);
#: ``run --preset cpu-paper-ablation --models vlsafe`` is the same on its own store (84 cells:
#: the oracle cells again), without the density shifts.
ABLATION_VARIANTS: tuple[str, ...] = (
    "frame",
    "constant-1",
    "constant-0",
    "shuffled",
    "noisy-0.3",
    "beta-0",
)

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
        GridPreset(
            name="cpu-paper-ablation",
            agent_preset="cpu",
            seeds=(0, 1, 2),
            episodes=20,
            dataset_mix="paper",
            env_kwargs={task: {"speed_cue": True} for task in TABLE_TASKS},
            variants=ABLATION_VARIANTS,
        ),
    )
}


class Cell(NamedTuple):
    """One model trained on one task with one seed (under one variant), then evaluated."""

    model: str
    task: str
    seed: int
    variant: str = DEFAULT_VARIANT

    @property
    def model_key(self) -> str:
        """The cell's row in the tables: the model, or ``model@variant`` (:func:`row_key`)."""
        return row_key(self.model, self.variant)

    @property
    def key(self) -> str:
        """``task/model/seed-S`` (``task/model@variant/seed-S`` for a variant): the cell's
        relative path in the result directory."""
        return f"{self.task}/{self.model_key}/seed-{self.seed}"

    def __str__(self) -> str:
        if self.variant == DEFAULT_VARIANT:
            return f"{self.model} {self.task} seed {self.seed}"
        return f"{self.model} [{self.variant}] {self.task} seed {self.seed}"


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


def check_variants(variants: Iterable[str]) -> tuple[str, ...]:
    """``variants`` as a tuple (duplicates dropped), each ``default`` or registered."""
    variants = tuple(dict.fromkeys(variants))
    if not variants:
        raise GridError(f"no variant given; choose {DEFAULT_VARIANT!r} or: {', '.join(VARIANTS)}")
    for name in variants:
        if name != DEFAULT_VARIANT:
            get_variant(name)
    return variants


def make_cells(
    preset: GridPreset,
    *,
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    variants: Sequence[str] | None = None,
) -> list[Cell]:
    """The cells of ``preset`` (default: the nine table models, the four tasks in the table's
    order, the preset's seeds, the default variant and the preset's ``variants``), ordered
    task by task so that a task's datasets are used by consecutive cells.  A variant makes
    cells only for the models it changes (:meth:`Variant.applies_to`).

    Raises:
        GridError: an unknown model, task or variant, a bad seed, or a variant that changes
            none of the models.
    """
    models = check_models(default_models() if models is None else models)
    tasks = check_tasks(tuple(TABLE_TASKS) if tasks is None else tasks)
    seeds = tuple(dict.fromkeys(preset.seeds if seeds is None else seeds))
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise GridError(f"seeds must be non-negative integers, got {list(seeds)}")
    variants = check_variants((DEFAULT_VARIANT, *preset.variants) if variants is None else variants)
    for name in variants:
        if name != DEFAULT_VARIANT and not any(VARIANTS[name].applies_to(m) for m in models):
            variant = VARIANTS[name]
            changes = sorted(variant.config) or ["the models that train on p(s) (vlsafe)"]
            raise GridError(
                f"variant {name!r} changes none of the models {list(models)}: it changes "
                f"{', '.join(changes)}; add them to --models"
            )
    return [
        Cell(m, t, s, v)
        for t in tasks
        for m in models
        for v in variants
        if v == DEFAULT_VARIANT or VARIANTS[v].applies_to(m)
        for s in seeds
    ]


def cell_config(cell: Cell, preset: GridPreset) -> dict[str, Any]:
    """The agent-config overrides of ``cell``: the preset's for its model, then its
    variant's on top."""
    config = dict(preset.agent_config.get(cell.model, {}))
    if cell.variant != DEFAULT_VARIANT:
        config.update(get_variant(cell.variant).config.get(cell.model, {}))
    return config


def cell_label_source(cell: Cell) -> str | None:
    """The label source spec ``cell`` trains on instead of the dataset's p(s), or None."""
    if cell.variant == DEFAULT_VARIANT:
        return None
    from carla_safe_envs.agents import get_spec

    labels = get_variant(cell.variant).labels
    return labels if labels is not None and get_spec(cell.model).needs_safety else None


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
