"""Network building blocks shared by the world model and the agents (DreamerV3 style).

Everything here is stateless maths or a small ``torch.nn.Module``; the world model
(:mod:`vlsafe.world_model`) and the actor-critic (:mod:`vlsafe.behavior`) import from here and
never copy.  References: Hafner et al., "Mastering Diverse Domains through World Models"
(DreamerV3, 2023), sections 2-3 and appendix B.

- :func:`symlog` / :func:`symexp`: ``sign(x) log(1 + |x|)`` and its inverse; targets of
  unknown scale (rewards, costs, returns) are regressed in symlog space.
- :class:`TwoHot`: a categorical over ``bins`` fixed points in symlog space (DreamerV3: 255
  bins on [-20, 20]); ``mean()`` is in real units, ``log_prob(target)`` takes real units and
  scores the two-hot encoding of ``symlog(target)``.
- :class:`MLP`: ``layers`` x (Linear without bias -> LayerNorm -> SiLU), then a linear output;
  :func:`output_layer` builds that output with zero-initialised weights (DreamerV3 initialises
  the reward and critic outputs to zero so that early predictions are 0, not noise).
- :class:`OneHotDist`: a categorical with DreamerV3's 1% "unimix" (mixture with the uniform
  distribution, so no class probability drops below ``unimix / classes`` and KL / log-probs
  stay finite) and straight-through one-hot samples.
- Bernoulli helpers for the continuation and safety heads (logits in, BCE out).
- Action helpers: the world model and the agents see a discrete action as a 15-way one-hot and
  a continuous action as its 2 floats (the env's ``Box(-1, 1, (2,))``, already normalised).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DISCRETE_ACTIONS = 15  # CarDreamer's 3 accelerations x 5 steering angles
CONTINUOUS_ACTION_DIM = 2  # (acc / ACC_LIMIT, steer), each in [-1, 1]
TWO_HOT_LOW, TWO_HOT_HIGH = -20.0, 20.0  # bin range in symlog space (DreamerV3)


# --- symlog -------------------------------------------------------------------------------


def symlog(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``: compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """The inverse of :func:`symlog`: ``sign(x) * (exp(|x|) - 1)``."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


# --- two-hot ------------------------------------------------------------------------------


def two_hot_bins(bins: int, device: torch.device | str | None = None) -> Tensor:
    """(bins,) float32 bin centres, evenly spaced in symlog space on [-20, 20]."""
    if bins < 2:
        raise ValueError(f"two-hot needs at least 2 bins, got {bins}")
    return torch.linspace(TWO_HOT_LOW, TWO_HOT_HIGH, bins, device=device)


def two_hot(x: Tensor, bins: Tensor) -> Tensor:
    """The two-hot encoding (..., K) of values ``x`` (...,) already in *symlog* space.

    The weight is split between the two nearest bins in proportion to closeness, so that
    ``(two_hot(x, bins) * bins).sum(-1) == x`` for any ``x`` inside the bin range (values
    outside are clipped to the end bins; NaN gives an all-NaN row, never a silent bin).
    """
    k = bins.shape[0]
    x = x.clamp(bins[0], bins[-1])
    below = (torch.searchsorted(bins, x.contiguous(), right=True) - 1).clamp(0, k - 1)
    above = (below + 1).clamp(0, k - 1)
    lo, hi = bins[below], bins[above]
    span = hi - lo
    same = span == 0
    weight_above = torch.where(same, torch.zeros_like(x), (x - lo) / torch.where(same, 1, span))
    weight_below = 1.0 - weight_above
    encoded = F.one_hot(below, k) * weight_below[..., None]
    encoded = encoded + F.one_hot(above, k) * weight_above[..., None]
    return torch.where(torch.isnan(x)[..., None], torch.nan, encoded)  # NaN stays visible


class TwoHot:
    """A discrete distribution over symlog-spaced ``bins`` (DreamerV3's reward / critic head).

    ``logits`` (..., K) with ``K == len(bins)``.  ``mean()`` (...,) and ``log_prob(target)``
    work in real units: ``mean = symexp(sum_k softmax(logits)_k * bins_k)`` and
    ``log_prob(y) = sum_k two_hot(symlog(y))_k * log_softmax(logits)_k``.
    """

    def __init__(self, logits: Tensor, bins: Tensor):
        if logits.shape[-1] != bins.shape[0]:
            raise ValueError(f"logits have {logits.shape[-1]} classes, bins {bins.shape[0]}")
        self.logits = logits  # (..., K)
        self.bins = bins.to(logits.device)  # (K,)

    @property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits, -1)  # (..., K)

    def mean(self) -> Tensor:
        """Expected value in real units, (...,)."""
        return symexp((self.probs * self.bins).sum(-1))

    def mode(self) -> Tensor:
        """Same as :meth:`mean` (DreamerV3 uses the expectation for both)."""
        return self.mean()

    def log_prob(self, target: Tensor) -> Tensor:
        """(...,) log-likelihood of real-valued ``target`` (...,) under the two-hot encoding."""
        encoded = two_hot(symlog(target.to(self.logits.dtype)), self.bins).detach()
        return (encoded * torch.log_softmax(self.logits, -1)).sum(-1)


# --- MLPs ---------------------------------------------------------------------------------


