"""The world-model agents of the comparison table: VL-SAFE, DreamerV3 and FOSP.

All three share one world model (:mod:`vlsafe.world_model`), one actor-critic toolkit
(:mod:`vlsafe.behavior`), one training loop (:class:`WorldModelAgent`) and one online loop
(:mod:`vlsafe.online`); they differ in their learner (:mod:`vlsafe.learners`) and budget:

==========  ===================  ==========================================================
model       trains               actor update
==========  ===================  ==========================================================
vlsafe      offline (dataset     pi* = w pi_b / Z, w = p(s) exp(beta_r A^r) + (1 - p(s))
            with safety labels)  exp(-beta_c A^c): weighted likelihood of behaviour actions
dreamerv3   online in the env    REINFORCE on imagined lambda-returns, entropy bonus
            (or from a dataset)
fosp        offline, optional    reachability-gated advantage weighting with expectile
            online fine-tuning   critics and an augmented Lagrangian on cost
==========  ===================  ==========================================================

Each update: one world-model step on a batch of B windows of T steps, then one learner step
from that batch's posterior states.  A config is one frozen dataclass holding the world-model
config (``world_model``), the actor-critic config (``actor_critic``) and the agent's own fields;
overrides may be nested dicts (``{"world_model": {"lr": 1e-4}}``) or dotted keys
(``--config world_model.lr=1e-4`` on the command line); unknown keys raise.

A saved agent directory holds ``agent.json`` (:mod:`carla_safe_envs.agents`), ``world_model.pt``
(:func:`vlsafe.wm_training.save_world_model`) and ``behavior.pt`` (actor, critics, return
scales, Lagrange multiplier); loading checks that both files belong to this model and config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from carla_safe_envs.agents import AgentError, BaseAgent
from carla_safe_envs.bev import downsample
from vlsafe.configs import (
    DREAMER_PRESETS,
    FOSP_PRESETS,
    VLSAFE_PRESETS,
    DreamerV3Config,
    FOSPConfig,
    VLSafeConfig,
    WorldModelAgentConfig,
    compose_config,
    upgrade_keys,
)
from vlsafe.learners import DataBatch, DreamerLearner, FOSPLearner, Learner, VLSafeLearner
from vlsafe.nets import action_dim
from vlsafe.online import MixedSource, SequenceReplay, run_online
from vlsafe.rssm import OBS_SIZE
from vlsafe.training import TrainingRun
from vlsafe.wm_training import WorldModelTrainer, load_world_model, save_world_model
from vlsafe.world_model import WorldModel, make_batch

log = logging.getLogger(__name__)

__all__ = [
    "DreamerV3Agent",
    "DreamerV3Config",
    "FOSPAgent",
    "FOSPConfig",
    "VLSafeAgent",
    "VLSafeConfig",
    "WorldModelAgent",
    "WorldModelAgentConfig",
]

WORLD_MODEL_FILE = "world_model.pt"
BEHAVIOR_FILE = "behavior.pt"
BEHAVIOR_FORMAT = "carla-safe/wm-behavior-v1"


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested dicts differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AgentError(f"device {name!r} was asked for but CUDA is not available; use cpu")
    return torch.device(name)


# --- the agents -----------------------------------------------------------------------------


class WorldModelAgent(BaseAgent):
    """Training loop, acting, storage and input checks shared by the world-model agents.

    Subclasses set ``name``, ``presets`` and ``learner_class`` and choose their data in
    :meth:`_fit`.  ``act`` carries ``(posterior state, previous action)`` as the recurrent
    state; ``deterministic`` takes the posterior's and the actor's modes, so equal weights
    give equal actions.
    """

    learner_class: ClassVar[type[Learner]]

    def __init__(self, task_id: str, **kwargs: Any) -> None:
        overrides = kwargs.pop("config", None)
        super().__init__(task_id, **kwargs)
        self.config = compose_config(self.presets[self.preset], overrides)
        self.device = _device(self.config.device)
        torch.manual_seed(self.seed)
        self.wm = WorldModel(self.config.world_model, action_dim(self.action_mode)).to(self.device)
        self.learner = self.learner_class(self.wm.feat_dim, self.action_mode, self.config)
        self.learner.to(self.device).make_optimizers()
        self.trainer = WorldModelTrainer(self.wm, self.config.world_model)
        self.updates_done = 0
        self.env_steps = 0
        self._rng = np.random.default_rng(self.seed)

    # ------------------------------------------------------------ dataset checks
    def check_dataset(self, path: str | os.PathLike):
        data = super().check_dataset(path)
        try:
            self._check_columns(data, path)
        except Exception:
            data.close()
            raise
        return data

    def _check_columns(self, data: Any, path: Any) -> None:
        collect = f"python -m benchmarks collect --task {self.task_id} --out FILE"
        for column in ("rewards", "costs"):
            try:
                values = np.asarray(data.column(column))
            except KeyError:
                raise AgentError(
                    f"{path} has no {column} column, which {self.name} needs (the world model "
                    f"learns reward and cost heads from it): collect the data again with "
                    f"`{collect}`"
                ) from None
            bad = int((~np.isfinite(values)).sum())
            if bad:
                raise AgentError(
                    f"{path} has {bad} non-finite {column} of {len(values)}: {self.name} needs "
                    f"a value for every step; collect the data again with `{collect}`"
                )
        if self.spec.needs_safety and data.safety is not None:
            finite = np.isfinite(data.safety)
            if not finite.any():
                raise AgentError(
                    f"{path} has a safety column without any finite label: label it again "
                    f"with `python -m benchmarks label --dataset {path} --labeler clip`"
                )
            if not finite.all():
                log.warning(
                    "%s: %d steps have no safety label; the safety head fills them",
                    path,
                    int((~finite).sum()),
                )
        seq_len = self.config.world_model.seq_len
        try:
            data.sequence_starts(seq_len)
        except ValueError as error:
            raise AgentError(
                f"{error} (world_model.seq_len = {seq_len}): pass --config world_model.seq_len=N "
                "with a shorter N or collect more steps"
            ) from None

    # ------------------------------------------------------------ training
    def train_step(self, source: Any) -> dict[str, float]:
        """One world-model update and (after ``pretrain_updates``) one learner update on a
        batch of windows from ``source`` (anything with ``sample_sequences``)."""
        wmc = self.config.world_model
        seqs = source.sample_sequences(wmc.batch_size, wmc.seq_len, self._rng)
        batch = make_batch(seqs, self.action_mode, self.device)
        metrics = {f"wm/{k}": v for k, v in self.trainer.update(batch).items()}
        if self.updates_done >= self.config.pretrain_updates:
            data = DataBatch.from_sequences(seqs, self.action_mode, self.device)
            learned = self.learner.update(self.wm, self.trainer.last_post, data)
            metrics |= {f"behavior/{k}": v for k, v in learned.items()}
        self.updates_done += 1
        return metrics

    def _train_offline(self, dataset: Any, run: TrainingRun) -> None:
        with run.phase(self.config.updates, f"train {self.name}"):
            for done in range(1, self.config.updates + 1):
                run.record(self.train_step(dataset))
                run.advance()
                self.report_progress(done, self.config.updates, "updates")

    def _train_online(
        self,
        run: TrainingRun,
        *,
        env_steps: int,
        prefill: int,
        train_ratio: float,
        replay: SequenceReplay,
        source: Any,
        report: bool = True,
    ) -> None:
        """Drive the env with this agent (after ``prefill`` random steps) into ``replay``
        and train on batches from ``source`` at ``train_ratio``; ``report``: env steps are
        the budget that the ``fit`` hook follows."""
        wmc = self.config.world_model

        first = self.env_steps

        def on_env_step() -> None:
            self.env_steps += 1
            run.advance()
            if report:
                self.report_progress(self.env_steps - first, env_steps, "env_steps")

        env = self.make_env()
        try:
            with run.phase(env_steps, f"train {self.name} online (env steps)"):
                run_online(
                    env,
                    self,
                    replay,
                    env_steps=env_steps,
                    prefill=prefill,
                    train_ratio=train_ratio,
                    replayed_per_update=wmc.batch_size * wmc.seq_len,
                    window=wmc.seq_len,
                    train=lambda: run.record(self.train_step(source)),
                    seed=self.seed,
                    on_env_step=on_env_step,
                    on_episode=run.record_episode,
                )
        finally:
            env.close()

    @property
    def frame_size(self) -> int:
        """Side [px] of the frames the world model is fed: its working ``image_size``.  Every
        frame is area-averaged to it once (:func:`carla_safe_envs.bev.downsample`): the
        dataset when training starts (held in memory), each env observation in ``act``
        and in the online replay."""
        return self.config.world_model.image_size

    def _fit(self, dataset: Any, *, log_dir: Path | None, progress: bool) -> Mapping[str, Any]:
        torch.manual_seed(self.seed)
        if dataset is not None and self.frame_size < OBS_SIZE:
            dataset.load_frames(self.frame_size, progress=progress)
        with TrainingRun(self, log_dir=log_dir, progress=progress) as run:
            try:
                self._train(dataset, run)
            except FloatingPointError as error:
                raise run.diverged(error) from error
        return run.summary()

    def _train(self, dataset: Any, run: TrainingRun) -> None:
        self._train_offline(dataset, run)

    def snapshot(self) -> dict[str, Any]:
        """Copies of the weights (world model, learner) and the update count."""
        return {
            "wm": {k: v.detach().clone() for k, v in self.wm.state_dict().items()},
            "learner": {k: v.detach().clone() for k, v in self.learner.state_dict().items()},
            "updates": self.updates_done,
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        self.wm.load_state_dict(snapshot["wm"])
        self.learner.load_state_dict(snapshot["learner"])
        self.updates_done = snapshot["updates"]

    # ------------------------------------------------------------ acting
    @torch.no_grad()
    def act(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """Actions (B,) int64 (discrete) or (B, 2) float32 for BEV frames (B, 128, 128, 3)
        uint8; ``state`` is ``(posterior, previous action)`` from the last call (None: new
        episodes), reset where ``episode_start`` is true."""
        obs = np.asarray(obs)
        if obs.ndim != 4 or obs.shape[1:] != (128, 128, 3) or obs.dtype != np.uint8:
            raise ValueError(
                f"obs must be a (B, 128, 128, 3) uint8 batch of BEV frames, got {obs.shape} "
                f"{obs.dtype}"
            )
        n = len(obs)
        if state is None:
            latent = self.wm.initial(n)
            prev = torch.zeros(n, self.wm.action_dim, device=self.device)
            start = np.ones(n, dtype=bool)
        else:
            latent, prev = state
            if prev.shape[0] != n:
                raise ValueError(f"state is for a batch of {prev.shape[0]}, obs has {n}")
            start = np.zeros(n, dtype=bool)
        if episode_start is not None:
            start = start | np.asarray(episode_start, dtype=bool).reshape(n)
        frames = torch.as_tensor(downsample(obs, self.frame_size), device=self.device)
        is_first = torch.as_tensor(start, device=self.device)
        post, _ = self.wm.obs_step(latent, prev, frames, is_first)
        if deterministic:  # the posterior's mode: no sampling anywhere on this path
            mode = torch.nn.functional.one_hot(post["logits"].argmax(-1), post["logits"].shape[-1])
            post = {**post, "stoch": mode.to(post["stoch"].dtype)}
        action = self.learner.actor.act(self.wm.feat(post), deterministic)
        return self.learner.actor.to_env(action), (post, action)

    # ------------------------------------------------------------ storage
    def _save(self, path: Path) -> None:
        save_world_model(path / WORLD_MODEL_FILE, self.wm)
        payload = {
            "format": BEHAVIOR_FORMAT,
            "model": self.name,
            "action_mode": self.action_mode,
            "config": asdict(self.config),
            "updates": self.updates_done,
            "env_steps": self.env_steps,
            "learner": {k: v.detach().cpu() for k, v in self.learner.state_dict().items()},
        }
        tmp = path / (BEHAVIOR_FILE + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path / BEHAVIOR_FILE)

    def _load(self, path: Path) -> None:
        files = [path / WORLD_MODEL_FILE, path / BEHAVIOR_FILE]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise AgentError(
                f"{path} lacks {', '.join(missing)}: it is not a saved {self.name} agent"
            )
        try:
            payload = torch.load(files[1], map_location=self.device, weights_only=True)
        except Exception as error:  # a truncated or foreign file
            raise AgentError(
                f"{files[1]} is not a readable behaviour checkpoint: {error}"
            ) from error
        if not isinstance(payload, dict) or payload.get("format") != BEHAVIOR_FORMAT:
            raise AgentError(f"{files[1]} is not a {BEHAVIOR_FORMAT} checkpoint")
        if payload["model"] != self.name:
            raise AgentError(
                f"{files[1]} holds the actor-critic of a {payload['model']!r} agent, not "
                f"{self.name!r}: the directory mixes files of different models"
            )
        saved = upgrade_keys(type(self.config), payload["config"], warn=False)  # agent.json warned
        diff = _differences(saved, asdict(self.config))
        if diff:
            raise AgentError(
                f"{files[1]} was trained with another config than {path / 'agent.json'} "
                f"describes (differs in {', '.join(diff)}); retrain or restore the directory"
            )
        try:
            wm = load_world_model(files[0], map_location=self.device)
        except (ValueError, FileNotFoundError) as error:
            raise AgentError(str(error)) from error
        if wm.config != self.config.world_model or wm.action_dim != self.wm.action_dim:
            raise AgentError(
                f"{files[0]} holds a world model of another config or action mode than "
                f"{path / 'agent.json'} describes; retrain or restore the directory"
            )
        try:
            self.wm.load_state_dict(wm.state_dict())
            self.learner.load_state_dict(payload["learner"])
        except RuntimeError as error:
            raise AgentError(f"{path}: the weights do not fit this agent: {error}") from error
        self.updates_done = int(payload["updates"])
        self.env_steps = int(payload["env_steps"])


class VLSafeAgent(WorldModelAgent):
    """VL-SAFE (offline, needs safety labels); see :class:`VLSafeConfig`."""

    name = "vlsafe"
    presets = VLSAFE_PRESETS
    learner_class = VLSafeLearner


class DreamerV3Agent(WorldModelAgent):
    """DreamerV3: online in the env by default, or ``fit(dataset)`` offline."""

    name = "dreamerv3"
    presets = DREAMER_PRESETS
    learner_class = DreamerLearner

    def _train(self, dataset: Any, run: TrainingRun) -> None:
        cfg = self.config
        self.learner.bc_scale = cfg.offline_bc if dataset is not None else 0.0
        if dataset is not None:
            self._train_offline(dataset, run)
            return
        replay = SequenceReplay(cfg.replay_capacity, self.action_mode, self.frame_size)
        self._train_online(
            run,
            env_steps=cfg.env_steps,
            prefill=cfg.prefill,
            train_ratio=cfg.train_ratio,
            replay=replay,
            source=replay,
        )


class FOSPAgent(WorldModelAgent):
    """FOSP: offline pre-training, then optional online fine-tuning; see :class:`FOSPConfig`."""

    name = "fosp"
    presets = FOSP_PRESETS
    learner_class = FOSPLearner

    def _train(self, dataset: Any, run: TrainingRun) -> None:
        self._train_offline(dataset, run)
        cfg = self.config
        if cfg.online_steps:
            replay = SequenceReplay(cfg.replay_capacity, self.action_mode, self.frame_size)
            self._train_online(
                run,
                env_steps=cfg.online_steps,
                prefill=0,
                train_ratio=cfg.online_train_ratio,
                replay=replay,
                source=MixedSource(dataset, replay, cfg.online_dataset_fraction),
                report=False,  # the hook followed the offline updates
            )
