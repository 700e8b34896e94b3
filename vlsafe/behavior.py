"""Actor-critic machinery shared by the world-model agents (VL-SAFE, DreamerV3, FOSP).

The three agents differ only in how they turn critics into an actor update
(:mod:`vlsafe.learners`); everything below is shared, not copied:

- :class:`ActorCriticConfig` and :data:`AC_PRESETS`: sizes, discounts, learning rates.
- :class:`Actor`: a 15-way categorical with DreamerV3's 1 % unimix for the discrete action
  mode, or DreamerV3's bounded normal (tanh mean, std in ``[min_std, max_std]``) for the
  continuous one, behind one interface (``sample``, ``mode``, ``log_prob``, ``entropy``).
- :class:`Critic`: a two-hot symlog value distribution (DreamerV3) with a slow EMA copy that
  supplies bootstrap targets and the slow-regularisation term.
- :func:`imagine`: rollouts of the actor in the world model from posterior start states,
  with the reward / cost / continuation / safety heads read along them (:class:`Rollout`).
- :class:`Optimizer`: Adam with global-norm clipping that stops on a non-finite loss.

The returns, advantages, weights and the Lagrangian that the learners build from these
pieces are tensor maths without networks: :mod:`vlsafe.objectives`.

Time-major convention: rollout tensors are ``(H + 1, N, ...)`` (``H`` imagined steps from
``N`` start states), dataset windows are ``(B, T, ...)`` as the world model returns them.
No gradient reaches the world model from here: imagination runs under ``torch.no_grad`` and
the actor learns by (weighted) likelihood / REINFORCE, never through the dynamics.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn

from vlsafe.nets import MLP, OneHotDist, TwoHot, action_dim, two_hot_bins
from vlsafe.objectives import weighted_mean

State = dict[str, Tensor]  # an RSSM state: "deter" (N, D), "stoch" (N, S, C), "logits"


@dataclass(frozen=True)
class ActorCriticConfig:
    """The actor, the critics and imagination (DreamerV3 defaults where they exist).

    The imagination horizon is the world model's (``WorldModelConfig.horizon``, 15 in the
    paper): one field, read by :meth:`vlsafe.learners.Learner.imagine`.

    Attributes:
        gamma: reward discount (DreamerV3: 1 - 1/333 = 0.997).
        cost_gamma: cost discount.  Shorter than ``gamma`` on purpose: a cost is a short
            unsafe event (a collision, a lane departure, a TTC moment), so the cost value is
            read as "expected unsafe steps in the next ~1 / (1 - cost_gamma) steps" (0.97:
            ~33 steps = 3.3 s) and stays comparable across episode lengths.
        lam: lambda of the lambda-returns (0.95).
        hidden, layers: width and depth of the actor and critic MLPs.
        bins: two-hot bins of the critics (255 on [-20, 20] in symlog space).
        unimix: uniform mixture of the categorical actor (1 %).
        min_std, max_std: standard deviation range of the continuous actor.
        actor_lr, critic_lr, eps, grad_clip: Adam and global-norm clipping per network group.
        entropy: entropy bonus of the actor (DreamerV3: 3e-4 with normalised advantages).
        slow_fraction: EMA rate of the slow critics per update (DreamerV3: 0.02).
        slowreg: weight of the critic's pull towards its slow copy (DreamerV3: 1).
        retnorm_decay, retnorm_low, retnorm_high: EMA decay and percentiles of the return
            scale S = max(1, P_high - P_low) (DreamerV3: 0.99, 5, 95).
        starts: imagination start states per update, drawn from the batch's B x T posterior
            states (0 = all of them, as DreamerV3).
    """

    gamma: float = 0.997
    cost_gamma: float = 0.97
    lam: float = 0.95
    hidden: int = 512
    layers: int = 2
    bins: int = 255
    unimix: float = 0.01
    min_std: float = 0.1
    max_std: float = 1.0
    actor_lr: float = 3e-5
    critic_lr: float = 3e-5
    eps: float = 1e-5
    grad_clip: float = 100.0
    entropy: float = 3e-4
    slow_fraction: float = 0.02
    slowreg: float = 1.0
    retnorm_decay: float = 0.99
    retnorm_low: float = 5.0
    retnorm_high: float = 95.0
    starts: int = 0

    def __post_init__(self) -> None:
        checks = {
            "0 < gamma <= 1": 0 < self.gamma <= 1,
            "0 < cost_gamma <= 1": 0 < self.cost_gamma <= 1,
            "0 <= lam <= 1": 0 <= self.lam <= 1,
            "0 < slow_fraction <= 1": 0 < self.slow_fraction <= 1,
            "0 < min_std <= max_std": 0 < self.min_std <= self.max_std,
            "starts >= 0": self.starts >= 0,
        }
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid ActorCriticConfig ({', '.join(failed)}): {self}")


AC_PRESETS: dict[str, ActorCriticConfig] = {
    # tiny and fast, for tests: one small layer, larger learning rates
    "debug": ActorCriticConfig(
        hidden=32,
        layers=1,
        bins=41,
        actor_lr=3e-4,
        critic_lr=3e-4,
        starts=64,
    ),
    # CPU-trainable in hours: narrower networks, imagination from 128 of the batch's 512
    # posterior states (the actor-critic then costs 0.5-1.6 s of a 3.3-4.4 s update on one core)
    "small": ActorCriticConfig(hidden=256, layers=2, actor_lr=1e-4, critic_lr=1e-4, starts=128),
    # one CPU core: imagination from 64 of the batch's 128 posterior states, 128 units
    "cpu": ActorCriticConfig(hidden=128, layers=2, actor_lr=1e-4, critic_lr=1e-4, starts=64),
    # DreamerV3 / CarDreamer small: 512 units, 2 layers, DreamerV3 learning rates
    "paper": ActorCriticConfig(),
}


# --- actor --------------------------------------------------------------------------------


class BoundedNormal:
    """DreamerV3's continuous action distribution: a normal with ``tanh`` mean in [-1, 1]
    and std in ``[min_std, max_std]``, independent per action dimension.

    Unlike a tanh-squashed normal its log-likelihood is finite at the box edges (+-1), which
    the weighted log-likelihood of dataset actions needs; samples are clipped to [-1, 1].
    """

    def __init__(self, raw: Tensor, min_std: float, max_std: float):
        mean, std = raw.chunk(2, -1)  # (..., A) each
        self.mean = torch.tanh(mean)
        self.std = (max_std - min_std) * torch.sigmoid(std + 2.0) + min_std
        self._normal = torch.distributions.Normal(self.mean, self.std)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return (self.mean + self.std * noise).clamp(-1.0, 1.0)  # (..., A)

    def mode(self) -> Tensor:
        return self.mean

    def log_prob(self, action: Tensor) -> Tensor:
        return self._normal.log_prob(action).sum(-1)  # (...,)

    def entropy(self) -> Tensor:
        return self._normal.entropy().sum(-1)


class Actor(nn.Module):
    """pi(a | s) on world-model features ``(..., F)``; discrete or continuous action mode.

    Actions are the world model's action encoding: a one-hot (..., 15) for ``discrete`` and
    (..., 2) floats in [-1, 1] for ``continuous`` (see :func:`vlsafe.nets.encode_actions`).
    """

    def __init__(self, feat_dim: int, action_mode: str, config: ActorCriticConfig):
        super().__init__()
        self.action_mode = action_mode
        self.discrete = action_mode == "discrete"
        self.action_dim = action_dim(action_mode)
        out = self.action_dim if self.discrete else 2 * self.action_dim
        self.net = MLP(feat_dim, out, config.hidden, config.layers)
        self.unimix, self.min_std, self.max_std = config.unimix, config.min_std, config.max_std

    def forward(self, feat: Tensor) -> OneHotDist | BoundedNormal:
        raw = self.net(feat)  # (..., A) logits or (..., 2A) mean/std
        if self.discrete:
            return OneHotDist(raw, unimix=self.unimix)
        return BoundedNormal(raw, self.min_std, self.max_std)

    def act(self, feat: Tensor, deterministic: bool) -> Tensor:
        """(..., A) actions in the world model's encoding, without gradients."""
        dist = self(feat)
        action = dist.mode() if deterministic else dist.sample()
        return action.detach()

    def to_env(self, action: Tensor) -> Any:
        """Encoded actions (N, A) -> the env's batch: (N,) int64 indices or (N, 2) float32."""
        action = action.detach()
        if self.discrete:
            return action.argmax(-1).cpu().numpy().astype("int64")
        return action.clamp(-1.0, 1.0).cpu().numpy().astype("float32")


