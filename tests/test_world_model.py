"""The world model (vlsafe.nets, vlsafe.rssm, vlsafe.world_model, vlsafe.wm_training) and its
check / speed commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carla_safe_envs.datasets import OfflineDataset, Sequences  # noqa: E402
from vlsafe.nets import (  # noqa: E402
    MLP,
    OneHotDist,
    TwoHot,
    action_dim,
    encode_actions,
    symexp,
    symlog,
    two_hot,
    two_hot_bins,
)
from vlsafe.wm_training import (  # noqa: E402
    NonFiniteLossError,
    WorldModelTrainer,
    load_world_model,
    save_world_model,
)
from vlsafe.world_model import (  # noqa: E402
    WM_PRESETS,
    WorldModel,
    WorldModelConfig,
    kl_losses,
    make_batch,
)

TASK = "CarlaLeftTurn-v0"
DEBUG = WM_PRESETS["debug"]
A = 15  # discrete actions


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def constructed_sequences(
    batch: int = 2, length: int = 6, *, frames: np.ndarray | None = None, safety=True
) -> Sequences:
    """Sequences with recognisable values: rewards[b, t] = 10 b + t, costs = t / 10, ..."""
    shape = (batch, length)
    grid = 10 * np.arange(batch)[:, None] + np.arange(length)
    if frames is None:
        frames = np.random.default_rng(0).integers(0, 256, (*shape, 128, 128, 3), dtype=np.uint8)
    is_first = np.zeros(shape, dtype=bool)
    is_first[0, 3] = True  # window 0 crosses into a new episode at t = 3
    return Sequences(
        observations=frames,
        actions=grid % A,
        rewards=grid.astype(np.float32),
        costs=(grid / 10).astype(np.float32),
        terminals=np.zeros(shape, dtype=bool) | (grid == 2),  # window 0, t = 2 terminates
        timeouts=np.zeros(shape, dtype=bool),
        is_first=is_first,
        safety=np.linspace(0, 1, batch * length, dtype=np.float32).reshape(shape)
        if safety
        else None,
    )


@pytest.fixture(scope="module")
def model() -> WorldModel:
    torch.manual_seed(0)
    return WorldModel(DEBUG, A)


# --- nets ---------------------------------------------------------------------------------


def test_symlog_symexp_are_inverse() -> None:
    x = torch.tensor([-1e6, -123.4, -1.0, -1e-3, 0.0, 1e-3, 0.5, 7.0, 1e6])
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5, atol=1e-6)
    assert torch.allclose(symlog(symexp(x[2:-2])), x[2:-2], rtol=1e-5, atol=1e-6)
    assert symlog(torch.tensor(-5.0)) == -symlog(torch.tensor(5.0))


@pytest.mark.parametrize("bins", [255, 41])
def test_two_hot_round_trip(bins: int) -> None:
    grid = two_hot_bins(bins)
    x = torch.tensor([-1000.0, -3.3, -1.0, 0.0, 0.37, 1.0, 2.5, 99.0, 4e7])
    encoded = two_hot(symlog(x), grid)  # (9, K)
    assert torch.allclose(encoded.sum(-1), torch.ones(len(x)))
    assert ((encoded > 0).sum(-1) <= 2).all() and (encoded >= 0).all()
    mean = TwoHot(torch.log(encoded + 1e-12), grid).mean()
    assert torch.allclose(mean, x, rtol=1e-4, atol=1e-4)
    assert torch.isnan(two_hot(torch.tensor([float("nan")]), grid)).all()


def test_two_hot_log_prob_is_maximal_at_the_target() -> None:
    grid = two_hot_bins(255)
    target = torch.tensor(3.7)
    candidates = torch.tensor([-2.0, 0.0, 1.0, 3.0, 3.5, 3.7, 3.9, 5.0, 20.0])
    logits = torch.log(two_hot(symlog(candidates), grid) + 1e-6)  # one prediction per candidate
    scores = TwoHot(logits, grid).log_prob(target.expand(len(candidates)))
    assert candidates[scores.argmax()] == target
    # gradient ascent on log_prob(target) from zero logits lands on the target
    free = torch.zeros(255, requires_grad=True)
    optimizer = torch.optim.Adam([free], lr=0.5)
    for _ in range(200):
        optimizer.zero_grad()
        (-TwoHot(free, grid).log_prob(target)).backward()
        optimizer.step()
    assert TwoHot(free, grid).mean().item() == pytest.approx(3.7, rel=1e-2)


def test_unimix_floors_every_probability() -> None:
    logits = torch.tensor([[200.0, -200.0, -200.0, -200.0]]).repeat(3, 1)
    dist = OneHotDist(logits, unimix=0.01)
    assert (dist.probs >= 0.01 / 4 - 1e-7).all()
    assert torch.allclose(dist.probs.sum(-1), torch.ones(3))
    assert torch.isfinite(dist.log_prob(torch.eye(4)[[1, 2, 3]])).all()
    sample = dist.sample()
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}  # one-hot forward value


def test_straight_through_sample_has_probability_gradients() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    sample = OneHotDist(logits).sample()
    (sample * torch.arange(3.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_free_bits_below_threshold_give_a_constant_without_gradient() -> None:
    post = torch.log_softmax(torch.randn(2, 3, 4, 5) * 0.01, -1).requires_grad_()
    prior = torch.log_softmax(torch.randn(2, 3, 4, 5) * 0.01, -1).requires_grad_()
    losses = kl_losses(post, prior, free_nats=1.0)
    assert losses["kl"] < 1.0
    assert losses["dyn"].item() == 1.0 and losses["rep"].item() == 1.0
    (losses["dyn"] + losses["rep"]).backward()
    assert post.grad.abs().max() == 0 and prior.grad.abs().max() == 0
    # above the free nats: dyn trains only the prior, rep only the posterior
    post = torch.log_softmax(torch.randn(2, 3, 4, 5) * 5, -1).requires_grad_()
    prior = torch.log_softmax(torch.randn(2, 3, 4, 5) * 5, -1).requires_grad_()
    losses = kl_losses(post, prior, free_nats=0.0)
    losses["dyn"].backward()
    assert post.grad is None and prior.grad.abs().max() > 0
    assert losses["dyn"].item() == pytest.approx(losses["rep"].item())


def test_action_helpers() -> None:
    assert action_dim("discrete") == 15 and action_dim("continuous") == 2
    onehot = encode_actions(np.array([[0, 14]]), "discrete")
    assert onehot.shape == (1, 2, 15) and onehot[0, 1, 14] == 1 and onehot.sum() == 2
    assert encode_actions(np.zeros((3, 2), np.float32), "continuous").shape == (3, 2)
    with pytest.raises(ValueError, match="discrete actions must be in"):
        encode_actions(np.array([15]), "discrete")
    with pytest.raises(ValueError, match="action_mode"):
        action_dim("both")
    mlp = MLP(7, 3, hidden=8, layers=2, zero_init_output=True)
    assert mlp(torch.randn(4, 5, 7)).abs().max() == 0 and mlp(torch.randn(2, 7)).shape == (2, 3)


# --- world model --------------------------------------------------------------------------


def test_config_presets_and_bad_values() -> None:
    paper = WM_PRESETS["paper"]
    assert (paper.deter, paper.stoch, paper.classes, paper.horizon) == (512, 32, 32, 15)
    assert WorldModelConfig.from_preset("debug", lr=1e-2).lr == 1e-2
    with pytest.raises(ValueError, match="unknown WorldModelConfig fields"):
        WorldModelConfig.from_preset("debug", deterr=3)
    with pytest.raises(ValueError, match="unknown world-model preset"):
        WorldModelConfig.from_preset("huge")
    with pytest.raises(ValueError, match="image_size"):
        WorldModelConfig(image_size=48)
    with pytest.raises(Exception):  # frozen  # noqa: B017
        paper.deter = 3  # type: ignore[misc]


def test_shapes_at_every_module_boundary(model: WorldModel) -> None:
    c = DEBUG
    b, t, s, k = 2, 5, c.stoch, c.classes
    frames = torch.randint(0, 256, (b * t, 128, 128, 3), dtype=torch.uint8)
    embed = model.encoder(frames)
    assert embed.shape == (b * t, model.encoder.embed_dim) == (b * t, 16 * c.cnn_depth * 4)
    assert model.feat_dim == c.deter + s * k
    assert model.decoder(torch.randn(b * t, model.feat_dim)).shape == (b * t, 32, 32, 3)
    init = model.initial(b)
    assert {n: v.shape for n, v in init.items()} == {
        "deter": (b, c.deter),
        "stoch": (b, s, k),
        "logits": (b, s, k),
    }
    actions = torch.zeros(b, t, A)
    post, prior = model.observe(
        frames.reshape(b, t, 128, 128, 3), actions, torch.zeros(b, t, dtype=torch.bool)
    )
    for state in (post, prior):
        assert state["deter"].shape == (b, t, c.deter) and state["stoch"].shape == (b, t, s, k)
        assert torch.allclose(state["logits"].exp().sum(-1), torch.ones(b, t, s))
    one = {n: v[:, 0] for n, v in post.items()}
    img = model.img_step(one, actions[:, 0])
    assert img["stoch"].shape == (b, s, k) and img["deter"].shape == (b, c.deter)
    step_post, step_prior = model.obs_step(
        one, actions[:, 0], frames[:b], torch.tensor([True, False])
    )
    assert step_post["stoch"].shape == step_prior["stoch"].shape == (b, s, k)
    with pytest.raises(AssertionError):
        model.img_step(one, torch.zeros(b, A + 1))
    feat = model.feat(post)
    assert feat.shape == (b, t, model.feat_dim)
    assert model.reward_head(feat).logits.shape == (b, t, c.bins)
    assert model.cont_head(feat).shape == model.safety_head(feat).shape == (b, t)
    predicted = model.predict(feat)
    assert {n: v.shape for n, v in predicted.items()} == dict.fromkeys(
        ("reward", "cost", "cont", "safety"), (b, t)
    )
    assert predicted["reward"].abs().max() < 1e-5  # zero-initialised two-hot outputs predict 0
    images = model.decode(feat)
    assert images.shape == (b, t, 128, 128, 3) and images.min() >= 0 and images.max() <= 1
    loss, metrics, post = model.loss(make_batch(constructed_sequences(b, t), "discrete"))
    assert (
        loss.dim() == 0 and post["stoch"].shape == (b, t, s, k) and not post["deter"].requires_grad
    )
    keys = {"image", "reward", "cost", "cont", "safety", "dyn", "rep", "kl", "total"}
    assert keys <= set(metrics) and metrics["total"] == pytest.approx(loss.item())


def test_make_batch_alignment() -> None:
    seqs = constructed_sequences(2, 6)
    batch = make_batch(seqs, "discrete")
    expected_mask = np.ones((2, 6), np.float32)
    expected_mask[:, 0] = 0  # no previous step in the window
    expected_mask[0, 3] = 0  # episode start
    assert np.array_equal(batch.target_mask.numpy(), expected_mask)
    prev_rewards = np.zeros((2, 6), np.float32)
    prev_rewards[:, 1:] = seqs.rewards[:, :-1]
    assert np.allclose(batch.reward_target.numpy(), prev_rewards * expected_mask)
    assert batch.reward_target[1, 4] == seqs.rewards[1, 3] == 13
    assert batch.cost_target[1, 5] == pytest.approx(seqs.costs[1, 4])
    assert batch.cont_target[0, 3] == 0  # masked (is_first) even though it follows a terminal
    assert batch.cont_target[1, 3] == 1
    prev_index = batch.prev_actions.argmax(-1)
    assert (prev_index[1, 1:] == torch.as_tensor(seqs.actions[1, :-1])).all()
    assert batch.prev_actions[:, 0].abs().sum() == 0 and batch.prev_actions[0, 3].abs().sum() == 0
    assert (batch.actions.argmax(-1) == torch.as_tensor(seqs.actions)).all()
    assert np.allclose(batch.safety_target.numpy(), seqs.safety) and batch.safety_mask.all()
    assert batch.obs.dtype == torch.uint8 and batch.is_first[0, 3]
    assert batch.terminals[0, 2] and batch.rewards[0, 5] == 5
    unlabelled = make_batch(constructed_sequences(2, 6, safety=False), "discrete")
    assert unlabelled.safety_mask.sum() == 0
    partly = constructed_sequences(2, 6)._replace(safety=np.full((2, 6), np.nan, np.float32))
    assert make_batch(partly, "discrete").safety_mask.sum() == 0


def _fixed_batch(dataset_path: Path, windows: int = 4, length: int = 8):
    with OfflineDataset(dataset_path) as data:
        seqs = data.sample_sequences(windows, length, np.random.default_rng(0))
        return make_batch(seqs, data.action_mode)


def test_losses_fall_on_a_tiny_fixed_dataset(offline_dataset) -> None:
    batch = _fixed_batch(offline_dataset(TASK))
    trainer = WorldModelTrainer(WorldModel(DEBUG, A))
    history = [trainer.update(batch) for _ in range(40)]
    first, last = history[0], history[-1]
    # ratios last / first measured over torch seeds 0-2: total 0.34-0.40, image 0.33-0.40,
    # cont 0.11-0.21, reward / cost 0.75-0.78, safety 0.65-0.92 (onset of latent information)
    limits = {"total": 0.6, "image": 0.6, "cont": 0.5, "reward": 0.88, "cost": 0.88, "safety": 0.97}
    for term, limit in limits.items():
        assert last[term] < limit * first[term], (term, first[term], last[term])
    assert trainer.updates == 40 and trainer.last_post["stoch"].shape[:2] == (4, 8)


def _painted_frames(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gray road strips on black; in about half the frames the road is painted red (unsafe)."""
    frames = np.full((n, 128, 128, 3), 40, dtype=np.uint8)
    unsafe = rng.random(n) < 0.5
    frames[:, :, 48:80] = (66, 62, 64)
    frames[unsafe, :, 48:80] = (255, 0, 0)
    return frames, unsafe


