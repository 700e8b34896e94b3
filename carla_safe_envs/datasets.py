"""Offline datasets: the HDF5 file format and its lazy reader.

Schema ``carla-safe/offline-v1`` (DSRL / OSRL convention: ``observations[i]`` is the state in
which ``actions[i]`` was taken; ``rewards[i]``, ``costs[i]``, ``terminals[i]``, ``timeouts[i]``
and ``infos/*[i]`` result from that action; the observation after an episode's last step is
not stored).  ``N`` is the number of steps:

==========================  ==========================  ======================================
dataset                     shape, dtype                meaning
==========================  ==========================  ======================================
``observations``            (N, 128, 128, 3) uint8      BEV frames, chunked and compressed
``actions``                 (N,) int64 / (N, 2) f32     discrete index / continuous (acc, steer)
``rewards``, ``costs``      (N,) float32
``terminals``, ``timeouts`` (N,) bool                   terminated / truncated or cut at ``N``
``episode_ids``             (N,) int32                  0, 1, ... in collection order
``noise``                   (N,) float32                expert noise level of the episode
``profile_ids`` (optional)  (N,) int16                  the episode's behaviour profile, an
                                                        index into the ``mix`` attribute's
                                                        ``profiles`` (absent: ``expert``)
``infos/<key>``             (N,) float32                speed, collision, ttc (inf allowed), ...
``infos/cost_terms/<k>``    (N,) float32                the named cost indicators
``infos/reward_terms/<k>``  (N,) float32                the named reward terms
``safety`` (optional)       (N,) float32                p(s) of a safety labeler (its attrs)
==========================  ==========================  ======================================

File attributes: ``schema``, ``carla_safe_version``, ``task``, ``seed``, ``noise_levels``,
``action_mode``, ``env_kwargs`` (JSON), ``n_steps``, ``n_episodes``, ``created`` (ISO time),
``mix`` (JSON of :meth:`carla_safe_envs.profiles.DatasetMix.describe`: the dataset mix, its
cycle of (profile, noise) and every profile's parameters; absent in files written before
behaviour profiles: the expert at ``noise_levels``) and ``complete`` (written last; a file
without it never loads).

The expert writes these files (:func:`carla_safe_envs.collection.collect`); everything that
reads one goes through :class:`OfflineDataset`, which serves frames, transitions and
sequence windows and exports to Minari (d3rlpy's conversion lives with the d3rlpy agents,
:func:`baselines.d3rlpy_data.mdp_dataset`: this package imports no RL library).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from carla_safe_envs.progress import progress_bar

SCHEMA = "carla-safe/offline-v1"
CHUNK_CACHE_BYTES = 64 * 2**20  # h5py chunk cache per open file [B]
OBS_SIZE = 128  # stored BEV frames are (OBS_SIZE, OBS_SIZE, 3) uint8
INFO_KEYS = (
    "speed",  # [m/s]
    "collision",
    "out_of_lane",
    "off_road",
    "off_route",
    "arrived",
    "waypoints_reached",
    "distance",  # [m]
    "ttc",  # [s], inf when no conflict
    "lateral_error",  # [m]
)
INFO_GROUPS = ("cost_terms", "reward_terms")
STEP_COLUMNS = ("actions", "rewards", "costs", "terminals", "timeouts", "episode_ids", "noise")


def import_h5py():
    """``h5py``, or an ImportError that says how to install it."""
    try:
        import h5py
    except ImportError as error:
        raise ImportError(
            "offline datasets need h5py: `pip install h5py` (or `pip install -e '.[data]'`)"
        ) from error
    return h5py


def partial_path(out: str | os.PathLike) -> Path:
    """Where :func:`~carla_safe_envs.collection.collect` writes before the atomic rename to
    ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


# --- reading -------------------------------------------------------------------------------


class DatasetError(ValueError):
    """A file that is not a complete carla-safe offline dataset."""


class Transitions(NamedTuple):
    """A batch of B transitions (next_observations repeats the frame at an episode's end)."""

    observations: np.ndarray  # (B, 128, 128, 3) uint8
    actions: np.ndarray  # (B,) int64 or (B, 2) float32
    rewards: np.ndarray  # (B,) float32
    costs: np.ndarray  # (B,) float32
    next_observations: np.ndarray  # (B, 128, 128, 3) uint8
    terminals: np.ndarray  # (B,) bool
    timeouts: np.ndarray  # (B,) bool


