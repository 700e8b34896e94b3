"""Label sources: the p(s) a VL-SAFE model trains on, made in memory from a dataset.

A label source is named by a short spec (``KIND`` or ``KIND:VALUE``), one of :data:`KINDS`:

- ``oracle``: the privileged :class:`~vlsafe.labels.OracleLabeler` (a cost within the next
  10 steps, time to collision, lateral error), as ``python -m benchmarks label --labeler
  oracle`` writes it;
- ``frame``: :class:`~vlsafe.labels.FrameLabeler`, the oracle's terms of the frame's own
  state only (no future cost, nothing that depends on the action taken there);
- ``constant:C``: p(s) = C everywhere (``constant:1``: the reward branch only; ``constant:0``:
  the cost branch only);
- ``shuffled``: the oracle's values permuted across all states of the dataset: the same
  marginal distribution, no link between a state and its label;
- ``noisy:Q``: the oracle's values, each replaced by 1 - p(s) with probability Q (an
  imperfect labeler that is wrong on a fraction Q of the states).

``shuffled`` and ``noisy`` draw from ``numpy.random.default_rng(seed)``, so a source and a
seed give the same labels on every machine; :func:`label_digest` fingerprints them.  The grid
(:mod:`benchmarks.grid` variants) trains on them and ``python -m benchmarks label-report
--sources`` scores them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlsafe.labels import FrameLabeler, OracleLabeler, dataset_signals

#: The sources of the p(s) ablation (issue 28), in its order.
STANDARD_SOURCES: tuple[str, ...] = (
    "oracle",
    "frame",
    "constant:1",
    "constant:0",
    "shuffled",
    "noisy:0.3",
)


def _run_labeler(labeler: Any, dataset: Any) -> np.ndarray:
    """(N,) float32 p(s) of a signal-only labeler over the whole dataset (no frames read)."""
    frames = np.empty((dataset.n_steps, 0, 0, 3), dtype=np.uint8)
    return labeler(frames, dataset_signals(dataset, labeler))


def _oracle(dataset: Any, value: float | None, rng: np.random.Generator) -> np.ndarray:
    return _run_labeler(OracleLabeler(), dataset)


def _frame(dataset: Any, value: float | None, rng: np.random.Generator) -> np.ndarray:
    return _run_labeler(FrameLabeler(), dataset)


def _constant(dataset: Any, value: float | None, rng: np.random.Generator) -> np.ndarray:
    return np.full(dataset.n_steps, value, dtype=np.float32)


def _shuffled(dataset: Any, value: float | None, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(_oracle(dataset, None, rng))


def _noisy(dataset: Any, value: float | None, rng: np.random.Generator) -> np.ndarray:
    p = _oracle(dataset, None, rng)
    flip = rng.random(len(p)) < value
    return np.where(flip, 1.0 - p, p).astype(np.float32)


@dataclass(frozen=True)
class _Kind:
    make: Callable[[Any, float | None, np.random.Generator], np.ndarray]
    takes_value: bool  # KIND:VALUE with VALUE in [0, 1]
    seeded: bool  # draws from the seed
    meaning: str  # for error messages


#: kind -> how it is made; ``KIND:VALUE`` where ``takes_value``.
KINDS: dict[str, _Kind] = {
    "oracle": _Kind(_oracle, False, False, "the privileged oracle labeler"),
    "frame": _Kind(_frame, False, False, "the oracle's terms of the frame's own state"),
    "constant": _Kind(_constant, True, False, "constant:C, p(s) = C in [0, 1] everywhere"),
    "shuffled": _Kind(_shuffled, False, True, "the oracle's values permuted across states"),
    "noisy": _Kind(_noisy, True, True, "noisy:Q, the oracle's flipped with probability Q"),
}


class LabelSourceError(ValueError):
    """A label source spec that does not parse; the message lists the valid forms."""


@dataclass(frozen=True)
class LabelSource:
    """One label source (see the module docstring); make one with :func:`parse_label_source`.

    Attributes:
        kind: a key of :data:`KINDS`.
        value: C of ``constant:C`` or Q of ``noisy:Q``; None for the other kinds.
    """

    kind: str
    value: float | None = None

    @property
    def spec(self) -> str:
        """The source as written: ``frame``, ``constant:1``, ``noisy:0.3``."""
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"

    @property
    def seeded(self) -> bool:
        """Whether the labels depend on the seed."""
        return KINDS[self.kind].seeded

    def labels(self, dataset: Any, seed: int = 0) -> np.ndarray:
        """(N,) float32 p(s) in [0, 1] of every step of ``dataset`` (an ``OfflineDataset``);
        ``seed`` only matters where :attr:`seeded`."""
        rng = np.random.default_rng(seed)
        values = KINDS[self.kind].make(dataset, self.value, rng).astype(np.float32)
        if values.shape != (dataset.n_steps,) or not np.all((values >= 0) & (values <= 1)):
            raise RuntimeError(f"label source {self.spec!r} made labels outside [0, 1]")
        return values

    def describe(self, seed: int | None = None, values: np.ndarray | None = None) -> dict[str, Any]:
        """JSON-ready record of the source (the seed where it matters, and with ``values``
        their mean and :func:`label_digest`)."""
        out: dict[str, Any] = {"source": self.spec}
        if self.seeded:
            out["seed"] = seed
        if values is not None:
            out["mean"] = round(float(np.mean(values)), 6)
            out["sha256"] = label_digest(values)
        return out


def parse_label_source(text: str) -> LabelSource:
    """The :class:`LabelSource` of ``text`` (``oracle``, ``frame``, ``constant:C``,
    ``shuffled``, ``noisy:Q``).

    Raises:
        LabelSourceError: an unknown kind, a missing or extra value, or a value outside
            [0, 1]; the message lists the valid forms.
    """
    forms = "; ".join(f"{name} ({kind.meaning})" for name, kind in KINDS.items())
    name, sep, raw = str(text).partition(":")
    kind = KINDS.get(name)
    if kind is None:
        raise LabelSourceError(f"unknown label source {text!r}; valid: {forms}")
    if not kind.takes_value:
        if sep:
            raise LabelSourceError(f"label source {name!r} takes no value, got {text!r}")
        return LabelSource(name)
    try:
        value = float(raw)
    except ValueError:
        raise LabelSourceError(
            f"label source {text!r} needs a number in [0, 1] after {name!r}: (e.g. "
            f"{name}:0.3); valid: {forms}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise LabelSourceError(f"label source {text!r}: the value must be in [0, 1]")
    return LabelSource(name, value)


def label_digest(values: np.ndarray) -> str:
    """sha256 (hex) of ``values`` as float32 bytes: equal labels, equal digest."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()