def test_safety_head_learns_a_separable_labelling() -> None:
    # Under free bits the posterior carries little information for the first ~100 updates at
    # debug sizes (measured: 250 updates at lr 1e-3 and 32 px to reach 100%); a larger learning
    # rate and a 16 px working resolution bring that onset within a test's time.
    rng = np.random.default_rng(1)
    b, t = 4, 4
    model = WorldModel(WorldModelConfig.from_preset("debug", lr=3e-3, image_size=16), A)
    trainer = WorldModelTrainer(model)
    for _ in range(100):
        frames, unsafe = _painted_frames(rng, b * t)
        seqs = constructed_sequences(b, t, frames=frames.reshape(b, t, 128, 128, 3))
        trainer.update(make_batch(seqs._replace(safety=(~unsafe).reshape(b, t) * 1.0), "discrete"))
    frames, unsafe = _painted_frames(np.random.default_rng(99), 64)
    with torch.no_grad():
        model.eval()
        post, _ = model.observe(
            torch.as_tensor(frames).reshape(16, 4, 128, 128, 3),
            torch.zeros(16, 4, A),
            torch.zeros(16, 4, dtype=torch.bool),
        )
        p_safe = model.predict(model.feat(post))["safety"].reshape(-1).numpy()
    assert 0.2 < unsafe.mean() < 0.8
    accuracy = np.mean((p_safe > 0.5) == ~unsafe)
    assert accuracy >= 0.95, accuracy


