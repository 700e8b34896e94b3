"""The maths of the world-model agents' objectives: returns, advantages, weights, constraints.

Tensor functions (and two small stateful modules) without networks, shared by the learners
(:mod:`vlsafe.learners`) on top of the actor, critics and imagination of
:mod:`vlsafe.behavior`:

- :func:`lambda_return`: TD(lambda) returns; :class:`ReturnScale`: DreamerV3's percentile
  return normalisation; :func:`normalize_advantage`.
- :func:`vlsafe_weights`: VL-SAFE's mixture weight (FOSP's gated weight too),
  :func:`weighted_nll` / :func:`weighted_mean`, :func:`expectile_weight` /
  :func:`expectile_loss` (IQL), :class:`Lagrangian` (augmented Lagrangian on cost).

Time-major convention: rollout tensors are ``(H + 1, N, ...)``, dataset windows ``(B, T, ...)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# --- returns and advantages ---------------------------------------------------------------


def lambda_return(
    reward: Tensor,
    cont: Tensor,
    value: Tensor,
    gamma: float,
    lam: float,
    cut: Tensor | None = None,
) -> Tensor:
    """TD(lambda) returns, time-major.

    ``reward`` (T, N): r_t, the reward of the step from s_t; ``cont`` (T, N): 1 if s_{t+1}
    continues the episode (0 after a terminal step); ``value`` (T + 1, N): V(s_0 .. s_T).
    Returns (T, N)::

        R_t = r_t + gamma c_t ((1 - lam) V(s_{t+1}) + lam R_{t+1}),   R_T = V(s_T)

    ``cut`` (T, N), optional: where true, s_{t+1} is unknown (a window cut or a truncated
    episode) and R_t = V(s_t), so the advantage there is 0 and the step before bootstraps.
    ``lam = 0`` gives one-step TD targets r_t + gamma c_t V(s_{t+1}).
    """
    if value.shape[0] != reward.shape[0] + 1 or reward.shape != cont.shape:
        raise ValueError(
            f"need reward, cont (T, N) and value (T + 1, N); got {tuple(reward.shape)}, "
            f"{tuple(cont.shape)}, {tuple(value.shape)}"
        )
    returns = []
    last = value[-1]
    for t in reversed(range(reward.shape[0])):
        nxt = (1 - lam) * value[t + 1] + lam * last
        last = reward[t] + gamma * cont[t] * nxt
        if cut is not None:
            last = torch.where(cut[t], value[t], last)
        returns.append(last)
    return torch.stack(returns[::-1])


class ReturnScale(nn.Module):
    """DreamerV3's return normalisation: S = max(1, EMA(P95) - EMA(P5)) of the returns.

    Dividing advantages by S makes the actor's step size independent of the reward scale
    while never amplifying small returns (S >= 1).  The EMAs are buffers (saved).
    """

    def __init__(self, decay: float, low: float, high: float):
        super().__init__()
        self.decay, self.quantiles = decay, (low / 100.0, high / 100.0)
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: Tensor) -> Tensor:
        """Fold the batch's percentiles into the EMAs; the new scale S (a 0-d tensor)."""
        x = returns.detach().flatten().float()
        if x.numel() > 2**20:  # torch.quantile's size limit; a subsample is as good
            x = x[torch.randint(x.numel(), (2**20,), device=x.device)]
        q = torch.quantile(x, torch.tensor(self.quantiles, device=x.device))
        self.low.lerp_(q[0], 1 - self.decay)
        self.high.lerp_(q[1], 1 - self.decay)
        return self.scale()

    def scale(self) -> Tensor:
        return (self.high - self.low).clamp_min(1.0)


def normalize_advantage(adv: Tensor, mode: str, floor: float, mask: Tensor | None = None):
    """``adv`` divided by a scale: ``"std"`` the batch standard deviation over ``mask``
    (at least ``floor``, so a batch without signal is not blown up to unit scale),
    ``"none"`` unchanged.  Not centred: a constant shift of A would change the balance of
    VL-SAFE's two mixture branches."""
    if mode == "none":
        return adv
    if mode != "std":
        raise ValueError(f"advantage normalisation must be 'std' or 'none', got {mode!r}")
    values = adv[mask] if mask is not None else adv.flatten()
    std = values.std() if values.numel() > 1 else adv.new_tensor(0.0)
    return adv / std.clamp_min(floor)


# --- the weighting formulas ---------------------------------------------------------------


