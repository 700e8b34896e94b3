"""``python -m benchmarks run``: the benchmark grid, models x tasks x seeds, into a result store.

For a grid preset (:data:`benchmarks.grid.PRESETS`) and a result directory, :func:`run_grid`

1. opens (or creates) the store and checks that it holds the same protocol;
2. skips the cells that are already stored (a restarted run goes on where it stopped);
3. records the cells of models that are not available here (an import error) as failed;
4. collects or reuses the datasets the remaining models learn from, and labels them with p(s)
   where a model needs safety labels (CLIP when its weights are here, else the oracle);
5. hands the cells to an executor (:mod:`benchmarks.executors`: local process pool or Ray)
   and stores the rows of each finished cell at once, and the error of each failed one.

A cell of a variant (``--variants``, :class:`benchmarks.grid.Variant`) is made with the
variant's agent-config overrides on top of the preset's, and, for a label variant, trains
on the p(s) its label source makes of the dataset with the cell's seed
(:mod:`vlsafe.label_sources`), made here and recorded in the manifest (``variant_labels``:
source, seed, mean, sha256) before the cell runs.

A preset's ``shifts`` (``--shift density town``) evaluate every trained cell again on each
level of those generalization shifts (:mod:`benchmarks.generalize`) but its training one;
those episodes are extra rows of the cell (``condition``), and ``table`` summarizes them in
``table-generalize.md``.

Every model goes through the registry (``make_agent`` / ``fit`` / ``save`` /
``evaluate_agent``), so models plug in as they are registered.  At the end ``run`` prints the
comparison table (:mod:`benchmarks.table`) and writes it with its plots into the directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.grid import Cell, DatasetKey, GridError, GridPreset
from benchmarks.prepare import DatasetFailure, LabelerChoice, PreparedDataset

log = logging.getLogger(__name__)

HELP = "run the benchmark grid (models x tasks x seeds): datasets, training, evaluation, table"


@dataclass
class GridSummary:
    """What one :func:`run_grid` call did."""

    out: str
    cells: int = 0  # cells of the requested grid
    already_done: int = 0  # stored before this run
    finished: list[str] = field(default_factory=list)  # finished in this run
    failed: dict[str, str] = field(default_factory=dict)  # cell -> error, in this run
    labeler: str = ""  # safety labels: labeler and why
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_grid(
    preset: GridPreset,
    out: str | Path,
    *,
    cells: Sequence[Cell],
    executor: Any,
    data_dir: str | Path | None = None,
    labeler: str | None = None,
    clip_checkpoint: str | None = None,
    progress: bool = True,
) -> GridSummary:
    """Run the ``cells`` of ``preset`` with ``executor`` into the result directory ``out``.

    Args:
        preset: the grid preset (its protocol must match the directory's, if it exists).
        out: the result directory (see :mod:`benchmarks.store`).
        cells: the cells to run (``benchmarks.grid.make_cells``); stored ones are skipped.
        executor: a :class:`benchmarks.executors.Executor`.
        data_dir: where datasets are kept (default ``out/datasets``).
        labeler: ``auto``, ``clip`` or ``oracle`` (default: the preset's).
        clip_checkpoint: a CLIP weights file (else the local caches are searched).
        progress: show progress bars.

    Raises:
        benchmarks.store.StoreError: ``out`` holds another store format or protocol, or
            another run is writing it.
        GridError: ``--labeler clip`` without CLIP weights.
    """
    from benchmarks.executors import Job, unpack_model
    from benchmarks.grid import (
        DEFAULT_VARIANT,
        cell_config,
        cell_label_source,
        dataset_for,
        get_variant,
        needs_labels,
    )
    from benchmarks.prepare import resolve_labeler
    from benchmarks.store import STORE_FORMAT, ResultStore, now
    from carla_safe_envs.agents import AgentError, get_spec
    from carla_safe_envs.progress import progress_bar, write_line

    started = time.perf_counter()
    store = ResultStore.open_or_create(out, preset.protocol())
    summary = GridSummary(out=str(out), cells=len(cells))
    with store.lock():
        variants = sorted({c.variant for c in cells} - {DEFAULT_VARIANT})
        store.record_variants({name: get_variant(name).definition() for name in variants})
        store.add_requested(cells)
        todo = [c for c in cells if not store.is_finished(c)]
        summary.already_done = len(cells) - len(todo)

        def fail(cell: Cell, error: str, trace: str = "") -> None:
            store.write_failure(cell, error, trace)
            summary.failed[str(cell)] = error
            log.warning("%s failed: %s", cell, error)

        unavailable = {}
        for model in dict.fromkeys(c.model for c in todo):
            try:
                get_spec(model).load_class()
            except AgentError as exc:
                unavailable[model] = str(exc)
        for cell in [c for c in todo if c.model in unavailable]:
            fail(cell, unavailable[cell.model])
        todo = [c for c in todo if c.model not in unavailable]

        keys = {c: dataset_for(c, preset) for c in todo}
        labeled = needs_labels(todo, preset)
        choice = None
        if labeled:
            choice = resolve_labeler(labeler or preset.labeler, clip_checkpoint)
            summary.labeler = f"{choice.name}: {choice.reason}"
        data_dir = Path(data_dir) if data_dir is not None else store.root / "datasets"
        prepared = _prepare(keys, data_dir, preset, labeled, choice, progress)
        store.update_manifest(
            datasets={
                **store.manifest["datasets"],
                **{k.filename: _dataset_entry(k, p) for k, p in prepared.items()},
            }
        )

        jobs = []
        variant_labels = {}
        for cell in todo:
            key = keys[cell]
            data = prepared.get(key) if key is not None else None
            if isinstance(data, DatasetFailure):
                fail(cell, data.error, data.traceback)
                continue
            labels = data.labels if data is not None else None
            uses_labels = get_spec(cell.model).needs_safety and labels is not None
            labeler = str(labels.get("labeler", "")) if uses_labels else ""
            source = cell_label_source(cell)
            safety, safety_attrs = None, {}
            if source is not None and data is not None:
                safety, safety_attrs = variant_safety(data.path, source, cell.seed)
                variant_labels[cell] = {**safety_attrs, "dataset": key.filename}
                labeler = _labeler_text(safety_attrs)
            jobs.append(
                Job(
                    cell=cell,
                    agent_preset=preset.agent_preset,
                    episodes=preset.episodes,
                    eval_seed=preset.eval_seed,
                    dataset=str(data.path) if data is not None else None,
                    dataset_sha256=data.content_sha256 if data is not None else "",
                    labeler=labeler,
                    model_dir=str(store.model_dir(cell)),
                    log_file=str(store.log_file(cell)),
                    env_kwargs=dict(preset.env_kwargs.get(cell.task, {})),
                    config=cell_config(cell, preset),
                    shifts=preset.shifts,
                    progress=progress,
                    safety=safety,
                    safety_attrs=safety_attrs,
                )
            )
        store.record_variant_labels(variant_labels)

        loop_started = time.perf_counter()
        with progress_bar(len(jobs), "benchmark grid", progress) as bar:
            for done, result in enumerate(executor.run(jobs), start=1):
                if result.log_text is not None:
                    _append(store.log_file(result.cell), result.log_text)
                if result.ok:
                    if result.model_archive is not None:
                        unpack_model(result.model_archive, store.model_dir(result.cell))
                    extra = {
                        "store_format": STORE_FORMAT,
                        "preset": preset.name,
                        "executor": executor.name,
                        "finished": now(),
                    }
                    store.write_cell(result.cell, [{**row, **extra} for row in result.rows])
                    summary.finished.append(str(result.cell))
                else:
                    fail(result.cell, result.error, result.traceback)
                elapsed = time.perf_counter() - loop_started
                write_line(bar, _cell_line(result, done, len(jobs), elapsed))
                if bar is not None:
                    bar.update()
    summary.seconds = round(time.perf_counter() - started, 1)
    return summary


def _cell_line(result: Any, done: int, total: int, elapsed: float) -> str:
    """``[done/total] cell: Return, Cost, AR, CR as trained (or its error), its time, and the
    grid's ETA at this run's pace so far``."""
    from benchmarks.store import TRAIN_CONDITION, rows_metrics
    from carla_safe_envs.progress import format_duration

    head = f"[{done}/{total}] {result.cell}"
    if result.ok:
        m = rows_metrics(
            r for r in result.rows if r.get("condition", TRAIN_CONDITION) == TRAIN_CONDITION
        )
        text = (
            f"{head}: Return {m['Return']:.1f}, Cost {m['Cost']:.1f}, AR {m['AR']:.2f}, "
            f"CR {m['CR']:.2f} ({format_duration(result.seconds)})"
        )
    else:
        text = f"{head}: failed: {(result.error.splitlines() or [''])[0]}"
    if done < total:
        text += f"; ETA {format_duration(elapsed / done * (total - done))}"
    return text


def _prepare(
    keys: dict[Cell, DatasetKey | None],
    data_dir: Path,
    preset: GridPreset,
    labeled: set[DatasetKey],
    choice: LabelerChoice | None,
    progress: bool,
) -> dict[DatasetKey, PreparedDataset | DatasetFailure]:
    from benchmarks.prepare import prepare_datasets

    wanted = {k for k in keys.values() if k is not None}
    if not wanted:
        return {}
    return prepare_datasets(
        wanted, data_dir, preset=preset, labeled=labeled, labeler=choice, progress=progress
    )


def variant_safety(path: str | Path, source: str, seed: int) -> tuple[Any, dict[str, Any]]:
    """(N,) float32 p(s) that the label source ``source`` makes of the dataset at ``path``
    with ``seed``, and its record (``labeler``, ``source``, the seed where it matters, the
    labels' ``mean`` and ``sha256``): the same for the same dataset, source and seed."""
    from carla_safe_envs.datasets import OfflineDataset
    from vlsafe.label_sources import parse_label_source

    parsed = parse_label_source(source)
    with OfflineDataset(path) as dataset:
        values = parsed.labels(dataset, seed)
    return values, {"labeler": f"source:{parsed.spec}", **parsed.describe(seed, values)}


def _labeler_text(record: dict[str, Any]) -> str:
    """The rows' ``labeler`` of a label variant's cell: ``shuffled seed=1``, ``frame``."""
    seed = f" seed={record['seed']}" if "seed" in record else ""
    return f"{record['source']}{seed}"


def _dataset_entry(key: DatasetKey, prepared: PreparedDataset | DatasetFailure) -> dict[str, Any]:
    entry: dict[str, Any] = dict(key._asdict())
    if isinstance(prepared, DatasetFailure):
        entry["error"] = prepared.error
    else:
        entry["path"] = str(prepared.path)
        entry["labels"] = prepared.labels
        entry["sha256"] = prepared.sha256
        entry["content_sha256"] = prepared.content_sha256
    return entry


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(text)


# ---------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmarks.executors import EXECUTORS
    from benchmarks.grid import PRESETS

    parser.add_argument(
        "--preset", required=True, choices=list(PRESETS), help="grid preset: budgets and seeds"
    )
    parser.add_argument("--out", type=Path, required=True, help="result directory")
    parser.add_argument("--models", nargs="+", help="models (default: the nine of the table)")
    parser.add_argument("--tasks", nargs="+", help="task ids (default: all four)")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the preset's)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        metavar="VARIANT",
        help="variants to run: 'default' (the preset as it is) and/or names of "
        "benchmarks.grid.VARIANTS (frame, constant-1, constant-0, shuffled, noisy-0.3, "
        "beta-0, oracle); default: 'default' and the preset's variants",
    )
    parser.add_argument(
        "--shift",
        nargs="*",
        default=None,
        metavar="SHIFT",
        help="also evaluate every cell under these generalization shifts (density, town), as "
        "extra rows; a bare --shift: none (default: the preset's)",
    )
    parser.add_argument(
        "--executor", choices=list(EXECUTORS), default="local", help="where cells run"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel cells (local default 1; ray default: every CPU of the local instance)",
    )
    parser.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: a local instance)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="dataset folder (default OUT/datasets)"
    )
    parser.add_argument(
        "--labeler",
        choices=["auto", "clip", "oracle"],
        default=None,
        help="safety labels p(s) (default: the preset's, auto = CLIP if its weights are here)",
    )
    parser.add_argument("--clip-checkpoint", default=None, help="local CLIP weights file")
    parser.add_argument("--no-table", action="store_true", help="do not print the table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def make_executor(args: argparse.Namespace) -> Any:
    from benchmarks.executors import LocalExecutor, RayExecutor

    if args.executor == "ray":
        return RayExecutor(workers=args.workers, address=args.ray_address)
    if args.ray_address is not None:
        raise GridError("--ray-address needs --executor ray")
    return LocalExecutor(workers=1 if args.workers is None else args.workers)


def run(args: argparse.Namespace) -> int:
    """Exit code: 0 when every requested cell is stored, 1 when some failed, 2 on bad input."""
    from benchmarks.grid import get_preset, make_cells
    from benchmarks.store import StoreError

    try:
        preset = get_preset(args.preset)
        if args.shift is not None:
            preset = dataclasses.replace(preset, shifts=tuple(args.shift))
        cells = make_cells(
            preset, models=args.models, tasks=args.tasks, seeds=args.seeds, variants=args.variants
        )
        executor = make_executor(args)
        summary = run_grid(
            preset,
            args.out,
            cells=cells,
            executor=executor,
            data_dir=args.data_dir,
            labeler=args.labeler,
            clip_checkpoint=args.clip_checkpoint,
            progress=not args.no_progress,
        )
    except (GridError, StoreError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.as_dict(), indent=1))
    else:
        print(
            f"{summary.out}: {len(summary.finished)} cells finished, {summary.already_done} "
            f"already stored, {len(summary.failed)} failed ({summary.seconds} s)",
            file=sys.stderr,
        )
        for cell, error in summary.failed.items():
            print(f"  failed: {cell}: {error.splitlines()[0] if error else ''}", file=sys.stderr)
    if not args.no_table and not args.json:
        from benchmarks.table import write_outputs

        text, written = write_outputs(args.out)
        print(text)
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 1 if summary.failed else 0


RUN_COMMAND = (HELP, add_arguments, run)
