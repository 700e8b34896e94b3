"""The world-model agents (VL-SAFE, DreamerV3, FOSP): their formulas, module boundaries,
training loop, storage and bad inputs.  Everything runs with the ``debug`` preset."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

from benchmarks.__main__ import main  # noqa: E402
from benchmarks.train import evaluate_agent  # noqa: E402
from carla_safe_envs.agents import AgentError, load_agent, make_agent  # noqa: E402
from carla_safe_envs.datasets import OfflineDataset, Sequences  # noqa: E402
from carla_safe_envs.metrics import METRIC_NAMES, aggregate  # noqa: E402
from vlsafe import learners, objectives  # noqa: E402
from vlsafe.behavior import Actor, Critic, imagine  # noqa: E402
from vlsafe.configs import FOSP_PRESETS, VLSAFE_PRESETS, compose_config  # noqa: E402
from vlsafe.learners import DataBatch, dataset_returns  # noqa: E402
from vlsafe.objectives import (  # noqa: E402
    Lagrangian,
    ReturnScale,
    expectile_loss,
    expectile_weight,
    lambda_return,
    vlsafe_weights,
    weighted_nll,
)
from vlsafe.online import MixedSource, SequenceReplay  # noqa: E402
from vlsafe.training import TrainingDiverged  # noqa: E402
from vlsafe.world_model import WM_PRESETS, WorldModel  # noqa: E402

TASK = "CarlaLeftTurn-v0"
MODELS = ("vlsafe", "dreamerv3", "fosp")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: one torch thread is faster, and much faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frames(n: int, seed: int = 0) -> np.ndarray:
    """Real BEV frames of the task, a few random steps apart."""
    import gymnasium as gym

    env = gym.make(TASK)
    env.action_space.seed(seed)
    out, (obs, _) = [], env.reset(seed=seed)
    for _ in range(n):
        out.append(obs)
        obs, *_ = env.step(env.action_space.sample())
    env.close()
    return np.stack(out)


# --- the formulas ---------------------------------------------------------------------------


def test_vlsafe_weights_reduce_to_each_branch_and_mix_as_computed_by_hand() -> None:
    adv_r = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    adv_c = torch.tensor([1.0, -0.5, 0.0, 3.0])
    ones, zeros = torch.ones(4), torch.zeros(4)
    # p = 1: pure reward-advantage weighting exp(beta_r A^r)
    w = vlsafe_weights(ones, adv_r, adv_c, beta_r=0.7, beta_c=2.0, clip=100.0)
    torch.testing.assert_close(w, torch.exp(0.7 * adv_r))
    # p = 0: pure cost-advantage weighting exp(-beta_c A^c)
    w = vlsafe_weights(zeros, adv_r, adv_c, beta_r=0.7, beta_c=2.0, clip=1e6)
    torch.testing.assert_close(w, torch.exp(-2.0 * adv_c))
    # a mixed case by hand: 0.25 e^(2 * 0.5) + 0.75 e^(-0.5 * -1) = 0.25 e + 0.75 e^0.5
    w = vlsafe_weights(torch.tensor(0.25), torch.tensor(0.5), torch.tensor(-1.0), 2.0, 0.5, 20.0)
    assert float(w) == pytest.approx(0.25 * math.e + 0.75 * math.exp(0.5), rel=1e-6)
    assert float(w) == pytest.approx(0.6795705 + 1.2365410, rel=1e-6)


def test_vlsafe_weights_clip_each_branch_without_overflow() -> None:
    w = vlsafe_weights(torch.tensor([1.0, 0.0, 0.5]), torch.tensor([10.0, 1e4, 1e4]),
                       torch.tensor([0.0, -1e4, 0.0]), beta_r=1.0, beta_c=1.0, clip=20.0)  # fmt: skip
    torch.testing.assert_close(w, torch.tensor([20.0, 20.0, 0.5 * 20.0 + 0.5 * 1.0]))
    assert torch.isfinite(w).all()
    with pytest.raises(ValueError, match="clip"):
        vlsafe_weights(torch.ones(1), torch.ones(1), torch.ones(1), 1.0, 1.0, clip=0.0)


def test_weighted_nll_is_self_normalised() -> None:
    logp = torch.tensor([-1.0, -2.0, -3.0])
    w = torch.tensor([1.0, 3.0, 0.0])
    expected = (1 * 1.0 + 3 * 2.0) / 4
    assert float(weighted_nll(logp, w)) == pytest.approx(expected)
    assert float(weighted_nll(logp, 10 * w)) == pytest.approx(expected)  # Z cancels the scale
    mask = torch.tensor([True, False, True])
    assert float(weighted_nll(logp, w, mask)) == pytest.approx(1.0)


@pytest.mark.parametrize(("p", "preferred"), [(1.0, 0), (0.0, 1)])
def test_weighted_likelihood_moves_the_actor_towards_the_branch_p_selects(
    p: float, preferred: int
) -> None:
    """One state, two recorded actions: action 0 earns more reward but also more cost.
    Fitting pi* = w pi_b / Z makes a safe state (p = 1) prefer action 0 and an unsafe one
    (p = 0) action 1, from a uniform start."""
    config = dataclasses.replace(VLSAFE_PRESETS["debug"].actor_critic, unimix=0.0)
    actor = Actor(feat_dim=4, action_mode="discrete", config=config)
    optimizer = torch.optim.Adam(actor.parameters(), lr=1e-2)
    feat = torch.ones(2, 4)  # the same state twice
    actions = torch.nn.functional.one_hot(torch.tensor([0, 1]), 15).float()
    adv_r, adv_c = torch.tensor([1.0, -1.0]), torch.tensor([1.0, -1.0])
    weights = vlsafe_weights(torch.full((2,), p), adv_r, adv_c, beta_r=1.0, beta_c=1.0, clip=20.0)
    for _ in range(200):
        optimizer.zero_grad()
        weighted_nll(actor(feat).log_prob(actions), weights).backward()
        optimizer.step()
    probs = actor(feat[:1]).probs.detach()[0]
    assert probs[preferred] > probs[1 - preferred]
    # the optimum of the weighted likelihood is pi* = w pi_b / Z: e^1 : e^-1 between the two
    ratio = float(probs[preferred] / probs[1 - preferred])
    assert ratio == pytest.approx(math.exp(2.0), rel=0.05)


def test_lambda_return_against_a_hand_computed_case() -> None:
    reward = torch.tensor([[1.0], [2.0], [3.0]])  # (T, N)
    cont = torch.tensor([[1.0], [1.0], [0.0]])  # the episode ends after step 2
    value = torch.tensor([[0.5], [1.0], [2.0], [4.0]])  # (T + 1, N)
    # R2 = 3 (terminal); R1 = 2 + 0.9 (0.5 * 2 + 0.5 * 3) = 4.25; R0 = 1 + 0.9 (0.5 + 2.125)
    ret = lambda_return(reward, cont, value, gamma=0.9, lam=0.5)
    torch.testing.assert_close(ret[:, 0], torch.tensor([3.3625, 4.25, 3.0]))
    one_step = lambda_return(reward, cont, value, gamma=0.9, lam=0.0)
    torch.testing.assert_close(one_step[:, 0], torch.tensor([1.9, 3.8, 3.0]))
    monte_carlo = lambda_return(reward, cont, value, gamma=0.9, lam=1.0)
    torch.testing.assert_close(monte_carlo[:, 0], torch.tensor([5.23, 4.7, 3.0]))
    cut = torch.tensor([[False], [True], [False]])  # s2 unknown: R1 = V(s1), R0 bootstraps
    torch.testing.assert_close(
        lambda_return(reward, cont, value, 0.9, 0.5, cut=cut)[:, 0], torch.tensor([1.9, 1.0, 3.0])
    )
    with pytest.raises(ValueError, match="T \\+ 1"):
        lambda_return(reward, cont, value[:-1], 0.9, 0.5)


def test_dataset_returns_respect_terminals_truncations_and_window_ends() -> None:
    # one window of 4 steps: step 1 ends its episode (terminal), step 2 starts a new one,
    # which is cut at the window's end
    data = DataBatch(
        actions=torch.zeros(1, 4, 15),
        rewards=torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
        costs=torch.zeros(1, 4),
        terminals=torch.tensor([[False, True, False, False]]),
        is_first=torch.tensor([[False, False, True, False]]),
        safety=None,
    )
    value = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    returns, valid = dataset_returns(data.rewards, value, data, gamma=0.5, lam=0.0)
    assert valid.tolist() == [[True, True, True, False]]
    torch.testing.assert_close(returns[0, :3], torch.tensor([1 + 0.5 * 20, 2.0, 3 + 0.5 * 40]))
    data = data._replace(terminals=torch.zeros(1, 4, dtype=torch.bool))  # a truncation instead
    _, valid = dataset_returns(data.rewards, value, data, gamma=0.5, lam=0.0)
    assert valid.tolist() == [[True, False, True, False]]


def test_expectile_loss_is_asymmetric() -> None:
    diff = torch.tensor([2.0, -2.0])
    torch.testing.assert_close(expectile_weight(diff, 0.8), torch.tensor([0.8, 0.2]))
    loss = expectile_loss(torch.zeros(2), diff, tau=0.8)  # under- vs over-prediction by 2
    torch.testing.assert_close(loss, torch.tensor([0.8 * 4, 0.2 * 4]))
    # the minimiser over a sample is an upper expectile for tau > 0.5, a lower one below
    targets = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    grid = torch.linspace(0, 10, 10_001)
    for tau, side in ((0.9, 1), (0.1, -1), (0.5, 0)):
        loss = expectile_loss(grid[:, None], targets[None], tau).mean(1)
        best = float(grid[loss.argmin()])
        assert np.sign(round(best - float(targets.mean()), 2)) == side, (tau, best)


def test_lagrange_multiplier_rises_above_the_limit_and_falls_below() -> None:
    lagrangian = Lagrangian(limit=1.0, multiplier_init=0.0, penalty_init=0.5)
    rising = [lagrangian.update(2.0)[0] for _ in range(5)]  # g = +1: lambda += mu
    assert rising[0] == pytest.approx(0.5) and rising[-1] == pytest.approx(2.5, rel=1e-3)
    assert all(b > a for a, b in zip(rising, rising[1:], strict=False))
    penalty = float(lagrangian.penalty)
    falling = [lagrangian.update(0.0)[0] for _ in range(8)]  # g = -1: lambda -= mu
    assert falling[0] == pytest.approx(2.0, rel=1e-3)
    assert all(b < a for a, b in zip(falling[:5], falling[1:5], strict=False))
    assert falling[-1] == 0.0  # never negative: while the constraint holds cost is free
    assert float(lagrangian.penalty) >= penalty  # mu never decreases
    _, psi = lagrangian.update(2.0)  # psi = lambda g + mu / 2 g^2 with lambda = 0, g = 1
    assert psi == pytest.approx(float(lagrangian.penalty) / 2, rel=1e-3)


def test_return_scale_tracks_the_percentile_range_and_never_shrinks_below_one() -> None:
    scale = ReturnScale(decay=0.5, low=5, high=95)
    returns = torch.linspace(0, 100, 1001)
    for _ in range(30):
        value = scale.update(returns)
    assert float(value) == pytest.approx(90.0, rel=1e-3)
    small = ReturnScale(decay=0.5, low=5, high=95)
    assert float(small.update(torch.full((10,), 0.3))) == 1.0


# --- module boundaries ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_actor_shapes_and_likelihoods(mode: str) -> None:
    config = VLSAFE_PRESETS["debug"].actor_critic
    actor = Actor(feat_dim=24, action_mode=mode, config=config)
    feat = torch.randn(7, 24)
    dist = actor(feat)
    width = 15 if mode == "discrete" else 2
    sample, mode_action = dist.sample(), dist.mode()
    assert sample.shape == mode_action.shape == (7, width)
    assert dist.log_prob(sample).shape == dist.entropy().shape == (7,)
    env_actions = actor.to_env(sample)
    if mode == "discrete":
        torch.testing.assert_close(sample.sum(-1), torch.ones(7))
        assert env_actions.dtype == np.int64
        assert env_actions.shape == (7,) and ((env_actions >= 0) & (env_actions < 15)).all()
        assert float(dist.probs.detach().min()) >= 0.01 / 15 - 1e-7  # unimix floor
    else:
        assert env_actions.shape == (7, 2) and env_actions.dtype == np.float32
        assert (np.abs(env_actions) <= 1).all()
        edge = torch.tensor([[1.0, -1.0]]).expand(7, 2)
        assert torch.isfinite(dist.log_prob(edge)).all()  # dataset actions on the box edge


def test_critic_starts_at_zero_and_its_slow_copy_follows() -> None:
    config = VLSAFE_PRESETS["debug"].actor_critic
    config = dataclasses.replace(config, slowreg=0.0, slow_fraction=0.5)
    critic = Critic(in_dim=10, config=config)
    x = torch.randn(5, 10)
    assert critic.value(x).shape == (5,)
    torch.testing.assert_close(critic.value(x), torch.zeros(5), atol=1e-6, rtol=0)
    optimizer = torch.optim.Adam(critic.net.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        critic.loss(x, torch.full((5,), 3.0)).backward()
        optimizer.step()
    fast, slow = critic.value(x), critic.value(x, slow=True)
    torch.testing.assert_close(slow, torch.zeros(5), atol=1e-6, rtol=0)  # never optimised
    critic.update_slow()
    assert 0 < float(critic.value(x, slow=True).mean()) < float(fast.mean())
    for _ in range(30):
        critic.update_slow()
    torch.testing.assert_close(critic.value(x, slow=True), fast, atol=1e-3, rtol=1e-3)
    assert float(fast.mean()) > 2.5  # it moved towards the target of 3


@pytest.fixture(scope="module")
def dataset(offline_dataset) -> Path:
    return offline_dataset(TASK)


@pytest.fixture(scope="module")
def batch(dataset: Path) -> Sequences:
    wm = WM_PRESETS["debug"]
    with OfflineDataset(dataset) as data:
        return data.sample_sequences(wm.batch_size, wm.seq_len, np.random.default_rng(0))


@pytest.mark.parametrize("name", MODELS)
def test_learner_update_shapes_and_no_gradient_into_the_world_model(
    name: str, batch: Sequences
) -> None:
    agent = make_agent(name, TASK, preset="debug")
    wm, learner = agent.wm, agent.learner
    wmc = agent.config.world_model
    agent.trainer.update(wm.make_batch(batch, "discrete"))
    post = agent.trainer.last_post
    wm.zero_grad(set_to_none=True)
    b, t = wmc.batch_size, wmc.seq_len
    assert post["deter"].shape == (b, t, wmc.deter)
    assert post["stoch"].shape == (b, t, wmc.stoch, wmc.classes)
    start = {k: v[:, 0] for k, v in post.items()}
    traj = imagine(wm, learner.actor, start, wmc.horizon)
    h = wmc.horizon
    assert traj.feat.shape == (h + 1, b, wm.feat_dim) and traj.action.shape == (h + 1, b, 15)
    assert traj.reward.shape == traj.cost.shape == traj.cont.shape == (h, b)
    assert traj.safety.shape == traj.weight.shape == (h + 1, b)
    assert (traj.weight[0] == 1).all() and (traj.weight[1:] <= traj.weight[:-1] + 1e-6).all()

    before_wm = {k: v.clone() for k, v in wm.state_dict().items()}
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    metrics = learner.update(wm, post, DataBatch.from_sequences(batch, "discrete", agent.device))
    assert metrics and all(math.isfinite(v) for v in metrics.values()), metrics
    for key, value in wm.state_dict().items():
        assert torch.equal(value, before_wm[key]), f"the learner changed the world model: {key}"
    assert all(p.grad is None for p in wm.parameters())
    changed = [k for k, v in learner.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("actor.") for k in changed) and len(changed) > 4


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_dreamerv3_offline_bc_pulls_the_actor_to_the_dataset_actions(
    scale: float, batch: Sequences
) -> None:
    """Offline DreamerV3's anchor: with ``bc_scale`` 1 the actor learns the dataset's action
    (here always action 3) on the dataset's states; plain DreamerV3 (0) has no such term and
    its REINFORCE update does not single that action out."""
    agent = make_agent("dreamerv3", TASK, preset="debug", config={"actor_critic.actor_lr": 1e-2})
    agent.trainer.update(agent.wm.make_batch(batch, "discrete"))
    post = agent.trainer.last_post
    data = DataBatch.from_sequences(batch, "discrete", agent.device)
    data = data._replace(
        actions=torch.zeros_like(data.actions).index_fill_(
            -1, torch.tensor([3], device=data.actions.device), 1
        )
    )
    agent.learner.bc_scale = scale
    for _ in range(30):
        metrics = agent.learner.update(agent.wm, post, data)
    assert ("actor_dataset_nll" in metrics) == bool(scale)
    p3 = float(agent.learner.actor(agent.wm.feat(post).detach()).probs[..., 3].mean().detach())
    assert p3 > 0.5 if scale else p3 < 0.3


def test_replay_windows_wrap_around_and_mark_episode_starts() -> None:
    replay = SequenceReplay(capacity=10, action_mode="discrete")
    obs = np.zeros((128, 128, 3), np.uint8)
    for i in range(14):  # episodes of 5 steps; the first 4 steps fall out of the buffer
        replay.add(obs + i, i % 15, float(i), 0.0, i % 5 == 4, False, i % 5 == 0)
    assert len(replay) == 10
    seqs = replay.sample_sequences(64, 10, np.random.default_rng(0))
    assert seqs.observations.shape == (64, 10, 128, 128, 3) and seqs.safety is None
    assert (seqs.rewards == np.arange(4, 14, dtype=np.float32)).all()  # oldest first
    assert seqs.is_first[0].tolist() == [True] + [i % 5 == 0 for i in range(5, 14)]
    with pytest.raises(ValueError, match="fewer than a window"):
        replay.sample_sequences(1, 11, np.random.default_rng(0))
    mixed = MixedSource(replay, replay, fraction=0.25).sample_sequences(
        8, 4, np.random.default_rng(0)
    )
    assert mixed.observations.shape[:2] == (8, 4) and mixed.actions.shape == (8, 4)


# --- configs --------------------------------------------------------------------------------


def test_configs_compose_world_model_presets_and_nested_overrides() -> None:
    for preset in ("debug", "small", "cpu", "paper"):
        config = make_agent("vlsafe", TASK, preset=preset, config={"device": "cpu"}).config
        assert dataclasses.replace(config.world_model, horizon=15) == dataclasses.replace(
            WM_PRESETS[preset], horizon=15
        )
    base = VLSAFE_PRESETS["debug"]
    dotted = compose_config(base, {"world_model.lr": 5e-4, "actor_critic.gamma": 0.9,
                                   "weighted_actor.beta_r": 2})  # fmt: skip
    nested = compose_config(base, {"world_model": {"lr": 5e-4}, "actor_critic": {"gamma": 0.9},
                                   "weighted_actor": {"beta_r": 2}})  # fmt: skip
    assert dotted == nested and dotted.world_model.lr == 5e-4
    assert dotted.weighted_actor.beta_r == 2 and dotted.weighted_actor.beta_c == 1.0
    assert compose_config(base, dataclasses.asdict(dotted)) == dotted  # agent.json round trip
    with pytest.raises(AgentError, match="unknown config field.*WorldModelConfig.*deter"):
        compose_config(base, {"world_model.detr": 8})
    with pytest.raises(AgentError, match="unknown config field.*weighted_actor"):
        compose_config(base, {"beta3": 1.0})
    with pytest.raises(AgentError, match="unknown config field 'beta3'.*nested configs"):
        compose_config(base, {"beta3.x": 1.0})
    with pytest.raises(AgentError, match="adv_norm must be 'std' or 'none'"):
        compose_config(base, {"weighted_actor.adv_norm": "mean"})


@pytest.mark.parametrize(
    ("presets", "old", "new"),
    [
        (VLSAFE_PRESETS, "beta1", "beta_r"),
        (VLSAFE_PRESETS, "beta2", "beta_c"),
        (FOSP_PRESETS, "beta_r", "beta_r"),
        (FOSP_PRESETS, "beta_c", "beta_c"),
        (VLSAFE_PRESETS, "imag_actor_scale", "imag_actor_scale"),
        (FOSP_PRESETS, "weight_clip", "weight_clip"),
    ],
)
def test_renamed_config_keys_are_read_with_a_deprecation_warning(
    presets: dict, old: str, new: str
) -> None:
    base = presets["debug"]
    with pytest.warns(FutureWarning, match=f"'{old}' -> 'weighted_actor.{new}'"):
        config = compose_config(base, {old: 0.5})
    assert getattr(config.weighted_actor, new) == 0.5
    assert config == compose_config(base, {f"weighted_actor.{new}": 0.5})
    with pytest.warns(FutureWarning):  # the same value under both names is fine
        assert compose_config(base, {old: 0.5, f"weighted_actor.{new}": 0.5}) == config
    with pytest.raises(AgentError, match="keep only"):
        compose_config(base, {old: 0.5, "weighted_actor": {new: 2.0}})
    for config_class in (type(VLSAFE_PRESETS["debug"]), type(FOSP_PRESETS["debug"])):
        fields = {f.name for f in dataclasses.fields(config_class)}
        assert not set(config_class.RENAMED_KEYS) & fields  # old names are no fields
    with pytest.raises(AgentError, match="seq_len must be >= 2"):
        compose_config(base, {"world_model": {"seq_len": 1}})


# --- bad datasets ---------------------------------------------------------------------------


def test_dataset_without_costs_or_with_nan_costs_is_refused(dataset: Path, tmp_path: Path) -> None:
    missing, nan = tmp_path / "nocost.h5", tmp_path / "nancost.h5"
    shutil.copy(dataset, missing)
    shutil.copy(dataset, nan)
    with h5py.File(missing, "r+") as file:
        del file["costs"]
    with h5py.File(nan, "r+") as file:
        file["costs"][:5] = np.nan
    for name in MODELS:
        agent = make_agent(name, TASK, preset="debug")
        with pytest.raises(AgentError, match="no costs column.*benchmarks collect"):
            agent.fit(missing, progress=False)
        with pytest.raises(AgentError, match="5 non-finite costs"):
            agent.fit(nan, progress=False)


def test_windows_longer_than_the_episodes_are_refused(dataset: Path) -> None:
    agent = make_agent("fosp", TASK, preset="debug", config={"world_model.seq_len": 5000})
    with pytest.raises(AgentError, match="world_model.seq_len = 5000.*shorter"):
        agent.fit(dataset, progress=False)


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each agent trained with the debug preset (dreamerv3 online) and saved."""
    out = {}
    for name in MODELS:
        root = tmp_path_factory.mktemp(name)
        agent = make_agent(name, TASK, preset="debug", seed=1)
        summary = agent.fit(None if name == "dreamerv3" else dataset, log_dir=root / "logs",
                            progress=False)  # fmt: skip
        agent.save(root / "model")
        out[name] = (agent, summary, root)
    return out


