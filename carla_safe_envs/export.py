"""Exports of an offline dataset that the field's own loaders read as they are.

Three targets share one view of the data (:class:`ExportView`: frame size, flattening,
action mode) and one env spec that rebuilds the environment the exported data fits
(:func:`export_env_spec`: the task id, the file's action mode and every env option, plus the
observation wrappers of the view as Gymnasium ``additional_wrappers``):

* **DSRL / OSRL** (:func:`dsrl_arrays`, :func:`write_dsrl`): one HDF5 file of flat arrays with
  every key DSRL's ``OfflineEnv.get_dataset`` asserts -- ``observations``,
  ``next_observations``, ``actions``, ``rewards``, ``costs``, ``terminals``, ``timeouts`` --
  whose shapes match the env the file names (:func:`check_dsrl`, DSRL's own checks).
  ``next_observations[i]`` is ``observations[i + 1]`` inside an episode and never crosses an
  episode boundary: the source file stores no observation after an episode's last step, so
  there it repeats ``observations[i]`` (the convention of
  :meth:`~carla_safe_envs.datasets.OfflineDataset.sample_transitions`).
* **Minari** (:func:`to_minari`): the env spec recorded is :func:`export_env_spec`'s, so
  ``recover_environment()`` rebuilds the env the data came from; each episode's infos row 0
  is the real reset info (:func:`reset_infos`, the episode's reset replayed).
* **d3rlpy**: :func:`baselines.d3rlpy_data.write_replay_buffer` (this package imports no RL
  library).

Extra step columns travel generically: every top-level ``(N, ...)`` dataset of the source
file besides the frames and the DSRL keys (``episode_ids``, ``noise``, ``safety``, a
labeler's ``safety_<name>``, ``profile_ids``, ...) and every ``infos/*`` signal.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from carla_safe_envs.datasets import OBS_SIZE, DatasetError, OfflineDataset, import_h5py

DSRL_KEYS = (
    "observations",
    "next_observations",
    "actions",
    "rewards",
    "costs",
    "terminals",
    "timeouts",
)  # the keys DSRL's OfflineEnv.get_dataset asserts
DSRL_FORMAT = "carla-safe/dsrl-v1"
_CORE_COLUMNS = ("observations", "actions", "rewards", "costs", "terminals", "timeouts")


@dataclasses.dataclass(frozen=True)
class ExportView:
    """How the exported data looks.

    Attributes:
        image_size: side [px] of the frames, a divisor of 128 (area-averaged with
            :func:`carla_safe_envs.bev.downsample`, as the agents' low-resolution presets are).
        flatten: frames as flat ``(S * S * 3,)`` uint8 vectors (HWC order, Gymnasium's
            ``FlattenObservation``), for vector-input learners such as OSRL's.
        action_mode: ``None`` keeps the file's actions; ``"continuous"`` maps a discrete
            file's indices to their ``(acc / 3, steer)`` values
            (:func:`carla_safe_envs.env.discrete_to_continuous`) and names the continuous env.
    """

    image_size: int = OBS_SIZE
    flatten: bool = False
    action_mode: str | None = None

    def __post_init__(self) -> None:
        if self.image_size < 1 or OBS_SIZE % self.image_size:
            raise ValueError(
                f"image_size must divide {OBS_SIZE} (128, 64, 32, 16, 8, ...), got {self.image_size}"
            )
        if self.action_mode not in (None, "discrete", "continuous"):
            raise ValueError(
                f"action_mode must be None, 'discrete' or 'continuous', got {self.action_mode!r}"
            )

    def observation_shape(self) -> tuple[int, ...]:
        s = self.image_size
        return (s * s * 3,) if self.flatten else (s, s, 3)

    def frames(self, frames: np.ndarray) -> np.ndarray:
        """``(n, 128, 128, 3)`` uint8 stored frames as this view's ``(n, *shape)`` uint8."""
        from carla_safe_envs.bev import downsample

        frames = downsample(frames, self.image_size)
        return frames.reshape(len(frames), -1) if self.flatten else frames


def _action_mode(data: OfflineDataset, view: ExportView) -> str:
    mode = view.action_mode or data.action_mode
    if data.action_mode == "continuous" and mode == "discrete":
        raise ValueError(
            f"{data.path} has continuous actions, which have no discrete index: export "
            "without --actions discrete"
        )
    return mode


def export_env_spec(data: OfflineDataset, view: ExportView = ExportView()):
    """The ``gymnasium.EnvSpec`` of the env the exported data fits: the file's task with its
    action mode and every ``env_kwargs`` option, and the view's observation wrappers
    (``DownsampleObservation``, ``FlattenObservation``) as ``additional_wrappers``, so that
    ``gym.make(spec)`` rebuilds it (and ``EnvSpec.to_json()`` stores it)."""
    import gymnasium as gym
    from gymnasium.envs.registration import WrapperSpec

    import carla_safe_envs  # noqa: F401 (registers the ids)

    base = gym.spec(data.task)
    kwargs = {**base.kwargs, **json.loads(data.attrs["env_kwargs"])}
    kwargs["action_mode"] = _action_mode(data, view)
    wrappers = []
    if view.image_size != OBS_SIZE:
        wrappers.append(
            WrapperSpec(
                "DownsampleObservation",
                "carla_safe_envs.wrappers:DownsampleObservation",
                {"size": view.image_size},
            )
        )
    if view.flatten:
        wrappers.append(
            WrapperSpec("FlattenObservation", "gymnasium.wrappers:FlattenObservation", {})
        )
    return dataclasses.replace(base, kwargs=kwargs, additional_wrappers=tuple(wrappers))


def make_export_env(spec_json: str, **overrides: Any):
    """The env an export names (its ``env_spec`` attribute, :func:`export_env_spec` as JSON);
    ``overrides`` (e.g. ``render_observation=False``) go to the env's constructor."""
    import gymnasium as gym
    from gymnasium.envs.registration import EnvSpec

    spec = EnvSpec.from_json(spec_json)
    spec = dataclasses.replace(spec, kwargs={**spec.kwargs, **overrides})
    return gym.make(spec)


def extra_columns(data: OfflineDataset) -> dict[str, np.ndarray]:
    """Every per-step column of ``data`` beyond the frames and the DSRL keys (source-file
    names; ``infos/...`` for the signals), each ``(N, ...)``."""
    out = {name: data.column(name) for name in data.column_names() if name not in _CORE_COLUMNS}
    out |= {f"infos/{name}": data.signal(name) for name in data.signal_names()}
    return out


def exported_actions(data: OfflineDataset, view: ExportView) -> np.ndarray:
    """``(N,)`` int64 indices or ``(N, 2)`` float32 actions in the view's action mode."""
    if _action_mode(data, view) == data.action_mode:
        return data.actions
    from carla_safe_envs.env import discrete_to_continuous

    return discrete_to_continuous(data.task, data.actions)


def next_indices(data: OfflineDataset) -> np.ndarray:
    """``(N,)`` int64 row of each step's next observation: ``i + 1`` inside an episode, ``i``
    at an episode's last step (nothing after it is stored)."""
    ids = data.episode_ids
    n = len(ids)
    following = np.minimum(np.arange(n) + 1, n - 1)
    return np.where(ids[following] == ids, following, np.arange(n)).astype(np.int64)


def dsrl_arrays(
    data: OfflineDataset, view: ExportView = ExportView(), *, extras: bool = True
) -> dict[str, np.ndarray]:
    """The DSRL dictionary of ``data`` in memory: :data:`DSRL_KEYS` (frames uint8 in the
    view's shape; ``terminals`` / ``timeouts`` as DSRL's float32 0/1) plus, with ``extras``,
    :func:`extra_columns`.  Memory: two copies of the frames at the view's size."""
    frames = np.empty((data.n_steps, *view.observation_shape()), dtype=np.uint8)
    for start, chunk in data.iter_frames(1024):
        frames[start : start + len(chunk)] = view.frames(chunk)
    out = {
        "observations": frames,
        "next_observations": frames[next_indices(data)],
        "actions": exported_actions(data, view),
        "rewards": data.rewards.astype(np.float32),
        "costs": data.costs.astype(np.float32),
        "terminals": data.terminals.astype(np.float32),
        "timeouts": data.timeouts.astype(np.float32),
    }
    if extras:
        out |= extra_columns(data)
    return out


def check_dsrl(arrays: Mapping[str, np.ndarray], env) -> None:
    """DSRL's own checks of ``OfflineEnv.get_dataset`` against ``env``: every key of
    :data:`DSRL_KEYS`, observations and actions shaped like the env's spaces, rewards,
    costs, terminals and timeouts ``(N,)``; :class:`DatasetError` names the first that fails."""
    for key in DSRL_KEYS:
        if key not in arrays:
            raise DatasetError(f"Dataset is missing key {key}")
    n = arrays["observations"].shape[0]
    obs_shape = env.observation_space.shape
    if obs_shape is not None and arrays["observations"].shape[1:] != obs_shape:
        raise DatasetError(
            f"Observation shape does not match env: {arrays['observations'].shape[1:]} vs {obs_shape}"
        )
    if arrays["next_observations"].shape != arrays["observations"].shape:
        raise DatasetError("next_observations must have the shape of observations")
    if arrays["actions"].shape[1:] != env.action_space.shape:
        raise DatasetError(
            f"Action shape does not match env: {arrays['actions'].shape[1:]} vs {env.action_space.shape}"
        )
    for key in ("rewards", "costs", "terminals", "timeouts"):
        if arrays[key].shape != (n,):
            raise DatasetError(f"{key} has wrong shape: {arrays[key].shape}, expected ({n},)")


def write_dsrl(
    data: OfflineDataset,
    out: str | os.PathLike,
    view: ExportView = ExportView(),
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` as a DSRL / OSRL HDF5 file at ``out`` (checked with :func:`check_dsrl`
    against the env it names first).  Attributes: ``format``, ``source`` (the carla-safe
    file), ``task``, ``env_spec`` (:func:`export_env_spec` as JSON: ``make_export_env``
    rebuilds the env), ``image_size``, ``flatten``, ``action_mode``; columns with a ``/`` in
    their name (``infos/ttc``) are HDF5 groups, which DSRL's loader reads as ``infos/ttc``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    h5py = import_h5py()
    spec = export_env_spec(data, view)
    arrays = dsrl_arrays(data, view)
    env = make_export_env(spec.to_json(), render_observation=False)
    try:
        check_dsrl(arrays, env)
    finally:
        env.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        with h5py.File(tmp, "w") as file:
            for name, values in arrays.items():
                frames = name in ("observations", "next_observations")
                file.create_dataset(
                    name,
                    data=values,
                    **({"compression": "gzip", "compression_opts": 4} if frames else {}),
                )
            file.attrs.update(
                format=DSRL_FORMAT,
                source=str(data.path),
                task=data.task,
                env_spec=spec.to_json(),
                image_size=view.image_size,
                flatten=view.flatten,
                action_mode=spec.kwargs["action_mode"],
            )
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# --- Minari --------------------------------------------------------------------------------


def _flat_info(info: Mapping[str, Any], names: list[str]) -> dict[str, float]:
    """The signals ``names`` (``ttc``, ``cost_terms/collision``, ...) of one env info."""
    out = {}
    for name in names:
        group, _, key = name.partition("/")
        out[name] = float(info[group][key] if key else info[group])
    return out


def reset_infos(data: OfflineDataset) -> list[dict[str, float]]:
    """The info each episode of ``data`` started with: ``cost`` and every signal of
    :meth:`~carla_safe_envs.datasets.OfflineDataset.signal_names`, from the episode's reset
    replayed (episode ``k`` of a collection is reset with seed ``seed + k`` in the file's
    env).  The replayed first frame must equal the stored one, else :class:`DatasetError`."""
    import gymnasium as gym

    import carla_safe_envs  # noqa: F401

    names = data.signal_names()
    kwargs = {**json.loads(data.attrs["env_kwargs"]), "action_mode": data.action_mode}
    env = gym.make(data.task, **kwargs)
    seed0 = int(data.attrs["seed"])
    infos = []
    try:
        for start, _ in data.episode_bounds():
            episode = int(data.episode_ids[start])
            obs, info = env.reset(seed=seed0 + int(episode))
            if not np.array_equal(obs, data.frames([start])[0]):
                raise DatasetError(
                    f"the reset of episode {episode} of {data.path} (seed {seed0 + int(episode)}) "
                    "does not replay the stored first frame, so its reset info is unknown: the "
                    "file was collected with another version of carla-safe or another seed rule"
                )
            infos.append({"cost": float(info["cost"]), **_flat_info(info, names)})
    finally:
        env.close()
    return infos


def to_minari(
    data: OfflineDataset,
    dataset_id: str,
    path: str | os.PathLike | None = None,
    view: ExportView = ExportView(),
):
    """Export ``data`` as a Minari dataset; returns the ``MinariDataset``.

    The recorded env spec is :func:`export_env_spec` (task, action mode, every env option,
    the view's wrappers), so ``recover_environment()`` rebuilds the env the data came from.
    ``infos`` per episode has ``T + 1`` rows: row 0 is the real reset info
    (:func:`reset_infos`), row ``t + 1`` the info of step ``t`` (``cost`` and the signals, a
    ``/`` in a name written as ``.``).  Minari stores ``T + 1`` observations; the file holds
    none after an episode's last step, so its last frame is repeated there, and so are the
    step columns that describe an observation (:func:`extra_columns` other than ``infos/*``,
    e.g. ``noise``, ``safety``), stored in infos under ``columns.<name>`` with row ``t`` =
    step ``t``.  ``path`` is the Minari root directory (default: ``MINARI_DATASETS_PATH`` or
    ``~/.minari/datasets``).
    """
    try:
        import minari
        from minari.data_collector import EpisodeBuffer
    except ImportError as error:
        raise ImportError(
            "the Minari export needs minari: `pip install minari` (or '.[data]')"
        ) from error
    import gymnasium as gym

    spec = export_env_spec(data, view)
    observation_space = gym.spaces.Box(0, 255, view.observation_shape(), np.uint8)
    if spec.kwargs["action_mode"] == "discrete":
        action_space: gym.Space = gym.spaces.Discrete(data.n_actions)
    else:
        action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    actions = exported_actions(data, view)
    signals = {name: data.signal(name) for name in data.signal_names()}
    columns = {k: v for k, v in extra_columns(data).items() if not k.startswith("infos/")}
    starts = reset_infos(data)
    buffers = []
    for index, (a, b) in enumerate(data.episode_bounds()):
        frames = view.frames(data.frames(np.arange(a, b)))
        reset = starts[index]
        infos = {"cost": np.r_[reset["cost"], data.costs[a:b]].astype(np.float32)}
        for name, values in signals.items():
            infos[name.replace("/", ".")] = np.r_[reset[name], values[a:b]].astype(np.float32)
        for name, values in columns.items():
            infos[f"columns.{name}"] = np.concatenate([values[a:b], values[b - 1 : b]])
        buffers.append(
            EpisodeBuffer(
                id=index,
                observations=np.concatenate([frames, frames[-1:]]),
                actions=actions[a:b],
                rewards=data.rewards[a:b],
                terminations=data.terminals[a:b],
                truncations=data.timeouts[a:b],
                infos=infos,
            )
        )
    previous = os.environ.get("MINARI_DATASETS_PATH")
    if path is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        return minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=spec,
            algorithm_name="carla-safe expert",
            observation_space=observation_space,
            action_space=action_space,
            description=f"{data.task} expert data ({data.attrs.get('env_kwargs')}), "
            "per-step cost in infos['cost'] (row 0: the reset info)",
            data_format="hdf5",
            author="carla-safe",
            eval_env=spec,
            jpeg_encoding=False,  # lossless frames
        )
    finally:
        if path is not None:
            if previous is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = previous
