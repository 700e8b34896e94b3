"""Pixel-RL pieces for the stable-baselines3 agents: random-shift augmentation and an SAC
policy whose actor reads the critic's encoder.

SAC from pixels with SB3's defaults (a CNN per network, each trained by its own loss, no
augmentation) does not learn our tasks (README, learn-check).  The two standard remedies:

- :class:`ShiftedNatureCNN`: the Nature-DQN CNN behind a random shift of the image (pad by
  ``shift`` px replicating the border, crop back at a random offset per sample), applied only
  in training mode.  SB3 puts the policy in training mode for its gradient steps and in eval
  mode while it collects experience and predicts, so acting never sees a shifted frame.  DrQ
  (Kostrikov, Yarats & Fergus 2020, arXiv:2004.13649) uses a 4 px shift on 84 px frames.
- :class:`CriticEncoderSACPolicy`: the actor uses the critic's CNN with its output detached, so
  the encoder is trained by the critic's TD loss only and the actor fits a head on those
  features (SAC-AE, Yarats et al. 2019, arXiv:1910.01741, and DrQ).  SB3's own
  ``share_features_extractor=True`` does the opposite (the actor's loss trains the shared CNN,
  the critic's does not).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from stable_baselines3.sac.policies import CnnPolicy as SACCnnPolicy
from torch import Tensor, nn


def random_shift(images: Tensor, shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Each image of ``images`` (B, C, H, W) translated by a random integer offset in
    ``[-shift, shift]`` on both axes, the border replicated into the uncovered strip."""
    if shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = nn.functional.pad(images, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (b, 2), device=images.device, generator=generator)
    rows = torch.arange(h, device=images.device)[None, :] + offsets[:, :1]  # (B, H)
    cols = torch.arange(w, device=images.device)[None, :] + offsets[:, 1:]  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # (B, H, W, C) gathered with advanced indexing, back to channel-first
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


class ShiftedNatureCNN(NatureCNN):
    """:class:`NatureCNN` with :func:`random_shift` of ``shift`` px on its input while the
    module is in training mode (identical to ``NatureCNN`` in eval mode or with shift 0)."""

    def __init__(self, observation_space: gym.Space, features_dim: int = 512, shift: int = 0):
        super().__init__(observation_space, features_dim)
        if shift < 0:
            raise ValueError(f"shift must be >= 0 px, got {shift}")
        self.shift = shift

    def forward(self, observations: Tensor) -> Tensor:
        if self.training and self.shift:
            observations = random_shift(observations, self.shift)
        return super().forward(observations)


class DetachedFeatures(BaseFeaturesExtractor):
    """Another module's features with the gradient stopped (the actor's view of the critic's
    encoder: the actor's loss does not reach the encoder's weights)."""

    def __init__(self, encoder: BaseFeaturesExtractor):
        super().__init__(encoder._observation_space, encoder.features_dim)
        self.encoder = encoder

    def forward(self, observations: Tensor) -> Tensor:
        return self.encoder(observations).detach()


class CriticEncoderSACPolicy(SACCnnPolicy):
    """SB3's SAC ``CnnPolicy`` whose actor reads the critic's encoder, detached.

    The critic (both Q-networks, one encoder) and its optimiser are as in SB3; the actor's
    optimiser holds only its own head (``latent_pi``, ``mu``, ``log_std``); the target critic
    keeps its own encoder copy, updated by Polyak averaging like the rest of it.
    """

    def _build(self, lr_schedule: Any) -> None:
        self.critic = self.make_critic(features_extractor=None)
        self.actor = self.make_actor(
            features_extractor=DetachedFeatures(self.critic.features_extractor)
        )
        head = [p for n, p in self.actor.named_parameters() if not n.startswith("features_")]
        self.actor.optimizer = self.optimizer_class(
            head,
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )
        self.critic.optimizer = self.optimizer_class(
            self.critic.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )
        self.critic_target = self.make_critic(features_extractor=None)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.set_training_mode(False)


__all__ = ["CriticEncoderSACPolicy", "DetachedFeatures", "ShiftedNatureCNN", "random_shift"]
