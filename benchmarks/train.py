"""``python -m benchmarks train`` and ``evaluate``: one model, one task, from the command line.

``train`` makes a registered model (:data:`carla_safe_envs.agents.AGENTS`) for a task with a preset,
fits it (online in the environment, or offline from ``--dataset``) and saves it to ``--out``
(``agent.json`` + the model's files; the training log under ``--out/logs``).  ``evaluate``
loads a saved model and drives it through the one evaluation loop
(:func:`carla_safe_envs.evaluation.evaluate`) and metrics module, printing the metrics of
DESIGN 4 as a table or JSON.

Both are registered in ``benchmarks.__main__.COMMANDS`` from :data:`TRAIN_COMMAND` and
:data:`EVALUATE_COMMAND`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRAIN_HELP = "train one model (ppo sac dqn bc cql iql dreamerv3 fosp vlsafe expert) on a task"
EVALUATE_HELP = "evaluate a trained model directory: the ten metrics of the comparison table"

DEFAULT_EVAL_SEED = 10_000  # evaluation resets use seeds far from the training/collection ones


def _config_item(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from carla_safe_envs.agents import AGENTS, PRESET_NAMES

    parser.add_argument("--model", required=True, choices=list(AGENTS), help="model name")
    parser.add_argument("--task", required=True, help="task id, e.g. CarlaLeftTurn-v0")
    parser.add_argument("--preset", default="small", choices=PRESET_NAMES, help="size/budget")
    parser.add_argument("--dataset", type=Path, help="offline dataset (.h5) for offline models")
    parser.add_argument("--out", type=Path, required=True, help="directory to save the model in")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument(
        "--config",
        type=_config_item,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field (VALUE is JSON or a string); repeatable",
    )
    parser.add_argument(
        "--env-kwargs", type=json.loads, default=None, help="JSON of extra env options"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run_train(args: argparse.Namespace) -> int:
    from carla_safe_envs.agents import AgentError, make_agent

    try:
        agent = make_agent(
            args.model,
            args.task,
            preset=args.preset,
            seed=args.seed,
            env_kwargs=args.env_kwargs,
            config=dict(args.config),
        )
        summary = agent.fit(args.dataset, log_dir=args.out / "logs", progress=not args.no_progress)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    agent.save(args.out)
    summary = {"model": args.model, "task": args.task, "out": str(args.out), **summary}
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(", ".join(f"{k}: {v}" for k, v in summary.items()))
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, required=True, help="a directory from `train`")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_EVAL_SEED, help="episode k resets with seed S + k"
    )
    parser.add_argument("--stochastic", action="store_true", help="sample actions (default: mode)")
    parser.add_argument("--video", type=Path, help="write the first episode as a video (.mp4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def evaluate_agent(
    agent: Any,
    *,
    episodes: int,
    seed: int = DEFAULT_EVAL_SEED,
    deterministic: bool = True,
    video: Path | None = None,
    progress: bool = False,
    options: Mapping[str, Any] | None = None,
) -> list[Any]:
    """The per-episode :class:`~carla_safe_envs.metrics.EpisodeMetrics` of ``agent`` on its
    task (its own environment options, with ``options`` changed on top: a generalization
    condition such as ``{"density": "high"}``), through the one evaluation loop."""
    from carla_safe_envs.evaluation import evaluate
    from carla_safe_envs.expert import write_video

    results, frames = evaluate(
        agent.task_id,
        agent,
        episodes=episodes,
        seed=seed,
        deterministic=deterministic,
        video_episodes=1 if video is not None else 0,
        progress=progress,
        **{**agent.env_kwargs, **(options or {})},
    )
    if video is not None and frames:
        write_video(video, frames)
    return results


def run_evaluate(args: argparse.Namespace) -> int:
    from carla_safe_envs.agents import AgentError, load_agent
    from carla_safe_envs.metrics import aggregate, format_table

    if args.episodes < 1:
        print("error: --episodes must be >= 1", file=sys.stderr)
        return 2
    try:
        agent = load_agent(args.model_dir)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = evaluate_agent(
        agent,
        episodes=args.episodes,
        seed=args.seed,
        deterministic=not args.stochastic,
        video=args.video,
        progress=not args.no_progress,
    )
    metrics = aggregate(results)
    if args.json:
        print(json.dumps({"model": agent.name, "task": agent.task_id, **metrics}, indent=2))
    else:
        print(format_table({f"{agent.name} {agent.task_id}": metrics}))
    return 0


TRAIN_COMMAND = (TRAIN_HELP, add_train_arguments, run_train)
EVALUATE_COMMAND = (EVALUATE_HELP, add_evaluate_arguments, run_evaluate)