class Sequences(NamedTuple):
    """B windows of T consecutive steps of one episode each."""

    observations: np.ndarray  # (B, T, 128, 128, 3) uint8
    actions: np.ndarray  # (B, T) int64 or (B, T, 2) float32
    rewards: np.ndarray  # (B, T) float32
    costs: np.ndarray  # (B, T) float32
    terminals: np.ndarray  # (B, T) bool
    timeouts: np.ndarray  # (B, T) bool
    is_first: np.ndarray  # (B, T) bool, True at an episode's first step
    safety: np.ndarray | None  # (B, T) float32 p(s), None without a `safety` column


def _open_checked(path: Path, mode: str):
    """Open ``path`` with h5py after checking it is a complete dataset of :data:`SCHEMA`."""
    h5py = import_h5py()
    if not path.exists():
        raise FileNotFoundError(
            f"no dataset at {path}: create one with `python -m benchmarks collect --out {path}`"
        )
    if partial_path(path).exists() and not path.exists():
        raise DatasetError(f"{path} is incomplete (only {partial_path(path)} exists)")
    try:
        file = h5py.File(path, mode, rdcc_nbytes=CHUNK_CACHE_BYTES)
    except OSError as error:
        raise DatasetError(
            f"{path} is not a readable HDF5 file (truncated or another format: {error}); "
            "collect it again with `python -m benchmarks collect`"
        ) from error
    schema = file.attrs.get("schema")
    if schema != SCHEMA:
        file.close()
        raise DatasetError(f"{path} has schema {schema!r}, expected {SCHEMA!r}")
    if not file.attrs.get("complete", False):
        file.close()
        raise DatasetError(
            f"{path} is incomplete (its collection was interrupted); collect it again"
        )
    return file