@pytest.mark.parametrize("name", MODELS)
def test_debug_train_logs_and_evaluates(name: str, trained: dict) -> None:
    agent, summary, root = trained[name]
    config = agent.config
    if name == "dreamerv3":  # online: prefill, then train_ratio replayed steps per env step
        assert summary["env_steps"] == config.env_steps
        wmc = config.world_model
        # training starts once the prefill is in the replay (that step included)
        replayed = (config.env_steps - config.prefill + 1) * config.train_ratio
        assert summary["updates"] == int(replayed / (wmc.batch_size * wmc.seq_len))
        assert agent.learner.bc_scale == 0.0  # online: no dataset to clone
    else:
        assert summary["updates"] == config.updates and summary["env_steps"] == 0
    with (root / "logs" / "train.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert rows and int(rows[-1]["update"]) == summary["updates"]
    columns = set(rows[-1])
    assert {"wm/image", "wm/reward", "wm/cost", "behavior/actor_loss"} <= columns
    assert {"behavior/critic_loss", "behavior/actor_entropy"} <= columns
    if name == "dreamerv3":
        assert {"env/return", "env/cost"} <= columns
    if name == "fosp":
        assert {"behavior/lagrange_multiplier", "behavior/feasible_dataset"} <= columns
    if name == "vlsafe":
        assert {"behavior/weight_dataset_mean", "behavior/safety_imag_mean"} <= columns
    assert all(math.isfinite(float(v)) for k, v in rows[-1].items() if v != "")
    # the periodic checkpoint is a complete agent directory
    assert isinstance(load_agent(root / "logs" / "checkpoint"), type(agent))
    metrics = aggregate(evaluate_agent(load_agent(root / "model"), episodes=1, seed=3))
    assert set(METRIC_NAMES) <= set(metrics)
    assert all(math.isfinite(metrics[key]) for key in METRIC_NAMES)


@pytest.mark.parametrize("name", MODELS)
def test_save_load_gives_identical_actions_over_an_episode(name: str, trained: dict) -> None:
    agent, _, root = trained[name]
    loaded = load_agent(root / "model")
    assert loaded.config == agent.config and loaded.updates_done == agent.updates_done
    obs = frames(6, seed=2)
    state_a = state_b = None
    for t in range(len(obs)):  # recurrent state carried over several steps, batch of 2
        batch = np.stack([obs[t], obs[-1 - t]])
        start = np.array([t == 0, t in (0, 3)])
        a, state_a = agent.act(batch, state_a, start, deterministic=True)
        b, state_b = loaded.act(batch, state_b, start, deterministic=True)
        np.testing.assert_array_equal(a, b)
    # a reset through episode_start equals a fresh state
    again, _ = agent.act(obs[:2], None, np.ones(2, bool))
    reset, _ = agent.act(obs[:2], state_a, np.ones(2, bool))
    np.testing.assert_array_equal(again, reset)
    with pytest.raises(ValueError, match="uint8"):
        agent.act(obs.astype(np.float32))


#: a weighting with no default value, so that a wrong old -> new mapping shows
WEIGHTING = {"beta_r": 0.7, "beta_c": 1.3, "weight_clip": 15.0, "adv_norm": "none",
             "adv_std_min": 0.2, "dataset_actor_scale": 0.9, "imag_actor_scale": 0.4}  # fmt: skip
#: the names those fields had, flat in the agent's config, before WeightedActorConfig
OLD_NAMES = {
    "vlsafe": {"beta_r": "beta1", "beta_c": "beta2"},
    "fosp": {"beta_r": "beta_r", "beta_c": "beta_c"},
}


def to_old_keys(name: str, config: dict) -> dict:
    """A saved config as the agents wrote it before the weighted actor was nested."""
    old = {k: v for k, v in config.items() if k != "weighted_actor"}
    for field, value in config["weighted_actor"].items():
        old[OLD_NAMES[name].get(field, field)] = value
    return old


@pytest.mark.parametrize("name", ["vlsafe", "fosp"])
def test_a_model_directory_in_the_old_config_format_loads_and_acts_the_same(
    name: str, tmp_path: Path
) -> None:
    agent = make_agent(name, TASK, preset="debug", seed=3, config={"weighted_actor": WEIGHTING})
    root = agent.save(tmp_path / "old")
    meta = json.loads((root / "agent.json").read_text())
    meta["config"] = to_old_keys(name, meta["config"])
    assert "weighted_actor" not in meta["config"] and "imag_actor_scale" in meta["config"]
    (root / "agent.json").write_text(json.dumps(meta))
    payload = torch.load(root / "behavior.pt", weights_only=True)
    payload["config"] = to_old_keys(name, payload["config"])
    torch.save(payload, root / "behavior.pt")

    first = "'beta1' -> 'weighted_actor.beta_r'" if name == "vlsafe" else "'beta_r' -> "
    with pytest.warns(FutureWarning, match=first) as caught:
        loaded = load_agent(root)
    assert len([w for w in caught if w.category is FutureWarning]) == 1
    assert "'imag_actor_scale' -> 'weighted_actor.imag_actor_scale'" in str(caught[0].message)
    assert loaded.config == agent.config and asdict(loaded.config.weighted_actor) == WEIGHTING
    obs = frames(4, seed=5)
    state_a = state_b = None
    for t in range(3):
        a, state_a = agent.act(obs[t : t + 2], state_a, None, deterministic=True)
        b, state_b = loaded.act(obs[t : t + 2], state_b, None, deterministic=True)
        np.testing.assert_array_equal(a, b)
    # saving again writes the new keys, which load without a warning
    loaded.save(root)
    assert json.loads((root / "agent.json").read_text())["config"]["weighted_actor"] == WEIGHTING
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert load_agent(root).config == agent.config


def test_checkpoint_of_another_model_or_config_is_refused(trained: dict, tmp_path: Path) -> None:
    _, _, vlsafe_root = trained["vlsafe"]
    _, _, fosp_root = trained["fosp"]
    mixed = tmp_path / "mixed"
    shutil.copytree(vlsafe_root / "model", mixed)
    shutil.copy(fosp_root / "model" / "behavior.pt", mixed / "behavior.pt")
    with pytest.raises(AgentError, match="actor-critic of a 'fosp' agent, not 'vlsafe'"):
        load_agent(mixed)
    edited = tmp_path / "edited"
    shutil.copytree(vlsafe_root / "model", edited)
    meta = json.loads((edited / "agent.json").read_text())
    meta["config"]["weighted_actor"]["beta_r"] = 5.0
    (edited / "agent.json").write_text(json.dumps(meta))
    with pytest.raises(AgentError, match="another config.*weighted_actor.beta_r"):
        load_agent(edited)
    meta["config"]["weighted_actor"]["beta_r"] = VLSAFE_PRESETS["debug"].weighted_actor.beta_r
    meta["config"]["world_model"]["deter"] = 64
    (edited / "agent.json").write_text(json.dumps(meta))
    with pytest.raises(AgentError, match="another config.*world_model.deter"):
        load_agent(edited)
    (mixed / "behavior.pt").unlink()
    with pytest.raises(AgentError, match="lacks behavior.pt"):
        load_agent(mixed)


def test_dreamerv3_offline_option_and_fosp_online_fine_tuning(
    dataset: Path, tmp_path: Path
) -> None:
    dreamer = make_agent("dreamerv3", TASK, preset="debug", config={"updates": 3})
    summary = dreamer.fit(dataset, progress=False)
    assert summary["updates"] == 3 and summary["env_steps"] == 0
    assert dreamer.learner.bc_scale == dreamer.config.offline_bc == 1.0  # the offline anchor
    fosp = make_agent("fosp", TASK, preset="debug", config={"updates": 2, "online_steps": 30})
    summary = fosp.fit(dataset, log_dir=tmp_path, progress=False)
    assert summary["env_steps"] == 30 and summary["updates"] > 2
    with (tmp_path / "train.csv").open() as file:
        assert "env/return" in next(csv.DictReader(file))


# --- non-finite losses ----------------------------------------------------------------------


def test_nan_world_model_loss_stops_with_the_last_good_checkpoint(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = make_agent("vlsafe", TASK, preset="debug",
                       config={"updates": 10, "checkpoint_every": 3, "log_every": 1})  # fmt: skip
    loss_terms, calls = WorldModel.loss_terms, []

    def poisoned(self, batch):
        terms, post = loss_terms(self, batch)
        calls.append(1)
        if len(calls) == 8:
            terms["reward"] = terms["reward"] * float("nan")
        return terms, post

    monkeypatch.setattr(WorldModel, "loss_terms", poisoned)
    with pytest.raises(TrainingDiverged, match=r"update 8: world-model loss term 'reward' is nan"):
        agent.fit(dataset, log_dir=tmp_path, progress=False)
    assert agent.updates_done == 6  # reset to the checkpoint of update 6
    checkpoint = load_agent(tmp_path / "checkpoint")
    assert checkpoint.updates_done == 6
    for module, other in ((agent.wm, checkpoint.wm), (agent.learner, checkpoint.learner)):
        for (key, value), (_, saved) in zip(module.state_dict().items(),
                                            other.state_dict().items(), strict=True):  # fmt: skip
            assert torch.isfinite(value).all() and torch.equal(value, saved), key
    obs = frames(2)
    a, _ = agent.act(obs)
    b, _ = checkpoint.act(obs)
    np.testing.assert_array_equal(a, b)


def test_nan_behaviour_loss_is_reported_by_name(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nan_returns(*args, **kwargs):
        return objectives.lambda_return(*args, **kwargs) * float("nan")

    monkeypatch.setattr(learners, "lambda_return", nan_returns)
    agent = make_agent("fosp", TASK, preset="debug")
    with pytest.raises(TrainingDiverged, match="update 1: the Q/V critic loss is nan.*reset to"):
        agent.fit(dataset, progress=False)
    assert agent.updates_done == 0
    assert all(torch.isfinite(v).all() for v in agent.learner.state_dict().values())


# --- command line ---------------------------------------------------------------------------


def test_train_and_evaluate_commands(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "vlsafe"
    argv = ["train", "--model", "vlsafe", "--task", TASK, "--preset", "debug", "--dataset",
            str(dataset), "--out", str(out), "--no-progress", "--json"]  # fmt: skip
    assert main([*argv, "--config", "updates=3", "--config", "world_model.seq_len=6"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["updates"] == 3 and (out / "world_model.pt").is_file()
    assert load_agent(out).config.world_model.seq_len == 6
    evaluate = ["evaluate", "--model-dir", str(out), "--episodes", "1", "--no-progress", "--json"]
    assert main(evaluate) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 1
    assert main([*argv, "--config", "world_model.detr=3"]) == 2
    assert "unknown config field" in capsys.readouterr().err
