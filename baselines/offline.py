"""The offline baselines on d3rlpy 2.8: BC and CQL (discrete actions) and IQL (continuous).

One implementation, :class:`D3rlpyAgent`, serves the three models; each differs only by its
config dataclass (:mod:`baselines.offline_configs`: ``BCConfig``, ``CQLConfig``,
``IQLConfig``), which knows how to build its d3rlpy algorithm (``DiscreteBC``,
``DiscreteCQL``, ``IQL``).  Everything else is shared: reading the dataset, frame stacking,
training with d3rlpy's logger, acting, saving.

Data.  ``fit`` loads the whole dataset file into a d3rlpy replay buffer
(:mod:`baselines.d3rlpy_data`: 48 KiB per 128 px step held in memory for the whole training;
IQL also trains on a discrete-mode dataset, each index read as its continuous value).
Costs are not optimized by these algorithms (they maximize reward); the summary reports the
dataset's mean episode cost beside the training losses so that the two can be read together.

Observations.  A single BEV frame shows where everything is but not how fast it moves (the ego
is always drawn at the same pixel), so, as in d3rlpy's Atari examples, the networks see the
last ``frame_stack`` frames stacked on the channel axis (oldest first, zeros before an
episode's first frame: d3rlpy's ``FrameStackTransitionPicker``).  :meth:`D3rlpyAgent.act`
takes the environment's ``(B, 128, 128, 3)`` uint8 observations, transposes them to channel
first and carries the frame stack as the recurrent ``state`` (reset where ``episode_start``).

Logging.  d3rlpy's per-epoch CSVs (one file per named key: ``loss.csv``, ``td_loss.csv``,
``time_step.csv``, ..., rows ``epoch,step,value``), gradient statistics per parameter
(``<module>_grad.csv``) and ``params.json`` go to ``log_dir/<model>/`` (d3rlpy's
``FileAdapterFactory``, no timestamp; a second fit appends rows); without ``log_dir``
nothing is written, and nothing ever lands in ``./d3rlpy_logs``.  d3rlpy's console messages
go to the standard ``logging`` module (:func:`baselines.d3rlpy_data.import_d3rlpy`).

Sampling.  ``act(..., deterministic=False)`` calls d3rlpy's ``sample_action``: IQL samples its
Gaussian policy (clipped to [-1, 1]); d3rlpy's discrete BC and CQL return their greedy action
there, so they act the same in both modes.

Randomness.  ``fit`` calls ``d3rlpy.seed(seed)``, which seeds Python's, NumPy's global and
torch's generators (d3rlpy samples its mini-batches from NumPy's global generator).

Threads.  torch uses every core by default; where the cores are already busy (other
processes, parallel grid cells) one thread is much faster: 2-7x for training and acting on the
busy 2-vCPU CI machine.  The grid's process pool caps threads per worker; for one command set
``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from baselines.d3rlpy_data import OBS_SHAPE, dataset_statistics, import_d3rlpy, replay_buffer
from baselines.offline_configs import BCConfig, CQLConfig, IQLConfig, OfflineConfig, make_presets
from carla_safe_envs.agents import AgentError, BaseAgent
from carla_safe_envs.bev import downsample, stack_frames

log = logging.getLogger(__name__)

MODEL_FILE = "model.d3"  # d3rlpy's full learnable (config, shapes, weights) in the agent dir


class D3rlpyAgent(BaseAgent):
    """A d3rlpy offline algorithm as an :class:`~carla_safe_envs.agents.Agent`; the subclasses only
    name the model and its presets (the config class builds the algorithm)."""

    presets: ClassVar[Mapping[str, OfflineConfig]] = {}

    def __init__(self, task_id: str, **kwargs: Any) -> None:
        super().__init__(task_id, **kwargs)
        self.algo: Any = None  # the d3rlpy learnable, after fit or load

    # ---------------------------------------------------------------- training
    def _fit(self, dataset: Any, *, log_dir: Path | None, progress: bool) -> dict[str, Any]:
        d3rlpy = import_d3rlpy()
        config = self.config
        buffer = replay_buffer(
            dataset,
            action_mode=self.action_mode,
            frame_stack=config.frame_stack,
            task_id=self.task_id,
            image_size=config.image_size,
            progress=progress,
            acc_balance=config.acc_balance,
        )
        summary: dict[str, Any] = dataset_statistics(dataset)
        if dataset.action_mode != self.action_mode:
            summary["actions_mapped_from"] = dataset.action_mode
        d3rlpy.seed(self.seed)
        algo = config.d3rlpy_config().create(device=config.torch_device())
        if log_dir is None:
            logger = d3rlpy.logging.NoopAdapterFactory()
        else:
            logger = d3rlpy.logging.FileAdapterFactory(root_dir=str(log_dir))
        n_epochs = config.n_steps // config.n_steps_per_epoch
        metrics: dict[str, float] = {}
        step_seconds = 0.0  # d3rlpy's own timing of sample + update, without build and logs
        for epoch, metrics in algo.fitter(
            buffer,
            n_steps=config.n_steps,
            n_steps_per_epoch=config.n_steps_per_epoch,
            experiment_name=self.name,
            with_timestamp=False,
            logger_adapter=logger,
            show_progress=progress,
            save_interval=n_epochs + 1,  # no checkpoints: save() writes the final model
        ):
            step_seconds += metrics["time_step"] * config.n_steps_per_epoch
            self.algo = algo  # the hook evaluates the algorithm as it is now
            self.report_progress(epoch * config.n_steps_per_epoch, config.n_steps, "updates")
        self.algo = algo
        losses = {k: float(v) for k, v in metrics.items() if not k.startswith("time_")}
        if not all(math.isfinite(v) for v in losses.values()):
            log.warning("%s ended with non-finite losses: %s", self.name, losses)
        return {
            "steps": config.n_steps,
            "epochs": n_epochs,
            "updates_per_second": round(config.n_steps / step_seconds, 2),
            "losses": losses,
            **summary,
        }

    # ---------------------------------------------------------------- acting
    def act(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Actions for a batch of env observations ``(B, 128, 128, 3)`` uint8: discrete
        ``(B,)`` int64 indices or continuous ``(B, 2)`` float32 in [-1, 1].  ``state`` is the
        frame stack ``(B, 3 * frame_stack, S, S)`` uint8, S = ``config.image_size`` (None
        with one frame)."""
        if self.algo is None:
            raise AgentError(f"{self.name} has no model yet: fit it or load a saved one")
        obs = np.asarray(obs)
        if obs.ndim != 4 or obs.shape[1:] != OBS_SHAPE or obs.dtype != np.uint8:
            raise ValueError(
                f"observations must be a (B, {', '.join(map(str, OBS_SHAPE))}) uint8 batch of "
                f"BEV frames, got {obs.shape} {obs.dtype}"
            )
        obs = downsample(obs, self.config.image_size)
        frames = obs.transpose(0, 3, 1, 2)
        x, state = stack_frames(frames, state, episode_start, self.config.frame_stack)
        actions = self.algo.predict(x) if deterministic else self.algo.sample_action(x)
        if self.action_mode == "discrete":
            return actions.astype(np.int64).reshape(len(obs)), state
        return np.clip(actions, -1.0, 1.0).astype(np.float32).reshape(len(obs), 2), state

    # ---------------------------------------------------------------- storage
    def _save(self, path: Path) -> None:
        if self.algo is None:
            raise AgentError(f"{self.name} has no model to save yet: fit it first")
        self.algo.save(str(path / MODEL_FILE))

    def _load(self, path: Path) -> None:
        d3rlpy = import_d3rlpy()
        file = path / MODEL_FILE
        if not file.is_file():
            raise AgentError(f"{path} has no {MODEL_FILE}: it was saved before training")
        self.algo = d3rlpy.load_learnable(str(file), device=self.config.torch_device())


