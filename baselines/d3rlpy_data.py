"""d3rlpy at the boundary: importing it, and turning an offline dataset into its data.

:func:`mdp_dataset` converts an open :class:`~carla_safe_envs.datasets.OfflineDataset` into a
d3rlpy ``MDPDataset``: channel-first ``(N, 3, S, S)`` uint8 frames, **48 KiB per step at 128
px, held in memory for the whole training**.  The grid's datasets cost: ``smoke`` 600 steps =
28 MiB; ``small`` 20,000 steps = 0.92 GiB; ``paper`` 100,000 steps = 4.6 GiB (64 px frames, as
the ``cpu`` presets use, a quarter of that).  :func:`replay_buffer` builds the d3rlpy replay
buffer the agents train on: frame stacking, discrete actions mapped to continuous ones for IQL,
and optional acceleration-balanced sampling (:func:`balance_sampling`).

IQL and discrete data.  d3rlpy has no discrete IQL, so IQL acts in the continuous mode
(``Box(-1, 1, (2,))`` = (acc / 3, steer)).  It trains on a continuous-mode dataset
(``python -m benchmarks collect --action-mode continuous``) or on a discrete-mode one, whose
action indices are read as their continuous values with
:func:`carla_safe_envs.env.discrete_to_continuous` (the env's own table: index ``i`` becomes
``(acc_i / 3, steer_i)``, which drives the car exactly as action ``i`` does).  A policy trained
that way has only seen the 15 discrete points of the action box.

Logging.  Importing d3rlpy through :func:`import_d3rlpy` routes d3rlpy's console messages
(structlog, printed to stdout by default) to the standard ``logging`` module (loggers
``d3rlpy.*``, INFO and WARNING), so they never mix with the command line's ``--json`` output.
This is a process-wide structlog setting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from carla_safe_envs.agents import AgentError
from carla_safe_envs.tasks import TASKS

OBS_SHAPE = (128, 128, 3)  # the environments' BEV observation (H, W, C) uint8

_logs_routed = False


def import_d3rlpy():
    """``d3rlpy``, with its structlog console output routed to ``logging`` (once)."""
    global _logs_routed
    try:
        import d3rlpy
        import structlog
    except ImportError as error:
        raise AgentError(
            "the offline baselines need d3rlpy: pip install 'carla-safe[rl]' (or `make install`)"
        ) from error
    if not _logs_routed:
        structlog.configure(
            processors=[
                structlog.processors.format_exc_info,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
        )
        _logs_routed = True
    return d3rlpy


def mdp_dataset(data: Any):
    """``(d3rlpy.dataset.MDPDataset, costs)``: the whole of ``data`` (an open
    :class:`~carla_safe_envs.datasets.OfflineDataset`) for d3rlpy's algorithms.

    Observations are channel-first ``(N, 3, S, S)`` uint8 (d3rlpy's image encoders expect
    that; scale them with ``PixelObservationScaler``), S = ``data.frame_size`` (128, or the size
    ``data.load_frames`` chose).  Memory: this loads every frame, 48 KiB each at 128 px (100k
    steps = 4.9 GB, plus d3rlpy's own copies of slices).  ``costs`` (N,) float32 lies beside
    it in the same row order (d3rlpy has no cost field).
    """
    d3rlpy = import_d3rlpy()
    from d3rlpy.dataset import MDPDataset

    size = data.frame_size
    observations = np.empty((data.n_steps, 3, size, size), dtype=np.uint8)  # (N, 3, S, S)
    for start, frames in data.iter_frames(1024):  # (n, S, S, 3), read in contiguous chunks
        observations[start : start + len(frames)] = frames.transpose(0, 3, 1, 2)
    discrete = data.action_mode == "discrete"
    # a step that ends the episode and hits the time limit at once (a collision on step 500)
    # is a terminal: nothing follows it to bootstrap from, and d3rlpy refuses both flags
    timeouts = data.timeouts & ~data.terminals
    dataset = MDPDataset(
        observations=observations,
        actions=data.actions.reshape(-1, 1) if discrete else data.actions,
        rewards=data.rewards.reshape(-1, 1),
        terminals=data.terminals.astype(np.float32),
        timeouts=timeouts.astype(np.float32),
        action_space=d3rlpy.ActionSpace.DISCRETE if discrete else d3rlpy.ActionSpace.CONTINUOUS,
        action_size=data.n_actions if discrete else 2,
    )
    return dataset, data.costs.copy()


def replay_buffer(
    data: Any,
    *,
    action_mode: str,
    frame_stack: int,
    task_id: str,
    image_size: int = OBS_SHAPE[0],
    progress: bool = False,
    acc_balance: float = 0.0,
):
    """A d3rlpy ``ReplayBuffer`` over every step of ``data`` (an open
    :class:`~carla_safe_envs.datasets.OfflineDataset`) whose transitions stack the last
    ``frame_stack`` frames of ``image_size`` px; discrete actions become their continuous
    values when ``action_mode`` is ``continuous`` (IQL on a discrete dataset)."""
    d3rlpy = import_d3rlpy()
    from d3rlpy.dataset import FrameStackTransitionPicker, InfiniteBuffer, ReplayBuffer

    if image_size != OBS_SHAPE[0]:
        data.load_frames(image_size, progress=progress)
    mdp, _ = mdp_dataset(data)  # (N, 3, S, S) uint8, all in memory
    episodes = list(mdp.episodes)
    action_space = mdp.dataset_info.action_space
    action_size = mdp.dataset_info.action_size
    if data.action_mode == "discrete" and action_mode == "continuous":
        from carla_safe_envs.env import discrete_to_continuous

        episodes = [
            dataclasses.replace(e, actions=discrete_to_continuous(task_id, e.actions[:, 0]))
            for e in episodes
        ]
        action_space, action_size = d3rlpy.ActionSpace.CONTINUOUS, 2
    elif data.action_mode != action_mode:
        raise AgentError(f"{data.path} has {data.action_mode} actions, not {action_mode} ones")
    buffer = ReplayBuffer(
        InfiniteBuffer(),
        episodes=episodes,
        transition_picker=FrameStackTransitionPicker(frame_stack) if frame_stack > 1 else None,
        action_space=action_space,
        action_size=action_size,
        cache_size=1,  # frames of an episode being written: none (default 10,000 = 470 MiB)
    )
    if acc_balance:
        if action_mode != "discrete":
            raise AgentError(
                f"acc_balance ({acc_balance}) balances discrete actions by their acceleration "
                f"index, but this buffer holds {action_mode} ones: pass acc_balance 0"
            )
        balance_sampling(buffer, acc_balance, n_steer=len(TASKS[task_id].steer_values))
    return buffer


def balance_sampling(buffer: Any, power: float, *, n_steer: int) -> np.ndarray:
    """Make ``buffer`` (a d3rlpy ``ReplayBuffer`` of discrete actions) sample each transition
    with probability proportional to ``n(acceleration) ** -power``, the acceleration being
    ``action // n_steer``; returns the probabilities (in the buffer's transition order).

    d3rlpy draws ``randint(transition_count)`` in ``sample_transition``; this replaces that
    draw on this one buffer object (its picker, frame stacking included, is unchanged)."""
    transitions = buffer._buffer  # d3rlpy's InfiniteBuffer: (episode, index) by position
    count = transitions.transition_count
    acc = np.empty(count, dtype=np.int64)
    for i in range(count):
        episode, index = transitions[i]
        acc[i] = int(np.asarray(episode.actions[index]).reshape(-1)[0]) // n_steer
    counts = np.bincount(acc)
    weights = counts[acc].astype(np.float64) ** -power
    probabilities = weights / weights.sum()
    cdf = np.cumsum(probabilities)
    picker = buffer._transition_picker

    def sample_transition():  # numpy's global generator, like d3rlpy's own draw
        position = min(int(np.searchsorted(cdf, np.random.random(), side="right")), count - 1)
        episode, index = transitions[position]
        return picker(episode, index)

    buffer.sample_transition = sample_transition
    return probabilities


def dataset_statistics(data: Any) -> dict[str, float]:
    """Steps, episodes and the mean episode return and cost of an open dataset (the last
    episode is usually cut at the dataset's size and counts as it is)."""
    starts = data.episode_bounds()[:, 0]
    returns = np.add.reduceat(data.rewards.astype(np.float64), starts)
    costs = np.add.reduceat(data.costs.astype(np.float64), starts)
    return {
        "dataset_steps": int(data.n_steps),
        "dataset_episodes": int(len(starts)),
        "dataset_mean_episode_return": round(float(returns.mean()), 4),
        "dataset_mean_episode_cost": round(float(costs.mean()), 4),
    }


def write_replay_buffer(data: Any, out: Any, view: Any = None) -> Any:
    """Write ``data`` (an open :class:`~carla_safe_envs.datasets.OfflineDataset`) as a d3rlpy
    replay-buffer file at ``out`` that ``d3rlpy.dataset.ReplayBuffer.load(f, InfiniteBuffer())``
    reads as it is; the path.

    ``view`` (:class:`carla_safe_envs.export.ExportView`) picks the frame size, flattening and
    action mode; unflattened frames are channel-first ``(3, S, S)`` uint8 as d3rlpy's image
    encoders expect (:func:`mdp_dataset`), flattened ones ``(S * S * 3,)`` in HWC order.
    d3rlpy's episodes have no cost field, so the costs and every extra step column
    (:func:`carla_safe_envs.export.extra_columns`) are written beside d3rlpy's keys in the
    same file under ``carla_safe/<name>`` (row order = the source file's; d3rlpy's loader
    ignores them)."""
    import h5py
    from d3rlpy.dataset import InfiniteBuffer, ReplayBuffer

    from carla_safe_envs.export import ExportView, export_env_spec, exported_actions, extra_columns

    d3rlpy = import_d3rlpy()
    view = view or ExportView()
    spec = export_env_spec(data, view)
    observations = np.empty((data.n_steps, *view.observation_shape()), dtype=np.uint8)
    for start, chunk in data.iter_frames(1024):
        observations[start : start + len(chunk)] = view.frames(chunk)
    if not view.flatten:
        observations = observations.transpose(0, 3, 1, 2)  # (N, 3, S, S)
    discrete = spec.kwargs["action_mode"] == "discrete"
    actions = exported_actions(data, view)
    timeouts = data.timeouts & ~data.terminals  # d3rlpy refuses both flags on one step
    dataset = d3rlpy.dataset.MDPDataset(
        observations=observations,
        actions=actions.reshape(-1, 1) if discrete else actions,
        rewards=data.rewards.reshape(-1, 1),
        terminals=data.terminals.astype(np.float32),
        timeouts=timeouts.astype(np.float32),
        action_space=d3rlpy.ActionSpace.DISCRETE if discrete else d3rlpy.ActionSpace.CONTINUOUS,
        action_size=data.n_actions if discrete else 2,
    )
    buffer = ReplayBuffer(InfiniteBuffer(), episodes=list(dataset.episodes))
    with open(out, "w+b") as f:  # h5py reads back what it writes
        buffer.dump(f)
    with h5py.File(out, "a") as file:
        file.create_dataset("carla_safe/costs", data=data.costs)
        for name, values in extra_columns(data).items():
            file.create_dataset(f"carla_safe/{name}", data=values)
        file.attrs["carla_safe_env_spec"] = spec.to_json()
        file.attrs["carla_safe_source"] = str(data.path)
    return out
