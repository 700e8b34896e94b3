"""OSRL's safe offline baselines behind the ``Agent`` protocol (not in the paper's table).

BC-Safe, BCQ-Lag, CPQ, COptiDICE and CDT run on OSRL's own implementations (``osrl-lib``
0.1.0: ``osrl.algorithms``), trained the way OSRL's example trainers train them: the dataset
as DSRL's dictionary (:func:`carla_safe_envs.export.dsrl_arrays`: the one DSRL export),
OSRL's ``TransitionDataset`` / ``SequenceDataset`` and a torch ``DataLoader``, then the
trainer's ``train_one_step`` per batch.  OSRL's networks are MLPs on flat vectors with
continuous actions, so the agents see the BEV area-downsampled to ``image_size`` px and
flattened (``image_size=16``: 768 inputs, scaled to [0, 1]) and act in the continuous mode
(a discrete-mode dataset is read as its continuous values, as IQL does).  Each config holds
the cost limit per task (:data:`COST_LIMITS`): the episode cost BC-Safe's trajectory filter,
the Lagrangian / penalty critics and CDT's cost-to-go target aim at.

Install: ``make install`` (or ``pip install 'carla-safe[osrl]'`` then ``pip install --no-deps
osrl-lib==0.1.0 fast-safe-rl==0.1.0``; osrl-lib's own pins -- torch 1.13, wandb 0.14, protobuf
3.19, dsrl, tianshou, bullet-safety-gym -- cannot install beside carla-safe).  Left out that
way: ``dsrl`` (OSRL reads its data through our DSRL export instead), ``tianshou`` and
``bullet-safety-gym`` (fsrl's online agents, unused), and ``oapackage`` (OSRL's Pareto-frontier
data augmentation for CDT and BC's ``frontier`` mode; CDT here trains without augmentation).

CDT and the ``Agent`` protocol.  ``act`` sees observations only, not the rewards and costs
received, so CDT's return-to-go and cost-to-go prompts stay at their targets
(``target_return``, the task's cost limit) instead of being decremented step by step as in
OSRL's own rollout; its recurrent ``state`` is the history of the last ``seq_len`` states and
actions per environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from carla_safe_envs import MAX_EPISODE_STEPS
from carla_safe_envs.agents import AgentError, BaseAgent
from carla_safe_envs.bev import downsample

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"  # the OSRL module's state_dict and its data-given constructor inputs
#: episode cost limit per task: at or below the Cost BC reaches by imitating all the expert
#: data in the committed ``cpu`` grid (23.7, 10.3, 12.5, 13.1), so the constraint binds
COST_LIMITS: tuple[tuple[str, float], ...] = (
    ("CarlaFourLane-v0", 20.0),
    ("CarlaLeftTurn-v0", 10.0),
    ("CarlaRightTurn-v0", 10.0),
    ("CarlaNavigation-v0", 10.0),
)


def import_osrl():
    """``osrl.algorithms`` and ``osrl.common``, or an error that says how to install them."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # "OApackage is not installed": see above
            import osrl.algorithms as algorithms
            import osrl.common as common
    except ImportError as error:
        raise AgentError(
            f"the OSRL baselines need osrl-lib ({error.name} is not installed): `make install`, "
            "or pip install 'carla-safe[osrl]' && pip install --no-deps osrl-lib==0.1.0 "
            "fast-safe-rl==0.1.0"
        ) from error
    return algorithms, common


