"""``python -m benchmarks table DIR``: the seed's comparison table from a result store, with
95% confidence intervals over seeds and the published value beside every cell.

Layout (the VL-SAFE poster's): the tasks as row groups in the poster's order (Four Lane, Left
Turn, Navigation, Right Turn), the nine models by their table labels, then any other model in
the store (the expert), each model's variant rows (``VL-SAFE [frame]``: the cells of a
grid variant, :class:`benchmarks.grid.Variant`; no published number, never marked best)
right after it, and the ten metrics of :mod:`carla_safe_envs.metrics`.  Each cell is
the mean over seeds of the per-seed metric (:func:`~carla_safe_envs.metrics.aggregate` over
that seed's evaluation episodes), its interval over seeds (:func:`benchmarks.stats.seed_interval`:
the 95% Student-t interval from 4 seeds on, the seeds' range with 2-3; shown from two seeds
on) and the published number
(:mod:`benchmarks.published`).  The best mean of the nine models per task and metric is
marked (bold; ties are all marked, and nothing when every model ties), in each metric's
direction.  Cells without results say ``missing`` (or
``failed`` when the last attempt failed); cells with fewer seeds than requested carry a
dagger.

The table, its CSV / TeX and the plots use the rows evaluated on the tasks as trained
(``condition == "train"``) only.  When the store also holds evaluations under generalization
shifts (``benchmarks run --shift``), :func:`summarize_generalization` makes a second table,
``table-generalize.md`` / ``.csv``: per task, model and condition (the training one first,
then each level of each shift) the mean over seeds of Return, Cost, AR and CR with the same
95% intervals, and the relative drop of the mean Return from the training condition
(:func:`benchmarks.generalize.relative_drops`).

Writes ``table.md``, ``table.csv`` and ``table.tex`` into the result directory (or the
``--out`` file in ``--format``), the plots of :mod:`benchmarks.plots` and the generalization
table next to them, and ``headline.md``: Return, Cost, AR and CR of the same cells, then per
task our Return ranking against the paper's (Kendall's tau) and whether VL-SAFE has the best
Return at comparable Cost, ours and published.  ``--readme FILE`` also puts the headline into
``FILE`` between the lines ``<!-- headline: DIR -->`` and ``<!-- /headline -->``.
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

import numpy as np

from benchmarks.published import HIGHER_IS_BETTER, SOURCE, TABLE_TASKS, load_published
from benchmarks.stats import DEFAULT_REPS, Interval, describe_seed_intervals, seed_interval
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
    from benchmarks.store import TRAIN_CONDITION, ResultStore, rows_metrics
    from carla_safe_envs.agents import TABLE_MODELS

    store = ResultStore(root)
    rows = _keyed(store.rows())
    rows = rows[rows["condition"] == TRAIN_CONDITION]
    requested = store.requested()
    failures = store.failures()
    models = _model_order(set(rows["model"]) | {c.model_key for c in requested})
    published = load_published()
    cells = {}
    for task in TABLE_TASKS:
        for model in models:
            cells[(task, model)] = CellSummary(
                task,
                model,
                _label(model),
                requested=sorted(
                    c.seed for c in requested if (c.task, c.model_key) == (task, model)
                ),
                failed=sorted(c.seed for c in failures if (c.task, c.model_key) == (task, model)),
                published=published.get((task, model)),
            )
    for (task, model, seed), group in rows.groupby(["task", "model", "seed"], sort=True):
        cell = cells.get((task, model))
        if cell is None:  # a task outside the table's four cannot happen with TASK_IDS
            continue
        metrics = rows_metrics(group.to_dict("records"))
        cell.seeds.append(int(seed))
        for name in METRIC_NAMES:
            cell.per_seed.setdefault(name, []).append(float(metrics[name]))
    for cell in cells.values():
        for name, values in cell.per_seed.items():
            cell.metrics[name] = seed_interval(values)
    _mark_best(cells, TABLE_MODELS)
    return Table(cells, models, _caption(store, rows, cells))


def _model_order(stored: set[str]) -> list[str]:
    """The nine table models, then any other stored model (registered ones first); each
    model's variant rows (``model@variant``) right after it, in :data:`VARIANTS` order."""
    from benchmarks.grid import VARIANTS, split_row_key
    from carla_safe_envs.agents import AGENTS, TABLE_MODELS

    plain = {split_row_key(key)[0] for key in stored}
    extra = [m for m in AGENTS if m in plain and m not in TABLE_MODELS]
    extra += sorted(plain - set(AGENTS) - set(TABLE_MODELS))
    rank = {name: i for i, name in enumerate(VARIANTS)}
    out = []
    for model in [*TABLE_MODELS, *extra]:
        variants = [
            split_row_key(k)[1] for k in stored if k != model and split_row_key(k)[0] == model
        ]
        variants.sort(key=lambda v: (rank.get(v, len(rank)), v))
        out += [model, *(f"{model}@{v}" for v in variants)]
    return out


