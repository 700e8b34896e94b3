"""Typed, frozen configs of the world-model agents (VL-SAFE, DreamerV3, FOSP) and presets.

A config is one frozen dataclass holding the world-model config (``world_model``,
:class:`vlsafe.world_model.WorldModelConfig`), the actor-critic config (``actor_critic``,
:class:`vlsafe.behavior.ActorCriticConfig`), for VL-SAFE and FOSP the weighted actor
(``weighted_actor``, :class:`WeightedActorConfig`) and the agent's own fields.  The ``debug`` /
``small`` / ``cpu`` / ``paper`` presets compose :data:`vlsafe.world_model.WM_PRESETS` and
:data:`vlsafe.behavior.AC_PRESETS` of the same name with a training budget.
:func:`compose_config` applies overrides, nested (``{"world_model": {"lr": 1e-4}}``) or
dotted (``{"world_model.lr": 1e-4}``, as ``--config world_model.lr=1e-4`` gives them); unknown
keys raise.

Renamed keys.  Before the weighted actor became one nested config, ``VLSafeConfig`` had
``beta1``, ``beta2`` and ``FOSPConfig`` ``beta_r``, ``beta_c``, both beside ``weight_clip``,
``adv_norm``, ``adv_std_min``, ``dataset_actor_scale`` and ``imag_actor_scale``.  Each config
class lists its old keys in ``RENAMED_KEYS``; :func:`upgrade_keys` reads them as the new ones
with a :class:`FutureWarning` naming both, so an ``agent.json`` saved before still loads.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from carla_safe_envs.agents import AgentError, config_from_dict
from vlsafe.behavior import AC_PRESETS, ActorCriticConfig
from vlsafe.world_model import WM_PRESETS, WorldModelConfig


@dataclass(frozen=True)
class WorldModelAgentConfig:
    """Fields of every world-model agent.

    Attributes:
        world_model: the world model (its ``batch_size`` x ``seq_len`` windows are the
            training batch of every update, its ``horizon`` the imagination length).
        actor_critic: actor, critics and imagination.
        updates: gradient updates when training from a dataset.
        pretrain_updates: world-model-only updates before the actor-critic joins (imagining
            with an untrained model only teaches the critics noise).
        log_every: updates per row of ``train.csv``.
        checkpoint_every: updates between checkpoints (``<log_dir>/checkpoint``).
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
    """

    world_model: WorldModelConfig = field(default_factory=WorldModelConfig)
    actor_critic: ActorCriticConfig = field(default_factory=ActorCriticConfig)
    updates: int = 100_000
    pretrain_updates: int = 0
    log_every: int = 100
    checkpoint_every: int = 5_000
    device: str = "auto"

    def __post_init__(self) -> None:
        if (
            min(self.updates, self.pretrain_updates) < 0
            or min(self.log_every, self.checkpoint_every) < 1
        ):
            raise ValueError("need updates, pretrain_updates >= 0 and log/checkpoint_every >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass(frozen=True)
class WeightedActorConfig:
    """The weighted-likelihood actor shared by VL-SAFE and FOSP
    (:class:`~vlsafe.learners.WeightedActorLearner`): pi* = w pi_b / Z with

        w = p exp(beta_r A^r) + (1 - p) exp(-beta_c A^c)

    (:func:`vlsafe.objectives.vlsafe_weights`).  VL-SAFE's p is the safety probability p(s)
    (the poster's beta1, beta2 are ``beta_r``, ``beta_c``); FOSP's p is its feasibility gate
    and its A^r the priced advantage A^r - lambda A^c.

    Attributes:
        beta_r: inverse temperature of the reward branch, in units of the advantage's batch
            standard deviation (``adv_norm="std"``): 1 makes a one-sigma better action e
            (2.7) times as likely, a moderate AWR-like sharpening that keeps the policy close
            to the data it was fitted on.
        beta_c: the same for the cost branch (lower cost -> larger weight).  Equal to
            ``beta_r`` so that p = 0.5 treats reward and cost symmetrically.
        weight_clip: upper bound of each exponential (AWR uses 20): one lucky sample cannot
            dominate a batch, and exp never overflows.
        adv_norm: ``"std"`` divides A^r and A^c by their batch standard deviation (at least
            ``adv_std_min``) so that beta is unit-free: the reward (~2 per step) and the
            binary cost live on different scales, and DreamerV3's return-percentile scale
            (~ the return range, hundreds) would make every exp(beta A) ~ 1.  Not centred: a
            shift would change the balance of the two branches.  ``"none"`` uses raw values.
        adv_std_min: floor of that scale [reward / cost units]: in a batch without cost
            events A^c is critic noise, which the floor keeps small (weights ~ 1, i.e.
            behaviour cloning) instead of blowing it up to unit scale.
        dataset_actor_scale: weight of the dataset term: the recorded (expert) actions on
            dataset states.  It keeps the actor on the data's support, the point of offline
            training.
        imag_actor_scale: weight of the imagined term: the actor's own sampled actions on
            imagined states (behaviour policy = the current actor), p from the world model
            (VL-SAFE: its safety head), advantages from lambda-returns.  The poster uses
            imagined rollouts "along with predicted safety estimations for actor-critic
            learning", so they contribute by default; 0 gives pure dataset weighting.
    """

    beta_r: float = 1.0
    beta_c: float = 1.0
    weight_clip: float = 20.0
    adv_norm: str = "std"
    adv_std_min: float = 0.1
    dataset_actor_scale: float = 1.0
    imag_actor_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.adv_norm not in ("std", "none"):
            raise ValueError(f"adv_norm must be 'std' or 'none', got {self.adv_norm!r}")
        if self.weight_clip <= 0 or self.adv_std_min <= 0:
            raise ValueError(
                f"weight_clip and adv_std_min must be > 0, got {self.weight_clip}, "
                f"{self.adv_std_min}"
            )
        if min(self.beta_r, self.beta_c, self.dataset_actor_scale, self.imag_actor_scale) < 0:
            raise ValueError("beta_r, beta_c and the two actor scales must be >= 0")


#: The keys both agents' configs had flat before :class:`WeightedActorConfig`.
_MOVED_TO_WEIGHTED_ACTOR = {
    key: f"weighted_actor.{key}"
    for key in ("weight_clip", "adv_norm", "adv_std_min", "dataset_actor_scale", "imag_actor_scale")
}


@dataclass(frozen=True)
class VLSafeConfig(WorldModelAgentConfig):
    """VL-SAFE: w = p(s) exp(beta_r A^r) + (1 - p(s)) exp(-beta_c A^c), pi* = w pi_b / Z.

    The poster fixes the weight formula, imagined rollouts of horizon 15 from dataset
    posterior states, critics on lambda-returns and clipped weights.  Every other choice is a
    field here, with the reasoning:

    Attributes:
        weighted_actor: the actor's weighting (:class:`WeightedActorConfig`; p = p(s), from
            the dataset's labels on dataset states and the safety head on imagined ones).
        dataset_lambda: how A is estimated on dataset states: TD(lambda) along the dataset
            window with the dataset's own rewards / costs, minus V.  0 (default) is the
            one-step advantage r + gamma V(s') - V(s) of the recorded action under the
            critics of the *current* policy -- the A^pi(s, a) that the derivation of pi* =
            w pi_b / Z (AWR / AWAC) calls for, with exact rewards and no model error.  Larger
            values follow the behaviour policy's own future (AWR's TD(lambda), lower variance
            but the behaviour's advantage).

    Critics: V^r and V^c are trained on imagined lambda-returns only (reward and cost heads
    along the rollout, ``actor_critic.gamma`` / ``cost_gamma``, ``lam``), bootstrapped from
    their slow EMA copies, as DreamerV3.
    """

    weighted_actor: WeightedActorConfig = field(default_factory=WeightedActorConfig)
    dataset_lambda: float = 0.0

    RENAMED_KEYS: ClassVar[Mapping[str, str]] = {
        "beta1": "weighted_actor.beta_r",
        "beta2": "weighted_actor.beta_c",
        **_MOVED_TO_WEIGHTED_ACTOR,
    }


@dataclass(frozen=True)
class DreamerV3Config(WorldModelAgentConfig):
    """DreamerV3 (Hafner et al. 2023) on the shared world model: reward-only actor-critic.

    Trained online like DreamerV3: ``prefill`` random-action steps, then the current policy
    (sampling) drives the env for ``env_steps`` steps in total into a replay of
    ``replay_capacity`` steps, with ``train_ratio`` replayed steps per env step (one update
    replays ``world_model.batch_size x seq_len`` steps).  ``fit(dataset)`` instead trains for
    ``updates`` updates from the dataset (the offline option).  The replay holds its frames in
    memory: 48 KiB per step (the paper's 200,000 steps = 9.8 GB).

    Attributes:
        offline_bc: weight of a behaviour-cloning term (the negative log-likelihood of the
            dataset's actions) in the actor loss when training from a dataset; online
            training never uses it.  0 is DreamerV3 unchanged, which offline collapses to one
            action: measured on Right Turn (``cpu``, 6,000 updates), its imagined actor put
            96-98% on "coast straight", which keeps the ~4 m/s of the dataset's moving states
            through a 1.5 s imagination but stands still from every episode's start at
            rest (Return 0.0 at all 10 points).  1 anchors the actor to the data as TD3+BC
            does, with the reward-maximising REINFORCE term beside it.
    """

    offline_bc: float = 1.0
    env_steps: int = 500_000
    prefill: int = 5_000
    train_ratio: float = 512.0
    replay_capacity: int = 200_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.offline_bc < 0:
            raise ValueError(f"offline_bc must be >= 0, got {self.offline_bc}")


@dataclass(frozen=True)
class FOSPConfig(WorldModelAgentConfig):
    """FOSP (Cao et al., "Fine-tuning Offline Safe Policy through World Models", ICLR 2025).

    Offline pre-training (see :class:`vlsafe.learners.FOSPLearner`): expectile critics,
    a reachability gate and an augmented Lagrangian; then, if ``online_steps > 0``,
    online fine-tuning.

    Attributes:
        reward_expectile: tau of V^r (IQL: 0.7; > 0.5 approaches the best in-data action).
        cost_expectile: tau of V^c (< 0.5 approaches the *least* costly in-data action: the
            feasibility value of reachability analysis, FISOR / FOSP).
        feasible_threshold: a state is feasible when its per-step cost rate
            (1 - cost_gamma) V^c(s) is at most this (0.02: about 0.7 expected unsafe steps in
            the next ~3 s at cost_gamma 0.97).  FOSP's hard gate "cost value <= 0" with room
            for the regression error of a two-hot critic.
        cost_limit: the constraint J_c <= cost_limit of the Lagrangian, J_c the per-step
            cost rate of the actor's imagined rollouts ((1 - cost_gamma) x the cost
            lambda-return from the start states): 0.02 = 10 unsafe steps per 500 steps.
        multiplier_init, penalty_init, penalty_growth: the augmented Lagrangian's lambda_0,
            mu_0 and the per-update growth of mu (SafeDreamer's 1e-5).
        weighted_actor: the actor's weighting (:class:`WeightedActorConfig`; p = the
            feasibility gate: the reward branch for feasible states, the cost branch for
            infeasible ones; FOSP trains its actor on imagined rollouts, the dataset term is
            its in-sample part).
        imag_critic_scale: weight of the critic losses on imagined rollouts (Q on
            lambda-returns, V on the imagined actions) beside the in-sample ones.
        online_steps: env steps of online fine-tuning after the offline phase (0: none).
            FOSP's policy-expansion step (choosing between the offline and online actors by
            Q) is not replicated: the one actor keeps training on the mixed data.
        online_train_ratio: replayed steps per env step during fine-tuning.
        online_dataset_fraction: share of each fine-tuning batch drawn from the dataset.
        replay_capacity: steps held by the fine-tuning replay.
    """

    reward_expectile: float = 0.7
    cost_expectile: float = 0.3
    feasible_threshold: float = 0.02
    cost_limit: float = 0.02
    multiplier_init: float = 0.0
    penalty_init: float = 5e-3
    penalty_growth: float = 1e-5
    weighted_actor: WeightedActorConfig = field(default_factory=WeightedActorConfig)
    imag_critic_scale: float = 1.0
    online_steps: int = 0
    online_train_ratio: float = 64.0
    online_dataset_fraction: float = 0.5
    replay_capacity: int = 50_000

    RENAMED_KEYS: ClassVar[Mapping[str, str]] = {
        "beta_r": "weighted_actor.beta_r",
        "beta_c": "weighted_actor.beta_c",
        **_MOVED_TO_WEIGHTED_ACTOR,
    }


def _base(preset: str) -> dict[str, Any]:
    """The fields every world-model agent's ``preset`` shares."""
    world_model = WM_PRESETS[preset]
    if preset == "debug":
        world_model = dataclasses.replace(world_model, horizon=5)
    # small: 3.3-4.4 s per update on one core of the 2-vCPU CI machine (world model ~2.7 s),
    # so 5,000 updates take 5-6 hours there
    # cpu: ~0.2-0.3 s per whole update on one core (wm-speed, 2026-12-02), so 6,000 updates
    # take ~20-30 minutes
    budget = {
        "debug": dict(updates=12, pretrain_updates=0, log_every=4, checkpoint_every=6),
        "small": dict(updates=5_000, pretrain_updates=500, log_every=50, checkpoint_every=500),
        "cpu": dict(updates=6_000, pretrain_updates=1_000, log_every=100, checkpoint_every=1_000),
        "paper": dict(
            updates=100_000, pretrain_updates=5_000, log_every=250, checkpoint_every=5_000
        ),
    }[preset]
    return dict(world_model=world_model, actor_critic=AC_PRESETS[preset], **budget)


VLSAFE_PRESETS = {p: VLSafeConfig(**_base(p)) for p in WM_PRESETS}
DREAMER_PRESETS = {
    "debug": DreamerV3Config(
        **_base("debug"), env_steps=80, prefill=40, train_ratio=8.0, replay_capacity=1_000
    ),
    # small: 50,000 env steps x 32 replayed / (16 x 32 per update) = 3,125 updates (~3 h on CPU)
    "small": DreamerV3Config(
        **_base("small"), env_steps=50_000, prefill=2_500, train_ratio=32.0, replay_capacity=50_000
    ),
    # cpu: 60,000 env steps x 16 replayed / (8 x 16 per update) = 7,500 updates (~30-40 min
    # with the ~1 ms env steps and acting); the replay holds 64 px frames (12 KiB per step)
    "cpu": DreamerV3Config(
        **_base("cpu"), env_steps=60_000, prefill=2_500, train_ratio=16.0, replay_capacity=60_000
    ),
    "paper": DreamerV3Config(**_base("paper")),
}
FOSP_PRESETS = {p: FOSPConfig(**_base(p)) for p in WM_PRESETS}
FOSP_PRESETS["debug"] = dataclasses.replace(
    FOSP_PRESETS["debug"], replay_capacity=1_000, online_train_ratio=8.0
)


def compose_config(base: Any, overrides: Mapping[str, Any] | None) -> Any:
    """``base`` (a frozen dataclass, possibly nesting others) with ``overrides`` applied.

    Keys are field names; a nested config takes a dict (``{"world_model": {"lr": 1e-4}}``) or
    dotted keys (``{"world_model.lr": 1e-4}``).  Renamed keys are read as their new names
    (:func:`upgrade_keys`).  Unknown keys raise :class:`AgentError` listing the valid ones;
    invalid values raise it with the config's own message.
    """
    if not overrides:
        return base
    overrides = upgrade_keys(type(base), overrides)
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        head, dot, rest = key.partition(".")
        current = getattr(base, head, None)
        if dot or (isinstance(value, Mapping) and dataclasses.is_dataclass(current)):
            if not dataclasses.is_dataclass(current):
                raise AgentError(
                    f"unknown config field {head!r} in {key!r} for {type(base).__name__}; "
                    "nested configs: "
                    + ", ".join(
                        f.name
                        for f in dataclasses.fields(base)
                        if dataclasses.is_dataclass(getattr(base, f.name))
                    )
                )
            nested.setdefault(head, {}).update({rest: value} if dot else dict(value))
        else:
            flat[key] = value
    try:
        for head, sub in nested.items():
            flat[head] = compose_config(getattr(base, head), sub)
        return config_from_dict(base, flat)
    except AgentError:
        raise
    except (TypeError, ValueError) as error:
        raise AgentError(
            f"invalid {type(base).__name__} override {dict(overrides)}: {error}"
        ) from error


_MISSING = object()


def upgrade_keys(
    config_class: type, values: Mapping[str, Any], *, warn: bool = True
) -> dict[str, Any]:
    """``values`` (overrides or a whole saved config of ``config_class``) with the keys the
    class lists in ``RENAMED_KEYS`` (old key -> dotted path of a nested config's field) moved
    to their new place
    (``{"beta1": 2}`` -> ``{"weighted_actor": {"beta_r": 2}}``); one
    :class:`FutureWarning` names every old and new key (``warn=False``: none).  An old
    key given together with its new one at another value is an :class:`AgentError`."""
    renamed: Mapping[str, str] = getattr(config_class, "RENAMED_KEYS", {})
    old_keys = [key for key in values if key in renamed]
    if not old_keys:
        return dict(values)
    out = {key: value for key, value in values.items() if key not in renamed}
    for key in old_keys:
        new = renamed[key]
        head, _, rest = new.partition(".")
        part = out.get(head, {})
        part = dict(dataclasses.asdict(part) if dataclasses.is_dataclass(part) else part)
        given = out.get(new, part.get(rest, _MISSING))
        if given is not _MISSING and given != values[key]:
            raise AgentError(
                f"{config_class.__name__} config gives {key!r} = {values[key]!r} (the old name "
                f"of {new!r}) and {new!r} = {given!r}; keep only {new!r}"
            )
        part[rest] = values[key]
        out[head] = part
    if warn:
        pairs = ", ".join(f"{key!r} -> {renamed[key]!r}" for key in old_keys)
        warnings.warn(
            f"{config_class.__name__}: renamed config keys read as their new names ({pairs}); "
            "use the new names (an old agent directory: load_agent(dir).save(dir) rewrites it)",
            FutureWarning,
            stacklevel=3,
        )
    return out
