"""``python -m benchmarks learn-check``: does a model learn a task?  Its learning curve beside
reference policies, measured in one run.

One model is trained on one task with a preset (``cpu`` by default: the budgets meant for one
CPU core in 30-45 minutes) and evaluated at ``--points`` evenly spaced points of its budget
(every 10% by default: updates for offline and world-model agents, env steps for online
ones), each on the same ``--episodes`` evaluation episodes (reset seeds ``--eval-seed + k``).
Three reference policies are evaluated on the same episodes first: the car standing still
(full brake), uniformly random actions, and the privileged expert that made the datasets.

``--model`` and ``--task`` take several names: every combination runs in turn, each into
its own ``<out-root>/<model>-<task>`` directory, and finished ones are skipped, so the
command is resumable run by run.  ``--table DIR`` prints the Markdown table of every finished
run under ``DIR`` (the seed's layout: tasks as row groups, the references first) without
training anything.

Writes into ``--out-root/<model>-<task>`` (default ``results/learn-check``, where the curves,
CSVs and summaries are committed; ``model/`` and ``logs/`` stay out of git):

- ``curve.csv``: one row per evaluation (``policy`` = the model or a reference, ``done`` /
  ``total`` / ``unit`` of the budget, ``train_seconds`` before it, the ten table metrics),
  rewritten after every point so an interrupted run keeps what it measured;
- ``curve.png``: Return, Cost, AR and CR against the budget, the references as lines;
- ``summary.json``: the final and best points, the references, whether the final model beats
  both the stand-still and the random policy on Return, timings, the config and versions;
- ``model/``: the trained agent (``carla_safe_envs.agents.load_agent``); ``logs/``: its
  training log.

A finished directory (``summary.json`` present) is skipped unless ``--overwrite``; offline
models get ``--dataset`` or a dataset collected once into ``--data-dir`` (reused by later runs
with the same task, action mode, size, seed and noise), labeled with p(s) where the model
needs it (CLIP when its weights are on this machine, else the privileged oracle).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HELP = "train one model on one task and evaluate it every 10%% of its budget (learning curve)"
CURVE_CSV, CURVE_PNG, SUMMARY_JSON = "curve.csv", "curve.png", "summary.json"
REFERENCES = ("stand_still", "random", "expert")
CURVE_METRICS = ("Return", "Cost", "AR", "CR")
DEFAULT_SEED = 0  # training seed; a run with another one is labelled with it
DEFAULT_EVAL_SEED = 10_000
DEFAULT_ROOT = Path("results/learn-check")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmarks.grid import PRESETS
    from benchmarks.train import _config_item
    from carla_safe_envs.agents import AGENTS, PRESET_NAMES

    parser.add_argument("--task", nargs="+", help="task id(s), e.g. CarlaLeftTurn-v0")
    parser.add_argument("--model", nargs="+", choices=[m for m in AGENTS if m != "expert"])
    parser.add_argument("--preset", default="cpu", choices=PRESET_NAMES, help="agent preset")
    parser.add_argument("--out-root", type=Path, default=DEFAULT_ROOT, help="runs go here")
    parser.add_argument("--out", type=Path, help="one run's directory (one model and task)")
    parser.add_argument("--table", type=Path, metavar="DIR", help="print the table of DIR")
    parser.add_argument(
        "--gallery",
        type=Path,
        metavar="FILE",
        help="with --table: also write a Markdown page of the table and every run's curve",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="training seed")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per point")
    parser.add_argument("--points", type=int, default=10, help="evaluation points in the budget")
    parser.add_argument("--eval-seed", type=int, default=DEFAULT_EVAL_SEED)
    parser.add_argument("--dataset", type=Path, help="offline dataset (default: collect one)")
    parser.add_argument("--data-dir", type=Path, default=Path("runs/learn-check/data"))
    parser.add_argument(
        "--dataset-steps", type=int, default=20_000, help="steps of a collected dataset"
    )
    parser.add_argument(
        "--noise",
        type=float,
        nargs="+",
        default=list(PRESETS["small"].dataset_noise),
        help="expert noise levels of a collected dataset, cycled over episodes",
    )
    parser.add_argument("--labeler", choices=("auto", "clip", "oracle"), default="auto")
    parser.add_argument("--online", action="store_true", help="DreamerV3: train in the env")
    parser.add_argument(
        "--config", type=_config_item, action="append", default=[], metavar="KEY=VALUE"
    )
    parser.add_argument("--env-kwargs", type=json.loads, default=None, help="JSON env options")
    parser.add_argument("--no-references", action="store_true", help="skip the references")
    parser.add_argument("--overwrite", action="store_true", help="redo a finished directory")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", action="store_true", help="print summary.json")


def _row(policy: str, metrics: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    return {"policy": policy, **fields, **{k: metrics[k] for k in metrics}}


def reference_policy(name: str, space: Any, seed: int) -> Any:
    """A reference policy by name (see :data:`REFERENCES`) for an env's action space."""
    from carla_safe_envs.evaluation import RandomPolicy, StandStillPolicy
    from carla_safe_envs.expert import ExpertPolicy

    if name == "stand_still":
        return StandStillPolicy(space)
    if name == "random":
        return RandomPolicy(space, seed)
    if name == "expert":
        return ExpertPolicy(noise=0.0, seed=seed)
    raise ValueError(f"unknown reference policy {name!r}; choose from {REFERENCES}")