class OfflineDataset:
    """A lazy reader of one dataset file; frames are read on demand, never all at once.

    Use as a context manager (``with OfflineDataset(path) as data: ...``) or call ``close()``.
    The step columns (``actions``, ``rewards``, ...) are small and loaded on first use.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = _open_checked(self.path, "r")
        self._cache: dict[str, np.ndarray] = {}
        self._frames: np.ndarray | None = None  # every frame in memory, after load_frames()

    def __enter__(self) -> OfflineDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return self.n_steps

    def __repr__(self) -> str:
        return f"OfflineDataset({str(self.path)!r}, task={self.task!r}, n_steps={self.n_steps})"

    # --- metadata
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._file.attrs)

    @property
    def task(self) -> str:
        return str(self._file.attrs["task"])

    @property
    def n_steps(self) -> int:
        return int(self._file.attrs["n_steps"])

    @property
    def n_episodes(self) -> int:
        return int(self._file.attrs["n_episodes"])

    @property
    def action_mode(self) -> str:
        return str(self._file.attrs["action_mode"])

    @property
    def n_actions(self) -> int:
        """Size of the discrete action space the data was collected in (the env's
        ``Discrete(n)``, made with the file's ``env_kwargs``)."""
        if self.action_mode != "discrete":
            raise ValueError(f"{self.path} has continuous actions: there is no action count")
        import gymnasium as gym

        import carla_safe_envs  # noqa: F401 (registers the ids)

        kwargs = json.loads(self.attrs["env_kwargs"])
        env = gym.make(self.task, render_observation=False, **kwargs)
        try:
            return int(env.action_space.n)
        finally:
            env.close()

    # --- step columns
    def column(self, name: str) -> np.ndarray:
        """A per-step column by name (e.g. ``"costs"`` or a labeler's ``"safety_oracle"``),
        read once and cached; ``KeyError`` when the file has none."""
        if name not in self._cache:
            if name not in self._file:
                raise KeyError(f"{self.path} has no column {name!r}")
            self._cache[name] = self._file[name][()]
        return self._cache[name]

    actions = property(lambda self: self.column("actions"))
    rewards = property(lambda self: self.column("rewards"))
    costs = property(lambda self: self.column("costs"))
    terminals = property(lambda self: self.column("terminals"))
    timeouts = property(lambda self: self.column("timeouts"))
    episode_ids = property(lambda self: self.column("episode_ids"))
    noise = property(lambda self: self.column("noise"))

    @property
    def mix(self) -> dict[str, Any]:
        """The dataset mix it was collected with (:meth:`DatasetMix.describe` of
        :mod:`carla_safe_envs.profiles`); for files written before profiles existed, the
        expert at the file's noise levels."""
        if "mix" in self._file.attrs:
            return json.loads(self._file.attrs["mix"])
        from carla_safe_envs.profiles import noise_mix

        return noise_mix([float(p) for p in self._file.attrs["noise_levels"]]).describe()

    @property
    def profile_names(self) -> list[str]:
        """The profile names that :attr:`profile_ids` index."""
        return [p["name"] for p in self.mix["profiles"]]

    @property
    def profile_ids(self) -> np.ndarray:
        """(N,) the behaviour profile of each step's episode (zeros: ``expert``, in files
        written before profiles existed)."""
        if "profile_ids" in self._file:
            return self.column("profile_ids")
        return np.zeros(self.n_steps, dtype=np.int16)

    def column_names(self) -> list[str]:
        """The names of every top-level per-step column (``actions``, ..., ``safety``), sorted;
        the frames (``observations``) and the ``infos`` group are not columns."""
        return sorted(
            name
            for name, obj in self._file.items()
            if name != "observations" and not name.startswith("_") and hasattr(obj, "shape")
        )

    def signal(self, name: str) -> np.ndarray:
        """An ``infos`` column, e.g. ``"ttc"`` or ``"cost_terms/collision"`` (N,) float32."""
        key = f"infos/{name}"
        if key not in self._file:
            raise KeyError(f"{self.path} has no signal {name!r}; it has {self.signal_names()}")
        return self.column(key)

    def signal_names(self) -> list[str]:
        names: list[str] = []
        self._file["infos"].visititems(
            lambda name, obj: names.append(name) if hasattr(obj, "shape") else None
        )
        return sorted(names)

    def state_signal(self, name: str) -> np.ndarray:
        """(N,) float32 ``infos/<name>`` of the state ``observations[i]`` shows, not of the
        one ``actions[i]`` leads to: ``infos[name][i - 1]`` of the same episode, nan at an
        episode's first step (the reset state, whose info is not stored).

        ``infos[name][i]`` results from ``actions[i]`` (the schema above), so a labeler that
        reads it sees one step of the behaviour's future; this one depends on the frame's
        state only.
        """
        values = np.asarray(self.signal(name), dtype=np.float32)
        ids = self.episode_ids
        out = np.full(values.shape, np.nan, dtype=np.float32)
        same = ids[1:] == ids[:-1]
        out[1:][same] = values[:-1][same]
        return out

    def column_attrs(self, name: str) -> dict[str, Any]:
        """The attributes of a column (for labels: which labeler, model, ...)."""
        if name not in self._file:
            raise KeyError(f"{self.path} has no column {name!r}")
        return dict(self._file[name].attrs)

    @property
    def safety(self) -> np.ndarray | None:
        """p(s) per step of the labeler that wrote it, or None before labeling."""
        return self.column("safety") if "safety" in self._file else None

    @property
    def safety_labeler(self) -> dict[str, Any] | None:
        """The attributes of the ``safety`` column (which labeler, model, ...), or None."""
        return self.column_attrs("safety") if "safety" in self._file else None

    def episode_bounds(self) -> np.ndarray:
        """(n_episodes, 2) int64 [start, stop) rows of each episode, in file order."""
        ids = self.episode_ids
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        return np.stack([starts, np.r_[starts[1:], len(ids)]], axis=1).astype(np.int64)

    def future_cost(self, k: int) -> np.ndarray:
        """(N,) max cost over steps t+1 .. t+k of the same episode (0 past its end)."""
        costs, ids = self.costs, self.episode_ids
        result = np.zeros_like(costs)
        for j in range(1, min(k, len(costs) - 1) + 1):
            same = ids[j:] == ids[:-j]
            result[:-j] = np.maximum(result[:-j], np.where(same, costs[j:], 0.0))
        return result

    # --- frames
    @property
    def frame_size(self) -> int:
        """Side [px] of the frames this reader returns: 128 as stored, or the size given to
        :meth:`load_frames`."""
        return OBS_SIZE if self._frames is None else int(self._frames.shape[1])

    def load_frames(self, size: int = OBS_SIZE, *, progress: bool = False) -> OfflineDataset:
        """Read every frame into memory once, area-downsampled to ``size`` px
        (:func:`carla_safe_envs.bev.downsample`); from then on :meth:`frames`,
        :meth:`iter_frames` and the samplers serve them from memory at that size, with no
        HDF5 read or decompression per batch.  Memory: ``n_steps x size^2 x 3`` bytes
        (20,000 steps at 64 px = 246 MB; at 128 px = 983 MB).  Returns ``self``."""
        from carla_safe_envs.bev import downsample

        if self._frames is not None and self.frame_size == size:
            return self
        frames = np.empty((self.n_steps, size, size, 3), dtype=np.uint8)
        observations = self._file["observations"]
        with progress_bar(self.n_steps, f"load frames ({size} px)", progress) as bar:
            for start in range(0, self.n_steps, 1024):
                chunk = observations[start : start + 1024]
                frames[start : start + len(chunk)] = downsample(chunk, size)
                if bar is not None:
                    bar.update(len(chunk))
        self._frames = frames
        return self

    def frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(len(indices), S, S, 3) uint8 frames in the given order (repeats allowed); S is
        :attr:`frame_size` (128 unless :meth:`load_frames` chose another)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.n_steps):
            raise IndexError(f"frame indices must be in [0, {self.n_steps}), got {indices}")
        if self._frames is not None:
            return self._frames[indices]
        unique, inverse = np.unique(indices, return_inverse=True)
        observations = self._file["observations"]
        # one read per frame: ~100x faster than h5py's fancy (point-selection) indexing
        frames = np.empty((len(unique), *observations.shape[1:]), dtype=np.uint8)
        for row, index in enumerate(unique):
            frames[row] = observations[index]
        return frames[inverse.reshape(-1)]

    def iter_frames(self, batch_size: int = 256) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, frames[start : start + batch_size]) over the whole file."""
        observations = self._file["observations"] if self._frames is None else self._frames
        for start in range(0, self.n_steps, batch_size):
            yield start, observations[start : start + batch_size]

    # --- sampling
    def _next_index(self, indices: np.ndarray) -> np.ndarray:
        ids = self.episode_ids
        following = np.minimum(indices + 1, self.n_steps - 1)
        return np.where(ids[following] == ids[indices], following, indices)

    def sample_transitions(self, batch_size: int, rng: np.random.Generator) -> Transitions:
        """B uniform transitions; next_observations comes from the same episode."""
        indices = rng.integers(self.n_steps, size=batch_size)
        frames = self.frames(np.r_[indices, self._next_index(indices)])
        return Transitions(
            observations=frames[:batch_size],
            actions=self.actions[indices],
            rewards=self.rewards[indices],
            costs=self.costs[indices],
            next_observations=frames[batch_size:],
            terminals=self.terminals[indices],
            timeouts=self.timeouts[indices],
        )

    def sequence_starts(self, length: int) -> np.ndarray:
        """Every row that starts ``length`` steps inside one episode (computed once per
        length)."""
        key = f"_starts/{length}"
        if key not in self._cache:
            self._cache[key] = self._sequence_starts(length)
        return self._cache[key]

    def _sequence_starts(self, length: int) -> np.ndarray:
        bounds = self.episode_bounds()
        starts = [np.arange(a, b - length + 1) for a, b in bounds if b - a >= length]
        if not starts:
            longest = int((bounds[:, 1] - bounds[:, 0]).max())
            raise ValueError(
                f"no episode of {self.path} has {length} steps (the longest has {longest}); "
                "use a shorter sequence length"
            )
        return np.concatenate(starts)

    def sample_sequences(self, batch_size: int, length: int, rng: np.random.Generator) -> Sequences:
        """B windows of ``length`` steps, uniform over all windows inside one episode."""
        starts = rng.choice(self.sequence_starts(length), size=batch_size)
        rows = starts[:, None] + np.arange(length)  # (B, T)
        if self._frames is not None:
            frames = self._frames[rows]  # (B, T, S, S, C)
        else:
            observations = self._file["observations"]
            frames = np.stack([observations[s : s + length] for s in starts])  # (B, T, H, W, C)
        ids = self.episode_ids
        is_first = np.r_[True, ids[1:] != ids[:-1]][rows]
        safety = self.safety
        return Sequences(
            observations=frames,
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            costs=self.costs[rows],
            terminals=self.terminals[rows],
            timeouts=self.timeouts[rows],
            is_first=is_first,
            safety=None if safety is None else safety[rows],
        )

    # --- conversion
    def to_minari(
        self, dataset_id: str, path: str | os.PathLike | None = None, view: Any = None
    ):
        """Export as a Minari dataset that ``recover_environment()`` rebuilds the env of
        (action mode and env options included), reset infos in row 0:
        :func:`carla_safe_envs.export.to_minari` (``view``: its ``ExportView``)."""
        from carla_safe_envs.export import ExportView, to_minari

        return to_minari(self, dataset_id, path, view or ExportView())

    @classmethod
    def write_column(
        cls,
        path: str | os.PathLike,
        name: str,
        values: np.ndarray,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Add or replace the (N,) float32 column ``name`` (e.g. ``safety``) of ``path``.

        Written under a temporary name and flushed first; only then is the old column
        deleted and the new one moved into place, so an interruption never leaves a
        half-written column under ``name`` and never touches other data.  Close any open
        :class:`OfflineDataset` of the file first.
        """
        path = Path(path)
        values = np.asarray(values, dtype=np.float32)
        if name in STEP_COLUMNS + ("observations", "infos") or "/" in name:
            raise ValueError(f"{name!r} is a reserved column name; choose another")
        with _open_checked(path, "r+") as file:
            n_steps = int(file.attrs["n_steps"])
            if values.shape != (n_steps,):
                raise ValueError(f"{name} must have shape ({n_steps},), got {values.shape}")
            tmp_name = f"_tmp_{name}"
            if tmp_name in file:
                del file[tmp_name]
            column = file.create_dataset(tmp_name, data=values)
            column.attrs.update(dict(attrs or {}))
            file.flush()
            if name in file:
                del file[name]
            file.move(tmp_name, name)
            file.flush()


