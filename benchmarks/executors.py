"""Where the cells of a benchmark grid run: in this process, on a local process pool, or as
Ray tasks on a local Ray instance or a cluster.

Every executor runs the same function, :func:`run_cell` (make the agent through the registry,
fit it, save it, evaluate it through the one evaluation loop, as trained and under the
grid's generalization shifts), and yields one :class:`CellResult` per :class:`Job` as cells
finish, in any order.  Executors never write
results: the driver (:func:`benchmarks.run.run_grid`) stores the rows it receives, so a
cluster needs no shared file system for the result store.  A cell that raises is returned as
a result with its error and traceback; the other cells go on.

Executors are listed in :data:`EXECUTORS`; anything with ``name`` and
``run(jobs) -> Iterator[CellResult]`` can drive a grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from benchmarks.grid import Cell

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to run one cell (picklable, paths as strings).

    Attributes:
        cell: model, task, seed.
        agent_preset: the agent preset the model is made with.
        episodes: evaluation episodes; episode k resets with ``eval_seed + k``.
        eval_seed: reset seed of the first evaluation episode.
        dataset: the offline dataset file the model learns from, or None.
        dataset_sha256: the content sha256 of that dataset (its step data:
            :func:`carla_safe_envs.cards.content_sha256`, the same for every collection of the
            same data, unlike the file's bytes); "" for none.
        labeler: the safety labeler of the dataset's p(s) column when the model uses it.
        model_dir: where the trained agent is saved (and reused from, when complete).
        log_file: the cell's log file (appended to).
        env_kwargs: extra environment options of the task.
        config: overrides of the agent preset's fields (the grid's budget for this model).
        shifts: generalization shifts (``density``, ``town``): the trained agent is also
            evaluated on every level of each but its training one, with the same episodes.
        progress: show the training and evaluation progress bars.
        safety: (N,) float32 p(s) the model trains on instead of the dataset's (a label
            variant's, made by the driver), or None; the shared dataset file is never
            written: the worker trains on a relabeled copy that links its frames
            (:func:`carla_safe_envs.datasets.write_relabeled`).
        safety_attrs: the attributes of that p(s) column (its label source and seed).
    """

    cell: Cell
    agent_preset: str
    episodes: int
    eval_seed: int
    dataset: str | None
    labeler: str
    model_dir: str
    log_file: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    dataset_sha256: str = ""
    shifts: tuple[str, ...] = ()
    progress: bool = False
    safety: Any = field(default=None, compare=False)  # (N,) float32, or None
    safety_attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class CellResult:
    """What a worker returns: the rows of a finished cell, or the error of a failed one.

    ``model_archive`` (a tar of the saved agent) and ``log_text`` come back from workers that
    cannot write to the driver's directory (Ray); local workers write both in place.
    """

    cell: Cell
    rows: list[dict[str, Any]] | None = None
    error: str = ""
    traceback: str = ""
    seconds: float = 0.0
    model_archive: bytes | None = None
    log_text: str | None = None

    @property
    def ok(self) -> bool:
        return self.rows is not None


class Executor(Protocol):
    name: str

    def run(self, jobs: Sequence[Job]) -> Iterator[CellResult]: ...


# ---------------------------------------------------------------------------- one cell
def _agent_identity(meta: Mapping[str, Any]) -> str:
    keys = ("model", "task", "preset", "seed", "action_mode", "env_kwargs", "config")
    return json.dumps({k: meta.get(k) for k in keys}, sort_keys=True, default=str)


def _saved_agent_matches(model_dir: Path, agent: Any) -> bool:
    """Whether ``model_dir`` holds a completely saved agent equal in identity to ``agent``
    (``agent.json`` is written last by ``save``, so its presence means a whole save)."""
    from carla_safe_envs.agents import AgentError, read_metadata

    try:
        stored = read_metadata(model_dir)
    except (AgentError, ValueError, OSError):
        return False
    fresh = json.loads(json.dumps(agent.metadata(), default=str))
    return _agent_identity(stored) == _agent_identity(fresh)


def _note(log_file: Path, text: str) -> None:
    """Append a timestamped line to a cell's log."""
    from benchmarks.store import now

    with open(log_file, "a") as handle:
        handle.write(f"{now()} {text}\n")