@dataclasses.dataclass(frozen=True)
class OSRLConfig:
    """Hyperparameters of one OSRL agent (OSRL's defaults where not said).

    Attributes:
        n_steps: gradient updates.
        batch_size: transitions (or CDT sequences) per update.
        image_size: side [px] of the downsampled BEV, flattened to ``3 * image_size**2``.
        hidden_sizes: MLP layer widths of actors and critics.
        learning_rate: actor / critic (CDT: transformer) learning rate.
        gamma: discount (also BC-Safe's discount of the episode costs it filters by).
        cost_limits: ``(task, episode cost limit)`` pairs; the agent's task must be listed.
        seq_len: CDT context length [steps].
        embedding_dim, num_layers, num_heads: CDT's transformer.
        target_return: CDT's return-to-go prompt.
        device: torch device.
    """

    n_steps: int = 20
    batch_size: int = 16
    image_size: int = 16
    hidden_sizes: tuple[int, ...] = (64, 64)
    learning_rate: float = 1e-4
    gamma: float = 0.99
    cost_limits: tuple[tuple[str, float], ...] = COST_LIMITS
    seq_len: int = 10
    embedding_dim: int = 32
    num_layers: int = 1
    num_heads: int = 1
    target_return: float = 400.0
    device: str = "cpu"

    def __post_init__(self) -> None:  # agent.json stores pairs as lists: back to tuples
        pairs = tuple((str(task), float(limit)) for task, limit in self.cost_limits)
        object.__setattr__(self, "cost_limits", pairs)
        object.__setattr__(self, "hidden_sizes", tuple(int(n) for n in self.hidden_sizes))

    def cost_limit(self, task_id: str) -> float:
        limits = dict(self.cost_limits)
        if task_id not in limits:
            raise AgentError(f"no cost limit for {task_id} in cost_limits {self.cost_limits}")
        return float(limits[task_id])


def make_presets(**overrides: Mapping[str, Any]) -> dict[str, OSRLConfig]:
    """``debug`` (tiny, for tests), ``small``, ``cpu`` (minutes of one core) and ``paper``
    (OSRL's default sizes, 100,000 updates)."""
    base = OSRLConfig()
    presets = {
        "debug": base,
        "small": dataclasses.replace(base, n_steps=2_000, batch_size=256, hidden_sizes=(256, 256)),
        "cpu": dataclasses.replace(
            base,
            n_steps=5_000,
            batch_size=256,
            hidden_sizes=(256, 256),
            embedding_dim=64,
            num_layers=2,
            num_heads=4,
        ),
        "paper": dataclasses.replace(
            base,
            n_steps=100_000,
            batch_size=512,
            hidden_sizes=(256, 256),
            embedding_dim=128,
            num_layers=3,
            num_heads=8,
            image_size=32,
        ),
    }
    return {k: dataclasses.replace(v, **overrides.get(k, {})) for k, v in presets.items()}