def write_relabeled(
    source: str | os.PathLike,
    out: str | os.PathLike,
    safety: np.ndarray,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """A dataset file ``out`` that reads as ``source`` with its ``safety`` column replaced by
    ``safety`` (N,) float32 and ``attrs``, leaving ``source`` untouched.

    The step columns and ``infos`` are copied (a few MB); the frames stay in ``source``
    behind an HDF5 external link to its absolute path, so ``out`` is small and valid while
    ``source`` stays where it is.  Used to train one model on other labels of a shared
    dataset (the grid's label variants) without writing into the file other cells read.

    Raises:
        ValueError: ``safety`` does not have one value per step of ``source``.
    """
    h5py = import_h5py()
    source, out = Path(source).resolve(), Path(out)
    values = np.asarray(safety, dtype=np.float32)
    with _open_checked(source, "r") as src:
        n_steps = int(src.attrs["n_steps"])
        if values.shape != (n_steps,):
            raise ValueError(f"safety must have shape ({n_steps},), got {values.shape}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with h5py.File(tmp, "w") as dst:
            for name in src:
                if name not in ("observations", "safety"):
                    src.copy(src[name], dst, name=name)
            dst["observations"] = h5py.ExternalLink(str(source), "/observations")
            column = dst.create_dataset("safety", data=values)
            column.attrs.update(dict(attrs or {}))
            dst.attrs.update(dict(src.attrs))  # ``complete`` last, as collect writes it
        os.replace(tmp, out)
    return out


def write_column(path, name, values, attrs=None) -> None:
    """Module-level alias of :meth:`OfflineDataset.write_column`."""
    OfflineDataset.write_column(path, name, values, attrs)
