"""The typed, frozen configs of the d3rlpy agents (BC, CQL, IQL) and their presets.

:class:`OfflineConfig` holds what every d3rlpy agent shares (budget, frame stack, image
encoder, sampling, device); :class:`BCConfig`, :class:`CQLConfig` and :class:`IQLConfig` add
their algorithm's fields and build its d3rlpy config (``DiscreteBC``, ``DiscreteCQL``,
``IQL``).  The defaults are the ``paper`` preset; :data:`DEBUG`, :data:`SMALL` and :data:`CPU`
name the fields the other presets change for all three, and :func:`make_presets` composes them with
each model's own changes (:mod:`baselines.offline` holds the agents).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baselines.d3rlpy_data import OBS_SHAPE, import_d3rlpy
from carla_safe_envs.agents import AgentError

NATURE_DQN_FILTERS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))  # (channels, kernel, stride)


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
        acc_balance: rebalances the mini-batches over the three accelerations (brake, coast,
            throttle) of discrete actions: a transition is drawn with probability
            proportional to ``n(its acceleration) ** -acc_balance`` (0: uniform, d3rlpy's
            sampling; 1: each acceleration equally often).  A clean expert brakes in ~6% of
            its steps, and those steps are the yielding decisions a cloned policy gets wrong
            (see the README's learn-check section); imitation learning for driving rebalances
            such rare decisions (e.g. Codevilla et al. 2018).  BC's ``cpu`` preset uses 1;
            a continuous-action model (IQL) must keep 0.
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
    acc_balance: float = 0.0
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
        if self.acc_balance < 0.0:
            raise AgentError(
                f"{name}.acc_balance must be >= 0 (0: uniform sampling, 1: each acceleration "
                f"equally often), got {self.acc_balance}"
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
        cosine_annealing: anneal the learning rate to 0 over ``n_steps`` (cosine), so the
            final weights settle instead of ending wherever the last steps took them.
    """

    n_steps: int = 100_000
    batch_size: int = 100
    learning_rate: float = 1e-3
    beta: float = 0.5
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


def make_presets(
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
