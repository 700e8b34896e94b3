"""How well do safety labels p(s) predict the task's cost?  AUROC, AP and calibration.

For each labeled column of a dataset and each look-ahead ``k``, the score ``1 - p(s)`` (the
predicted probability of being unsafe) is judged against the event "a cost occurs within the
next ``k`` steps of the episode, the current step included":
``event_k = (costs > 0) | (dataset.future_cost(k) > 0)`` (the current step is or'ed in
explicitly so the definition does not depend on whether ``future_cost`` counts it).

Labeled columns: ``safety`` (the default output of ``python -m benchmarks label``, its labeler
in the ``safety_labeler`` attribute) and, so that labelers can be compared side by side,
``safety_<labeler>`` for every name in :data:`vlsafe.labels.LABELERS` (written with
``label --column safety_<labeler>``).

Label sources (:mod:`vlsafe.label_sources`: ``oracle``, ``frame``, ``constant:C``,
``shuffled``, ``noisy:Q``) are scored the same way with ``report(..., sources=[...])``, made
in memory from the dataset's signals, so every p(s) a grid variant trains on has its AUROC.
A constant scores 0.5 (every state tied).

The metrics are written in numpy and follow scikit-learn's definitions: AUROC is the area under
the ROC curve with tied scores counted as half (trapezoid rule), average precision is
``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds (no interpolation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vlsafe.labels import LABELERS

ROC_GRID = np.linspace(0.0, 1.0, 101)  # false-positive rates at which ROC curves are stored


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain nan or inf")
    return scores, labels


def _threshold_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true / false positives at each distinct threshold, highest score first."""
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps.astype(np.float64), fps.astype(np.float64)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) from (0, 0) to (1, 1), one point per distinct score; nan if one class is absent."""
    scores, labels = _check(scores, labels)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return np.array([np.nan]), np.array([np.nan])
    tps, fps = _threshold_counts(scores, labels)
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (higher = more positive) for boolean ``labels``.

    Equals P(score of a random positive > score of a random negative) + 0.5 P(tie); nan when
    ``labels`` hold only one class (scikit-learn raises there).
    """
    fpr, tpr = roc_curve(scores, labels)
    if np.isnan(fpr[0]):
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds; nan if no positive."""
    scores, labels = _check(scores, labels)
    n_pos = labels.sum()
    if n_pos == 0:
        return float("nan")
    tps, fps = _threshold_counts(scores, labels)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


class CalibrationBins(NamedTuple):
    """Reliability diagram data: predicted vs observed event rate in equal-width bins."""

    edges: np.ndarray  # (bins + 1,) bin edges on the predicted probability
    mean_predicted: np.ndarray  # (bins,) mean prediction in the bin (nan if empty)
    fraction_positive: np.ndarray  # (bins,) observed event rate in the bin (nan if empty)
    count: np.ndarray  # (bins,) samples in the bin

    @property
    def expected_calibration_error(self) -> float:
        """Count-weighted mean |observed - predicted| over non-empty bins."""
        full = self.count > 0
        if not full.any():
            return float("nan")
        gap = np.abs(self.fraction_positive[full] - self.mean_predicted[full])
        return float(np.sum(gap * self.count[full]) / self.count[full].sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (nan -> None)."""

        def clean(values: np.ndarray) -> list[Any]:
            return [None if np.isnan(v) else float(v) for v in values.astype(np.float64)]

        return {
            "edges": clean(self.edges),
            "mean_predicted": clean(self.mean_predicted),
            "fraction_positive": clean(self.fraction_positive),
            "count": [int(c) for c in self.count],
            "ece": _json_float(self.expected_calibration_error),
        }