class BCAgent(D3rlpyAgent):
    name = "bc"
    presets = make_presets(
        BCConfig(),
        small={"n_steps": 20_000, "batch_size": 32},
        # cpu: chosen by learn-check on 20,000 noise-free Left / Right Turn steps (README):
        # plain sampling collides in 20-60% of the Left Turn episodes, acc_balance 1 in none
        # (0.5: none on Left Turn, 15% on Right Turn); past ~2,000 updates the closed-loop
        # results drift (overfitting 100 junction crossings), so 3,000 updates (~6 epochs)
        # with the learning rate annealed to 0
        cpu={
            "n_steps": 3_000,
            "n_steps_per_epoch": 300,
            "batch_size": 64,
            "acc_balance": 1.0,
            "cosine_annealing": True,
        },
        debug={},
    )


class CQLAgent(D3rlpyAgent):
    name = "cql"
    presets = make_presets(
        CQLConfig(),
        small={"n_steps": 10_000, "target_update_interval": 1_000},
        # cpu: chosen by learn-check on Left Turn (default data mix, README): the Atari
        # settings (learning rate 5e-5, alpha 4, 200 quantiles) collide in every episode after
        # 10,000 updates (Return 7.1); learning rate 3e-4, alpha 1 (d3rlpy's default) and a
        # mean Q-function arrive or collide at 0.7 / 0.3 (Return 340.7) in 16 minutes
        cpu={
            "n_steps": 10_000,
            "n_steps_per_epoch": 1_000,
            "target_update_interval": 1_000,
            "learning_rate": 3e-4,
            "alpha": 1.0,
            "n_quantiles": 0,
        },
        debug={"n_quantiles": 4, "target_update_interval": 10},
    )


class IQLAgent(D3rlpyAgent):
    name = "iql"
    presets = make_presets(
        IQLConfig(),
        small={"n_steps": 5_000, "batch_size": 64},
        cpu={"n_steps": 5_000, "n_steps_per_epoch": 500, "batch_size": 64},
        debug={},
    )
