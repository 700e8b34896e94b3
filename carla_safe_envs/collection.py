"""Data collection: drive the privileged driver in a task and write an offline dataset file.

:func:`collect` drives episodes of :class:`carla_safe_envs.expert.ExpertPolicy` (one process or
several, written in episode order either way), each with the (behaviour profile, noise) of its
place in a dataset mix (:mod:`carla_safe_envs.profiles`), and writes them into one HDF5 file
of the ``carla-safe/offline-v1`` format that :mod:`carla_safe_envs.datasets` defines and reads.
The file is written to ``<out>.partial`` and renamed only when complete; its dataset card
(:mod:`carla_safe_envs.cards`) is written beside it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from carla_safe_envs.datasets import INFO_GROUPS, INFO_KEYS, SCHEMA, import_h5py, partial_path
from carla_safe_envs.profiles import DatasetMix, get_mix, noise_mix
from carla_safe_envs.progress import progress_bar

logger = logging.getLogger(__name__)

DEFAULT_NOISE = (0.0, 0.1, 0.3)  # expert noise levels, cycled over episodes (the "expert" mix)
CHUNK_FRAMES = 16  # frames per HDF5 chunk of `observations` (random reads decompress one chunk)
COMPRESSION = "gzip"  # level 4: 1.3 MB / 1000 frames at ~2300 frames/s (lzf 2.7 MB, gzip-1 1.7 MB)
COMPRESSION_OPTS = 4


class EpisodeSpec(NamedTuple):
    """Episode ``index`` of a collection: reset and driver seed, noise level, step cap, and
    the behaviour profile (its parameters, and its index in the mix's ``profiles``)."""

    index: int
    seed: int
    noise: float
    max_steps: int
    profile: Any = "expert"  # a DriverProfile (or a profile name)
    profile_id: int = 0


_ENV_CACHE: dict[str, Any] = {}  # one env per (task, action_mode, kwargs) and process


def _make_env(task_id: str, action_mode: str, env_kwargs: Mapping[str, Any]):
    """The env an episode is driven in (cached per process; frames are rendered)."""
    import gymnasium as gym

    import carla_safe_envs  # noqa: F401  (registers the ids)

    key = json.dumps([task_id, action_mode, dict(env_kwargs)], sort_keys=True)
    if key not in _ENV_CACHE:
        kwargs = {**env_kwargs, "action_mode": action_mode, "render_observation": True}
        _ENV_CACHE[key] = gym.make(task_id, **kwargs)
    return _ENV_CACHE[key]


def _run_episode(
    task_id: str,
    action_mode: str,
    env_kwargs: Mapping[str, Any],
    spec: EpisodeSpec,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Drive one expert episode; its step columns as arrays (the ``infos`` under "infos/")."""
    from carla_safe_envs.evaluation import run_episode
    from carla_safe_envs.expert import ExpertPolicy

    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "costs")}
    rows |= {"terminals": [], "timeouts": []}
    infos: dict[str, list] = {}

    def record(step) -> None:
        info = step["info"]
        rows["observations"].append(step["obs"])
        rows["actions"].append(step["action"])
        rows["rewards"].append(step["reward"])
        rows["costs"].append(info["cost"])  # a missing cost is an error (KeyError)
        rows["terminals"].append(step["terminated"])
        rows["timeouts"].append(step["truncated"])  # a cut at max_steps counts as a timeout
        for key in INFO_KEYS:
            infos.setdefault(f"infos/{key}", []).append(info[key])
        for group in INFO_GROUPS:
            for name, value in info[group].items():
                infos.setdefault(f"infos/{group}/{name}", []).append(value)
        if on_step is not None:
            on_step()

    env = _make_env(task_id, action_mode, env_kwargs)
    policy = ExpertPolicy(noise=spec.noise, seed=spec.seed, profile=spec.profile)
    run_episode(env, policy, seed=spec.seed, max_steps=spec.max_steps, on_step=record)
    n = len(rows["actions"])
    action_dtype = np.int64 if action_mode == "discrete" else np.float32
    out = {
        "observations": np.asarray(rows["observations"], dtype=np.uint8),  # (T, 128, 128, 3)
        "actions": np.asarray(rows["actions"], dtype=action_dtype),
        "rewards": np.asarray(rows["rewards"], dtype=np.float32),
        "costs": np.asarray(rows["costs"], dtype=np.float32),
        "terminals": np.asarray(rows["terminals"], dtype=bool),
        "timeouts": np.asarray(rows["timeouts"], dtype=bool),
        "episode_ids": np.full(n, spec.index, dtype=np.int32),
        "noise": np.full(n, spec.noise, dtype=np.float32),
        "profile_ids": np.full(n, spec.profile_id, dtype=np.int16),
    }
    out |= {key: np.asarray(values, dtype=np.float32) for key, values in infos.items()}
    return out


def _worker_episode(args: tuple) -> dict[str, Any]:
    return _run_episode(*args)


class _Writer:
    """Appends episodes to a preallocated file of ``n_steps`` rows (datasets made lazily)."""

    def __init__(self, file, n_steps: int):
        self.file, self.n_steps, self.row = file, n_steps, 0

    def append(self, episode: Mapping[str, np.ndarray]) -> int:
        """Write (a prefix of) ``episode``; the number of rows written."""
        n = min(len(episode["actions"]), self.n_steps - self.row)
        for name, values in episode.items():
            if name not in self.file:
                chunks = (CHUNK_FRAMES, *values.shape[1:]) if name == "observations" else True
                compress = {"compression": COMPRESSION, "compression_opts": COMPRESSION_OPTS}
                self.file.create_dataset(
                    name,
                    shape=(self.n_steps, *values.shape[1:]),
                    dtype=values.dtype,
                    chunks=chunks,
                    **(compress if name == "observations" else {}),
                )
            self.file[name][self.row : self.row + n] = values[:n]
        if n < len(episode["actions"]):  # cut at the budget: the last row becomes a timeout
            self.file["timeouts"][self.row + n - 1] = True
        self.row += n
        return n


def _episode_specs(seed: int, mix: DatasetMix, steps: int) -> Iterator[EpisodeSpec]:
    ids = {p.name: i for i, p in enumerate(mix.profiles)}
    for k, (profile, noise) in enumerate(mix.cycle()):
        yield EpisodeSpec(k, seed + k, float(noise), steps, profile, ids[profile.name])


def resolve_mix(
    mix: str | DatasetMix | None = None, noise: Sequence[float] | None = None
) -> DatasetMix:
    """The mix a collection drives: ``mix`` by name, or the expert at the ``noise`` levels
    (``None`` for both: the ``expert`` mix, noise 0 / 0.1 / 0.3)."""
    if mix is not None and noise is not None:
        raise ValueError(
            "give a dataset mix or expert noise levels, not both (a mix names its own noise)"
        )
    if mix is not None:
        return get_mix(mix)
    levels = DEFAULT_NOISE if noise is None else tuple(noise)
    if not levels or any(not 0.0 <= float(p) <= 1.0 for p in levels):
        raise ValueError(f"noise must be a non-empty list of probabilities in [0, 1], got {noise}")
    return noise_mix(levels)


def collect(
    task_id: str,
    steps: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    noise: Sequence[float] | None = None,
    mix: str | DatasetMix | None = None,
    workers: int = 1,
    action_mode: str = "discrete",
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    card: bool = True,
) -> Path:
    """Drive the privileged driver for ``steps`` steps of ``task_id`` and write the dataset to
    ``out`` (and its card beside it, ``card=False`` to skip: :mod:`carla_safe_envs.cards`).

    Episode ``k`` is reset with seed ``seed + k`` and driven by component ``k % len(mix)`` of
    the dataset mix (a behaviour profile and a noise level: the probability of a burst of
    random or reckless actions, see :class:`carla_safe_envs.expert.Expert`).  ``mix`` names
    one of :data:`carla_safe_envs.profiles.MIXES`; without it the expert drives at the
    ``noise`` levels (default 0 / 0.1 / 0.3: the ``expert`` mix).  Only whole episodes are
    stored except the last,
    which is cut at ``steps`` with its last step marked ``timeouts=True``.  ``workers > 1``
    drives episodes in that many spawned processes and writes them in episode order, so the
    file equals the single-process one.  The file is written to ``<out>.partial`` and renamed
    to ``out`` only when complete: an interrupted run leaves nothing at ``out``.
    """
    out = Path(out)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    mix = resolve_mix(mix, noise)
    if action_mode not in ("discrete", "continuous"):
        raise ValueError(f"action_mode must be 'discrete' or 'continuous', got {action_mode!r}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    env_kwargs = dict(env_kwargs or {})
    for reserved in ("action_mode", "render_observation"):
        if reserved in env_kwargs:
            raise ValueError(f"env_kwargs may not set {reserved!r}; it is set by collect()")
    import carla_safe_envs

    h5py = import_h5py()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(out)
    specs = _episode_specs(seed, mix, steps)
    try:
        with h5py.File(tmp, "w") as file, progress_bar(steps, "collect", progress) as bar:
            writer = _Writer(file, steps)
            if workers == 1:
                on_step = (lambda: bar.update(1)) if bar is not None else None
                while writer.row < steps:
                    spec = next(specs)._replace(max_steps=steps - writer.row)
                    writer.append(_run_episode(task_id, action_mode, env_kwargs, spec, on_step))
            else:
                _collect_parallel(task_id, action_mode, env_kwargs, specs, writer, workers, bar)
            n_episodes = int(file["episode_ids"][-1]) + 1
            file.attrs.update(
                schema=SCHEMA,
                carla_safe_version=carla_safe_envs.__version__,
                task=task_id,
                seed=seed,
                noise_levels=np.asarray(
                    list(dict.fromkeys(c.noise for c in mix.components)), dtype=np.float64
                ),
                mix=json.dumps(mix.describe(), sort_keys=True),
                action_mode=action_mode,
                env_kwargs=json.dumps(env_kwargs, sort_keys=True),
                n_steps=steps,
                n_episodes=n_episodes,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            )
            file.flush()
            file.attrs["complete"] = True  # last: a file without it never loads
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%d steps, %d episodes)", out, steps, n_episodes)
    if card:
        from carla_safe_envs.cards import write_card

        write_card(out)
    return out


def _collect_parallel(task_id, action_mode, env_kwargs, specs, writer, workers, bar) -> None:
    """Episodes in ``workers`` spawned processes, written in order until the budget is met."""
    import multiprocessing

    pending: dict[int, dict] = {}  # finished episodes waiting for an earlier one
    running: dict[Future, int] = {}
    next_to_write = 0
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        while writer.row < writer.n_steps:
            while len(running) < workers:
                spec = next(specs)
                args = (task_id, action_mode, env_kwargs, spec)
                running[executor.submit(_worker_episode, args)] = spec.index
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                pending[running.pop(future)] = future.result()
            while next_to_write in pending and writer.row < writer.n_steps:
                n = writer.append(pending.pop(next_to_write))
                next_to_write += 1
                if bar is not None:
                    bar.update(n)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