def calibration_bins(p_unsafe: np.ndarray, labels: np.ndarray, bins: int = 10) -> CalibrationBins:
    """Bin ``p_unsafe`` in [0, 1] into ``bins`` equal-width bins (1.0 falls in the last one)."""
    p, labels = _check(p_unsafe, labels)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    total_p = np.bincount(index, weights=p, minlength=bins)
    total_pos = np.bincount(index, weights=labels.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(count > 0, total_p / count, np.nan)
        fraction_positive = np.where(count > 0, total_pos / count, np.nan)
    return CalibrationBins(edges, mean_predicted, fraction_positive, count)


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


# --- dataset report -------------------------------------------------------------------------


def _read_column(dataset: Any, name: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """(values, attrs) of a per-step column of ``dataset``, or None if it has none of that name."""
    try:
        return np.asarray(dataset.column(name)), dataset.column_attrs(name)
    except KeyError:
        return None


def labeled_columns(dataset: Any) -> dict[str, tuple[str, np.ndarray]]:
    """``{column: (labeler name, p (N,))}`` for every labeled column of ``dataset``."""
    columns: dict[str, tuple[str, np.ndarray]] = {}
    if dataset.safety is not None:
        attrs = dict(dataset.safety_labeler or {})
        columns["safety"] = (str(attrs.get("labeler", "unknown")), np.asarray(dataset.safety))
    for labeler in LABELERS:
        found = _read_column(dataset, f"safety_{labeler}")
        if found is not None:
            values, attrs = found
            columns[f"safety_{labeler}"] = (str(attrs.get("labeler", labeler)), values)
    return columns


def _roc_on_grid(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """TPR at :data:`ROC_GRID` false-positive rates (the top of vertical steps; nan if undefined)."""
    if np.isnan(fpr[0]):
        return np.full_like(ROC_GRID, np.nan)
    last = np.r_[np.flatnonzero(np.diff(fpr)), len(fpr) - 1]  # highest tpr of each fpr value
    return np.interp(ROC_GRID, fpr[last], tpr[last])


def score_labels(
    p_safe: np.ndarray, events: Mapping[int, np.ndarray], *, bins: int = 10
) -> dict[str, Any]:
    """AUROC, AP, calibration and a gridded ROC curve of ``1 - p_safe`` for each event array."""
    p_unsafe = 1.0 - np.asarray(p_safe, dtype=np.float64)
    result: dict[str, Any] = {"auroc": {}, "ap": {}, "calibration": {}, "roc": {}}
    for k, event in events.items():
        fpr, tpr = roc_curve(p_unsafe, event)
        tpr_grid = _roc_on_grid(fpr, tpr)
        result["auroc"][str(k)] = _json_float(auroc(p_unsafe, event))
        result["ap"][str(k)] = _json_float(average_precision(p_unsafe, event))
        result["calibration"][str(k)] = calibration_bins(p_unsafe, event, bins).to_dict()
        result["roc"][str(k)] = {
            "fpr": ROC_GRID.tolist(),
            "tpr": [None if np.isnan(v) else float(v) for v in tpr_grid],
        }
    return result


def report(
    dataset: Any,
    k: Iterable[int] = (10, 30),
    *,
    bins: int = 10,
    sources: Iterable[str] = (),
    seed: int = 0,
) -> dict[str, Any]:
    """Label quality of every labeled column of ``dataset`` (an ``OfflineDataset``), and of
    the label ``sources`` (:mod:`vlsafe.label_sources` specs, made in memory with ``seed``).

    Returns a JSON-friendly dict: ``task``, ``n_steps``, ``k``, ``event_rate`` per k (the
    fraction of steps with a cost event within k steps), ``labelers``:
    ``{column: {labeler, auroc: {k}, ap: {k}, calibration: {k}, roc: {k}}}`` (keys of the
    per-k dicts are ``str(k)``; undefined metrics are None) and, with ``sources``,
    ``sources``: ``{spec: {labeler: spec, source: (its record, mean and sha256), auroc, ...}}``.

    Raises:
        vlsafe.label_sources.LabelSourceError: a source spec that does not parse.
    """
    from vlsafe.label_sources import parse_label_source

    parsed = [parse_label_source(spec) for spec in sources]
    ks = [int(value) for value in k]
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be a non-empty list of look-aheads >= 1, got {ks}")
    costs = np.asarray(dataset.costs)
    events = {value: (costs > 0) | (np.asarray(dataset.future_cost(value)) > 0) for value in ks}
    columns = labeled_columns(dataset)
    result: dict[str, Any] = {
        "task": str(dataset.task),
        "n_steps": int(dataset.n_steps),
        "k": ks,
        "event_rate": {str(value): float(event.mean()) for value, event in events.items()},
        "labelers": {},
    }
    for column, (labeler, p_safe) in columns.items():
        if p_safe.shape != costs.shape:
            raise ValueError(f"column {column!r} has shape {p_safe.shape}, expected {costs.shape}")
        result["labelers"][column] = {"labeler": labeler, **score_labels(p_safe, events, bins=bins)}
    if parsed:
        result["sources"] = {}
    for source in parsed:
        values = source.labels(dataset, seed)
        result["sources"][source.spec] = {
            "labeler": source.spec,
            "source": source.describe(seed, values),
            **score_labels(values, events, bins=bins),
        }
    return result


def _entries(result: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The labeled columns of a report, then its sources as ``source SPEC``."""
    sources = result.get("sources", {})
    return {**result["labelers"], **{f"source {spec}": e for spec, e in sources.items()}}


def format_report(result: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`report`'s metrics."""

    def fmt(value: float | None) -> str:
        return "  n/a" if value is None else f"{value:.3f}"

    lines = [
        f"{result['task']}: {result['n_steps']} steps; cost event within k steps: "
        + ", ".join(f"k={k} {rate:.1%}" for k, rate in result["event_rate"].items())
    ]
    entries = _entries(result)
    if not result["labelers"]:
        lines.append("no safety labels in this dataset: run `python -m benchmarks label` first")
    header = f"{'column':<20} {'labeler':<10} " + " ".join(
        f"{'AUROC@' + str(k):>9} {'AP@' + str(k):>7} {'ECE@' + str(k):>7}" for k in result["k"]
    )
    if entries:
        lines.append(header)
    for column, entry in entries.items():
        cells = " ".join(
            f"{fmt(entry['auroc'][str(k)]):>9} {fmt(entry['ap'][str(k)]):>7} "
            f"{fmt(entry['calibration'][str(k)]['ece']):>7}"
            for k in result["k"]
        )
        lines.append(f"{column:<20} {entry['labeler']:<10} {cells}")
    if result.get("sources"):
        lines.append(
            "source rows: p(s) made in memory (python -m benchmarks label-report --sources), "
            "not columns of the file"
        )
    return "\n".join(lines)


def plot(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write a PNG: ROC curves (left) and reliability diagrams (right) of :func:`report`."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "the label report plot needs matplotlib: `pip install matplotlib`"
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, (ax_roc, ax_cal) = plt.subplots(1, 2, figsize=(11, 4.8))
    entries = _entries(result)
    for column, entry in entries.items():
        for k in result["k"]:
            key = str(k)
            label = f"{column} ({entry['labeler']}), k={k}"
            roc = entry["roc"][key]
            if entry["auroc"][key] is not None:
                tpr = np.array(roc["tpr"], dtype=np.float64)
                ax_roc.plot(roc["fpr"], tpr, label=f"{label}: AUROC {entry['auroc'][key]:.3f}")
            cal = entry["calibration"][key]
            pred = np.array(cal["mean_predicted"], dtype=np.float64)  # None -> nan
            frac = np.array(cal["fraction_positive"], dtype=np.float64)
            ax_cal.plot(pred, frac, marker="o", label=label)
    for ax in (ax_roc, ax_cal):
        ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC of 1 - p(s)")
    ax_cal.set(
        xlabel="predicted P(unsafe) = 1 - p(s)",
        ylabel="observed cost-event rate",
        title="calibration",
    )
    fig.suptitle(f"{result['task']}: safety labels vs cost within k steps")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