class LayerNormSiLU(nn.Module):
    """Linear (no bias) -> LayerNorm -> SiLU: DreamerV3's dense unit."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.norm(self.linear(x)))


def output_layer(in_dim: int, out_dim: int, *, zero_init: bool = False) -> nn.Linear:
    """A linear output layer; ``zero_init`` zeroes its weights and bias (reward / critic heads)."""
    layer = nn.Linear(in_dim, out_dim)
    if zero_init:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """``layers`` x :class:`LayerNormSiLU` of width ``hidden``, then ``Linear(hidden, out_dim)``.

    ``(..., in_dim) -> (..., out_dim)``; ``layers == 0`` is a single linear map.
    ``zero_init_output`` zero-initialises the last layer (see :func:`output_layer`).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int,
        layers: int,
        *,
        zero_init_output: bool = False,
    ):
        super().__init__()
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        units = [LayerNormSiLU(in_dim if i == 0 else hidden, hidden) for i in range(layers)]
        self.body = nn.Sequential(*units)
        self.out = output_layer(hidden if layers else in_dim, out_dim, zero_init=zero_init_output)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[-1] == self.in_dim, f"MLP expects (..., {self.in_dim}), got {x.shape}"
        return self.out(self.body(x))  # (..., out_dim)


# --- categoricals -------------------------------------------------------------------------


def unimix_logits(logits: Tensor, unimix: float) -> Tensor:
    """Log-probabilities of ``(1 - unimix) * softmax(logits) + unimix / K`` over the last axis."""
    if not 0.0 <= unimix < 1.0:
        raise ValueError(f"unimix must be in [0, 1), got {unimix}")
    if unimix == 0.0:
        return torch.log_softmax(logits, -1)
    probs = torch.softmax(logits, -1)
    probs = (1.0 - unimix) * probs + unimix / logits.shape[-1]
    return torch.log(probs)


class OneHotDist:
    """A categorical over the last axis with unimix, returning one-hot samples.

    ``logits`` (..., K) are raw network outputs; ``self.logits`` holds the unimixed
    log-probabilities.  :meth:`sample` is straight-through: the forward value is a one-hot
    draw, the gradient is that of the probabilities (``sample + probs - sg(probs)``).
    """

    def __init__(self, logits: Tensor, unimix: float = 0.01):
        self.logits = unimix_logits(logits, unimix)  # (..., K) log-probabilities

    @property
    def probs(self) -> Tensor:
        return self.logits.exp()  # (..., K)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """(..., K) one-hot draw with straight-through gradients."""
        probs = self.probs
        flat = probs.reshape(-1, probs.shape[-1])
        index = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
        onehot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
        return onehot + probs - probs.detach()

    def mode(self) -> Tensor:
        """(..., K) one-hot of the most likely class, straight-through like :meth:`sample`."""
        probs = self.probs
        onehot = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
        return onehot + probs - probs.detach()

    def log_prob(self, onehot: Tensor) -> Tensor:
        """(...,) log-probability of one-hot (or soft) values (..., K)."""
        return (onehot * self.logits).sum(-1)

    def entropy(self) -> Tensor:
        """(...,) entropy in nats."""
        return -(self.probs * self.logits).sum(-1)


def categorical_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """KL(p || q) over the last axis for log-probability tensors (..., K) -> (...,)."""
    return (logits_p.exp() * (logits_p - logits_q)).sum(-1)


# --- Bernoulli ----------------------------------------------------------------------------


def bernoulli_nll(logits: Tensor, target: Tensor) -> Tensor:
    """Elementwise binary cross-entropy ``-log p(target)`` for logits; soft targets allowed."""
    return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")


def bernoulli_probs(logits: Tensor) -> Tensor:
    """Probabilities ``sigmoid(logits)``."""
    return torch.sigmoid(logits)


# --- actions ------------------------------------------------------------------------------


def action_dim(action_mode: str) -> int:
    """The world model's action width: 15 (discrete, one-hot) or 2 (continuous)."""
    dims = {"discrete": DISCRETE_ACTIONS, "continuous": CONTINUOUS_ACTION_DIM}
    if action_mode not in dims:
        raise ValueError(f"action_mode must be one of {sorted(dims)}, got {action_mode!r}")
    return dims[action_mode]


def encode_actions(
    actions: np.ndarray | Tensor,
    action_mode: str,
    device: torch.device | str | None = None,
) -> Tensor:
    """Dataset / env actions as the float tensor (..., A) the networks take.

    Discrete: integer indices (...,) -> one-hot (..., 15).  Continuous: (..., 2) floats in
    [-1, 1], cast to float32 unchanged.
    """
    dim = action_dim(action_mode)
    actions = torch.as_tensor(np.asarray(actions) if not torch.is_tensor(actions) else actions)
    actions = actions.to(device) if device is not None else actions
    if action_mode == "discrete":
        if actions.is_floating_point():
            raise TypeError(f"discrete actions must be integer indices, got {actions.dtype}")
        if actions.numel() and (actions.min() < 0 or actions.max() >= dim):
            raise ValueError(f"discrete actions must be in [0, {dim}), got {actions.unique()}")
        return F.one_hot(actions.long(), dim).float()
    if actions.shape[-1:] != (dim,):
        raise ValueError(f"continuous actions must have shape (..., {dim}), got {actions.shape}")
    return actions.float()
