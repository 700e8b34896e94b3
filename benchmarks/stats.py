"""Interval estimates over seeds, as rliable recommends (Agarwal et al., "Deep Reinforcement
Learning at the Edge of the Statistical Precipice", NeurIPS 2021).

The stratified bootstrap resamples runs (seeds) with replacement *within* each stratum (task),
keeping every stratum's run count, recomputes the statistic on each resample and reports the
percentile interval of those statistics.  For one table cell there is one stratum, and it is
the ordinary bootstrap of the mean over seeds; for statistics over several tasks (the
performance profile) it keeps each task's weight fixed.

This is a numpy implementation of rliable's ``StratifiedBootstrap`` + percentile
``conf_int``: the ``rliable`` package (1.2) pins ``arch < 8``, and arch 7.x does not import
under pandas 3, which this project uses, so the library cannot be installed beside our
dependencies.  The computation is a few lines and is checked against exact bootstrap
distributions in ``tests/test_table.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

DEFAULT_REPS = 10_000  # bootstrap resamples (rliable's examples use 2,000-50,000)
CONFIDENCE = 0.95


class Interval(NamedTuple):
    """A point estimate and its percentile-bootstrap interval."""

    point: float
    low: float
    high: float


def stratified_bootstrap(
    strata: Sequence[np.ndarray],
    statistic: Callable[[list[np.ndarray]], np.ndarray],
    *,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
) -> np.ndarray:
    """The bootstrap distribution of ``statistic``.

    Args:
        strata: one array of run scores per stratum, each (n_j, ...) with n_j >= 1.
        statistic: maps a list of resampled strata, each (reps, n_j, ...), to (reps, ...).
        reps: number of resamples.
        seed: seed of the resampling generator (the result is deterministic).

    Returns:
        (reps, ...) the statistic of every resample.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    arrays = [np.asarray(s, dtype=np.float64) for s in strata]
    if not arrays or any(len(a) == 0 for a in arrays):
        raise ValueError("every stratum needs at least one run")
    rng = np.random.default_rng(seed)
    resampled = [a[rng.integers(0, len(a), size=(reps, len(a)))] for a in arrays]
    return np.asarray(statistic(resampled))


def _pooled_mean(resampled: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(resampled, axis=1).mean(axis=1)


def mean_interval(
    scores: np.ndarray | Sequence[float] | Sequence[np.ndarray],
    *,
    confidence: float = CONFIDENCE,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
) -> Interval:
    """The mean of the runs and its ``confidence`` stratified-bootstrap percentile interval.

    ``scores`` is one 1-D array of runs (one stratum: a table cell's per-seed values) or a
    list of such arrays (one per stratum); the mean is over all runs.  One run per stratum
    gives a zero-width interval.
    """
    if len(scores) and np.ndim(scores[0]) == 0:
        strata = [np.asarray(scores, dtype=np.float64)]
    else:
        strata = [np.asarray(s, dtype=np.float64) for s in scores]
    point = float(np.concatenate(strata).mean())
    boot = stratified_bootstrap(strata, _pooled_mean, reps=reps, seed=seed)
    low, high = percentile_interval(boot, confidence)
    return Interval(point, float(low), float(high))


T_FROM_SEEDS = 4  # from this many seeds on, a table's interval is the Student-t interval


def seed_interval(values: Sequence[float], *, confidence: float = CONFIDENCE) -> Interval:
    """The interval a table shows for a mean over seeds.

    With ``n >= T_FROM_SEEDS`` seeds: the Student-t ``confidence`` interval of the mean,
    ``mean +- t_{n-1} s / sqrt(n)`` (a real 95% interval for roughly normal per-seed values;
    the percentile bootstrap of so few runs is too narrow: its 95% covers ~80-85%).  With 2-3
    seeds: the seeds' range [min, max] (there the bootstrap's 2.5 and 97.5 percentiles are
    exactly the min and the max, since all-min resamples have probability 1/n^n >= 2.5%); one
    seed: a zero-width interval.
    """
    from scipy import stats as scipy_stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("seed_interval needs at least one value")
    point = float(x.mean())
    if x.size < T_FROM_SEEDS:
        return Interval(point, float(x.min()), float(x.max()))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, x.size - 1)) * float(
        x.std(ddof=1) / np.sqrt(x.size)
    )
    return Interval(point, point - half, point + half)


def describe_seed_intervals(counts: Sequence[int]) -> str:
    """What the brackets of a table whose cells have ``counts`` seeds are (for captions)."""
    counts = sorted(set(int(n) for n in counts if n >= 2))
    small = [n for n in counts if n < T_FROM_SEEDS]
    large = [n for n in counts if n >= T_FROM_SEEDS]
    parts = []
    if large:
        parts.append(
            f"95% Student-t interval of the mean over n = {'/'.join(map(str, large))} seeds"
        )
    if small:
        parts.append(f"the range of the n = {'/'.join(map(str, small))} seeds' values")
    return " or ".join(parts) if parts else "no interval (one seed)"


def percentile_interval(boot: np.ndarray, confidence: float = CONFIDENCE) -> np.ndarray:
    """(2, ...) the lower and upper ``confidence`` percentile bounds over axis 0."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = 100.0 * (1.0 - confidence) / 2.0
    return np.percentile(boot, [tail, 100.0 - tail], axis=0)


def performance_profile(
    strata: Sequence[np.ndarray],
    taus: np.ndarray,
    *,
    higher_is_better: bool = True,
    confidence: float = CONFIDENCE,
    reps: int = DEFAULT_REPS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """rliable's run-score performance profile: the share of all runs (pooled over strata)
    with a score above each threshold in ``taus`` (below it when ``higher_is_better`` is
    False), and its (2, len(taus)) stratified-bootstrap interval."""
    taus = np.asarray(taus, dtype=np.float64)

    def share(resampled: list[np.ndarray]) -> np.ndarray:
        runs = np.concatenate(resampled, axis=-1)[..., None]  # (..., N, 1)
        beats = runs > taus if higher_is_better else runs < taus  # (..., N, T)
        return beats.mean(axis=-2)

    point = share([np.asarray(s, dtype=np.float64) for s in strata])
    boot = stratified_bootstrap(strata, share, reps=reps, seed=seed)
    return point, percentile_interval(boot, confidence)
