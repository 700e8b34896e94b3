"""``python -m benchmarks table DIR``: the seed's comparison table from a result store, with
95% confidence intervals over seeds and the published value beside every cell.

Layout (the VL-SAFE poster's): the tasks as row groups in the poster's order (Four Lane, Left
Turn, Navigation, Right Turn), the nine models by their table labels, then any other model in
the store (the expert), and the ten metrics of :mod:`carla_safe_envs.metrics`.  Each cell is
the mean over seeds of the per-seed metric (:func:`~carla_safe_envs.metrics.aggregate` over
that seed's evaluation episodes), its 95% stratified-bootstrap interval over seeds
(:mod:`benchmarks.stats`; shown from two seeds on) and the published number
(:mod:`benchmarks.published`).  The best mean of the nine models per task and metric is
marked (bold; ties are all marked, and nothing when every model ties), in each metric's
direction.  Cells without results say ``missing`` (or
``failed`` when the last attempt failed); cells with fewer seeds than requested carry a
dagger.

Writes ``table.md``, ``table.csv`` and ``table.tex`` into the result directory (or the
``--out`` file in ``--format``) and the plots of :mod:`benchmarks.plots` next to them.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.published import HIGHER_IS_BETTER, SOURCE, TABLE_TASKS, load_published
from benchmarks.stats import DEFAULT_REPS, Interval, mean_interval
from carla_safe_envs.metrics import METRIC_NAMES

HELP = "the comparison table of a result directory: ours with CIs beside the published numbers"
FORMATS = ("md", "csv", "latex")
SUFFIX = {"md": ".md", "csv": ".csv", "latex": ".tex"}
DAGGER = "†"
BOLD_MD = ("**", "**")
BOLD_TEX = (r"\textbf{", "}")


@dataclass
class CellSummary:
    """One (task, model) cell of the table."""

    task: str
    model: str
    label: str
    seeds: list[int] = field(default_factory=list)  # seeds with results
    requested: list[int] = field(default_factory=list)  # seeds asked for in the store
    failed: list[int] = field(default_factory=list)  # seeds whose last attempt failed
    metrics: dict[str, Interval] = field(default_factory=dict)
    per_seed: dict[str, list[float]] = field(default_factory=dict)  # metric -> per-seed values
    published: Mapping[str, float] | None = None
    best: set[str] = field(default_factory=set)  # metrics where this model is the best

    @property
    def status(self) -> str:
        if not self.seeds:
            return "failed" if self.failed else "missing"
        return "partial" if set(self.requested) - set(self.seeds) else "ok"


@dataclass
class Table:
    """The summarized store: cells keyed by (task, model), the model order and a caption."""

    cells: dict[tuple[str, str], CellSummary]
    models: list[str]
    caption: str


def summarize(root: str | Path, *, reps: int = DEFAULT_REPS) -> Table:
    """Read the store at ``root`` and compute every cell (see the module docstring).

    Raises:
        benchmarks.store.StoreError: ``root`` is not a result directory of this version.
    """
    from benchmarks.store import ResultStore, episode_metrics
    from carla_safe_envs.agents import AGENTS, TABLE_MODELS
    from carla_safe_envs.metrics import aggregate

    store = ResultStore(root)
    rows = store.rows()
    requested = store.requested()
    failures = store.failures()
    stored_models = set(rows["model"]) | {c.model for c in requested}
    extra = [m for m in AGENTS if m in stored_models and m not in TABLE_MODELS]
    extra += sorted(stored_models - set(AGENTS) - set(TABLE_MODELS))
    models = [*TABLE_MODELS, *extra]
    published = load_published()
    cells = {}
    for task in TABLE_TASKS:
        for model in models:
            label = AGENTS[model].label if model in AGENTS else model
            cells[(task, model)] = CellSummary(
                task,
                model,
                label,
                requested=sorted(c.seed for c in requested if (c.task, c.model) == (task, model)),
                failed=sorted(c.seed for c in failures if (c.task, c.model) == (task, model)),
                published=published.get((task, model)),
            )
    for (task, model, seed), group in rows.groupby(["task", "model", "seed"], sort=True):
        cell = cells.get((task, model))
        if cell is None:  # a task outside the table's four cannot happen with TASK_IDS
            continue
        metrics = aggregate([episode_metrics(r) for r in group.to_dict("records")])
        cell.seeds.append(int(seed))
        for name in METRIC_NAMES:
            cell.per_seed.setdefault(name, []).append(float(metrics[name]))
    for cell in cells.values():
        for name, values in cell.per_seed.items():
            cell.metrics[name] = mean_interval(values, reps=reps)
    _mark_best(cells, TABLE_MODELS)
    return Table(cells, models, _caption(store, rows, cells))


def _mark_best(cells: Mapping[tuple[str, str], CellSummary], models: tuple[str, ...]) -> None:
    for task in TABLE_TASKS:
        present = [cells[(task, m)] for m in models if cells[(task, m)].metrics]
        for name in METRIC_NAMES:
            if not present:
                continue
            sign = 1.0 if HIGHER_IS_BETTER[name] else -1.0
            values = [sign * c.metrics[name].point for c in present]
            best = max(values)
            winners = [v >= best - 1e-9 * max(1.0, abs(best)) for v in values]
            if len(present) > 1 and all(winners):
                continue  # every model ties: nothing to mark
            for cell, wins in zip(present, winners, strict=True):
                if wins:
                    cell.best.add(name)


def _caption(store: Any, rows: Any, cells: Mapping[tuple[str, str], CellSummary]) -> str:
    protocol = store.manifest["protocol"]
    seeds = sorted({int(s) for s in rows["seed"]}) if len(rows) else []
    labels = [
        entry["labels"] for entry in store.manifest["datasets"].values() if entry.get("labels")
    ]
    from carla_safe_envs.agents import TABLE_MODELS

    # the nine always count; other models (the expert) only where they were asked for
    statuses = [c.status for c in cells.values() if c.model in TABLE_MODELS or c.requested]
    parts = [
        f"carla-safe benchmark, preset {protocol['name']!r} (agent preset "
        f"{protocol['agent_preset']!r}, {protocol['episodes']} evaluation "
        f"episode{'s' if protocol['episodes'] != 1 else ''} per seed, "
        f"seeds {seeds or 'none yet'}), embedded simulator.",
        "Each cell: ours = mean over seeds of the per-seed metric [95% stratified-bootstrap CI "
        f"over seeds, shown from 2 seeds on] / published ({SOURCE}).",
        "Best of the nine models per task and metric in bold, ties included, unless all tie "
        "(Return, AS, WC, TD, AR higher is better; Cost, CR, TCF, DCF, CS lower).",
    ]
    if labels:
        described = sorted({_describe_labels(entry) for entry in labels})
        parts.append("Safety labels p(s) for VL-SAFE: " + "; ".join(described) + ".")
    counts = {s: statuses.count(s) for s in ("missing", "failed", "partial") if s in statuses}
    if counts:
        dagger = f" ({DAGGER}: fewer seeds than requested)" if "partial" in counts else ""
        parts.append(
            "Incomplete cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + dagger + "."
        )
    return " ".join(parts)


def _describe_labels(entry: Mapping[str, Any]) -> str:
    name = entry.get("labeler", "?")
    if name == "clip":
        return f"CLIP {entry.get('model', '')} zero-shot (VL-SAFE's labeler)"
    if name == "oracle":
        reason = str(entry.get("reason", ""))
        why = ", no CLIP weights on this machine" if reason.startswith("no CLIP") else ""
        return f"the privileged oracle labeler, not CLIP{why}"
    return str(name)


# ---------------------------------------------------------------------------- formats
def _num(value: float) -> str:
    return f"{value:.2f}"


def _ours(cell: CellSummary, name: str, bold: tuple[str, str]) -> str:
    if not cell.metrics:
        return cell.status
    interval = cell.metrics[name]
    text = _num(interval.point)
    if name in cell.best:
        text = f"{bold[0]}{text}{bold[1]}"
    if len(cell.seeds) >= 2:
        text += f" [{_num(interval.low)}, {_num(interval.high)}]"
    if cell.status == "partial":
        text += DAGGER
    return text


def _published(cell: CellSummary, name: str) -> str:
    return _num(cell.published[name]) if cell.published is not None else "-"


def _header(name: str, arrows: tuple[str, str]) -> str:
    return f"{name} {arrows[0] if HIGHER_IS_BETTER[name] else arrows[1]}"


def format_markdown(table: Table) -> str:
    """The table as Markdown (readable as text), the caption first."""
    head = ["Model", *(_header(n, ("↑", "↓")) for n in METRIC_NAMES)]
    lines = [f"{table.caption}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * len(METRIC_NAMES)) + "|")
    for task, task_name in TABLE_TASKS.items():
        lines.append(f"| **{task_name}** |" + " |" * len(METRIC_NAMES))
        for model in table.models:
            cell = table.cells[(task, model)]
            texts = [f"{_ours(cell, n, BOLD_MD)} / {_published(cell, n)}" for n in METRIC_NAMES]
            lines.append(f"| {cell.label} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"


def format_csv(table: Table) -> str:
    """One row per (task, model): status, seeds, and per metric the mean, CI bounds,
    published value and whether it is the best of the nine."""
    out = io.StringIO()
    columns = ["task", "task_name", "model", "label", "status", "seeds", "seeds_requested"]
    for name in METRIC_NAMES:
        columns += [name, f"{name}_low", f"{name}_high", f"{name}_published", f"{name}_best"]
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for task, task_name in TABLE_TASKS.items():
        for model in table.models:
            cell = table.cells[(task, model)]
            row: dict[str, Any] = {
                "task": task,
                "task_name": task_name,
                "model": model,
                "label": cell.label,
                "status": cell.status,
                "seeds": " ".join(map(str, cell.seeds)),
                "seeds_requested": " ".join(map(str, cell.requested)),
            }
            for name in METRIC_NAMES:
                interval = cell.metrics.get(name)
                if interval is not None:
                    row |= {name: interval.point, f"{name}_low": interval.low}
                    row |= {f"{name}_high": interval.high, f"{name}_best": name in cell.best}
                if cell.published is not None:
                    row[f"{name}_published"] = cell.published[name]
            writer.writerow(row)
    return out.getvalue()


def format_latex(table: Table) -> str:
    """A booktabs ``table`` environment with the caption."""
    arrows = (r"$\uparrow$", r"$\downarrow$")
    lines = [
        r"\begin{table}",
        r"\centering",
        r"\caption{" + table.caption.replace("%", r"\%").replace("_", r"\_") + "}",
        r"\resizebox{\textwidth}{!}{%",
        r"\begin{tabular}{l" + "r" * len(METRIC_NAMES) + "}",
        r"\toprule",
        "Model & " + " & ".join(_header(n, arrows) for n in METRIC_NAMES) + r" \\",
        r"\midrule",
    ]
    for task, task_name in TABLE_TASKS.items():
        lines.append(rf"\multicolumn{{{1 + len(METRIC_NAMES)}}}{{l}}{{\textbf{{{task_name}}}}} \\")
        for model in table.models:
            cell = table.cells[(task, model)]
            texts = [f"{_ours(cell, n, BOLD_TEX)} / {_published(cell, n)}" for n in METRIC_NAMES]
            lines.append(f"{cell.label} & " + " & ".join(texts) + r" \\")
        lines.append(r"\midrule" if task != list(TABLE_TASKS)[-1] else r"\bottomrule")
    lines += [r"\end{tabular}}", r"\end{table}"]
    return "\n".join(lines).replace(DAGGER, r"$^\dagger$") + "\n"


FORMATTERS = {"md": format_markdown, "csv": format_csv, "latex": format_latex}


def write_outputs(
    root: str | Path,
    *,
    fmt: str = "md",
    out: str | Path | None = None,
    plots: bool = True,
    reps: int = DEFAULT_REPS,
) -> tuple[str, list[Path]]:
    """Summarize ``root``; write the table (``out`` in ``fmt``, or ``table.md/.csv/.tex`` in
    ``root``) and the plots next to it.  Returns the ``fmt`` text and the files written."""
    from benchmarks.plots import write_plots

    table = summarize(root, reps=reps)
    texts = {name: formatter(table) for name, formatter in FORMATTERS.items()}
    if out is not None:
        targets = {fmt: Path(out)}
    else:
        targets = {name: Path(root) / f"table{SUFFIX[name]}" for name in FORMATTERS}
    written = []
    for name, path in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts[name])
        written.append(path)
    if plots:
        written += write_plots(table, Path(targets[fmt]).parent, reps=reps)
    return texts[fmt], written


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="a result directory of `benchmarks run`")
    parser.add_argument("--format", choices=FORMATS, default="md", help="output format (md)")
    parser.add_argument(
        "--out", type=Path, default=None, help="write the table here (default DIR/table.*)"
    )
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    parser.add_argument(
        "--reps", type=int, default=DEFAULT_REPS, help=f"bootstrap resamples ({DEFAULT_REPS})"
    )


def run(args: argparse.Namespace) -> int:
    from benchmarks.store import StoreError

    try:
        text, written = write_outputs(
            args.dir, fmt=args.format, out=args.out, plots=not args.no_plots, reps=args.reps
        )
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


TABLE_COMMAND = (HELP, add_arguments, run)