def test_non_finite_loss_names_the_term_and_leaves_weights(model: WorldModel) -> None:
    seqs = constructed_sequences(2, 6)
    rewards = seqs.rewards.copy()
    rewards[1, 2] = np.nan
    batch = make_batch(seqs._replace(rewards=rewards), "discrete")
    trainer = WorldModelTrainer(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match="'reward'") as error:
        trainer.update(batch)
    assert error.value.term == "reward"
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_save_load_round_trip_gives_identical_predictions(
    tmp_path: Path, model: WorldModel
) -> None:
    path = save_world_model(tmp_path / "run" / "world_model.pt", model)
    loaded = load_world_model(path)
    assert loaded.config == model.config and loaded.action_dim == A
    batch = make_batch(constructed_sequences(2, 6), "discrete")
    outputs = []
    for net in (model.eval(), loaded):
        torch.manual_seed(5)
        with torch.no_grad():
            post, _ = net.observe(batch.obs, batch.prev_actions, batch.is_first)
            feat = net.feat(post)
            outputs.append([*net.predict(feat).values(), net.decode(feat)])
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)
    other = WorldModel(WorldModelConfig.from_preset("debug", deter=16), A)
    torch.save({**torch.load(path), "state_dict": other.state_dict()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="do not match"):
        load_world_model(tmp_path / "bad.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a world-model checkpoint"):
        load_world_model(tmp_path / "other.pt")


# --- commands -----------------------------------------------------------------------------


def test_wm_check_writes_png_and_head_errors(
    tmp_path: Path, offline_dataset, model: WorldModel, capsys: pytest.CaptureFixture[str]
) -> None:
    import cv2

    from benchmarks.__main__ import main

    save_world_model(tmp_path / "agent" / "world_model.pt", model)
    png = tmp_path / "check.png"
    argv = ["wm-check", "--model-dir", str(tmp_path / "agent"), "--dataset"]
    argv += [str(offline_dataset(TASK)), "--out", str(png), "--windows", "6", "--json"]
    assert main([*argv, "--context", "3", "--horizon", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    image = cv2.imread(str(png))
    assert image.shape == (22 + 2 * 3 * 128, 96 + 7 * 128, 3)
    for part in ("observed", "open_loop"):
        errors = result[part]
        for key in ("image_mse", "reward_mae", "cost_mae", "cont_mae", "safety_mae"):
            assert np.isfinite(errors[key]) and errors[key] >= 0, (part, key)
        assert errors["safety_auroc"] is None or 0 <= errors["safety_auroc"] <= 1
    assert result["open_loop"]["steps"] == 6 * 4 and result["labels"] is True
    assert "speed_probe" not in result
    assert main([*argv[:2], str(tmp_path / "missing"), *argv[3:]]) == 2
    assert main([*argv, "--speed-probe"]) == 0
    probe = json.loads(capsys.readouterr().out)["speed_probe"]
    with OfflineDataset(offline_dataset(TASK)) as data:
        assert probe["steps"] == min(data.n_steps, int(data.episode_bounds()[:60, 1].max()))
    assert 0 < probe["test_steps"] < probe["steps"] and probe["speed_std"] > 0
    for part in ("deter", "stoch", "feat"):
        assert probe[part]["r2"] <= 1 and probe[part]["rmse"] >= 0


def test_ridge_read_out_scores_a_known_signal_and_noise() -> None:
    """The speed probe's read-out: a target that is a linear function of one feature is
    recovered on held-out rows (R^2 ~ 1, RMSE ~ the noise); one independent of the
    features is not (R^2 <= ~0)."""
    from vlsafe.wm_check import ridge_fit_score

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20))
    signal = 3.0 * x[:, 4] + 1.0 + rng.normal(scale=0.1, size=2000)
    fit = ridge_fit_score(x[:1500], signal[:1500], x[1500:], signal[1500:], ridge=1e-4)
    assert fit["r2"] > 0.99 and fit["rmse"] == pytest.approx(0.1, rel=0.2)
    noise = rng.normal(size=2000)
    fit = ridge_fit_score(x[:1500], noise[:1500], x[1500:], noise[1500:], ridge=1e-4)
    assert fit["r2"] < 0.05


def test_wm_speed_reports_updates_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.__main__ import main

    assert main(["wm-speed", "--preset", "debug", "--updates", "2", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["presets"]["debug"]
    assert result["updates_per_s"] > 0 and result["timed_updates"] == 2
    assert result["batch_size"] == DEBUG.batch_size and result["seq_len"] == DEBUG.seq_len