# --- critics ------------------------------------------------------------------------------


class Critic(nn.Module):
    """A value ``(..., in_dim) -> TwoHot`` (DreamerV3) and its slow EMA copy.

    ``in_dim`` is the feature width for V(s), or feature + action width for Q(s, a).  The
    output layer starts at zero (predictions 0 at first).  The slow copy is updated by
    :meth:`update_slow` and never by the optimiser.
    """

    def __init__(self, in_dim: int, config: ActorCriticConfig):
        super().__init__()
        self.net = MLP(in_dim, config.bins, config.hidden, config.layers, zero_init_output=True)
        self.slow = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("bins", two_hot_bins(config.bins), persistent=False)
        self.slowreg = config.slowreg
        self.fraction = config.slow_fraction

    def dist(self, x: Tensor, *, slow: bool = False) -> TwoHot:
        return TwoHot((self.slow if slow else self.net)(x), self.bins)

    def value(self, x: Tensor, *, slow: bool = False) -> Tensor:
        """(...,) expected value in real units, without gradients."""
        with torch.no_grad():
            return self.dist(x, slow=slow).mean()

    def loss(self, x: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Two-hot NLL of ``target`` (...,) plus ``slowreg`` x NLL of the slow critic's
        prediction, averaged with the per-element ``weight`` (...,) (default 1)."""
        dist = self.dist(x)
        nll = -dist.log_prob(target.detach())
        if self.slowreg:
            nll = nll - self.slowreg * dist.log_prob(self.value(x, slow=True))
        return weighted_mean(nll, weight)

    @torch.no_grad()
    def update_slow(self) -> None:
        for slow, fast in zip(self.slow.parameters(), self.net.parameters(), strict=True):
            slow.lerp_(fast, self.fraction)


# --- optimisation -------------------------------------------------------------------------


class Optimizer:
    """Adam with global-norm gradient clipping over one group of parameters."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float, eps: float, clip: float):
        self.params = [p for p in params if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=lr, eps=eps)
        self.clip = clip

    def step(self, loss: Tensor, name: str) -> float:
        """Back-propagate ``loss`` and update; the gradient norm.  A non-finite loss raises
        :class:`NonFiniteLoss` naming ``name`` before any parameter changes."""
        if not torch.isfinite(loss):
            raise NonFiniteLoss(name, float(loss.detach()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        if not torch.isfinite(norm):
            self.opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"{name} gradient", float(norm))
        self.opt.step()
        return float(norm)

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.opt.load_state_dict(dict(state))


class NonFiniteLoss(FloatingPointError):
    """A behaviour loss (or its gradient) became NaN / inf; ``term`` names it."""

    def __init__(self, term: str, value: float):
        super().__init__(
            f"the {term} loss is {value}; lower the learning rates (actor_critic.actor_lr / "
            "critic_lr) or check the data for non-finite rewards, costs or labels"
        )
        self.term, self.value = term, value


# --- imagination --------------------------------------------------------------------------


class WorldModelLike(Protocol):
    """What imagination needs from :class:`vlsafe.world_model.WorldModel`."""

    def img_step(self, state: State, action: Tensor) -> State: ...

    def feat(self, state: State) -> Tensor: ...

    def predict(self, feat: Tensor) -> dict[str, Tensor]: ...


class Rollout(NamedTuple):
    """An imagined trajectory, time-major.  ``s_0`` is the posterior start state."""

    feat: Tensor  # (H + 1, N, F) features of s_0 .. s_H
    action: Tensor  # (H + 1, N, A) a_t sampled at s_t (a_H is never executed)
    reward: Tensor  # (H, N) reward head at s_{t+1}: the reward of step t
    cost: Tensor  # (H, N) cost head at s_{t+1}: the cost of step t
    cont: Tensor  # (H, N) continuation probability of s_{t+1}
    safety: Tensor  # (H + 1, N) safety head p(s_t)
    weight: Tensor  # (H + 1, N) probability that s_t is still inside the episode


def flatten_states(post: State, starts: int = 0, generator: torch.Generator | None = None):
    """(B, T, ...) posterior states -> (N, ...) start states, ``N = B * T`` or a random
    subset of ``starts`` of them (0 = all).  Returns the states and the flat indices used."""
    first = next(iter(post.values()))
    b, t = first.shape[:2]
    flat = {k: v.reshape(b * t, *v.shape[2:]) for k, v in post.items()}
    if starts and starts < b * t:
        index = torch.randperm(b * t, generator=generator, device="cpu")[:starts]
        index = index.to(first.device)
        return {k: v[index] for k, v in flat.items()}, index
    return flat, torch.arange(b * t, device=first.device)


@torch.no_grad()
def imagine(wm: WorldModelLike, actor: Actor, start: State, horizon: int) -> Rollout:
    """Roll the actor out for ``horizon`` steps in the world model from ``start`` (N, ...).

    Actions are sampled from the current actor, the next state is the world model's prior
    (``img_step``), and the heads are read along the trajectory.  ``weight`` is DreamerV3's
    cumulative product of continuation probabilities (s_0 continues with probability 1:
    dataset states are never terminal, the observation after a terminal step is not stored).
    """
    state = {k: v.detach() for k, v in start.items()}
    feats = [wm.feat(state)]  # (N, F)
    actions = []
    for _ in range(horizon):
        action = actor.act(feats[-1], deterministic=False)  # (N, A)
        actions.append(action)
        state = wm.img_step(state, action)
        feats.append(wm.feat(state))
    actions.append(actor.act(feats[-1], deterministic=False))
    feat = torch.stack(feats)  # (H + 1, N, F)
    heads = wm.predict(feat)
    cont = heads["cont"][1:]  # (H, N)
    weight = torch.cat([torch.ones_like(cont[:1]), torch.cumprod(cont, 0)])  # (H + 1, N)
    return Rollout(
        feat=feat,
        action=torch.stack(actions),
        reward=heads["reward"][1:],
        cost=heads["cost"][1:],
        cont=cont,
        safety=heads["safety"],
        weight=weight,
    )