class OSRLAgent(BaseAgent):
    """One OSRL algorithm; subclasses name it and implement ``_build`` / ``_step`` /
    ``_policy``."""

    presets: ClassVar[Mapping[str, OSRLConfig]] = make_presets()
    sequence: ClassVar[bool] = False  # CDT trains on sequences

    def __init__(self, task_id: str, **kwargs: Any) -> None:
        super().__init__(task_id, **kwargs)
        self.config.cost_limit(task_id)  # an unlisted task is an error now, not after training
        self.model: Any = None
        self._inputs: dict[str, Any] = {}

    @property
    def state_dim(self) -> int:
        return 3 * self.config.image_size**2

    def features(self, obs: np.ndarray) -> np.ndarray:
        """``(B, 128, 128, 3)`` uint8 BEV frames as OSRL's ``(B, state_dim)`` float32 in [0, 1]."""
        obs = np.asarray(obs)
        if obs.ndim != 4 or obs.shape[1:] != (128, 128, 3) or obs.dtype != np.uint8:
            raise ValueError(
                f"observations must be a (B, 128, 128, 3) uint8 batch of BEV frames, got "
                f"{obs.shape} {obs.dtype}"
            )
        small = downsample(obs, self.config.image_size)
        return small.reshape(len(obs), -1).astype(np.float32) / 255.0

    # ---------------------------------------------------------------- training
    def _fit(self, dataset: Any, *, log_dir: Path | None, progress: bool) -> dict[str, Any]:
        import torch
        from torch.utils.data import DataLoader

        from baselines.d3rlpy_data import dataset_statistics
        from carla_safe_envs.export import ExportView, dsrl_arrays

        _, common = import_osrl()
        config = self.config
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)  # OSRL's datasets draw from numpy's global generator
        import random

        random.seed(self.seed)
        view = ExportView(config.image_size, flatten=True, action_mode="continuous")
        arrays = dsrl_arrays(dataset, view, extras=False)
        arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
        for key in ("observations", "next_observations"):
            arrays[key] /= 255.0
        data = self._dataset(common, arrays)
        self._inputs = self._model_inputs(data)
        self.model = self._model(self._inputs)
        trainer = self._trainer(self.model)
        loader = iter(DataLoader(data, batch_size=config.batch_size, num_workers=0))
        logger = _LastValues()
        trainer.logger = logger
        for step in range(1, config.n_steps + 1):
            batch = [b.to(torch.float32).to(config.device) for b in next(loader)]
            self._step(trainer, batch)
            self.report_progress(step, config.n_steps, "updates")
        summary: dict[str, Any] = dataset_statistics(dataset)
        if dataset.action_mode != self.action_mode:
            summary["actions_mapped_from"] = dataset.action_mode
        return {
            "steps": config.n_steps,
            "cost_limit": config.cost_limit(self.task_id),
            "losses": {k: float(v) for k, v in logger.values.items()},
            **summary,
        }

    def _dataset(self, common: Any, arrays: dict[str, np.ndarray]) -> Any:
        return common.TransitionDataset(arrays)

    def _model_inputs(self, data: Any) -> dict[str, Any]:
        """Constructor arguments of the model that come from the data (saved beside it)."""
        return {}

    def _model(self, inputs: Mapping[str, Any]) -> Any:
        raise NotImplementedError

    def _trainer(self, model: Any) -> Any:
        raise NotImplementedError

    def _step(self, trainer: Any, batch: list) -> None:
        trainer.train_one_step(*batch)

    # ---------------------------------------------------------------- acting
    def act(
        self,
        obs: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """``(B, 2)`` float32 continuous actions in [-1, 1] for ``(B, 128, 128, 3)`` uint8
        observations (``state``: CDT's history, None for the others)."""
        import torch

        if self.model is None:
            raise AgentError(f"{self.name} has no model yet: fit it or load a saved one")
        x = self.features(obs)
        self.model.eval()
        with torch.no_grad():
            actions, state = self._policy(torch.as_tensor(x), state, episode_start, deterministic)
        return np.clip(np.asarray(actions, dtype=np.float32), -1.0, 1.0).reshape(len(x), 2), state

    def _policy(self, x: Any, state: Any, episode_start: Any, deterministic: bool):
        raise NotImplementedError

    # ---------------------------------------------------------------- storage
    def _save(self, path: Path) -> None:
        import torch

        if self.model is None:
            raise AgentError(f"{self.name} has no model to save yet: fit it first")
        torch.save(
            {"state_dict": self.model.state_dict(), "inputs": self._inputs}, path / MODEL_FILE
        )

    def _load(self, path: Path) -> None:
        import torch

        import_osrl()
        file = path / MODEL_FILE
        if not file.is_file():
            raise AgentError(f"{path} has no {MODEL_FILE}: it was saved before training")
        saved = torch.load(file, weights_only=False, map_location=self.config.device)
        self._inputs = saved["inputs"]
        self.model = self._model(self._inputs)
        self.model.load_state_dict(saved["state_dict"])


class _LastValues:
    """An OSRL trainer logger that keeps the last value of each stored statistic."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def store(self, tab: str | None = None, **values: Any) -> None:
        self.values.update({k: float(v) for k, v in values.items()})


def _common_kwargs(agent: OSRLAgent) -> dict[str, Any]:
    return {
        "state_dim": agent.state_dim,
        "action_dim": 2,
        "max_action": 1.0,
        "episode_len": MAX_EPISODE_STEPS,
        "device": agent.config.device,
    }


class BCSafeAgent(OSRLAgent):
    """OSRL's BC in ``safe`` mode: behaviour cloning of the trajectories whose discounted
    episode cost is within the cost limit."""

    name = "bcsafe"

    def _dataset(self, common: Any, arrays: dict[str, np.ndarray]) -> Any:
        limit = self.config.cost_limit(self.task_id)
        from osrl.common.dataset import process_bc_dataset

        with contextlib.redirect_stdout(io.StringIO()):  # OSRL prints the filtered size
            process_bc_dataset(arrays, limit, self.config.gamma, "safe")
        if len(arrays["observations"]) == 0:
            raise AgentError(
                f"no trajectory of the dataset has an episode cost within {limit}: raise "
                "cost_limits or collect safer data"
            )
        return common.TransitionDataset(arrays)

    def _model(self, inputs: Mapping[str, Any]) -> Any:
        algorithms, _ = import_osrl()
        return algorithms.BC(a_hidden_sizes=list(self.config.hidden_sizes), **_common_kwargs(self))

    def _trainer(self, model: Any) -> Any:
        algorithms, _ = import_osrl()
        c = self.config
        return algorithms.BCTrainer(
            model,
            None,
            actor_lr=c.learning_rate,
            bc_mode="safe",
            cost_limit=c.cost_limit(self.task_id),
            device=c.device,
        )

    def _step(self, trainer: Any, batch: list) -> None:
        observations, _, actions, *_ = batch
        trainer.train_one_step(observations, actions)

    def _policy(self, x, state, episode_start, deterministic):
        return self.model.actor(x).numpy(), None


class BCQLagAgent(OSRLAgent):
    """OSRL's BCQ-L: BCQ with a PID-Lagrangian cost critic."""

    name = "bcqlag"

    def _model(self, inputs: Mapping[str, Any]) -> Any:
        algorithms, _ = import_osrl()
        c = self.config
        return algorithms.BCQL(
            a_hidden_sizes=list(c.hidden_sizes),
            c_hidden_sizes=list(c.hidden_sizes),
            gamma=c.gamma,
            cost_limit=c.cost_limit(self.task_id),
            **_common_kwargs(self),
        )

    def _trainer(self, model: Any) -> Any:
        algorithms, _ = import_osrl()
        lr = self.config.learning_rate
        return algorithms.BCQLTrainer(
            model, None, actor_lr=lr, critic_lr=lr, vae_lr=lr, device=self.config.device
        )

    def _policy(self, x, state, episode_start, deterministic):
        import torch

        z = torch.zeros(len(x), self.model.vae.latent_dim) if deterministic else None
        return self.model.actor(x, self.model.vae.decode(x, z)).numpy(), None


class CPQAgent(OSRLAgent):
    """OSRL's CPQ: constraints-penalized Q-learning (a VAE flags out-of-distribution actions
    as unsafe)."""

    name = "cpq"

    def _model(self, inputs: Mapping[str, Any]) -> Any:
        algorithms, _ = import_osrl()
        c = self.config
        return algorithms.CPQ(
            a_hidden_sizes=list(c.hidden_sizes),
            c_hidden_sizes=list(c.hidden_sizes),
            gamma=c.gamma,
            cost_limit=c.cost_limit(self.task_id),
            **_common_kwargs(self),
        )

    def _trainer(self, model: Any) -> Any:
        algorithms, _ = import_osrl()
        lr = self.config.learning_rate
        return algorithms.CPQTrainer(
            model,
            None,
            actor_lr=lr,
            critic_lr=lr,
            alpha_lr=lr,
            vae_lr=lr,
            device=self.config.device,
        )

    def _policy(self, x, state, episode_start, deterministic):
        return self.model._actor_forward(x, deterministic, False)[0].numpy(), None


class COptiDICEAgent(OSRLAgent):
    """OSRL's COptiDICE: stationary-distribution correction with a cost upper bound."""

    name = "coptidice"

    def _dataset(self, common: Any, arrays: dict[str, np.ndarray]) -> Any:
        return common.TransitionDataset(arrays, state_init=True)

    def _model_inputs(self, data: Any) -> dict[str, Any]:
        init_state_proportion, obs_std, act_std = data.get_dataset_states()
        return {
            "init_state_propotion": float(init_state_proportion),  # OSRL's spelling
            "observations_std": obs_std,
            "actions_std": act_std,
        }

    def _model(self, inputs: Mapping[str, Any]) -> Any:
        algorithms, _ = import_osrl()
        c = self.config
        return algorithms.COptiDICE(
            f_type="softchi",
            a_hidden_sizes=list(c.hidden_sizes),
            c_hidden_sizes=list(c.hidden_sizes),
            gamma=c.gamma,
            cost_limit=c.cost_limit(self.task_id),
            **inputs,
            **_common_kwargs(self),
        )

    def _trainer(self, model: Any) -> Any:
        algorithms, _ = import_osrl()
        lr = self.config.learning_rate
        return algorithms.COptiDICETrainer(
            model, None, actor_lr=lr, critic_lr=lr, scalar_lr=lr, device=self.config.device
        )

    def _step(self, trainer: Any, batch: list) -> None:
        trainer.train_one_step(batch)

    def _policy(self, x, state, episode_start, deterministic):
        return self.model.actor.forward(x, deterministic, False)[0].numpy(), None


class CDTAgent(OSRLAgent):
    """OSRL's CDT: a constrained decision transformer prompted with a return-to-go and a
    cost-to-go (see the module docstring for the prompts at acting time)."""

    name = "cdt"
    sequence = True

    def _dataset(self, common: Any, arrays: dict[str, np.ndarray]) -> Any:

        with contextlib.redirect_stdout(io.StringIO()):  # OSRL prints its data counts
            return common.SequenceDataset(arrays, seq_len=self.config.seq_len)

    def _model(self, inputs: Mapping[str, Any]) -> Any:
        algorithms, _ = import_osrl()
        c = self.config
        kwargs = _common_kwargs(self)
        kwargs.pop("device")
        return algorithms.CDT(
            seq_len=c.seq_len,
            embedding_dim=c.embedding_dim,
            num_layers=c.num_layers,
            num_heads=c.num_heads,
            **kwargs,
        ).to(c.device)

    def _trainer(self, model: Any) -> Any:
        algorithms, _ = import_osrl()
        c = self.config
        return algorithms.CDTTrainer(
            model,
            None,
            learning_rate=c.learning_rate,
            lr_warmup_steps=max(c.n_steps // 10, 1),
            device=c.device,
        )

    def _step(self, trainer: Any, batch: list) -> None:
        states, actions, returns, cost_returns, time_steps, mask, episode_cost, costs = batch
        trainer.train_one_step(
            states, actions, returns, cost_returns, time_steps.long(), mask, episode_cost, costs
        )

    def _policy(self, x, state, episode_start, deterministic):
        """``state``: per environment ``(states, actions, step)``, the last ``seq_len``
        states and the actions this agent chose (zero for the current one, as in OSRL's
        rollout) and the episode step."""
        import torch

        n, length = len(x), self.config.seq_len
        starts = np.ones(n, bool) if episode_start is None else np.asarray(episode_start, bool)
        if state is None:
            state = [None] * n
        limit = self.config.cost_limit(self.task_id)
        out = np.zeros((n, 2), np.float32)
        new_state = []
        for b in range(n):  # histories differ in length: one unpadded window each, as OSRL
            states, actions, step = ([], [], 0) if starts[b] or state[b] is None else state[b]
            states = [*states, x[b]][-length:]
            actions = [*actions, torch.zeros(2)][-length:]
            k = len(states)
            t = min(step, MAX_EPISODE_STEPS - 1)
            steps = torch.arange(max(t - k + 1, 0), max(t - k + 1, 0) + k)[None]  # (1, k)
            pred, _, _ = self.model(
                torch.stack(states)[None],  # (1, k, D)
                torch.stack(actions)[None],  # (1, k, 2)
                torch.full((1, k), self.config.target_return),
                torch.full((1, k), limit),
                steps,
                None,
                torch.tensor([limit]),
            )
            if self.model.stochastic:
                pred = pred.mean
            out[b] = pred[0, -1].clamp(-1.0, 1.0).numpy()
            actions[-1] = torch.as_tensor(out[b])
            new_state.append((states, actions, step + 1))
        return out, new_state
