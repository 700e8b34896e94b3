"""The plots of ``python -m benchmarks table`` (matplotlib, Agg backend, PNG).

- ``return_cost.png``: Return against Cost per task, one panel per task in the table's order;
  each model's mean over seeds with its 95% bootstrap intervals on both axes (filled marker)
  and the published numbers (hollow marker of the same colour).
- ``performance_profile.png``: rliable-style run-score performance profiles over all tasks:
  the share of runs (one run = one seed on one task) whose normalized Return exceeds tau, and
  whose normalized Cost stays below tau, with 95% stratified-bootstrap bands (tasks are the
  strata).  Scores are normalized per task by the range of the published numbers of that
  task: 0 = the lowest published value, 1 = the highest (a fixed yardstick, the same for
  every run of the benchmark).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.published import TABLE_TASKS, load_published
from benchmarks.stats import DEFAULT_REPS, performance_profile

RETURN_COST = "return_cost.png"
PROFILE = "performance_profile.png"
DPI = 120


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(models: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def plot_return_cost(table: Any, path: Path) -> Path:
    """Return vs Cost per task (see the module docstring)."""
    plt = _pyplot()
    colors = _colors(table.models)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    for ax, (task, task_name) in zip(axes.flat, TABLE_TASKS.items(), strict=True):
        for model in table.models:
            cell = table.cells[(task, model)]
            color = colors[model]
            if cell.published is not None:
                ax.scatter(
                    cell.published["Cost"],
                    cell.published["Return"],
                    facecolors="none",
                    edgecolors=[color],
                    s=50,
                )
            if cell.metrics:
                ret, cost = cell.metrics["Return"], cell.metrics["Cost"]
                ax.errorbar(
                    cost.point,
                    ret.point,
                    xerr=[[cost.point - cost.low], [cost.high - cost.point]],
                    yerr=[[ret.point - ret.low], [ret.high - ret.point]],
                    fmt="o",
                    color=color,
                    capsize=3,
                    label=cell.label,
                )
        ax.set_title(task_name)
        ax.set_xlabel("Cost (lower is better)")
        ax.set_ylabel("Return (higher is better)")
        ax.grid(alpha=0.3)
    handles = [
        plt.Line2D(
            [], [], marker="o", linestyle="", color=colors[m], label=table.cells[(t, m)].label
        )
        for t in list(TABLE_TASKS)[:1]
        for m in table.models
    ]
    handles += [
        plt.Line2D([], [], marker="o", linestyle="", color="k", label="ours: mean, 95% CI"),
        plt.Line2D(
            [], [], marker="o", linestyle="", markerfacecolor="none", color="k", label="published"
        ),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=6, frameon=False)
    fig.suptitle("Return vs Cost per task")
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def normalized_runs(table: Any, model: str, metric: str) -> list[np.ndarray]:
    """Per task (a stratum), the per-seed ``metric`` of ``model`` scaled by the range of the
    task's published values; tasks without results are left out."""
    published = load_published()
    strata = []
    for task in TABLE_TASKS:
        values = table.cells[(task, model)].per_seed.get(metric)
        if not values:
            continue
        reference = [v[metric] for (t, _), v in published.items() if t == task]
        low, high = min(reference), max(reference)
        strata.append((np.asarray(values) - low) / max(high - low, 1e-9))
    return strata


def plot_performance_profile(table: Any, path: Path, *, reps: int = DEFAULT_REPS) -> Path:
    """Performance profiles of normalized Return and Cost (see the module docstring)."""
    plt = _pyplot()
    colors = _colors(table.models)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    panels = (("Return", True), ("Cost", False))
    any_results = False
    for ax, (metric, higher) in zip(axes, panels, strict=True):
        runs = {m: normalized_runs(table, m, metric) for m in table.models}
        runs = {m: s for m, s in runs.items() if s}
        pooled = np.concatenate([np.concatenate(s) for s in runs.values()]) if runs else None
        if pooled is not None:
            any_results = True
            lo, hi = min(pooled.min(), 0.0), max(pooled.max(), 1.0)
            taus = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 101)
            for model, strata in runs.items():
                point, band = performance_profile(strata, taus, higher_is_better=higher, reps=reps)
                label = table.cells[(next(iter(TABLE_TASKS)), model)].label
                ax.plot(taus, point, color=colors[model], label=label)
                ax.fill_between(taus, band[0], band[1], color=colors[model], alpha=0.2)
        else:
            ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
        sign = ">" if higher else "<"
        ax.set_xlabel(f"normalized {metric} tau (0 / 1 = lowest / highest published)")
        ax.set_ylabel(f"fraction of runs with score {sign} tau")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(f"{metric} ({'higher' if higher else 'lower'} is better)")
    if any_results:
        axes[0].legend(fontsize=8)
    fig.suptitle("Performance profiles over the four tasks (95% stratified-bootstrap bands)")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(table: Any, directory: Path, *, reps: int = DEFAULT_REPS) -> list[Path]:
    """Write both plots into ``directory``; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        plot_return_cost(table, directory / RETURN_COST),
        plot_performance_profile(table, directory / PROFILE, reps=reps),
    ]