def weighted_mean(x: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of ``x`` with non-negative per-element weights (all equal when None); 0 when the
    weights sum to 0 (an all-masked batch)."""
    if weight is None:
        return x.mean()
    weight = weight.detach().to(x.dtype)
    return (x * weight).sum() / weight.sum().clamp_min(1e-8)


def vlsafe_weights(
    p: Tensor, adv_r: Tensor, adv_c: Tensor, beta_r: float, beta_c: float, clip: float
) -> Tensor:
    """VL-SAFE's policy weight w = p exp(beta_r A^r) + (1 - p) exp(-beta_c A^c) (the poster's
    beta1, beta2).

    The actor is fitted to pi* = w pi_b / Z: a safe state (p(s) -> 1) imitates the
    behaviour actions in proportion to their reward advantage, an unsafe one (p -> 0) in
    proportion to how much they lower the cost.  Each exponential is clipped at ``clip``
    (AWR's weight clip, applied per branch, so w <= clip and no exp overflows into inf *
    0 = NaN); normalisation by Z is the caller's (:func:`weighted_nll`).  Shapes broadcast.
    """
    if clip <= 0:
        raise ValueError(f"the weight clip must be > 0, got {clip}")
    log_clip = math.log(clip)
    reward_branch = torch.exp((beta_r * adv_r).clamp(max=log_clip))
    cost_branch = torch.exp((-beta_c * adv_c).clamp(max=log_clip))
    return p * reward_branch + (1 - p) * cost_branch


def weighted_nll(log_prob: Tensor, weight: Tensor, mask: Tensor | None = None) -> Tensor:
    """Weighted negative log-likelihood with self-normalised weights:
    -sum(w log pi) / sum(w), i.e. the mean over the batch of -(w / Z) log pi with Z the
    batch mean of w -- the sample estimate of KL(pi* || pi) up to a constant for
    pi* = w pi_b / Z.  ``mask`` (0/1 or bool) drops elements."""
    weight = weight.detach()
    if mask is not None:
        weight = weight * mask.to(weight.dtype)
    return -(log_prob * weight).sum() / weight.sum().clamp_min(1e-8)


def expectile_weight(diff: Tensor, tau: float) -> Tensor:
    """|tau - 1(diff < 0)| with ``diff = target - prediction`` (IQL): under-predictions
    (diff > 0) weigh ``tau``, over-predictions ``1 - tau``; tau > 0.5 fits an upper
    expectile (a soft max over in-data actions), tau < 0.5 a lower one (a soft min)."""
    return torch.where(diff > 0, torch.full_like(diff, tau), torch.full_like(diff, 1 - tau))


def expectile_loss(prediction: Tensor, target: Tensor, tau: float) -> Tensor:
    """Elementwise asymmetric squared error |tau - 1(u < 0)| u^2, u = target - prediction."""
    diff = target - prediction
    return expectile_weight(diff.detach(), tau) * diff**2


class Lagrangian(nn.Module):
    """The augmented Lagrangian of a cost constraint J_c <= limit (Nocedal & Wright 2006,
    eq. 17.65), as SafeDreamer and FOSP use it.

    Each :meth:`update` with the current estimate of J_c takes g = J_c - limit and sets
    lambda <- max(0, lambda + mu g) and mu <- min(mu (1 + mu_growth), mu_max) (mu never
    decreases).  ``multiplier`` is the penalty's derivative d psi / d J_c = max(0, lambda +
    mu g): the price of one unit of cost in the actor's objective, so a weighted-regression
    actor uses the advantage A^r - multiplier x A^c.  It rises while the cost exceeds the
    limit and falls back towards 0 while the constraint holds.
    """

    def __init__(
        self,
        limit: float,
        multiplier_init: float = 0.0,
        penalty_init: float = 5e-3,
        penalty_growth: float = 1e-5,
        penalty_max: float = 1.0,
    ):
        super().__init__()
        self.limit, self.growth, self.penalty_max = limit, penalty_growth, penalty_max
        self.register_buffer("multiplier", torch.tensor(float(multiplier_init)))
        self.register_buffer("penalty", torch.tensor(float(penalty_init)))

    @torch.no_grad()
    def update(self, cost: Tensor | float) -> tuple[float, float]:
        """Step with the cost estimate J_c; returns (multiplier, penalty value psi)."""
        g = torch.as_tensor(cost, dtype=torch.float32, device=self.multiplier.device) - self.limit
        lam, mu = self.multiplier.clone(), self.penalty.clone()
        cond = lam + mu * g
        psi = torch.where(cond > 0, lam * g + mu / 2 * g**2, -(lam**2) / (2 * mu))
        self.multiplier.copy_(cond.clamp_min(0.0))
        self.penalty.copy_((mu * (1 + self.growth)).clamp(max=self.penalty_max).clamp_min(mu))
        return float(self.multiplier), float(psi)