def evaluate_policy(
    task: str, policy: Any, *, episodes: int, seed: int, env_kwargs: Mapping[str, Any]
) -> dict[str, float]:
    """The aggregated metrics of ``policy`` on ``episodes`` episodes of ``task``."""
    from carla_safe_envs.evaluation import evaluate
    from carla_safe_envs.metrics import aggregate

    results, _ = evaluate(task, policy, episodes=episodes, seed=seed, **env_kwargs)
    return aggregate(results)


def write_curve(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """All rows to ``path`` (CSV, atomically)."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(keys), restval="")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def plot_curve(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """Return, Cost, AR, CR of the model's points against the budget, references as lines."""
    from benchmarks.plots import DPI, _pyplot

    plt = _pyplot()
    points = [r for r in rows if r["policy"] not in REFERENCES]
    refs = {r["policy"]: r for r in rows if r["policy"] in REFERENCES}
    styles = {"stand_still": ("grey", ":"), "random": ("tab:orange", "--"), "expert": ("k", "-.")}
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    unit = points[0]["unit"] if points else "updates"
    for ax, metric in zip(axes.flat, CURVE_METRICS, strict=True):
        if points:
            ax.plot([p["done"] for p in points], [p[metric] for p in points], "o-", label="model")
        for name, ref in refs.items():
            color, style = styles[name]
            ax.axhline(ref[metric], color=color, linestyle=style, label=name.replace("_", " "))
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel(unit.replace("_", " "))
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def prepare_dataset(args: argparse.Namespace, model: str, task: str) -> Path | None:
    """The dataset file ``model`` trains from (None for online training)."""
    from benchmarks.grid import DatasetKey, GridPreset, uses_dataset
    from benchmarks.prepare import DatasetFailure, prepare_datasets, resolve_labeler
    from carla_safe_envs.agents import get_spec

    noise = tuple(float(p) for p in args.noise)
    preset = GridPreset(
        name="learn-check",
        agent_preset=args.preset,
        seeds=(args.seed,),
        episodes=args.episodes,
        dataset_steps=args.dataset_steps,
        dataset_noise=noise,
        offline_optional=not args.online,
        env_kwargs={task: dict(args.env_kwargs or {})},
    )
    if not uses_dataset(model, preset):
        return None
    spec = get_spec(model)
    if args.dataset is not None:
        return args.dataset
    key = DatasetKey(task, spec.action_mode, args.dataset_steps, 0)
    data_dir = args.data_dir / ("noise-" + "_".join(f"{p:g}" for p in noise))
    if args.env_kwargs:
        options = "_".join(f"{k}-{v}" for k, v in sorted(args.env_kwargs.items()))
        data_dir = data_dir / options.replace("/", "-")
    labeler = resolve_labeler(args.labeler) if spec.needs_safety else None
    prepared = prepare_datasets(
        [key],
        data_dir,
        preset=preset,
        labeled=[key] if spec.needs_safety else [],
        labeler=labeler,
        progress=not args.no_progress,
    )[key]
    if isinstance(prepared, DatasetFailure):
        raise RuntimeError(prepared.error)
    return prepared.path


def run(args: argparse.Namespace) -> int:
    import carla_safe_envs

    if args.table is not None:
        print(results_table(args.table))
        if args.gallery is not None:
            args.gallery.parent.mkdir(parents=True, exist_ok=True)
            args.gallery.write_text(results_gallery(args.table, args.gallery))
            print(f"wrote {args.gallery}", file=sys.stderr)
        return 0
    if args.gallery is not None:
        print("error: --gallery goes with --table DIR", file=sys.stderr)
        return 2
    if not args.model or not args.task:
        print("error: give --model and --task (or --table DIR)", file=sys.stderr)
        return 2
    unknown = [t for t in args.task if t not in carla_safe_envs.TASK_IDS]
    if unknown:
        print(
            f"error: unknown task(s) {unknown}; choose from {', '.join(carla_safe_envs.TASK_IDS)}",
            file=sys.stderr,
        )
        return 2
    if args.episodes < 1 or args.points < 1:
        print("error: --episodes and --points must be >= 1", file=sys.stderr)
        return 2
    runs = [(m, t) for t in args.task for m in args.model]
    if args.out is not None and len(runs) > 1:
        print("error: --out names one run's directory; use --out-root for several", file=sys.stderr)
        return 2
    status = 0
    for model, task in runs:
        out = args.out or args.out_root / f"{model}-{task}"
        status = max(status, run_one(args, model, task, out))
    return status


def run_one(args: argparse.Namespace, model: str, task: str, out: Path) -> int:
    """One learn-check run of ``model`` on ``task`` into ``out``; the exit status."""
    from carla_safe_envs.agents import AgentError, make_agent, versions
    from carla_safe_envs.metrics import METRIC_NAMES, format_table

    if (out / SUMMARY_JSON).is_file() and not args.overwrite:
        summary = json.loads((out / SUMMARY_JSON).read_text())
        print(f"{out} is finished (pass --overwrite to run it again)", file=sys.stderr)
        if args.json:
            print(json.dumps(summary, indent=2))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        agent = make_agent(
            model,
            task,
            preset=args.preset,
            seed=args.seed,
            env_kwargs=args.env_kwargs,
            config=dict(args.config),
        )
        dataset = prepare_dataset(args, model, task)
    except (AgentError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    env_kwargs = dict(agent.env_kwargs)
    evaluation = dict(episodes=args.episodes, seed=args.eval_seed, env_kwargs=env_kwargs)
    rows: list[dict[str, Any]] = []
    if not args.no_references:
        env = agent.make_env()
        space = env.action_space
        env.close()
        for name in REFERENCES:
            policy = reference_policy(name, space, args.eval_seed)
            rows.append(_row(name, evaluate_policy(task, policy, **evaluation)))
            write_curve(rows, out / CURVE_CSV)
            log.info("%s: %s", name, rows[-1])
    eval_seconds = 0.0
    fit_started = time.perf_counter()

    def hook(done: int, total: int, unit: str) -> None:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        train_seconds = t0 - fit_started - eval_seconds
        metrics = evaluate_policy(task, agent, **evaluation)
        eval_seconds += time.perf_counter() - t0
        rows.append(
            _row(
                model,
                metrics,
                done=done,
                total=total,
                unit=unit,
                train_seconds=round(train_seconds, 1),
            )
        )
        write_curve(rows, out / CURVE_CSV)
        if not args.no_progress:
            print(
                f"\n{model} {done}/{total} {unit}: "
                + ", ".join(f"{k} {metrics[k]:.2f}" for k in CURVE_METRICS),
                file=sys.stderr,
            )

    try:
        train = agent.fit(
            dataset,
            log_dir=out / "logs",
            progress=not args.no_progress,
            hook=hook,
            hook_points=args.points,
        )
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    agent.save(out / "model")
    points = [r for r in rows if r["policy"] == model]
    refs = {r["policy"]: r for r in rows if r["policy"] in REFERENCES}
    final, best = points[-1], max(points, key=lambda r: r["Return"])
    beats = {
        name: final["Return"] > refs[name]["Return"]
        for name in ("stand_still", "random")
        if name in refs
    }
    summary = {
        "model": model,
        "task": task,
        "preset": args.preset,
        "seed": args.seed,
        "episodes": args.episodes,
        "eval_seed": args.eval_seed,
        "dataset": str(dataset) if dataset is not None else None,
        "final": final,
        "best": best,
        "references": refs,
        "beats_references_on_return": beats,
        "train_seconds": round(time.perf_counter() - fit_started - eval_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "train": train,
        "config": dict(args.config),
        "agent_config": dataclasses.asdict(agent.config),
        "env_kwargs": env_kwargs,
        "versions": versions(),
        "command": "python -m benchmarks learn-check " + " ".join(sys.argv[2:]),
    }
    title = f"{model} ({args.preset}) on {task}, {args.episodes} episodes per point"
    plot_curve(rows, out / CURVE_PNG, title)
    (out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        table = {
            r["policy"] if r["policy"] in REFERENCES else f"{model} {r['done']} {r['unit']}": r
            for r in rows
        }
        print(format_table(table, columns=[*METRIC_NAMES, "train_seconds"], label="policy"))
        print(f"wrote {out / CURVE_CSV}, {out / CURVE_PNG}, {out / SUMMARY_JSON}")
    return 0


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (the ``--config`` key of a nested field)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_label(summary: Mapping[str, Any]) -> str:
    """``model (preset)``, every config field of the run that differs from the preset as it
    is now (an ablation's ``--config`` overrides, or what a preset changed since the run) and
    its env options other than the action mode (``--env-kwargs``), and its training seed
    where it is not ``DEFAULT_SEED``.
    Runs store their whole config (``agent_config``); older summaries only the overrides."""
    from carla_safe_envs.agents import get_spec

    preset = get_spec(summary["model"]).load_class().presets[summary["preset"]]
    # as a summary stores it: tuples become lists, other objects their str
    current = _flat(json.loads(json.dumps(dataclasses.asdict(preset), default=str)))
    ran = _flat(summary.get("agent_config") or summary.get("config") or {})
    changed = [
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in ran.items()
        if key in current and current[key] != value
    ]
    # env options beyond the action mode (the model's own), e.g. ``speed_cue=True``
    env = sorted((summary.get("env_kwargs") or {}).items())
    changed += [f"{key}={value}" for key, value in env if key != "action_mode"]
    # a training seed other than learn-check's default is a different run of the same config
    if summary.get("seed", DEFAULT_SEED) != DEFAULT_SEED:
        changed.append(f"seed={summary['seed']}")
    return f"{summary['model']} ({', '.join([summary['preset'], *changed])})"


def results_table(root: Path) -> str:
    """The Markdown table of every finished run under ``root`` (``*/summary.json``): per
    task the three references, then each model's final point (Return, Cost, AR, CR), its best
    Return and where it was reached, training minutes, and whether the final Return beats
    both the stand-still and the random policy."""
    from benchmarks.published import TABLE_TASKS
    from carla_safe_envs.agents import TABLE_MODELS

    summaries = [json.loads(p.read_text()) for p in sorted(Path(root).glob(f"*/{SUMMARY_JSON}"))]
    if not summaries:
        return f"no finished learn-check runs under {root}"
    order = {m: i for i, m in enumerate(TABLE_MODELS)}
    header = (
        "| task | policy | Return | Cost | AR | CR | best Return (at) | train min | beats both |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---|"]

    def cells(row: Mapping[str, Any]) -> str:
        return " | ".join(
            f"{row[k]:.{1 if k in ('Return', 'Cost') else 2}f}" for k in CURVE_METRICS
        )

    for task, task_name in TABLE_TASKS.items():
        runs = sorted((s for s in summaries if s["task"] == task), key=lambda s: order[s["model"]])
        if not runs:
            continue
        # the references of each action mode (the first run's of each): random and the
        # expert act in the run's action space, so a row per mode where they differ
        by_mode: dict[str, Mapping[str, Any]] = {}
        for s in runs:
            if s["references"]:
                by_mode.setdefault(
                    s.get("env_kwargs", {}).get("action_mode", "discrete"), s["references"]
                )
        for name in REFERENCES:
            rows = {mode: refs[name] for mode, refs in by_mode.items() if name in refs}
            split = len({cells(row) for row in rows.values()}) > 1
            for mode, row in rows.items() if split else list(rows.items())[:1]:
                label = name.replace("_", " ") + (f" ({mode})" if split else "")
                lines.append(f"| {task_name} | *{label}* | {cells(row)} | | | |")
        for run_summary in runs:
            final, best = run_summary["final"], run_summary["best"]
            beats = run_summary["beats_references_on_return"]
            verdict = "yes" if beats and all(beats.values()) else ("no" if beats else "-")
            at = f"{best['Return']:.1f} ({best['done']:,} {best['unit'].replace('_', ' ')})"
            minutes = run_summary["train_seconds"] / 60
            lines.append(
                f"| {task_name} | {run_label(run_summary)} | {cells(final)} "
                f"| {at} | {minutes:.0f} | {verdict} |"
            )
    episodes = sorted({s["episodes"] for s in summaries})
    lines.append("")
    lines.append(
        f"Final point of each run ({'/'.join(map(str, episodes))} evaluation episodes per point, "
        "the references on the same episodes); made by `python -m benchmarks learn-check "
        f"--table {root}` from the runs' summary.json files."
    )
    return "\n".join(lines)


def results_gallery(root: Path, page: Path) -> str:
    """A Markdown page for ``page``: the table of ``root`` (:func:`results_table`), then per
    task every run's ``curve.png``, linked relative to the page's folder, under its label."""
    from benchmarks.published import TABLE_TASKS
    from carla_safe_envs.agents import TABLE_MODELS

    root = Path(root)
    runs = [(p.parent, json.loads(p.read_text())) for p in sorted(root.glob(f"*/{SUMMARY_JSON}"))]
    order = {m: i for i, m in enumerate(TABLE_MODELS)}
    lines = [
        f"# Learning curves: `{root.as_posix()}`",
        "",
        f"Made by `python -m benchmarks learn-check --table {root.as_posix()} --gallery "
        f"{page.as_posix()}`. Each curve: Return, Cost, AR and CR at the evaluation points of "
        "one run, the stand-still, random and expert references as lines.",
        "",
        results_table(root),
    ]
    for task, task_name in TABLE_TASKS.items():
        mine = sorted(
            ((d, s) for d, s in runs if s["task"] == task), key=lambda r: order[r[1]["model"]]
        )
        if not mine:
            continue
        lines += ["", f"## {task_name}"]
        for run_dir, summary in mine:
            image = Path(os.path.relpath(run_dir / CURVE_PNG, page.resolve().parent))
            final = summary["final"]
            lines += [
                "",
                f"**{run_label(summary)}**: final Return {final['Return']:.1f}, Cost "
                f"{final['Cost']:.1f}, AR {final['AR']:.2f}, CR {final['CR']:.2f} "
                f"(`{run_dir.as_posix()}`)",
                "",
                f"![{summary['model']} on {task_name}]({image.as_posix()})",
            ]
    return "\n".join(lines) + "\n"


LEARN_CHECK_COMMAND = (HELP, add_arguments, run)
