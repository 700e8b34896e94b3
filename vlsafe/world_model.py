"""VL-SAFE's safety-aware world model (shared by the VL-SAFE, DreamerV3 and FOSP agents).

A DreamerV3 world model (Hafner et al. 2023) for 128x128x3 BEV frames, with the heads VL-SAFE
needs: reward, cost, continuation and the safety probability p(s).  The networks live in
:mod:`vlsafe.rssm` and :mod:`vlsafe.nets`; this module holds the config, the batching of
dataset windows, the model and its losses.  Its optimiser step and checkpoint files are
:mod:`vlsafe.wm_training`.

Alignment (DreamerV3): step ``t`` of a window sees ``obs[t]`` and the *previous* action
``a[t-1]``; its reward / cost / continuation heads predict what arrived with ``obs[t]``, i.e.
``rewards[t-1]``, ``costs[t-1]`` and ``1 - terminals[t-1]`` of the dataset (DSRL convention,
see :class:`carla_safe_envs.datasets.Sequences`), masked at ``t == 0`` and at ``is_first``; the
safety head predicts ``safety[t] = p(obs[t])``.  The dataset stores no frame after an episode's
last step, so a terminal transition is never followed by a frame inside a window.  To still
learn terminal rewards, collision costs and termination itself, the heads are also trained on
the *prior* one step past each window's end (``img_step(post[:, -1], a[:, -1])`` against
``rewards[:, -1]``, ``costs[:, -1]``, ``1 - terminals[:, -1]``), which is the kind of state the
heads see in imagination anyway.

Losses (all returned by name; DreamerV3 eq. 5 with its default scales):

- ``image``: squared error of the decoded mean against the frame in [0, 1], summed over the
  pixels and channels of the working resolution ``image_size`` (DreamerV3's MSE decoder,
  which sums over the image), averaged over (B, T).  Symlog is *not* applied to images:
  DreamerV3 uses it for vector inputs only, and pixels are already bounded.
- ``reward``, ``cost``: negative log-likelihood of the two-hot symlog targets.
- ``cont``: Bernoulli NLL of ``1 - terminal``; ``safety``: BCE against the (soft) p(s)
  labels, masked where a window has no label.
- ``dyn`` = max(free_nats, KL[sg(post) || prior]) and ``rep`` = max(free_nats,
  KL[post || sg(prior)]), per step, summed over the S categoricals, averaged over (B, T); free
  bits clip per step, so below ``free_nats`` the term is constant and passes no gradient.
- ``total`` = sum of the scaled terms (``kl_dyn = 0.5``, ``kl_rep = 0.1``, the rest 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from vlsafe.nets import MLP, TwoHot, bernoulli_nll, categorical_kl, encode_actions, two_hot_bins
from vlsafe.rssm import OBS_SIZE, RSSM, ConvDecoder, ConvEncoder, State


@dataclass(frozen=True)
class WorldModelConfig:
    """World-model hyperparameters; defaults are DreamerV3's "S" size (the ``paper`` preset).

    Use :data:`WM_PRESETS` or :meth:`from_preset` (``debug`` / ``small`` / ``paper``).
    """

    deter: int = 512  # GRU state size D
    stoch: int = 32  # number of categorical latents S
    classes: int = 32  # classes per categorical C
    hidden: int = 512  # width of every MLP layer and of the RSSM's input / output layers
    mlp_layers: int = 2  # hidden layers of the reward / cost / cont / safety heads
    cnn_depth: int = 32  # channels of the first conv stage (doubled every stage)
    image_size: int = 128  # working resolution [px]; frames are area-downsampled to it
    unimix: float = 0.01  # uniform mixture in every categorical (DreamerV3: 1%)
    free_nats: float = 1.0  # free bits per step, summed over the S latents [nats]
    kl_dyn: float = 0.5  # scale of the dynamics KL (trains the prior)
    kl_rep: float = 0.1  # scale of the representation KL (trains the posterior)
    image_scale: float = 1.0  # scale of the image loss
    reward_scale: float = 1.0  # scale of the reward NLL
    cost_scale: float = 1.0  # scale of the cost NLL
    cont_scale: float = 1.0  # scale of the continuation NLL
    safety_scale: float = 1.0  # scale of the safety BCE
    bins: int = 255  # two-hot bins on [-20, 20] in symlog space (reward, cost)
    lr: float = 1e-4  # Adam learning rate (DreamerV3 world model)
    eps: float = 1e-8  # Adam epsilon
    grad_clip: float = 1000.0  # global gradient-norm clip (DreamerV3 world model)
    batch_size: int = 16  # windows per update (B)
    seq_len: int = 64  # steps per window (T)
    horizon: int = 15  # imagination horizon of the agents built on this model (not used here)

    def __post_init__(self) -> None:
        from vlsafe.rssm import cnn_stages

        cnn_stages(self.image_size)  # raises on a bad size
        for name in ("deter", "stoch", "classes", "hidden", "cnn_depth", "batch_size", "horizon"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise ValueError(
                f"seq_len must be >= 2 (a window needs a transition), got {self.seq_len}"
            )
        if self.mlp_layers < 0 or self.bins < 2:
            raise ValueError(
                f"need mlp_layers >= 0 and bins >= 2, got {self.mlp_layers}, {self.bins}"
            )
        if not 0.0 <= self.unimix < 1.0:
            raise ValueError(f"unimix must be in [0, 1), got {self.unimix}")
        if self.lr <= 0 or self.grad_clip <= 0 or self.free_nats < 0:
            raise ValueError("lr and grad_clip must be > 0 and free_nats >= 0")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> WorldModelConfig:
        """The preset ``name`` with ``overrides``; an unknown preset or field raises ValueError."""
        if name not in WM_PRESETS:
            raise ValueError(
                f"unknown world-model preset {name!r}; choose from {sorted(WM_PRESETS)}"
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"unknown WorldModelConfig fields {unknown}; valid: {sorted(fields)}")
        return dataclasses.replace(WM_PRESETS[name], **overrides)


WM_PRESETS: dict[str, WorldModelConfig] = {
    # tiny, for tests: well under a second per update on one CPU core
    "debug": WorldModelConfig(
        deter=32,
        stoch=4,
        classes=4,
        hidden=32,
        mlp_layers=1,
        cnn_depth=4,
        image_size=32,
        lr=1e-3,
        batch_size=4,
        seq_len=8,
    ),
    # CPU-trainable in hours: DreamerV3 "XS"-like sizes at 64x64 working resolution
    "small": WorldModelConfig(
        deter=256,
        stoch=16,
        classes=16,
        hidden=256,
        mlp_layers=1,
        cnn_depth=16,
        image_size=64,
        lr=3e-4,
        batch_size=16,
        seq_len=32,
    ),
    # One CPU core, a model trained in well under an hour: 32 px frames (1 px = 1 m; a car
    # ~4.5 x 2 px, area-averaged so sub-pixel positions stay in the intensities), small's
    # 16 x 16 latents and CNN depth, half its GRU / MLP width and a quarter of its batch (8
    # windows of 16 steps).  Profiled (torch.profiler, one thread): at small's 64 px ~60%
    # of an update is the encoder / decoder convolutions (forward + backward) and ~15% their
    # per-pixel LayerNorms, so the resolution is the lever: at 64 px with half small's depth
    # and this batch an update still costs 1/7 of small's, at 32 px 1/11 (wm-speed).
    "cpu": WorldModelConfig(
        deter=128,
        stoch=16,
        classes=16,
        hidden=128,
        mlp_layers=1,
        cnn_depth=16,
        image_size=32,
        lr=3e-4,
        batch_size=8,
        seq_len=16,
    ),
    # DreamerV3 "S" / CarDreamer: deter 512, 32 x 32 latents, full 128x128 frames, B16 x T64
    "paper": WorldModelConfig(),
}


class WorldModelBatch(NamedTuple):
    """B windows of T steps, aligned for the world model (see the module docstring)."""

    obs: Tensor  # (B, T, S, S, 3) uint8, S = 128 or the model's image_size
    prev_actions: Tensor  # (B, T, A) float, encode(actions[t-1]); 0 at t == 0 and is_first
    is_first: Tensor  # (B, T) bool
    reward_target: Tensor  # (B, T) float, rewards[t-1]
    cost_target: Tensor  # (B, T) float, costs[t-1]
    cont_target: Tensor  # (B, T) float, 1 - terminals[t-1]
    target_mask: Tensor  # (B, T) float, 0 at t == 0 and is_first (no previous step)
    safety_target: Tensor  # (B, T) float, safety[t] = p(obs[t]); 0 where unlabelled
    safety_mask: Tensor  # (B, T) float, 1 where a label exists
    actions: Tensor  # (B, T, A) float, encode(actions[t]) (dataset-aligned)
    rewards: Tensor  # (B, T) float, dataset-aligned (result of actions[t])
    costs: Tensor  # (B, T) float, dataset-aligned
    terminals: Tensor  # (B, T) bool, dataset-aligned


def make_batch(seqs, action_mode: str, device: torch.device | str = "cpu") -> WorldModelBatch:
    """A :class:`WorldModelBatch` from :class:`carla_safe_envs.datasets.Sequences`."""
    obs = torch.as_tensor(np.asarray(seqs.observations), device=device)
    batch, length = obs.shape[:2]
    side = obs.shape[2] if obs.dim() == 5 else -1
    assert obs.shape == (batch, length, side, side, 3) and obs.dtype == torch.uint8, (
        "observations must be (B, T, S, S, 3) uint8 (S = 128, or the model's image_size), "
        f"got {tuple(obs.shape)} {obs.dtype}"
    )

    def column(values, dtype=torch.float32) -> Tensor:
        out = torch.as_tensor(np.asarray(values), device=device).to(dtype)
        assert out.shape == (batch, length), f"expected (B, T) = {(batch, length)}, got {out.shape}"
        return out

    is_first = column(seqs.is_first, torch.bool)
    actions = encode_actions(seqs.actions, action_mode, device)  # (B, T, A)
    rewards, costs = column(seqs.rewards), column(seqs.costs)
    terminals = column(seqs.terminals, torch.bool)
    has_previous = torch.ones(batch, length, device=device)
    has_previous[:, 0] = 0.0
    has_previous = has_previous * (~is_first).float()  # (B, T)
    prev_actions = torch.zeros_like(actions)
    prev_actions[:, 1:] = actions[:, :-1]
    prev_actions = prev_actions * has_previous[..., None]

    def previous(values: Tensor) -> Tensor:
        out = torch.zeros_like(values)
        out[:, 1:] = values[:, :-1]
        return out * has_previous

    if seqs.safety is None:
        safety = torch.zeros(batch, length, device=device)
        safety_mask = torch.zeros(batch, length, device=device)
    else:
        safety = column(seqs.safety)
        safety_mask = torch.isfinite(safety).float()
        safety = torch.nan_to_num(safety, nan=0.0)
    return WorldModelBatch(
        obs=obs,
        prev_actions=prev_actions,
        is_first=is_first,
        reward_target=previous(rewards),
        cost_target=previous(costs),
        cont_target=previous(1.0 - terminals.float()),
        target_mask=has_previous,
        safety_target=safety,
        safety_mask=safety_mask,
        actions=actions,
        rewards=rewards,
        costs=costs,
        terminals=terminals,
    )


def kl_losses(post_logits: Tensor, prior_logits: Tensor, free_nats: float) -> dict[str, Tensor]:
    """DreamerV3's balanced KL with free bits, from log-probabilities (B, T, S, C).

    ``dyn`` = mean max(free_nats, KL[sg(post) || prior]) trains the prior only, ``rep`` = mean
    max(free_nats, KL[post || sg(prior)]) the posterior only; the KL is summed over the S
    latents and clipped per step, so a step below ``free_nats`` adds a constant and no
    gradient.  ``kl`` is the raw mean KL (detached, for logging).
    """
    assert post_logits.shape == prior_logits.shape and post_logits.dim() == 4, (
        post_logits.shape,
        prior_logits.shape,
    )
    dyn = categorical_kl(post_logits.detach(), prior_logits).sum(-1)  # (B, T)
    rep = categorical_kl(post_logits, prior_logits.detach()).sum(-1)  # (B, T)
    return {
        "dyn": dyn.clamp(min=free_nats).mean(),
        "rep": rep.clamp(min=free_nats).mean(),
        "kl": rep.detach().mean(),
    }


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder and the reward / cost / cont / safety heads.

    ``feat = [deter, flatten(stoch)]`` of width ``feat_dim = deter + stoch * classes``.
    """

    def __init__(self, config: WorldModelConfig, action_dim: int):
        super().__init__()
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        self.config, self.action_dim = config, action_dim
        c = config
        self.feat_dim = c.deter + c.stoch * c.classes
        self.encoder = ConvEncoder(c.image_size, c.cnn_depth)
        self.rssm = RSSM(
            deter=c.deter,
            stoch=c.stoch,
            classes=c.classes,
            hidden=c.hidden,
            embed_dim=self.encoder.embed_dim,
            action_dim=action_dim,
            unimix=c.unimix,
        )
        self.decoder = ConvDecoder(self.feat_dim, c.image_size, c.cnn_depth)
        head = dict(in_dim=self.feat_dim, hidden=c.hidden, layers=c.mlp_layers)
        self.reward = MLP(out_dim=c.bins, zero_init_output=True, **head)
        self.cost = MLP(out_dim=c.bins, zero_init_output=True, **head)
        self.cont = MLP(out_dim=1, **head)
        self.safety = MLP(out_dim=1, **head)
        self.register_buffer("bins", two_hot_bins(c.bins), persistent=False)

    def make_batch(
        self, seqs, action_mode: str, device: torch.device | str | None = None
    ) -> WorldModelBatch:
        """:func:`make_batch` on ``device``, by default the model's own (so a model moved to
        the GPU is fed there)."""
        return make_batch(seqs, action_mode, self.bins.device if device is None else device)

    # --- latent dynamics
    def initial(self, batch_size: int) -> State:
        """The learned initial state: deter (B, D), stoch (B, S, C), logits (B, S, C)."""
        return self.rssm.initial(batch_size)

    def observe(
        self, obs: Tensor, prev_actions: Tensor, is_first: Tensor, state: State | None = None
    ) -> tuple[State, State]:
        """(post, prior) States (B, T, ...) of frames (B, T, 128, 128, 3) uint8 and actions (B, T, A)."""
        batch, length = obs.shape[:2]
        embed = self.encoder(obs.reshape(batch * length, *obs.shape[2:]))
        return self._filter(embed.reshape(batch, length, -1), prev_actions, is_first, state)

    def _filter(
        self, embed: Tensor, prev_actions: Tensor, is_first: Tensor, state: State | None
    ) -> tuple[State, State]:
        """(post, prior) States (B, T, ...) from embeddings (B, T, E)."""
        batch, length = embed.shape[:2]
        assert prev_actions.shape == (batch, length, self.action_dim), prev_actions.shape
        assert is_first.shape == (batch, length), is_first.shape
        state = self.initial(batch) if state is None else state
        posts, priors = [], []
        for t in range(length):
            state, prior = self.rssm.obs_step(
                state, prev_actions[:, t], embed[:, t], is_first[:, t]
            )
            posts.append(state)
            priors.append(prior)
        stack = lambda states: {k: torch.stack([s[k] for s in states], 1) for k in states[0]}  # noqa: E731
        return stack(posts), stack(priors)

    def obs_step(
        self, state: State, prev_action: Tensor, obs: Tensor, is_first: Tensor
    ) -> tuple[State, State]:
        """One filtering step: state (B, ...), prev_action (B, A), obs (B, 128, 128, 3) uint8."""
        return self.rssm.obs_step(state, prev_action, self.encoder(obs), is_first)

    def img_step(self, state: State, action: Tensor, *, sample: bool = True) -> State:
        """The prior after ``action`` (B, A) from ``state`` (B, ...), stoch sampled (or mode)."""
        return self.rssm.img_step(state, action, sample=sample)

    def feat(self, state: State) -> Tensor:
        """(..., feat_dim) = concat(deter (..., D), stoch (..., S * C))."""
        return torch.cat([state["deter"], state["stoch"].flatten(-2)], -1)

    # --- heads
    def reward_head(self, feat: Tensor) -> TwoHot:
        return TwoHot(self.reward(feat), self.bins)

    def cost_head(self, feat: Tensor) -> TwoHot:
        return TwoHot(self.cost(feat), self.bins)

    def cont_head(self, feat: Tensor) -> Tensor:
        """(...,) continuation logits."""
        return self.cont(feat).squeeze(-1)

    def safety_head(self, feat: Tensor) -> Tensor:
        """(...,) logits of p(s), the probability that the state is safe."""
        return self.safety(feat).squeeze(-1)

    def predict(self, feat: Tensor) -> dict[str, Tensor]:
        """Expected reward / cost and probabilities cont / safety, each (...,)."""
        return {
            "reward": self.reward_head(feat).mean(),
            "cost": self.cost_head(feat).mean(),
            "cont": torch.sigmoid(self.cont_head(feat)),
            "safety": torch.sigmoid(self.safety_head(feat)),
        }

    def decode(self, feat: Tensor) -> Tensor:
        """(..., feat_dim) -> images (..., 128, 128, 3) in [0, 1] (bilinear up from image_size)."""
        lead = feat.shape[:-1]
        images = self.decoder(feat.reshape(-1, self.feat_dim))  # (N, s, s, 3)
        if self.config.image_size != OBS_SIZE:
            images = torch.nn.functional.interpolate(
                images.permute(0, 3, 1, 2), size=(OBS_SIZE, OBS_SIZE), mode="bilinear"
            ).permute(0, 2, 3, 1)
        return images.clamp(0.0, 1.0).reshape(*lead, OBS_SIZE, OBS_SIZE, 3)

    # --- losses
    def loss_terms(self, batch: WorldModelBatch) -> tuple[dict[str, Tensor], State]:
        """Unscaled loss terms (scalars, by name) and the posterior States (B, T, ...)."""
        c = self.config
        obs = batch.obs
        b, t = obs.shape[:2]
        images = self.encoder.preprocess(obs.reshape(b * t, *obs.shape[2:]))  # (BT, 3, s, s)
        embed = self.encoder.embed(images).reshape(b, t, -1)  # (B, T, E)
        post, prior = self._filter(embed, batch.prev_actions, batch.is_first, None)
        feat = self.feat(post)  # (B, T, F)

        # image: squared error in [0, 1], summed over the working-resolution pixels
        target = images.permute(0, 2, 3, 1) + 0.5  # (BT, s, s, 3) in [0, 1]
        recon = self.decoder(feat.reshape(b * t, -1))  # (BT, s, s, 3)
        image = (recon - target).square().sum((1, 2, 3)).mean()

        # reward / cost / cont on posteriors, plus the prior one step past each window's end
        last = self.img_step({k: v[:, -1] for k, v in post.items()}, batch.actions[:, -1])
        head_feat = torch.cat([feat, self.feat(last)[:, None]], 1)  # (B, T + 1, F)
        ones = torch.ones(b, 1, device=obs.device)
        mask = torch.cat([batch.target_mask, ones], 1)  # (B, T + 1)
        reward_t = torch.cat([batch.reward_target, batch.rewards[:, -1:]], 1)
        cost_t = torch.cat([batch.cost_target, batch.costs[:, -1:]], 1)
        cont_t = torch.cat([batch.cont_target, 1.0 - batch.terminals[:, -1:].float()], 1)
        reward = _masked_mean(-self.reward_head(head_feat).log_prob(reward_t), mask)
        cost = _masked_mean(-self.cost_head(head_feat).log_prob(cost_t), mask)
        cont = _masked_mean(bernoulli_nll(self.cont_head(head_feat), cont_t), mask)
        safety_nll = bernoulli_nll(self.safety_head(feat), batch.safety_target)
        safety = _masked_mean(safety_nll, batch.safety_mask)

        terms = {"image": image, "reward": reward, "cost": cost, "cont": cont, "safety": safety}
        terms |= kl_losses(post["logits"], prior["logits"], c.free_nats)
        return terms, {k: v.detach() for k, v in post.items()}

    def total_loss(self, terms: dict[str, Tensor]) -> Tensor:
        """The scaled sum of the trained terms (``kl`` is a log-only value)."""
        c = self.config
        return (
            c.image_scale * terms["image"]
            + c.reward_scale * terms["reward"]
            + c.cost_scale * terms["cost"]
            + c.cont_scale * terms["cont"]
            + c.safety_scale * terms["safety"]
            + c.kl_dyn * terms["dyn"]
            + c.kl_rep * terms["rep"]
        )

    def loss(self, batch: WorldModelBatch) -> tuple[Tensor, dict[str, float], State]:
        """(total loss, metrics by name incl. ``total``, posterior States (B, T, ...) detached)."""
        terms, post = self.loss_terms(batch)
        total = self.total_loss(terms)
        metrics = {k: float(v.detach()) for k, v in terms.items()} | {
            "total": float(total.detach())
        }
        return total, metrics, post
