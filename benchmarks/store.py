"""The result store: one directory per benchmark protocol, one Parquet file per finished cell.

Layout of a result directory ``DIR``::

    manifest.json                    store format, the grid preset's protocol, the requested
                                     cells, the datasets and safety labels used
    cells/<task>/<model>/seed-S.parquet    one row per evaluation episode of a finished cell
                                     (a variant's cells: <task>/<model>@<variant>/...)
    failures/<task>/<model>/seed-S.json    the error of a cell whose last attempt failed
    logs/<task>/<model>/seed-S.log         the cell's log (warnings, summary, traceback)
    models/<task>/<model>/seed-S/          the trained agent (``agents.load_agent(dir)``)
    datasets/*.h5                          the offline datasets (unless ``--data-dir``)

A cell's rows are written at once: to a temporary file in the same folder, then renamed
(``os.replace``), so a killed run leaves either the whole cell or nothing, and a restarted run
skips exactly the cells whose file exists.  The manifest is replaced the same way.  Only the
process driving the grid writes here (executors return rows; they never write them), and a
lock file keeps two drivers out of one directory.

Row schema (:data:`ROW_COLUMNS`): the cell (``model``, ``variant``, ``label``, ``task``,
``seed``), the
protocol (``preset``, ``agent_preset``, ``episodes``), the episode (``condition``,
``episode``, ``eval_seed`` and the :class:`~carla_safe_envs.metrics.EpisodeMetrics` fields),
the data (``dataset``, ``dataset_sha256``: the content sha256 of its step data,
:func:`carla_safe_envs.cards.content_sha256`, "" in cells written before it was recorded and
for online models; ``labeler``), timing (``train_seconds``, ``eval_seconds`` of the
row's condition) and provenance (``config``, ``train``, ``versions`` as JSON, ``executor``,
``host``, ``finished``, ``store_format``).  ``condition`` is ``"train"``
(:data:`TRAIN_CONDITION`) for the evaluation on the task as trained, and a level's label of
:mod:`benchmarks.generalize` (``density=high``, ``town=Town05``) for the evaluations under
the protocol's ``shifts``, on the same episodes' reset seeds.

Variants (:class:`benchmarks.grid.Variant`): the manifest's ``variants`` holds the
definition of every variant run into the store (a name cannot be redefined), and
``variant_labels`` the label source, seed, mean and sha256 of the p(s) each label-variant
cell trained on, by cell key.  Rows and cells written before variants existed are the
default variant's (``variant="default"``), whose paths and ``requested`` entries are as
they were.

Formats: ``carla-safe/results-v2`` (:data:`STORE_FORMAT`) added ``condition`` and the
protocol's ``shifts``.  Stores of ``carla-safe/results-v1`` are still read: their rows are
all training-condition rows (``condition="train"``) and their protocol had no shifts
(``shifts=[]``); a run into one goes on with v2 rows and marks the manifest v2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from benchmarks.grid import DEFAULT_VARIANT, Cell, split_row_key
from carla_safe_envs.metrics import EpisodeMetrics, aggregate

STORE_FORMAT = "carla-safe/results-v2"
#: older formats this version reads (and upgrades when a run writes into them)
OLD_FORMATS: tuple[str, ...] = ("carla-safe/results-v1",)
READABLE_FORMATS: tuple[str, ...] = (STORE_FORMAT, *OLD_FORMATS)
TRAIN_CONDITION = "train"  # the ``condition`` of rows evaluated on the task as trained
MANIFEST = "manifest.json"
LOCK = ".lock"

METRIC_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EpisodeMetrics))
ROW_COLUMNS: tuple[str, ...] = (
    "store_format",
    "preset",
    "model",
    "variant",
    "label",
    "task",
    "seed",
    "agent_preset",
    "episodes",
    "condition",
    "episode",
    "eval_seed",
    *METRIC_FIELDS,
    "dataset",
    "dataset_sha256",
    "labeler",
    "train_seconds",
    "eval_seconds",
    "config",
    "train",
    "versions",
    "executor",
    "host",
    "finished",
)


class StoreError(ValueError):
    """A directory that is not a result store of this version, or holds another protocol."""


def now() -> str:
    """The current local time, ISO 8601 with the offset."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_atomic(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of result directory ``root``, checked for the store format (the
    protocol of an old format as this version reads it: no ``shifts``).

    Raises:
        StoreError: ``root`` has no manifest, or one of another store format.
    """
    root = Path(root)
    file = root / MANIFEST
    if not file.is_file():
        what = "does not exist" if not root.exists() else f"has no {MANIFEST}"
        raise StoreError(
            f"{root} is not a benchmark result directory (it {what}); create one with "
            f"`python -m benchmarks run --preset smoke --out {root}`"
        )
    manifest = json.loads(file.read_text())
    if manifest.get("format") not in READABLE_FORMATS:
        raise StoreError(
            f"{root} was written by an incompatible result store (format "
            f"{manifest.get('format')!r}); this version of carla-safe reads "
            f"{', '.join(map(repr, READABLE_FORMATS))}. Run the grid again into a new --out "
            "directory (or use the carla-safe version that wrote it)."
        )
    if manifest["format"] in OLD_FORMATS:
        manifest["protocol"].setdefault("shifts", [])
    manifest["protocol"].setdefault("dataset_mix", None)  # stores before dataset mixes
    return manifest


class ResultStore:
    """Reads and writes the result directory ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)

    # ------------------------------------------------------------------ creation
    @classmethod
    def open_or_create(cls, root: str | os.PathLike, protocol: Mapping[str, Any]) -> ResultStore:
        """The store at ``root`` for the grid protocol ``protocol`` (created if ``root`` is
        new or empty).

        Raises:
            StoreError: ``root`` is a non-empty directory without a manifest, a store of
                another format, or a store of another protocol (the differences are listed).
        """
        root = Path(root)
        protocol = json.loads(json.dumps(protocol))  # as it reads back from JSON
        if not (root / MANIFEST).exists():
            if root.exists() and any(p.name != LOCK for p in root.iterdir()):
                raise StoreError(
                    f"{root} is not empty and is not a benchmark result directory (no "
                    f"{MANIFEST}); choose a new --out directory"
                )
            root.mkdir(parents=True, exist_ok=True)
            manifest = {
                "format": STORE_FORMAT,
                "created": now(),
                "protocol": protocol,
                "requested": [],
                "datasets": {},
            }
            _write_atomic(root / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))
        store = cls(root)
        stored = store.manifest["protocol"]
        if stored != protocol:
            diff = {
                k: (stored.get(k), protocol.get(k))
                for k in sorted(set(stored) | set(protocol))
                if stored.get(k) != protocol.get(k)
            }
            if set(diff) == {"shifts"}:
                shifts = stored.get("shifts") or []
                again = f"`--shift {' '.join(shifts)}`" if shifts else "a bare `--shift` (none)"
                hint = f"rerun with {again} as stored, or use a new --out directory"
            elif stored.get("name") == protocol.get("name"):
                hint = (
                    f"the {protocol.get('name')!r} preset has changed since this directory was "
                    "written (another carla-safe version?): use a new --out directory"
                )
            else:
                hint = f"use a new --out directory, or rerun with --preset {stored.get('name')}"
            raise StoreError(
                f"{root} holds results of another protocol ({stored.get('name')!r}); these "
                f"settings differ (stored, requested): {diff}; {hint}"
            )
        if store.manifest["format"] != STORE_FORMAT:  # an old store the run goes on in
            store.update_manifest(format=STORE_FORMAT, upgraded_from=store.manifest["format"])
        return store

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock (released when the process ends, even when killed).

        Raises:
            StoreError: another process is writing this directory.
        """
        import fcntl

        with open(self.root / LOCK, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(
                    f"another `benchmarks run` is writing {self.root}; wait for it to finish "
                    "(or stop it) before starting another into the same directory"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def update_manifest(self, **changes: Any) -> None:
        """Set top-level manifest entries and rewrite the manifest atomically."""
        self.manifest.update(changes, updated=now())
        text = json.dumps(self.manifest, indent=1, sort_keys=True)
        _write_atomic(self.root / MANIFEST, lambda p: p.write_text(text))

    def add_requested(self, cells: Iterable[Cell]) -> None:
        """Record ``cells`` as part of the grid (the table marks those without results);
        a default-variant cell as ``[model, task, seed]``, a variant's with its name."""
        requested = {tuple(c) for c in self.manifest["requested"]}
        requested |= {tuple(_record(c)) for c in cells}
        self.update_manifest(requested=sorted(list(c) for c in requested))

    def requested(self) -> list[Cell]:
        return [Cell(m, t, int(s), *v) for m, t, s, *v in self.manifest["requested"]]

    def record_variants(self, definitions: Mapping[str, Mapping[str, Any]]) -> None:
        """Record the definitions (:meth:`benchmarks.grid.Variant.definition`) of the
        variants a run adds cells of.

        Raises:
            StoreError: a variant of that name is stored with another definition (its
                cells would mean two things).
        """
        stored = dict(self.manifest.get("variants", {}))
        fresh = json.loads(json.dumps(dict(definitions)))
        changed = {n: (stored[n], d) for n, d in fresh.items() if n in stored and stored[n] != d}
        if changed:
            raise StoreError(
                f"{self.root} holds variant(s) {sorted(changed)} defined otherwise (stored, "
                f"now): {changed}; keep the stored definition or use a new --out directory"
            )
        if any(n not in stored for n in fresh):
            self.update_manifest(variants={**stored, **fresh})

    def record_variant_labels(self, labels: Mapping[Cell, Mapping[str, Any]]) -> None:
        """Record, per cell, the p(s) its label variant made (source, seed, mean, sha256)."""
        if labels:
            stored = dict(self.manifest.get("variant_labels", {}))
            stored.update({cell.key: dict(record) for cell, record in labels.items()})
            self.update_manifest(variant_labels=dict(sorted(stored.items())))

    # ------------------------------------------------------------------ paths
    def cell_file(self, cell: Cell) -> Path:
        return self.root / "cells" / f"{cell.key}.parquet"

    def failure_file(self, cell: Cell) -> Path:
        return self.root / "failures" / f"{cell.key}.json"

    def log_file(self, cell: Cell) -> Path:
        return self.root / "logs" / f"{cell.key}.log"

    def model_dir(self, cell: Cell) -> Path:
        return self.root / "models" / cell.key

    # ------------------------------------------------------------------ cells
    def is_finished(self, cell: Cell) -> bool:
        return self.cell_file(cell).is_file()

    def write_cell(self, cell: Cell, rows: list[Mapping[str, Any]]) -> Path:
        """Write the rows of a finished cell at once (and clear an earlier failure).

        Raises:
            StoreError: the cell is already stored (rows are never duplicated), or ``rows``
                is empty or lacks columns of :data:`ROW_COLUMNS`.
        """
        import pandas as pd

        path = self.cell_file(cell)
        if path.exists():
            raise StoreError(f"{cell} is already stored in {path}; refusing to duplicate rows")
        if not rows:
            raise StoreError(f"{cell}: no rows to write")
        frame = pd.DataFrame(list(rows))
        if "variant" not in frame.columns:
            frame["variant"] = cell.variant
        elif set(frame["variant"]) != {cell.variant}:
            raise StoreError(f"{cell}: rows of variants {sorted(set(frame['variant']))}")
        missing = [c for c in ROW_COLUMNS if c not in frame.columns]
        if missing:
            raise StoreError(f"{cell}: rows lack the columns {missing}")
        frame = frame[list(ROW_COLUMNS)]
        _write_atomic(path, lambda p: frame.to_parquet(p, index=False))
        self.failure_file(cell).unlink(missing_ok=True)
        return path

    def write_failure(self, cell: Cell, error: str, traceback: str = "") -> Path:
        """Record that ``cell`` failed with ``error`` (the traceback goes to its log)."""
        log = self.log_file(cell)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            handle.write(f"{now()} cell {cell} failed: {error}\n{traceback}")
        record = {
            "cell": list(cell),
            "error": error,
            "time": now(),
            "log": str(self.log_file(cell)),
        }
        path = self.failure_file(cell)
        _write_atomic(path, lambda p: p.write_text(json.dumps(record, indent=1)))
        return path

    def finished_cells(self) -> list[Cell]:
        """The cells with stored rows (files of the current layout only)."""
        out = []
        for path in sorted((self.root / "cells").glob("*/*/seed-*.parquet")):
            task, (model, variant) = path.parent.parent.name, split_row_key(path.parent.name)
            out.append(Cell(model, task, int(path.stem.removeprefix("seed-")), variant))
        return out

    def failures(self) -> dict[Cell, dict[str, Any]]:
        """Cell -> failure record, for cells whose last attempt failed."""
        out = {}
        for path in sorted((self.root / "failures").glob("*/*/seed-*.json")):
            record = json.loads(path.read_text())
            out[Cell(*record["cell"])] = record
        return out

    def rows(self):
        """Every stored row as one pandas DataFrame (columns :data:`ROW_COLUMNS`; rows of an
        old format as this version reads them: ``condition="train"``, rows written before
        variants ``variant="default"``).

        Raises:
            StoreError: a cell file of a store format this version does not read.
        """
        import pandas as pd

        files = sorted((self.root / "cells").glob("*/*/seed-*.parquet"))
        if not files:
            return pd.DataFrame(columns=list(ROW_COLUMNS))
        frames = []
        for file in files:
            frame = pd.read_parquet(file)
            unknown = set(frame["store_format"]) - set(READABLE_FORMATS)
            if unknown:
                raise StoreError(
                    f"{file} holds rows of store format(s) {sorted(unknown)}; this version "
                    f"reads {', '.join(map(repr, READABLE_FORMATS))}"
                )
            if "condition" not in frame.columns:  # v1: evaluated as trained only
                frame["condition"] = TRAIN_CONDITION
            if "dataset_sha256" not in frame.columns:  # cells before it was recorded
                frame["dataset_sha256"] = ""
            if "variant" not in frame.columns:  # written before variants: the default
                frame["variant"] = DEFAULT_VARIANT
            frames.append(frame[list(ROW_COLUMNS)])
        return pd.concat(frames, ignore_index=True)


def _record(cell: Cell) -> list[Any]:
    """``cell`` as the manifest's ``requested`` lists it (the default variant's as before)."""
    return list(cell) if cell.variant != DEFAULT_VARIANT else list(cell[:3])


def episode_metrics(row: Mapping[str, Any]) -> EpisodeMetrics:
    """The :class:`EpisodeMetrics` stored in one row."""
    return EpisodeMetrics(
        return_=float(row["return_"]),
        cost=float(row["cost"]),
        steps=int(row["steps"]),
        avg_speed=float(row["avg_speed"]),
        waypoints=int(row["waypoints"]),
        distance=float(row["distance"]),
        arrived=bool(row["arrived"]),
        collisions=int(row["collisions"]),
        collision_speed_sum=float(row["collision_speed_sum"]),
    )


def rows_metrics(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The table's metrics (:func:`~carla_safe_envs.metrics.aggregate`) of stored episode
    rows: one seed of one cell under one condition."""
    return aggregate([episode_metrics(row) for row in rows])
