"""The offline baselines on d3rlpy 2.8: BC and CQL (discrete actions) and IQL (continuous).

One implementation, :class:`D3rlpyAgent`, serves the three models; each differs only by its
config dataclass (:class:`BCConfig`, :class:`CQLConfig`, :class:`IQLConfig`), which knows how
to build its d3rlpy algorithm (``DiscreteBC``, ``DiscreteCQL``, ``IQL``).  Everything else is
shared: reading the dataset, frame stacking, training with d3rlpy's logger, acting, saving.

Data.  ``fit`` loads the whole dataset file with
:meth:`~carla_safe_envs.datasets.OfflineDataset.to_d3rlpy`: channel-first ``(N, 3, 128, 128)``
uint8 frames, **48 KiB per step, held in memory for the whole training** (and twice that while
the file is converted).  The grid's datasets cost: ``smoke`` 600 steps = 28 MiB; ``small``
20,000 steps = 0.92 GiB (peak 1.9 GiB); ``paper`` 100,000 steps = 4.6 GiB (peak 9.2 GiB).
Costs are not optimized by these algorithms (they maximize reward); the summary reports the
dataset's mean episode cost beside the training losses so that the two can be read together.

IQL and discrete data.  d3rlpy has no discrete IQL, so IQL acts in the continuous mode
(``Box(-1, 1, (2,))`` = (acc / 3, steer)).  It trains on a continuous-mode dataset
(``python -m benchmarks collect --action-mode continuous``) or on a discrete-mode one, whose
action indices are read as their continuous values with
:func:`carla_safe_envs.env.discrete_to_continuous` (the env's own table: index ``i`` becomes
``(acc_i / 3, steer_i)``, which drives the car exactly as action ``i`` does).  A policy trained
that way has only seen the 15 discrete points of the action box.

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
nothing is written, and nothing ever lands in ``./d3rlpy_logs``.  Importing d3rlpy through this
module routes d3rlpy's console messages (structlog, printed to stdout by default) to the
standard ``logging`` module (loggers ``d3rlpy.*``, INFO and WARNING), so they never mix with the
command line's ``--json`` output.  This is a process-wide structlog setting.

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

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from carla_safe_envs.agents import AgentError, BaseAgent
from carla_safe_envs.bev import downsample
from carla_safe_envs.tasks import TASKS

log = logging.getLogger(__name__)

MODEL_FILE = "model.d3"  # d3rlpy's full learnable (config, shapes, weights) in the agent dir
OBS_SHAPE = (128, 128, 3)  # the environments' BEV observation (H, W, C) uint8
NATURE_DQN_FILTERS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))  # (channels, kernel, stride)

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


# ------------------------------------------------------------------------------ configs
@dataclass(frozen=True, kw_only=True)
class OfflineConfig:
    """What every d3rlpy agent shares: the training budget, the image encoder, the device.

    The defaults are the ``paper`` preset (d3rlpy's Atari setup); subclasses add the
    algorithm's own fields and build its d3rlpy config in :meth:`d3rlpy_config`.

    Attributes:
        n_steps: gradient updates in all [updates].
        n_steps_per_epoch: updates per d3rlpy epoch, i.e. per row of the training CSVs; must
            divide ``n_steps`` (d3rlpy would silently drop the remainder).
        batch_size: transitions per update.
        frame_stack: BEV frames stacked on the channel axis (d3rlpy's Atari examples: 4; one
            frame shows no speed).  At 10 Hz, 4 frames span 0.3 s.
        encoder_filters: the image encoder's convolutions, (out channels, kernel, stride)
            each, ReLU between (d3rlpy's ``PixelEncoderFactory``; the default is Nature DQN,
            d3rlpy's default for images).  On 128 x 128 frames (Atari: 84 x 84) Nature DQN
            flattens 64 x 12 x 12 = 9,216 features, against 3,136 on Atari.
        encoder_feature_size: width of the encoder's last (linear) layer (Nature DQN: 512).
        image_size: side [px] of the frames the networks see: 128 (the env's BEV) or a
            divisor of it; smaller frames are area-averaged once when the dataset is loaded
            and at every ``act`` (:func:`carla_safe_envs.bev.downsample`).  64 px keeps a
            car ~9 x 4 px and costs a quarter of the memory and of the first convolution.
        device: ``auto`` (the first CUDA GPU when torch sees one, else the CPU), ``cpu`` or
            ``cuda[:N]``; also where a saved agent is loaded.
    """

    n_steps: int = 1_000_000
    n_steps_per_epoch: int = 10_000
    batch_size: int = 32
    frame_stack: int = 4
    encoder_filters: tuple[tuple[int, int, int], ...] = NATURE_DQN_FILTERS
    encoder_feature_size: int = 512
    image_size: int = OBS_SHAPE[0]
    device: str = "auto"

    def __post_init__(self) -> None:
        filters = tuple(tuple(int(v) for v in f) for f in self.encoder_filters)
        object.__setattr__(self, "encoder_filters", filters)  # JSON lists -> tuples
        name = type(self).__name__
        positive = ("n_steps", "n_steps_per_epoch", "batch_size", "frame_stack")
        for field in (*positive, "encoder_feature_size", "image_size"):
            if getattr(self, field) < 1:
                raise AgentError(f"{name}.{field} must be >= 1, got {getattr(self, field)}")
        if OBS_SHAPE[0] % self.image_size:
            raise AgentError(
                f"{name}.image_size must divide the {OBS_SHAPE[0]} px BEV (e.g. 128, 64, 32), "
                f"got {self.image_size}"
            )
        if self.n_steps % self.n_steps_per_epoch:
            raise AgentError(
                f"{name}.n_steps ({self.n_steps}) must be a multiple of n_steps_per_epoch "
                f"({self.n_steps_per_epoch})"
            )
        size = self.image_size
        for f in filters:
            if len(f) != 3 or min(f) < 1:
                raise AgentError(
                    f"{name}.encoder_filters must be (channels, kernel, stride) triples of "
                    f"positive integers, got {self.encoder_filters}"
                )
            size = (size - f[1]) // f[2] + 1
        if not filters or size < 1:
            raise AgentError(
                f"{name}.encoder_filters {filters} do not fit a {self.image_size} px image: give "
                "one to a few convolutions whose kernels and strides leave at least 1 px"
            )
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise AgentError(f"{name}.device must be auto, cpu or cuda[:N], got {self.device!r}")

    # --- d3rlpy pieces
    def encoder_factory(self):
        d3rlpy = import_d3rlpy()
        return d3rlpy.models.PixelEncoderFactory(
            filters=[list(f) for f in self.encoder_filters],
            feature_size=self.encoder_feature_size,
        )

    def d3rlpy_config(self):
        """The d3rlpy ``LearnableConfig`` of this algorithm."""
        raise NotImplementedError

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu:0"


def _reward_scaler(scale: float):
    d3rlpy = import_d3rlpy()
    return None if scale == 1.0 else d3rlpy.preprocessing.MultiplyRewardScaler(scale)


@dataclass(frozen=True, kw_only=True)
class BCConfig(OfflineConfig):
    """Behaviour cloning of the discrete actions (d3rlpy ``DiscreteBC``): a categorical policy
    fitted by cross-entropy, ``L = -log pi(a|s) + beta * mean(logits^2)``.

    d3rlpy ships no Atari BC example; we keep ``DiscreteBCConfig``'s defaults (batch 100,
    learning rate 1e-3, beta 0.5, Adam) on the shared Nature DQN encoder with 4 stacked frames
    and pixel scaling (x / 255).  ``paper``: 100,000 updates = 100 passes over the 100,000-step
    paper dataset (supervised learning needs no more; d3rlpy has no BC budget to follow).

    Attributes:
        learning_rate: Adam's learning rate.
        beta: weight of the logit L2 penalty (d3rlpy's regularizer; keeps logits bounded).
        acc_balance: rebalances the mini-batches over the three accelerations (brake, coast,
            throttle): a transition is drawn with probability proportional to
            ``n(its acceleration) ** -acc_balance`` (0: uniform, d3rlpy's sampling; 1: each
            acceleration equally often).  A clean expert brakes in ~6% of its steps, and
            those steps are the yielding decisions a cloned policy gets wrong (see the
            README's learn-check section); imitation learning for driving rebalances such
            rare decisions (e.g. Codevilla et al. 2018).
        cosine_annealing: anneal the learning rate to 0 over ``n_steps`` (cosine), so the
            final weights settle instead of ending wherever the last steps took them.
    """

    n_steps: int = 100_000
    batch_size: int = 100
    learning_rate: float = 1e-3
    beta: float = 0.5
    acc_balance: float = 0.0
    cosine_annealing: bool = False

    def d3rlpy_config(self):
        d3rlpy = import_d3rlpy()
        optimizers = d3rlpy.optimizers
        schedule = (
            optimizers.CosineAnnealingLRFactory(T_max=self.n_steps)
            if self.cosine_annealing
            else None
        )
        return d3rlpy.algos.DiscreteBCConfig(
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optim_factory=optimizers.AdamFactory(lr_scheduler_factory=schedule),
            beta=self.beta,
            encoder_factory=self.encoder_factory(),
            observation_scaler=d3rlpy.preprocessing.PixelObservationScaler(),
        )


@dataclass(frozen=True, kw_only=True)
class CQLConfig(OfflineConfig):
    """Conservative Q-learning on the discrete actions (d3rlpy ``DiscreteCQL``: double DQN plus
    ``alpha * (logsumexp_a Q(s, a) - Q(s, a_data))``; Kumar et al. 2020).

    The defaults are d3rlpy's Atari reproduction (``reproductions/offline/discrete_cql.py``):
    learning rate 5e-5, Adam eps 1e-2 / 32, batch 32, alpha 4, quantile-regression Q-function
    with 200 quantiles, target sync every 2,000 updates, Nature DQN encoder, pixel scaling,
    4 stacked frames.  We differ in two places: rewards are multiplied by ``reward_scale``
    instead of clipped to [-1, 1] (our rewards are dense and shaped, and clipping would price
    a 4 m/s collision (-120) like one slow step); and ``paper`` trains 1,000,000 updates, the
    Atari tutorial's budget: 320 passes over our 100,000-step paper dataset, between the
    tutorial's 64 and the reproduction's 800 (12.5M updates) over 1% of DQN Replay (500,000
    transitions).

    Attributes:
        learning_rate: Adam's learning rate.
        adam_eps: Adam's epsilon (1e-2 / batch size in DQN's Atari setting).
        gamma: discount factor (0.99: a 10 s horizon at 10 Hz).
        alpha: weight of the conservative term (d3rlpy's default 1.0; Atari: 4.0).
        n_quantiles: quantiles of the QR-DQN Q-function; 0 uses a plain (mean) Q-function.
        target_update_interval: updates between hard target-network syncs.
        n_critics: Q-functions in the ensemble.
        reward_scale: rewards are multiplied by this (0.1: a well-driven step, ~2.8 reward,
            becomes ~0.28, the order of Atari's clipped rewards; a collision stays ~40x that).
    """

    learning_rate: float = 5e-5
    adam_eps: float = 1e-2 / 32
    gamma: float = 0.99
    alpha: float = 4.0
    n_quantiles: int = 200
    target_update_interval: int = 2_000
    n_critics: int = 1
    reward_scale: float = 0.1

    def d3rlpy_config(self):
        d3rlpy = import_d3rlpy()
        q_functions = d3rlpy.models.q_functions
        q_func = (
            q_functions.QRQFunctionFactory(n_quantiles=self.n_quantiles)
            if self.n_quantiles > 0
            else q_functions.MeanQFunctionFactory()
        )
        return d3rlpy.algos.DiscreteCQLConfig(
            learning_rate=self.learning_rate,
            optim_factory=d3rlpy.optimizers.AdamFactory(eps=self.adam_eps),
            batch_size=self.batch_size,
            gamma=self.gamma,
            alpha=self.alpha,
            q_func_factory=q_func,
            target_update_interval=self.target_update_interval,
            n_critics=self.n_critics,
            encoder_factory=self.encoder_factory(),
            observation_scaler=d3rlpy.preprocessing.PixelObservationScaler(),
            reward_scaler=_reward_scaler(self.reward_scale),
        )


@dataclass(frozen=True, kw_only=True)
class IQLConfig(OfflineConfig):
    """Implicit Q-learning on the continuous actions (d3rlpy ``IQL``; Kostrikov et al. 2021):
    an expectile value function, a Q-function trained on it, and a Gaussian policy fitted by
    advantage-weighted regression, ``weight = min(exp(weight_temp * A), max_weight)``.

    The defaults are d3rlpy's ``IQLConfig`` and its D4RL reproduction
    (``reproductions/offline/iql.py``): learning rates 3e-4, batch 256, expectile 0.7,
    weight_temp 3, max_weight 100, tau 0.005, two critics, cosine-annealed actor learning rate
    over the whole run, 500,000 updates.  We differ in: images (the Nature DQN encoder, one for
    the actor, the critics and the value function each, with pixel scaling and 4 stacked
    frames, where D4RL has state vectors and MLPs); and a fixed ``reward_scale`` of 1 instead of
    ``ReturnBasedRewardScaler(1000)``: that scaler divides by the dataset's return range,
    ~1,000 here already (and undefined on a one-episode dataset).

    Attributes:
        actor_learning_rate: Adam's learning rate of the policy.
        critic_learning_rate: Adam's learning rate of the Q- and value functions.
        actor_cosine_annealing: anneal the actor's learning rate to 0 over ``n_steps``
            (cosine), as d3rlpy's reproduction does.
        gamma: discount factor.
        tau: soft target-update coefficient.
        n_critics: Q-functions in the ensemble (the minimum is used).
        expectile: the value function's expectile (0.5 = mean; closer to 1 = max).
        weight_temp: inverse temperature beta of the advantage weights.
        max_weight: clip of the advantage weights.
        reward_scale: rewards are multiplied by this.
    """

    n_steps: int = 500_000
    batch_size: int = 256
    actor_learning_rate: float = 3e-4
    critic_learning_rate: float = 3e-4
    actor_cosine_annealing: bool = True
    gamma: float = 0.99
    tau: float = 0.005
    n_critics: int = 2
    expectile: float = 0.7
    weight_temp: float = 3.0
    max_weight: float = 100.0
    reward_scale: float = 1.0

    def d3rlpy_config(self):
        d3rlpy = import_d3rlpy()
        optimizers = d3rlpy.optimizers
        schedule = (
            optimizers.CosineAnnealingLRFactory(T_max=self.n_steps)
            if self.actor_cosine_annealing
            else None
        )
        return d3rlpy.algos.IQLConfig(
            actor_learning_rate=self.actor_learning_rate,
            critic_learning_rate=self.critic_learning_rate,
            actor_optim_factory=optimizers.AdamFactory(lr_scheduler_factory=schedule),
            critic_optim_factory=optimizers.AdamFactory(),
            actor_encoder_factory=self.encoder_factory(),
            critic_encoder_factory=self.encoder_factory(),
            value_encoder_factory=self.encoder_factory(),
            batch_size=self.batch_size,
            gamma=self.gamma,
            tau=self.tau,
            n_critics=self.n_critics,
            expectile=self.expectile,
            weight_temp=self.weight_temp,
            max_weight=self.max_weight,
            observation_scaler=d3rlpy.preprocessing.PixelObservationScaler(),
            reward_scaler=_reward_scaler(self.reward_scale),
        )


#: ``debug``: tiny networks and budgets for tests (a fit takes seconds); every code path of
#: the full configs (frame stacking, quantiles, two critics, annealing) stays switched on.
DEBUG = {
    "n_steps": 20,
    "n_steps_per_epoch": 10,
    "batch_size": 8,
    "frame_stack": 2,
    "encoder_filters": ((8, 8, 8), (16, 4, 4)),
    "encoder_feature_size": 32,
}
#: ``small``: trainable on a 2-core CPU in 1-3 hours per model and task: a narrower encoder
#: with a stride-2 last layer (14M multiply-adds per 4-frame sample, Nature DQN 40M) and
#: budgets that fit (BC 20,000 updates, CQL 10,000, IQL 5,000 at batch 64); the algorithms'
#: own hyperparameters stay those of ``paper``.  Measured on the busy 2-vCPU CI machine
#: (load 3-6, one torch thread, 2026-11-25): BC 3.4-3.6, CQL 1.0-1.3, IQL 0.4 updates/s.
SMALL = {
    "n_steps_per_epoch": 1_000,
    "frame_stack": 4,
    "encoder_filters": ((16, 8, 4), (32, 4, 2), (32, 3, 2)),
    "encoder_feature_size": 256,
}


#: ``cpu``: one CPU core, the model's best within ~30-45 minutes: 64 px frames (area-averaged
#: once when the dataset is loaded: 246 MB for 20,000 steps instead of 983 MB) through the
#: Nature DQN encoder (15 x 15 x 32 -> 6 x 6 x 64 -> 4 x 4 x 64, 7M multiply-adds per
#: 4-frame sample); epochs of 10% of the budget (the learn-check's evaluation points).
CPU = {
    "image_size": 64,
    "frame_stack": 4,
    "encoder_filters": NATURE_DQN_FILTERS,
    "encoder_feature_size": 512,
}


def _presets(
    paper: OfflineConfig,
    *,
    small: Mapping[str, Any],
    cpu: Mapping[str, Any],
    debug: Mapping[str, Any],
):
    return {
        "debug": dataclasses.replace(paper, **{**DEBUG, **debug}),
        "small": dataclasses.replace(paper, **{**SMALL, **small}),
        "cpu": dataclasses.replace(paper, **{**CPU, **cpu}),
        "paper": paper,
    }


# ------------------------------------------------------------------------------- agents
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
    mdp, _ = data.to_d3rlpy()  # (N, 3, S, S) uint8, all in memory
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
            raise AgentError("acc_balance needs discrete actions (their acceleration index)")
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
            acc_balance=getattr(config, "acc_balance", 0.0),
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
        x, state = stack_frames(obs.transpose(0, 3, 1, 2), state, episode_start, self.config)
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


def stack_frames(
    frames: np.ndarray,
    state: np.ndarray | None,
    episode_start: np.ndarray | None,
    config: OfflineConfig,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The network input ``(B, 3 * k, H, W)`` for channel-first ``frames`` ``(B, 3, H, W)``
    and the new state (the same array; None when ``k = config.frame_stack`` is 1).

    Like d3rlpy's ``FrameStackTransitionPicker``: oldest frame first, zeros before an
    episode's first frame (a None state, a batch of another size, or ``episode_start``)."""
    k = config.frame_stack
    if k == 1:
        return np.ascontiguousarray(frames), None
    batch, channels = frames.shape[:2]
    if state is None or state.shape != (batch, channels * k, *frames.shape[2:]):
        history = np.zeros((batch, channels * (k - 1), *frames.shape[2:]), np.uint8)
    else:
        history = state[:, channels:].copy()
        if episode_start is not None:
            history[np.asarray(episode_start, dtype=bool).reshape(batch)] = 0
    stacked = np.concatenate([history, frames], axis=1)
    return stacked, stacked


class BCAgent(D3rlpyAgent):
    name = "bc"
    presets = _presets(
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
    presets = _presets(
        CQLConfig(),
        small={"n_steps": 10_000, "target_update_interval": 1_000},
        cpu={"n_steps": 10_000, "n_steps_per_epoch": 1_000, "target_update_interval": 1_000},
        debug={"n_quantiles": 4, "target_update_interval": 10},
    )


class IQLAgent(D3rlpyAgent):
    name = "iql"
    presets = _presets(
        IQLConfig(),
        small={"n_steps": 5_000, "batch_size": 64},
        cpu={"n_steps": 5_000, "n_steps_per_epoch": 500, "batch_size": 64},
        debug={},
    )
