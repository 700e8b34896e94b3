"""The pixel-RL pieces of the SB3 agents (``baselines.sb3_pixel``): random shift, the shifted
Nature CNN and the SAC policy whose actor reads the critic's encoder."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("stable_baselines3")

from stable_baselines3.common.torch_layers import NatureCNN  # noqa: E402

from baselines.sb3_pixel import (  # noqa: E402
    CriticEncoderSACPolicy,
    DetachedFeatures,
    ShiftedNatureCNN,
    random_shift,
)
from carla_safe_envs.agents import load_agent, make_agent  # noqa: E402

SPACE = gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)


def test_random_shift_moves_a_dot_by_at_most_shift_pixels() -> None:
    """One bright pixel at (20, 30) in 64 images: after a shift of 3 each image still holds
    one bright pixel, within 3 px of the original on each axis, and over the batch every
    offset in [-3, 3] occurs on both axes; shift 0 is the identity."""
    images = torch.zeros(64, 1, 40, 50)
    images[:, 0, 20, 30] = 1.0
    out = random_shift(images, 3, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    rows, cols = [], []
    for image in out[:, 0]:
        (r, c), *rest = torch.nonzero(image == 1.0).tolist()
        assert not rest and abs(r - 20) <= 3 and abs(c - 30) <= 3
        rows.append(r - 20)
        cols.append(c - 30)
    assert set(rows) == set(cols) == set(range(-3, 4))
    assert torch.equal(random_shift(images, 0), images)


def test_random_shift_replicates_the_border() -> None:
    """A horizontal ramp shifted right shows the first column repeated, never zeros."""
    ramp = torch.arange(1.0, 11.0).repeat(1, 1, 10, 1)  # (1, 1, 10, 10), column j = j + 1
    out = random_shift(ramp.repeat(32, 1, 1, 1), 2, torch.Generator().manual_seed(1))
    assert out.min() == 1.0 and out.max() == 10.0
    for image in out[:, 0]:
        assert torch.all(image == image[0])  # rows are still identical
        diffs = torch.diff(image[0])
        assert torch.all((diffs == 0) | (diffs == 1))


def test_shifted_cnn_equals_nature_cnn_in_eval_mode_and_shifts_in_training() -> None:
    torch.manual_seed(0)
    shifted = ShiftedNatureCNN(SPACE, features_dim=32, shift=4)
    plain = NatureCNN(SPACE, features_dim=32)
    plain.load_state_dict(shifted.state_dict())
    x = torch.rand(8, 3, 64, 64)
    shifted.eval()
    torch.testing.assert_close(shifted(x), plain(x))
    shifted.train()
    assert not torch.allclose(shifted(x), plain(x))
    with pytest.raises(ValueError, match="shift must be >= 0"):
        ShiftedNatureCNN(SPACE, shift=-1)


def test_detached_features_stop_the_gradient() -> None:
    encoder = NatureCNN(SPACE, features_dim=16)
    view = DetachedFeatures(encoder)
    assert view.features_dim == 16
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = view(x)
    assert not out.requires_grad  # nothing upstream of the features gets a gradient
    torch.testing.assert_close(out, encoder(x).detach())


def test_sac_actor_reads_the_critic_encoder_and_only_the_td_loss_trains_it(
    tmp_path: Path,
) -> None:
    """With ``critic_encoder`` the actor's CNN is the critic's (the target keeps a copy), the
    actor's optimiser holds no CNN weight, the actor's loss leaves the CNN's gradients empty,
    and a saved agent loads with the same policy class and the same deterministic actions."""
    agent = make_agent(
        "sac",
        "CarlaLeftTurn-v0",
        preset="debug",
        seed=0,
        config={"critic_encoder": True, "augment_shift": 2, "image_size": 64},
    )
    agent.fit(progress=False)
    policy = agent.model.policy
    assert isinstance(policy, CriticEncoderSACPolicy)
    encoder = policy.critic.features_extractor
    assert policy.actor.features_extractor.encoder is encoder
    assert policy.critic_target.features_extractor is not encoder
    assert isinstance(encoder, ShiftedNatureCNN) and encoder.shift == 2
    cnn = {id(p) for p in encoder.parameters()}
    actor_params = [p for g in policy.actor.optimizer.param_groups for p in g["params"]]
    assert actor_params and not any(id(p) in cnn for p in actor_params)

    policy.set_training_mode(True)
    for p in encoder.parameters():
        p.grad = None
    obs = torch.rand(4, 3, 64, 64)
    actions, log_prob = policy.actor.action_log_prob(obs)
    (log_prob.sum() + actions.sum()).backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert any(p.grad is not None for p in actor_params)
    policy.set_training_mode(False)

    frames = np.random.default_rng(0).integers(0, 256, (5, 128, 128, 3), dtype=np.uint8)
    before, _ = agent.act(frames)
    agent.save(tmp_path / "sac")
    loaded = load_agent(tmp_path / "sac")
    assert isinstance(loaded.model.policy, CriticEncoderSACPolicy)
    after, _ = loaded.act(frames)
    np.testing.assert_array_equal(before, after)
