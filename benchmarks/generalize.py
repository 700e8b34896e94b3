"""``python -m benchmarks generalize``: a trained model on conditions it was not trained on.

Loads a model directory from ``train`` (:func:`carla_safe_envs.agents.load_agent`), evaluates it
through the one evaluation loop (:func:`benchmarks.train.evaluate_agent`) on every level
of a shift, its task's options changed and everything else as trained, and prints each metric
beside the training condition with its relative drop::

    python -m benchmarks generalize --model-dir runs/bc-left --shift density [--episodes 10] [--json]

Shifts (task options, see ``docs/generalization.md``):

* ``density``: ``density=low|base|high`` (traffic count and speed, or the junction flow's gaps);
* ``town``: ``town=`` every town the task can be laid out on (its training town included).

``python -m benchmarks run --shift density town`` (a grid preset's ``shifts``) evaluates every
trained cell of a grid the same way, stores those episodes as extra rows of the cell and
tables them in ``table-generalize.md``.

The relative drop of a metric is ``(train - shifted) / |train|`` (``None`` when the training
value is 0): positive when the metric fell.  Return, AS, WC, TD and AR are better high, so a
positive drop is a loss there; Cost, CR, TCF, DCF and CS are better low, so a negative drop
(a rise) is the loss there.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.train import DEFAULT_EVAL_SEED

HELP = "evaluate a trained model under shifted traffic density or on other towns, with drops"
SHIFTS = ("density", "town")
HIGHER_IS_BETTER = ("Return", "AS", "WC", "TD", "AR")
LOWER_IS_BETTER = ("Cost", "CR", "TCF", "DCF", "CS")


def shift_conditions(task_id: str, shift: str) -> dict[str, dict[str, Any]]:
    """``label -> task options`` of every level of ``shift`` for ``task_id``."""
    from carla_safe_envs.tasks import TASKS
    from carla_safe_envs.tasks.base import DENSITY_LEVELS

    if shift not in SHIFTS:
        raise ValueError(f"unknown shift {shift!r}: expected one of {list(SHIFTS)}")
    if task_id not in TASKS:
        raise ValueError(f"unknown task {task_id!r}: expected one of {sorted(TASKS)}")
    if shift == "density":
        return {f"density={d}": {"density": d} for d in DENSITY_LEVELS}
    task = TASKS[task_id]
    return {f"town={t}": {"town": t} for t in (task.towns or (task.town,))}


def training_condition(task_id: str, shift: str, env_kwargs: Mapping[str, Any]) -> str:
    """The label of the level the model was trained on (its env options, else the default)."""
    from carla_safe_envs.tasks import TASKS

    default = "base" if shift == "density" else TASKS[task_id].town
    return f"{shift}={env_kwargs.get(shift, default)}"


def conditions_for(
    task_id: str, shift: str, env_kwargs: Mapping[str, Any]
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The training condition's label and every condition of ``shift`` (``label -> task
    options``) for a model of ``task_id`` trained with ``env_kwargs``.

    Raises:
        ValueError: an unknown shift or task, or a training condition that is not one of the
            shift's levels (a town the task cannot be laid out on).
    """
    conditions = shift_conditions(task_id, shift)
    train = training_condition(task_id, shift, env_kwargs)
    if train not in conditions:
        raise ValueError(
            f"the model was trained on {train}, which is not a level of {shift} for {task_id} "
            f"(levels: {', '.join(conditions)})"
        )
    return train, conditions


def relative_drops(
    train: Mapping[str, float], shifted: Mapping[str, float], names: Sequence[str]
) -> dict[str, float | None]:
    """``(train - shifted) / |train|`` per metric of ``names`` (``None`` where train is 0)."""
    return {k: (train[k] - shifted[k]) / abs(train[k]) if train[k] != 0 else None for k in names}


def generalize(
    agent: Any,
    shift: str,
    *,
    episodes: int,
    seed: int = DEFAULT_EVAL_SEED,
    deterministic: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``agent`` on every level of ``shift``; the report :func:`format_report` prints
    (and ``--json`` dumps): the training condition and, per condition, its task options,
    metrics and relative drops from the training condition."""
    from benchmarks.train import evaluate_agent
    from carla_safe_envs.metrics import METRIC_NAMES, aggregate

    train, conditions = conditions_for(agent.task_id, shift, agent.env_kwargs)
    rows: dict[str, dict[str, Any]] = {}
    for label, options in conditions.items():
        results = evaluate_agent(
            agent,
            episodes=episodes,
            seed=seed,
            deterministic=deterministic,
            progress=progress,
            options=options,
        )
        rows[label] = {"env_kwargs": options, "metrics": aggregate(results)}
    for row in rows.values():
        row["drop"] = relative_drops(rows[train]["metrics"], row["metrics"], METRIC_NAMES)
    return {
        "model": agent.name,
        "task": agent.task_id,
        "shift": shift,
        "train_condition": train,
        "episodes": episodes,
        "seed": seed,
        "conditions": rows,
    }


def format_report(report: Mapping[str, Any]) -> str:
    """A Markdown table: one row per condition (the training one marked ``*``), each cell the
    metric and, off the training condition, its relative drop in percent."""
    from carla_safe_envs.metrics import METRIC_NAMES

    header = ["condition", *METRIC_NAMES]
    table = [header]
    for label, row in report["conditions"].items():
        cells = [f"{label} *" if label == report["train_condition"] else label]
        for name in METRIC_NAMES:
            value, drop = row["metrics"][name], row["drop"][name]
            if label == report["train_condition"]:
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{value:.2f} ({'-' if drop is None else f'{drop:+.0%}'})")
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "| "
        + " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        + " |"
        for r in table
    ]
    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    title = (
        f"{report['model']} on {report['task']}, shift {report['shift']}, "
        f"{report['episodes']} episodes from seed {report['seed']} "
        f"(* trained; (x%) relative drop (train - shifted) / |train|)"
    )
    return "\n".join([title, lines[0], rule, *lines[1:]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, required=True, help="a directory from `train`")
    parser.add_argument("--shift", required=True, choices=SHIFTS, help="what to change")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per level")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_EVAL_SEED, help="episode k resets with seed S + k"
    )
    parser.add_argument("--stochastic", action="store_true", help="sample actions (default: mode)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from carla_safe_envs.agents import AgentError, load_agent

    if args.episodes < 1:
        print("error: --episodes must be >= 1", file=sys.stderr)
        return 2
    try:
        agent = load_agent(args.model_dir)
        report = generalize(
            agent,
            args.shift,
            episodes=args.episodes,
            seed=args.seed,
            deterministic=not args.stochastic,
            progress=not args.no_progress,
        )
    except (AgentError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
