"""``python -m benchmarks calibrate``: does BC on a grid's data drive like the paper's BC?

The paper's BC row says how its data drove (BC copies the data's behaviour): fast (8.8 m/s on
Four Lane and Navigation, 6.3-6.9 m/s on the turns), colliding in 16-20% of the multi-lane
episodes, safe and arriving on the turns, with a negative Return on the multi-lane tasks.
Before anything is compared on the ``paper`` dataset mix, its BC cells must reproduce that in
direction and rough size (issue 27): this command reads the BC cells of a result store
(``results/cpu-paper`` by default, seeds 0-2), drives the ``expert`` profile on the same
evaluation episodes for the Return reference, and prints one line per criterion with the
measured value, the target, the paper's number and whether it holds.  Exit code 0 when every
criterion holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

HELP = "check a store's BC cells against the paper's BC row (the paper-mix calibration)"
MULTI_LANE = ("CarlaFourLane-v0", "CarlaNavigation-v0")
TURNS = ("CarlaLeftTurn-v0", "CarlaRightTurn-v0")
RETURN_DROP = 0.40  # BC's Return at least 40% below the expert profile's (multi-lane tasks)


class Criterion(NamedTuple):
    """One check: metric of a task, and the closed range it must lie in."""

    task: str
    metric: str  # a table metric, or "Return/expert" (BC's Return over the expert's)
    low: float
    high: float

    def target(self) -> str:
        if math.isinf(self.high):
            return f">= {self.low:g}"
        if math.isinf(self.low):
            return f"<= {self.high:g}"
        return f"{self.low:g} - {self.high:g}"


CRITERIA: tuple[Criterion, ...] = (
    *(Criterion(t, "AS", 7.0, math.inf) for t in MULTI_LANE),
    *(Criterion(t, "CR", 0.10, 0.35) for t in MULTI_LANE),
    *(Criterion(t, "Return/expert", -math.inf, 1.0 - RETURN_DROP) for t in MULTI_LANE),
    *(Criterion(t, "AS", 5.0, math.inf) for t in TURNS),
    *(Criterion(t, "CR", -math.inf, 0.05) for t in TURNS),
    *(Criterion(t, "AR", 0.75, math.inf) for t in TURNS),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "store", type=Path, nargs="?", default=Path("results/cpu-paper"), help="result store"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="BC seeds to read (default 0-2)"
    )
    parser.add_argument("--out", type=Path, help="also write the comparison here (Markdown)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")


def measure(store_dir: Path, seeds: Sequence[int]) -> dict[str, Any]:
    """The BC metrics per task (episodes of ``seeds`` pooled), the expert profile's Return on
    the same evaluation episodes, and every criterion's verdict."""
    from benchmarks.published import load_published
    from benchmarks.store import TRAIN_CONDITION, ResultStore, rows_metrics
    from carla_safe_envs.expert import run_episodes

    store = ResultStore(store_dir)
    protocol = store.manifest["protocol"]
    rows = store.rows()
    rows = rows[(rows["model"] == "bc") & (rows["condition"] == TRAIN_CONDITION)]
    published = load_published()
    tasks = list(dict.fromkeys(c.task for c in CRITERIA))
    bc: dict[str, dict[str, float]] = {}
    missing: dict[str, list[int]] = {}
    for task in tasks:
        mine = rows[(rows["task"] == task) & (rows["seed"].isin(list(seeds)))]
        found = sorted(int(s) for s in set(mine["seed"]))
        lacking = [s for s in seeds if s not in found]
        if lacking:
            missing[task] = lacking
        if len(mine):
            bc[task] = rows_metrics(mine.to_dict("records"))
    expert: dict[str, float] = {}
    for task in MULTI_LANE:
        env_kwargs = dict(protocol.get("env_kwargs", {}).get(task, {}))
        m = run_episodes(
            task,
            episodes=int(protocol["episodes"]),
            seed=int(protocol["eval_seed"]),
            profile="expert",
            **env_kwargs,
        )
        expert[task] = m["Return"]
    checks = []
    for c in CRITERIA:
        if c.task not in bc:
            value = None
        elif c.metric == "Return/expert":
            value = bc[c.task]["Return"] / expert[c.task] if expert[c.task] else math.nan
        else:
            value = bc[c.task][c.metric]
        paper_metric = "Return" if c.metric == "Return/expert" else c.metric
        paper = published.get((c.task, "bc"), {}).get(paper_metric)
        holds = value is not None and c.low <= value <= c.high
        checks.append(
            {
                "task": c.task,
                "metric": c.metric,
                "target": c.target(),
                "bc": value,
                "paper_bc": paper,
                "holds": bool(holds),
            }
        )
    return {
        "store": str(store_dir),
        "mix": protocol.get("dataset_mix"),
        "seeds": list(seeds),
        "missing_seeds": missing,
        "bc": bc,
        "expert_return": expert,
        "checks": checks,
        "holds": all(c["holds"] for c in checks) and not missing,
    }


def format_markdown(result: dict[str, Any]) -> str:
    """The checks as a Markdown table, with the expert's Return and what is missing."""
    lines = [
        f"BC on {result['store']} (dataset mix {result['mix']!r}, seeds "
        f"{', '.join(map(str, result['seeds']))}, episodes pooled) against the paper's BC row.",
        "",
        "| task | metric | target | BC (ours) | BC (paper) | holds |",
        "|---|---|---|---:|---:|---|",
    ]
    for c in result["checks"]:
        value = "missing" if c["bc"] is None else f"{c['bc']:.2f}"
        paper = "" if c["paper_bc"] is None else f"{c['paper_bc']:.2f}"
        if c["metric"] == "Return/expert":
            paper = f"Return {paper}"
        lines.append(
            f"| {c['task']} | {c['metric']} | {c['target']} | {value} | {paper} | "
            f"{'yes' if c['holds'] else '**no**'} |"
        )
    lines += [
        "",
        "Expert profile's Return on the same evaluation episodes: "
        + ", ".join(f"{t} {r:.1f}" for t, r in result["expert_return"].items())
        + ".",
    ]
    if result["missing_seeds"]:
        lines.append(
            "Missing BC cells: "
            + "; ".join(f"{t} seeds {s}" for t, s in result["missing_seeds"].items())
            + f" (run `python -m benchmarks run --preset cpu-paper --out {result['store']} "
            "--models bc`)."
        )
    verdict = "holds" if result["holds"] else "does NOT hold"
    lines += ["", f"The calibration {verdict}."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    result = measure(args.store, args.seeds)
    text = format_markdown(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(json.dumps(result, indent=1, default=float) if args.json else text)
    return 0 if result["holds"] else 1


CALIBRATE_COMMAND = (HELP, add_arguments, run)