def run_cell(job: Job) -> CellResult:
    """Make, fit, save and evaluate one cell; its rows (one per evaluation episode and
    condition), or the error if anything raised.

    The agent is evaluated on its task as trained (rows with ``condition`` ``"train"``,
    :data:`benchmarks.store.TRAIN_CONDITION`), then on every level of each of ``job.shifts``
    but its training one (``condition`` the level's label, e.g. ``density=high``), each with
    ``job.episodes`` episodes from ``job.eval_seed``.  A model directory that already holds
    this exact agent (a run killed during evaluation) is loaded instead of trained again."""
    from benchmarks.generalize import conditions_for
    from benchmarks.store import TRAIN_CONDITION
    from benchmarks.train import evaluate_agent
    from carla_safe_envs.agents import get_spec, load_agent, make_agent, versions
    from carla_safe_envs.metrics import aggregate

    cell = job.cell
    started = time.perf_counter()
    log_file = Path(job.log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        _note(
            log_file, f"cell {cell}: start (agent preset {job.agent_preset}, dataset {job.dataset})"
        )
        agent = make_agent(
            cell.model,
            cell.task,
            preset=job.agent_preset,
            seed=cell.seed,
            env_kwargs=job.env_kwargs,
            config=job.config,
        )
        conditions: dict[str, Mapping[str, Any]] = {TRAIN_CONDITION: {}}
        for shift in job.shifts:  # checked before training: a bad level fails at once
            train, levels = conditions_for(cell.task, shift, agent.env_kwargs)
            conditions.update({k: v for k, v in levels.items() if k != train})
        model_dir = Path(job.model_dir)
        if _saved_agent_matches(model_dir, agent):
            agent = load_agent(model_dir)
            summary = dict(agent.train_info)
            _note(log_file, f"cell {cell}: reusing the trained agent in {model_dir}")
        else:
            shutil.rmtree(model_dir, ignore_errors=True)
            with _training_data(job) as dataset:
                summary = agent.fit(dataset, log_dir=model_dir / "logs", progress=job.progress)
            if job.safety is not None:  # the shared file, not the scratch copy (train_info too)
                summary.update(dataset=job.dataset, labels=dict(job.safety_attrs))
            agent.save(model_dir)
        _note(log_file, f"cell {cell}: trained {summary}")
        evaluated = {}  # condition -> (per-episode metrics, seconds)
        for condition, options in conditions.items():
            eval_started = time.perf_counter()
            episodes = evaluate_agent(
                agent,
                episodes=job.episodes,
                seed=job.eval_seed,
                progress=job.progress,
                options=options,
            )
            evaluated[condition] = (episodes, time.perf_counter() - eval_started)
            _note(log_file, f"cell {cell}: evaluated ({condition}) {aggregate(episodes)}")
        common = {
            "model": cell.model,
            "variant": cell.variant,
            "label": get_spec(cell.model).label,
            "task": cell.task,
            "seed": cell.seed,
            "agent_preset": job.agent_preset,
            "episodes": job.episodes,
            "dataset": Path(job.dataset).name if job.dataset else "",
            "dataset_sha256": job.dataset_sha256,
            "labeler": job.labeler,
            "train_seconds": float(summary.get("seconds", 0.0)),
            "config": json.dumps(dataclasses.asdict(agent.config), sort_keys=True, default=str),
            "train": json.dumps(summary, sort_keys=True, default=str),
            "versions": json.dumps(versions(), sort_keys=True),
            "host": socket.gethostname(),
        }
        rows = [
            {
                **common,
                "condition": condition,
                "eval_seconds": seconds,
                "episode": k,
                "eval_seed": job.eval_seed + k,
                **dataclasses.asdict(m),
            }
            for condition, (episodes, seconds) in evaluated.items()
            for k, m in enumerate(episodes)
        ]
        return CellResult(cell, rows=rows, seconds=time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - a failed cell is a result, the grid goes on
        text = traceback.format_exc()
        log.info("cell %s failed: %s", cell, exc)
        return CellResult(
            cell,
            error=f"{type(exc).__name__}: {exc}",
            traceback=text,
            seconds=time.perf_counter() - started,
        )
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _training_data(job: Job) -> Iterator[str | None]:
    """The dataset path ``job``'s model trains on: the job's dataset, or, with
    ``job.safety``, a relabeled copy of it in a scratch folder (removed afterwards)."""
    if job.safety is None or job.dataset is None:
        yield job.dataset
        return
    from carla_safe_envs.datasets import write_relabeled

    with tempfile.TemporaryDirectory(prefix="carla-safe-labels-") as tmp:
        path = Path(tmp) / Path(job.dataset).name
        yield str(write_relabeled(job.dataset, path, job.safety, job.safety_attrs))


# ---------------------------------------------------------------------------- local
def _init_worker(threads: int) -> None:
    """Pool worker start-up: cap the math libraries' threads before torch is imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


class LocalExecutor:
    """Cells in this process (``workers=1``, with the per-cell progress bars) or on a pool of
    ``workers`` spawned processes (each capped at ``cpu_count // workers`` math threads)."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, jobs: Sequence[Job]) -> Iterator[CellResult]:
        if self.workers == 1:
            for job in jobs:
                yield run_cell(job)
            return
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // self.workers)
        pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(threads,),
        )
        futures = {pool.submit(run_cell, dataclasses.replace(j, progress=False)): j for j in jobs}
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    yield future.result()
                except BrokenProcessPool as exc:  # a worker died (killed, out of memory)
                    yield CellResult(job.cell, error=f"worker process died: {exc}")
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------- ray
def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "the ray executor needs Ray: pip install 'carla-safe[bench]' (or `make install`)"
        ) from exc
    return ray


def _pack(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


def unpack_model(archive: bytes, directory: str | os.PathLike) -> None:
    """Extract a :attr:`CellResult.model_archive` into ``directory`` (replacing it)."""
    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(directory, filter="data")


def _ray_cell(job: Job, shipped: Mapping[str, Any]) -> CellResult:
    """A Ray task: run the cell in a scratch directory of the worker's machine, read the
    dataset from the object store when this machine lacks the file, and return the saved
    agent and the log with the rows."""
    import ray

    with tempfile.TemporaryDirectory(prefix="carla-safe-cell-") as tmp:
        dataset = job.dataset
        if dataset is not None and not Path(dataset).is_file():
            local = Path(tmp) / Path(dataset).name
            local.write_bytes(ray.get(shipped[dataset]))
            dataset = str(local)
        local_job = dataclasses.replace(
            job,
            dataset=dataset,
            model_dir=str(Path(tmp) / "model"),
            log_file=str(Path(tmp) / "cell.log"),
            progress=False,
        )
        result = run_cell(local_job)
        if result.ok:
            result.model_archive = _pack(Path(local_job.model_dir))
        result.log_text = Path(local_job.log_file).read_text()
    return result


class RayExecutor:
    """Cells as Ray tasks (one CPU each).  ``address=None`` starts a local Ray instance with
    ``workers`` CPUs (all by default) unless one is already running in this process; an
    address (``ray://host:10001`` or ``auto``) joins a cluster, and then the datasets travel
    through Ray's object store, so the nodes need carla-safe installed but no shared disk."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.workers = workers
        self.address = address

    def run(self, jobs: Sequence[Job]) -> Iterator[CellResult]:
        ray = _import_ray()
        started = False
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                num_cpus=self.workers if self.address is None else None,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
            started = True
        pending: dict[Any, Job] = {}
        try:
            shipped = {}
            if self.address is not None:  # other machines: datasets through the object store
                for path in sorted({j.dataset for j in jobs if j.dataset}):
                    shipped[path] = ray.put(Path(path).read_bytes())
            task = ray.remote(num_cpus=1, max_retries=0)(_ray_cell)
            # references nested in a dict reach the task unresolved: fetched only when needed
            pending.update({task.remote(job, shipped): job for job in jobs})
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    job = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the worker or task died
                        yield CellResult(job.cell, error=f"ray task failed: {exc}")
        finally:
            for ref in pending:  # left over when the driver stops early
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


EXECUTORS: dict[str, type] = {"local": LocalExecutor, "ray": RayExecutor}