def _keyed(rows: Any) -> Any:
    """``rows`` with ``model`` replaced by the table's row key (``model@variant`` for a
    variant's rows, :func:`benchmarks.grid.row_key`)."""
    from benchmarks.grid import row_key

    keys = [row_key(m, v) for m, v in zip(rows["model"], rows["variant"], strict=True)]
    return rows.assign(model=keys)


def _label(key: str) -> str:
    """The table label of a row key: the model's (``VL-SAFE``), with ``[variant]``."""
    from benchmarks.grid import DEFAULT_VARIANT, split_row_key
    from carla_safe_envs.agents import AGENTS

    model, variant = split_row_key(key)
    label = AGENTS[model].label if model in AGENTS else model
    return label if variant == DEFAULT_VARIANT else f"{label} [{variant}]"


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
        "Each cell: ours = mean over seeds of the per-seed metric ["
        f"{describe_seed_intervals([len(c.seeds) for c in cells.values()])}, shown from 2 "
        f"seeds on] / published ({SOURCE}).",
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
    ``root``), ``headline.md`` (:func:`format_headline_markdown`) and the plots next to it, and
    ``table-generalize.md/.csv`` there when the store holds evaluations under shifts.  Returns
    the ``fmt`` text and the files written."""
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
    headline = Path(targets[fmt]).parent / f"{HEADLINE_NAME}.md"
    headline.write_text(format_headline_markdown(table))
    written.append(headline)
    if plots:
        written += write_plots(table, Path(targets[fmt]).parent, reps=reps)
    shifted = summarize_generalization(root, reps=reps)
    if shifted is not None:
        folder = Path(targets[fmt]).parent
        for suffix, formatter in (
            (".md", format_generalization_markdown),
            (".csv", format_generalization_csv),
        ):
            path = folder / f"{GENERALIZE_NAME}{suffix}"
            path.write_text(formatter(shifted))
            written.append(path)
    return texts[fmt], written


# ---------------------------------------------------------------------------- generalization
GENERALIZE_NAME = "table-generalize"
GENERALIZE_METRICS = ("Return", "Cost", "AR", "CR")


@dataclass
class ConditionSummary:
    """One (task, model, condition) row of the generalization table."""

    task: str
    model: str
    label: str
    condition: str  # "train" or a level's label such as "density=high"
    seeds: list[int] = field(default_factory=list)
    metrics: dict[str, Interval] = field(default_factory=dict)
    return_drop: float | None = None  # (train - this) / |train| of the mean Returns


@dataclass
class GeneralizationTable:
    """The generalization rows in table order, and a caption."""

    rows: list[ConditionSummary]
    caption: str


def _condition_order(task: str, conditions: set[str]) -> list[str]:
    """The training condition, then each shift's levels in their order, then any other."""
    from benchmarks.generalize import SHIFTS, shift_conditions
    from benchmarks.store import TRAIN_CONDITION

    known = [c for shift in SHIFTS for c in shift_conditions(task, shift) if c in conditions]
    rest = sorted(conditions - set(known) - {TRAIN_CONDITION})
    return [TRAIN_CONDITION, *dict.fromkeys(known), *rest]


