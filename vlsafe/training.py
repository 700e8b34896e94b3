"""Training bookkeeping of the world-model agents: the CSV log, periodic checkpoints, the
progress bar and the stop on a non-finite loss.

One :class:`TrainingRun` wraps one ``fit``: every update's losses are averaged over
``log_every`` updates into a row of ``<log_dir>/train.csv`` (columns ``update``,
``env_steps``, ``seconds`` and the named losses, e.g. ``wm/image``, ``behavior/actor_loss``);
every ``checkpoint_every`` updates (and before the first) the agent is snapshot in memory and
saved to ``<log_dir>/checkpoint`` as a complete agent directory
(:func:`carla_safe_envs.agents.load_agent` reads it).  A NaN / inf loss restores the last
snapshot into the agent and raises :class:`TrainingDiverged`, which names the loss term and
where the last good checkpoint is.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from carla_safe_envs.agents import AgentError

log = logging.getLogger(__name__)

LOG_FILE = "train.csv"
CHECKPOINT_DIR = "checkpoint"


class TrainingDiverged(AgentError):
    """A loss became NaN / inf; the agent was reset to its last good checkpoint."""


class CsvLog:
    """Rows of named values written to ``path`` (the whole file is rewritten on each row, so a
    key that first appears later, e.g. an episode return, simply adds a column)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.rows: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: Mapping[str, float]) -> None:
        """Accumulate values for the next row (averaged per key)."""
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1

    def row(self, **fixed: float) -> dict[str, float]:
        """Close the current row: ``fixed`` columns first, then the averages; written out."""
        averages = {k: self._sums[k] / self._counts[k] for k in self._sums}
        row = {**fixed, **averages}
        self._sums, self._counts = {}, {}
        self.rows.append(row)
        self.write()
        return row

    @property
    def pending(self) -> bool:
        return bool(self._sums)

    def write(self) -> None:
        if self.path is None or not self.rows:
            return
        keys: dict[str, None] = {}
        for row in self.rows:
            keys.update(dict.fromkeys(row))
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(keys), restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


class TrainingRun:
    """Bookkeeping of one ``fit`` of a world-model agent (a context manager).

    The agent provides ``updates_done``, ``env_steps``, ``snapshot()`` -> state,
    ``restore(state)``, ``save(dir)`` and ``config.log_every`` / ``config.checkpoint_every``.
    """

    def __init__(self, agent: Any, *, log_dir: Path | None, progress: bool):
        self.agent = agent
        self.log = CsvLog(log_dir / LOG_FILE if log_dir is not None else None)
        self.checkpoint_dir = log_dir / CHECKPOINT_DIR if log_dir is not None else None
        self.progress = progress
        self.snapshot: Any = None
        self.snapshot_update = 0
        self.last: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self.bar: Any = None

    def __enter__(self) -> TrainingRun:
        self.checkpoint()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None and self.log.pending:
            self._row()

    @contextlib.contextmanager
    def phase(self, total: int, desc: str) -> Iterator[None]:
        """A progress bar of ``total`` units (updates or env steps) for one training phase."""
        from carla_safe_envs.progress import progress_bar

        with progress_bar(total, desc, self.progress) as bar:
            self.bar = bar
            try:
                yield
            finally:
                self.bar = None

    def advance(self, n: int = 1) -> None:
        """Move the progress bar by ``n`` units (updates or env steps)."""
        if self.bar is not None:
            self.bar.update(n)

    def record(self, metrics: Mapping[str, float]) -> None:
        """Log one update's metrics; write a row / a checkpoint when due."""
        self.log.add(metrics)
        updates = self.agent.updates_done
        config = self.agent.config
        if updates % config.log_every == 0:
            self._row()
        if updates % config.checkpoint_every == 0:
            self.checkpoint()

    def record_episode(self, metrics: Mapping[str, float]) -> None:
        """Log the metrics of an episode driven while training (online)."""
        self.log.add({f"env/{k}": v for k, v in metrics.items()})

    def _row(self) -> None:
        self.last = self.log.row(
            update=self.agent.updates_done,
            env_steps=self.agent.env_steps,
            seconds=round(time.perf_counter() - self._t0, 3),
        )

    def checkpoint(self) -> None:
        """Snapshot the agent in memory and, with a log directory, save it there."""
        agent = self.agent
        self.snapshot = agent.snapshot()
        self.snapshot_update = agent.updates_done
        if self.checkpoint_dir is not None:
            info = agent.train_info
            agent.train_info = {"checkpoint": True, "updates": agent.updates_done}
            try:
                agent.save(self.checkpoint_dir)
            finally:
                agent.train_info = info

    def diverged(self, error: FloatingPointError) -> TrainingDiverged:
        """Restore the last good snapshot; the error to raise (it names the failed update,
        the loss term and where the last good weights are)."""
        failed = self.agent.updates_done + 1
        self.agent.restore(self.snapshot)
        where = (
            f"The last good checkpoint (update {self.snapshot_update}) is in "
            f"{self.checkpoint_dir} (load it with carla_safe_envs.agents.load_agent)"
            if self.checkpoint_dir is not None
            else f"The agent was reset to its last good weights (update {self.snapshot_update}); "
            "pass log_dir to keep checkpoints on disk"
        )
        if self.log.pending:
            self._row()
        return TrainingDiverged(
            f"{self.agent.name}: training stopped at update {failed}: "
            f"{str(error).rstrip('.')}. {where}."
        )

    def summary(self) -> dict[str, Any]:
        """Updates, env steps and the last logged row's losses (finite values only)."""
        final = {k: round(v, 6) for k, v in self.last.items() if math.isfinite(v)}
        for key in ("update", "env_steps", "seconds"):
            final.pop(key, None)
        return {
            "updates": self.agent.updates_done,
            "env_steps": self.agent.env_steps,
            "final": final,
        }
