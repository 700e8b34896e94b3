"""The world model's networks: CNN encoder / decoder and the recurrent state-space model.

DreamerV3 layout (Hafner et al. 2023, appendix B), written for 128x128x3 BEV frames:

- :class:`ConvEncoder`: uint8 frames -> ``x / 255 - 0.5`` -> (optional area downsampling to the
  working ``image_size``) -> stride-2 4x4 convolutions, depth ``cnn_depth`` doubling every
  stage, each followed by a per-pixel LayerNorm over channels and SiLU, until 4x4; flattened.
- :class:`ConvDecoder`: the mirror image with transposed convolutions; the last layer has no
  norm and outputs the image mean in [0, 1] space (``+ 0.5``), at ``image_size``.
- :class:`LayerNormGRUCell`: DreamerV3's GRU (the 2023 paper's version, not the later
  block-diagonal one): one bias-free linear map of ``[x, h]`` to the three gates, LayerNorm on
  the gate pre-activations, ``reset * candidate`` inside the tanh and an update-gate bias of -1
  so the cell starts out keeping its state.  A full (dense) GRU is cheaper than the block GRU
  at the sizes used here and is what the published DreamerV3 ablations use.
- :class:`RSSM`: deterministic state ``deter`` (D,) from the GRU, stochastic state ``stoch``
  (S, C) of S categoricals with C classes each (1% unimix, straight-through samples).  The
  initial state is learned: ``deter0 = tanh(w)``, ``stoch0`` = mode of the prior at ``deter0``.

A state is a dict ``{"deter": (..., D), "stoch": (..., S, C), "logits": (..., S, C)}`` where
``logits`` are the *unimixed log-probabilities* of the distribution ``stoch`` was drawn from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlsafe.nets import LayerNormSiLU, OneHotDist

OBS_SIZE = 128  # BEV frames are (128, 128, 3) uint8
MIN_RES = 4  # the encoder stops downsampling at 4x4 (DreamerV3 "minres")

State = dict[str, Tensor]


def cnn_stages(image_size: int) -> int:
    """Stride-2 stages from ``image_size`` down to 4x4; ``image_size`` a power of 2 in [8, 128]."""
    stages = math.log2(image_size / MIN_RES)
    if image_size > OBS_SIZE or image_size < 2 * MIN_RES or stages != int(stages):
        raise ValueError(f"image_size must be a power of 2 in [8, {OBS_SIZE}], got {image_size}")
    return int(stages)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of each pixel of an (N, C, H, W) map (DreamerV3's CNN norm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvEncoder(nn.Module):
    """(N, S, S, 3) uint8 -> (N, embed_dim) float, ``embed_dim = 16 * top depth``; S is 128
    or the working ``image_size`` (see :meth:`preprocess`)."""

    def __init__(self, image_size: int, depth: int):
        super().__init__()
        self.image_size = image_size
        stages = cnn_stages(image_size)
        layers: list[nn.Module] = []
        channels = 3
        for i in range(stages):
            out = depth * 2**i
            layers += [nn.Conv2d(channels, out, 4, 2, 1, bias=False), ChannelNorm(out), nn.SiLU()]
            channels = out
        self.net = nn.Sequential(*layers)
        self.top_depth = channels
        self.embed_dim = channels * MIN_RES * MIN_RES

    def preprocess(self, obs: Tensor) -> Tensor:
        """(N, S, S, 3) uint8 -> (N, 3, size, size) float in [-0.5, 0.5].

        ``S`` is 128 (the env's BEV, area-averaged here in float) or already the working
        ``image_size`` (frames area-averaged beforehand with
        :func:`carla_safe_envs.bev.downsample`, as the agents' training data and ``act``
        are: 4x less memory and no full-resolution float pass per update; the two paths
        differ by the uint8 rounding, at most 0.5 / 255)."""
        sizes = {OBS_SIZE, self.image_size}
        assert obs.dtype == torch.uint8 and obs.dim() == 4 and obs.shape[3] == 3, (
            f"encoder expects (N, S, S, 3) uint8 frames, got {tuple(obs.shape)} {obs.dtype}"
        )
        assert obs.shape[1] == obs.shape[2] and obs.shape[1] in sizes, (
            f"encoder expects {OBS_SIZE} or {self.image_size} px frames, got {tuple(obs.shape)}"
        )
        x = obs.float().permute(0, 3, 1, 2)  # (N, 3, S, S), channels-last in memory
        if obs.shape[1] != self.image_size:
            x = F.avg_pool2d(x, OBS_SIZE // self.image_size)  # (N, 3, size, size)
        return x * (1.0 / 255.0) - 0.5

    def embed(self, images: Tensor) -> Tensor:
        """(N, 3, size, size) preprocessed images -> (N, embed_dim)."""
        assert images.shape[1:] == (3, self.image_size, self.image_size), images.shape
        # channels-last: the per-pixel LayerNorms read contiguous channels and oneDNN's
        # convolutions run ~15% faster on a CPU (same values up to float rounding)
        x = self.net(images.contiguous(memory_format=torch.channels_last))
        return x.flatten(1)  # (N, top_depth * 4 * 4)

    def forward(self, obs: Tensor) -> Tensor:
        """(N, 128, 128, 3) uint8 -> (N, embed_dim)."""
        return self.embed(self.preprocess(obs))


class ConvDecoder(nn.Module):
    """(N, feat_dim) -> (N, image_size, image_size, 3) image means in [0, 1] space (unclipped)."""

    def __init__(self, feat_dim: int, image_size: int, depth: int):
        super().__init__()
        self.image_size = image_size
        stages = cnn_stages(image_size)
        self.top_depth = depth * 2 ** (stages - 1)
        self.linear = nn.Linear(feat_dim, self.top_depth * MIN_RES * MIN_RES)
        layers: list[nn.Module] = []
        channels = self.top_depth
        for i in reversed(range(stages - 1)):
            out = depth * 2**i
            layers += [
                nn.ConvTranspose2d(channels, out, 4, 2, 1, bias=False),
                ChannelNorm(out),
                nn.SiLU(),
            ]
            channels = out
        layers.append(nn.ConvTranspose2d(channels, 3, 4, 2, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, feat: Tensor) -> Tensor:
        x = self.linear(feat).reshape(-1, self.top_depth, MIN_RES, MIN_RES)  # (N, top, 4, 4)
        x = self.net(x.contiguous(memory_format=torch.channels_last))  # (N, 3, size, size)
        return x.permute(0, 2, 3, 1) + 0.5  # (N, size, size, 3)


class LayerNormGRUCell(nn.Module):
    """GRU cell with LayerNorm on the gate pre-activations (DreamerV3): (N, in), (N, D) -> (N, D)."""

    def __init__(self, in_dim: int, deter: int):
        super().__init__()
        self.linear = nn.Linear(in_dim + deter, 3 * deter, bias=False)
        self.norm = nn.LayerNorm(3 * deter, eps=1e-3)
        self.deter = deter

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)))
        reset, candidate, update = parts.split(self.deter, -1)
        reset = torch.sigmoid(reset)
        candidate = torch.tanh(reset * candidate)
        update = torch.sigmoid(update - 1.0)  # bias -1: start by keeping the state
        return update * candidate + (1.0 - update) * h


class RSSM(nn.Module):
    """Recurrent state-space model over embeddings (N, E) and actions (N, A).

    ``img_step`` is the prior (transition) model, ``obs_step`` the posterior (representation)
    model; both sample ``stoch`` straight-through.
    """

    def __init__(
        self,
        *,
        deter: int,
        stoch: int,
        classes: int,
        hidden: int,
        embed_dim: int,
        action_dim: int,
        unimix: float,
    ):
        super().__init__()
        self.deter, self.stoch, self.classes = deter, stoch, classes
        self.action_dim, self.embed_dim, self.unimix = action_dim, embed_dim, unimix
        self.img_in = LayerNormSiLU(stoch * classes + action_dim, hidden)
        self.gru = LayerNormGRUCell(hidden, deter)
        self.img_out = nn.Sequential(
            LayerNormSiLU(deter, hidden), nn.Linear(hidden, stoch * classes)
        )
        self.obs_out = nn.Sequential(
            LayerNormSiLU(deter + embed_dim, hidden), nn.Linear(hidden, stoch * classes)
        )
        self.initial_deter = nn.Parameter(torch.zeros(deter))

    def _dist(self, flat_logits: Tensor) -> OneHotDist:
        logits = flat_logits.reshape(*flat_logits.shape[:-1], self.stoch, self.classes)
        return OneHotDist(logits, self.unimix)

    def initial(self, batch_size: int) -> State:
        """The learned initial state, (B, ...) per entry."""
        deter = torch.tanh(self.initial_deter).expand(batch_size, self.deter)  # (B, D)
        dist = self._dist(self.img_out(deter))
        return {"deter": deter, "stoch": dist.mode(), "logits": dist.logits}

    def img_step(self, state: State, action: Tensor, *, sample: bool = True) -> State:
        """Prior after ``action`` (B, A) from ``state`` (B, ...); ``sample=False`` takes the mode."""
        batch = state["deter"].shape[0]
        assert state["stoch"].shape == (batch, self.stoch, self.classes), state["stoch"].shape
        assert action.shape == (batch, self.action_dim), (
            f"action must be (B={batch}, A={self.action_dim}), got {tuple(action.shape)}"
        )
        x = self.img_in(torch.cat([state["stoch"].flatten(1), action], -1))  # (B, hidden)
        deter = self.gru(x, state["deter"])  # (B, D)
        dist = self._dist(self.img_out(deter))
        stoch = dist.sample() if sample else dist.mode()  # (B, S, C)
        return {"deter": deter, "stoch": stoch, "logits": dist.logits}

    def obs_step(
        self, state: State, prev_action: Tensor, embed: Tensor, is_first: Tensor
    ) -> tuple[State, State]:
        """(posterior, prior) at a step with embedding (B, E); resets to initial where is_first."""
        batch = embed.shape[0]
        assert embed.shape == (batch, self.embed_dim), embed.shape
        assert is_first.shape == (batch,), is_first.shape
        is_first = is_first.bool()
        if is_first.any():  # reset those rows to the initial state, with no previous action
            prev_action = prev_action * (~is_first).float()[:, None]
            init = self.initial(batch)
            state = {
                k: torch.where(is_first.reshape(-1, *[1] * (v.dim() - 1)), init[k], v)
                for k, v in state.items()
            }
        prior = self.img_step(state, prev_action)
        dist = self._dist(self.obs_out(torch.cat([prior["deter"], embed], -1)))
        post = {"deter": prior["deter"], "stoch": dist.sample(), "logits": dist.logits}
        return post, prior