def summarize_generalization(
    root: str | Path, *, reps: int = DEFAULT_REPS
) -> GeneralizationTable | None:
    """The generalization table of the store at ``root`` (see the module docstring), or None
    when it holds no rows evaluated under a shift.

    Raises:
        benchmarks.store.StoreError: ``root`` is not a result directory of this version.
    """
    from benchmarks.generalize import relative_drops, training_condition
    from benchmarks.store import TRAIN_CONDITION, ResultStore, rows_metrics

    store = ResultStore(root)
    rows = _keyed(store.rows())
    shifted = rows[rows["condition"] != TRAIN_CONDITION]
    if shifted.empty:
        return None
    protocol = store.manifest["protocol"]
    pairs = set(zip(shifted["task"], shifted["model"], strict=True))
    rows = rows[[pair in pairs for pair in zip(rows["task"], rows["model"], strict=True)]]
    per_seed: dict[tuple[str, str, str], dict[int, dict[str, float]]] = {}
    for (task, model, condition, seed), group in rows.groupby(
        ["task", "model", "condition", "seed"], sort=True
    ):
        per_seed.setdefault((task, model, condition), {})[int(seed)] = rows_metrics(
            group.to_dict("records")
        )
    out: list[ConditionSummary] = []
    for task in TABLE_TASKS:
        for model in _model_order({m for t, m in pairs if t == task}):
            if (task, model) not in pairs:
                continue
            label = _label(model)
            present = {c for t, m, c in per_seed if (t, m) == (task, model)}
            summaries = []
            for condition in _condition_order(task, present):
                seeds = per_seed.get((task, model, condition), {})
                summary = ConditionSummary(task, model, label, condition, sorted(seeds))
                for name in GENERALIZE_METRICS:
                    values = [seeds[s][name] for s in summary.seeds]
                    if values:
                        summary.metrics[name] = seed_interval(values)
                summaries.append(summary)
            train = summaries[0].metrics.get("Return")
            for summary in summaries[1:]:
                if train is not None and "Return" in summary.metrics:
                    means = ({"Return": train.point}, {"Return": summary.metrics["Return"].point})
                    summary.return_drop = relative_drops(*means, ["Return"])["Return"]
            out += summaries
    env_kwargs = protocol.get("env_kwargs", {})
    shifts = protocol.get("shifts") or sorted({c.split("=")[0] for c in shifted["condition"]})
    trained_on = "; ".join(
        f"{TABLE_TASKS[t]}: "
        + ", ".join(training_condition(t, sh, env_kwargs.get(t, {})) for sh in shifts)
        for t in TABLE_TASKS
        if any(s.task == t for s in out)
    )
    caption = (
        f"carla-safe generalization, preset {protocol['name']!r}, shifts {', '.join(shifts)}: "
        f"every trained cell evaluated as trained ('train'; {trained_on}) and on each other "
        f"level, {protocol['episodes']} episode{'s' if protocol['episodes'] != 1 else ''} per "
        "seed and condition on the same reset seeds. Each cell: mean over seeds of the per-seed "
        f"metric [{describe_seed_intervals([len(s.seeds) for s in out])}, shown from 2 seeds "
        "on]. Return drop: "
        "(train - shifted) / |train| of the mean Returns, positive when it fell."
    )
    return GeneralizationTable(out, caption)


def _interval_text(interval: Interval | None, seeds: int) -> str:
    if interval is None:
        return "missing"
    text = _num(interval.point)
    return text + (f" [{_num(interval.low)}, {_num(interval.high)}]" if seeds >= 2 else "")


def _drop_text(row: ConditionSummary) -> str:
    from benchmarks.store import TRAIN_CONDITION

    if row.condition == TRAIN_CONDITION:
        return ""
    return "-" if row.return_drop is None else f"{row.return_drop:+.1%}"


def format_generalization_markdown(table: GeneralizationTable) -> str:
    """The generalization table as Markdown, the caption first."""
    head = ["Task", "Model", "Condition", "Seeds"]
    head += [_header(n, ("↑", "↓")) for n in GENERALIZE_METRICS] + ["Return drop"]
    lines = [table.caption, "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join(["---"] * 4 + ["---:"] * (len(GENERALIZE_METRICS) + 1)) + "|")
    for row in table.rows:
        cells = [TABLE_TASKS[row.task], row.label, row.condition, str(len(row.seeds))]
        cells += [_interval_text(row.metrics.get(n), len(row.seeds)) for n in GENERALIZE_METRICS]
        lines.append("| " + " | ".join([*cells, _drop_text(row)]) + " |")
    return "\n".join(lines) + "\n"


def format_generalization_csv(table: GeneralizationTable) -> str:
    """One row per (task, model, condition): seeds, per metric the mean and CI bounds, and
    the relative Return drop (empty on the training condition)."""
    out = io.StringIO()
    columns = ["task", "task_name", "model", "label", "condition", "seeds"]
    for name in GENERALIZE_METRICS:
        columns += [name, f"{name}_low", f"{name}_high"]
    writer = csv.DictWriter(out, [*columns, "Return_drop"], lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        record: dict[str, Any] = {
            "task": row.task,
            "task_name": TABLE_TASKS[row.task],
            "model": row.model,
            "label": row.label,
            "condition": row.condition,
            "seeds": " ".join(map(str, row.seeds)),
            "Return_drop": "" if row.return_drop is None else row.return_drop,
        }
        for name, interval in row.metrics.items():
            record |= {name: interval.point, f"{name}_low": interval.low}
            record[f"{name}_high"] = interval.high
        writer.writerow(record)
    return out.getvalue()


# ---------------------------------------------------------------------------- against the paper
HEADLINE_NAME = "headline"
HEADLINE_METRICS = ("Return", "Cost", "AR", "CR")
VLSAFE = "vlsafe"


@dataclass
class TaskComparison:
    """One task of :func:`compare_with_paper`: the models with every requested seed done
    (``done``, ours best Return first), the same models by published Return, Kendall's tau
    between the two orders (None under two models), and whether VL-SAFE has the best Return
    at comparable Cost in ours and in the paper (a sentence each)."""

    task: str
    done: list[str]
    paper_order: list[str]
    tau: float | None
    ours: str
    paper: str


def kendall_tau(first: list[float], second: list[float]) -> float:
    """Kendall's tau-a of two scorings of the same items: the mean over pairs of
    sign(first_i - first_j) * sign(second_i - second_j); 1 for the same order, -1 reversed.

    Raises:
        ValueError: the scorings differ in length or hold fewer than two items.
    """
    if len(first) != len(second) or len(first) < 2:
        raise ValueError(
            f"kendall_tau needs two scorings of the same 2+ items, got {len(first)} "
            f"and {len(second)}"
        )
    pairs = [(i, j) for i in range(len(first)) for j in range(i + 1, len(first))]
    agree = sum(
        float(np.sign(first[i] - first[j]) * np.sign(second[i] - second[j])) for i, j in pairs
    )
    return agree / len(pairs)


def _rivals(points: Mapping[str, tuple[float, float]], vlsafe: str, cost_bound: float) -> list[str]:
    """The models of ``points`` (label -> (Return, Cost)) with a Cost at most ``cost_bound``
    and a higher Return than ``vlsafe``'s, best Return first."""
    best = points[vlsafe][0]
    rivals = [m for m, (ret, cost) in points.items() if cost <= cost_bound and ret > best]
    return sorted(rivals, key=lambda m: -points[m][0])


def _verdict(points: Mapping[str, tuple[float, float]], vlsafe: str, cost_bound: float) -> str:
    rivals = _rivals(points, vlsafe, cost_bound)
    if not rivals:
        return "yes"
    return "no: " + ", ".join(
        f"{m} ({_num(points[m][0])} at Cost {_num(points[m][1])})" for m in rivals
    )


def compare_with_paper(table: Table) -> list[TaskComparison]:
    """Per task, our Return ranking against the paper's and the VL-SAFE claim (see
    :func:`format_headline_markdown` for the definitions)."""
    from carla_safe_envs.agents import TABLE_MODELS

    out = []
    for task in TABLE_TASKS:
        cells = {m: table.cells[(task, m)] for m in TABLE_MODELS}
        done = [c for c in cells.values() if c.status == "ok" and c.published is not None]
        done.sort(key=lambda c: -c.metrics["Return"].point)
        by_paper = sorted(done, key=lambda c: -c.published["Return"])
        tau = None
        if len(done) >= 2:
            ours = [c.metrics["Return"].point for c in done]
            tau = kendall_tau(ours, [c.published["Return"] for c in done])
        vl = cells[VLSAFE]
        if not vl.requested and not vl.seeds:
            ours_verdict = "VL-SAFE not in this grid"
        elif vl.status != "ok":
            ours_verdict = f"VL-SAFE: {len(vl.seeds)} of {len(vl.requested)} seeds done"
        else:
            points = {c.label: (c.metrics["Return"].point, c.metrics["Cost"].point) for c in done}
            verdict = _verdict(points, vl.label, vl.metrics["Cost"].high)
            ours_verdict = f"{verdict} (of {len(done)} model{'s' if len(done) > 1 else ''} done)"
        published = {c.label: (c.published["Return"], c.published["Cost"]) for c in cells.values()}
        paper_verdict = _verdict(published, vl.label, vl.published["Cost"])
        out.append(
            TaskComparison(
                task,
                [c.label for c in done],
                [c.label for c in by_paper],
                tau,
                ours_verdict,
                paper_verdict,
            )
        )
    return out


def _bracket_words(table: Table) -> str:
    return describe_seed_intervals([len(c.seeds) for c in table.cells.values()])


def format_headline_markdown(table: Table) -> str:
    """The README's headline: Return, Cost, AR and CR of the table (same cells, intervals and
    marks), then, per task, our Return ranking against the paper's and the VL-SAFE claim."""
    head = ["Task", "Model", *(_header(n, ("↑", "↓")) for n in HEADLINE_METRICS)]
    lines = [
        f"Return, Cost, AR and CR of `table.md`: ours [{_bracket_words(table)}] / published "
        f"(the full table has all ten metrics). {table.caption.split('. ')[0]}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * len(HEADLINE_METRICS)) + "|",
    ]
    for task, task_name in TABLE_TASKS.items():
        for model in table.models:
            cell = table.cells[(task, model)]
            texts = [f"{_ours(cell, n, BOLD_MD)} / {_published(cell, n)}" for n in HEADLINE_METRICS]
            lines.append(f"| {task_name} | {cell.label} | " + " | ".join(texts) + " |")
    lines += [
        "",
        "Against the paper, task by task: the models with every seed done, ranked by our mean "
        "Return and by the published one, and Kendall's tau between the two orders (1: the "
        "same order, -1: reversed). VL-SAFE has the best Return at comparable Cost when no "
        "model with a mean Cost at most the upper end of VL-SAFE's Cost interval (in the "
        "paper, at most VL-SAFE's Cost) has a higher mean Return; ours is judged among the "
        "models done, the paper's among all nine.",
        "",
        "| Task | Done | Ours by Return | Paper by Return | tau | VL-SAFE best Return at "
        "comparable Cost: ours | paper |",
        "|---|---:|---|---|---:|---|---|",
    ]
    for row in compare_with_paper(table):
        tau = "-" if row.tau is None else f"{row.tau:+.2f}"
        lines.append(
            f"| {TABLE_TASKS[row.task]} | {len(row.done)} of 9 | {' > '.join(row.done) or '-'} "
            f"| {' > '.join(row.paper_order) or '-'} | {tau} | {row.ours} | {row.paper} |"
        )
    return "\n".join(lines) + "\n"


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
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help=f"also write the headline into this file, between '{README_BEGIN.format('DIR')}' "
        f"and '{README_END}'",
    )


README_BEGIN = "<!-- headline: {} -->"
README_END = "<!-- /headline -->"


def _readme_span(text: str, root: str | Path) -> tuple[int, int] | None:
    """Start and end in ``text`` of the headline block of ``root`` (between its marker
    lines, markers excluded), or None when there is none."""
    begin = README_BEGIN.format(Path(root).as_posix()) + "\n"
    start = text.find(begin)
    end = text.find(README_END, start)
    if start < 0 or end < 0:
        return None
    return start + len(begin), end


def readme_block(text: str, root: str | Path) -> str | None:
    """The headline block of ``root`` in the Markdown ``text`` (between its marker lines,
    markers excluded), or None when ``text`` has no such block."""
    span = _readme_span(text, root)
    return None if span is None else text[span[0] : span[1]]


def update_readme(path: str | Path, root: str | Path, headline: str) -> None:
    """Replace the headline block of ``root`` in the file ``path`` by ``headline``.

    Raises:
        ValueError: the file has no block for ``root`` (the message shows the marker lines).
    """
    path = Path(path)
    text = path.read_text()
    span = _readme_span(text, root)
    if span is None:
        raise ValueError(
            f"{path} has no headline block for {Path(root).as_posix()}: add the two lines "
            f"'{README_BEGIN.format(Path(root).as_posix())}' and '{README_END}' where the "
            "headline goes"
        )
    path.write_text(text[: span[0]] + headline + text[span[1] :])


def run(args: argparse.Namespace) -> int:
    from benchmarks.store import StoreError

    try:
        text, written = write_outputs(
            args.dir, fmt=args.format, out=args.out, plots=not args.no_plots, reps=args.reps
        )
        if args.readme is not None:
            headline = next(p for p in written if p.name == f"{HEADLINE_NAME}.md")
            update_readme(args.readme, args.dir, headline.read_text())
            written.append(args.readme)
    except (StoreError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


TABLE_COMMAND = (HELP, add_arguments, run)
