"""What is specific to the d3rlpy agents (``baselines.offline``); the behaviour every model
shares (fit, act, save/load, evaluation) is in ``test_agents.py``."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("d3rlpy")
torch = pytest.importorskip("torch")

import carla_safe_envs  # noqa: E402
from baselines.d3rlpy_data import dataset_statistics, mdp_dataset, replay_buffer  # noqa: E402
from baselines.offline import (  # noqa: E402
    MODEL_FILE,
    BCAgent,
    CQLAgent,
    D3rlpyAgent,
    IQLAgent,
)
from carla_safe_envs.agents import PRESET_NAMES, AgentError, load_agent, make_agent  # noqa: E402
from carla_safe_envs.bev import stack_frames  # noqa: E402
from carla_safe_envs.datasets import OfflineDataset  # noqa: E402
from carla_safe_envs.env import discrete_to_continuous  # noqa: E402

TASK = "CarlaLeftTurn-v0"
AGENT_CLASSES: tuple[type[D3rlpyAgent], ...] = (BCAgent, CQLAgent, IQLAgent)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tiny debug networks gain nothing from more, and on a busy
    2-core machine two threads per process slow everything down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def discrete_data(offline_dataset) -> Path:
    return offline_dataset(TASK, "discrete")


@pytest.fixture(scope="module")
def iql_on_discrete(discrete_data: Path) -> tuple[IQLAgent, dict]:
    """An IQL agent (one frame, so that its input is the transposed observation itself)
    trained on the discrete dataset; its summary."""
    torch.set_num_threads(1)
    agent = make_agent("iql", TASK, preset="debug", config={"frame_stack": 1})
    summary = agent.fit(discrete_data, progress=False)
    return agent, summary


def bev_batch(n: int, seed: int = 0) -> np.ndarray:
    """(n, 128, 128, 3) uint8 frames of the task, a few random steps apart."""
    env = gym.make(TASK)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    frames = []
    for _ in range(n):
        frames.append(obs)
        for _ in range(3):
            obs, *_ = env.step(env.action_space.sample())
    env.close()
    return np.stack(frames)


# ---------------------------------------------------------------- the d3rlpy data
@pytest.mark.parametrize("size", [128, 64])
def test_mdp_dataset_round_trip(discrete_data: Path, size: int) -> None:
    import d3rlpy

    with OfflineDataset(discrete_data) as data:
        if size != 128:
            data.load_frames(size)
        mdp, costs = mdp_dataset(data)
        assert np.array_equal(costs, data.costs)
        assert mdp.size() == data.n_episodes
        ends = data.episode_bounds()[:, 1] - 1
        terminated = data.terminals[ends].sum()
        assert mdp.transition_count == data.n_steps - (data.n_episodes - terminated)
        first = mdp.episodes[0].observations
        assert first.shape[1:] == (3, size, size) and first.dtype == np.uint8
        np.testing.assert_array_equal(first[:3], data.frames([0, 1, 2]).transpose(0, 3, 1, 2))
    bc = d3rlpy.algos.DiscreteBCConfig(batch_size=4).create(device="cpu:0")
    logger = d3rlpy.logging.NoopAdapterFactory()  # no d3rlpy_logs/ in the working tree
    bc.fit(mdp, n_steps=2, n_steps_per_epoch=2, show_progress=False, logger_adapter=logger)


def test_a_step_both_terminal_and_at_the_time_limit_is_a_terminal(
    discrete_data: Path, tmp_path: Path
) -> None:
    """Gymnasium lets the 500th step terminate (a collision) and truncate at once; d3rlpy
    refuses both flags on one step, so the conversion keeps it as the terminal it is."""
    import shutil

    import h5py

    copy = tmp_path / "both.h5"
    shutil.copy(discrete_data, copy)
    with OfflineDataset(copy) as data:
        timeouts = np.flatnonzero(data.timeouts)
    assert timeouts.size, "the fixture needs an episode that ends at the time limit"
    with h5py.File(copy, "r+") as file:
        terminals = file["terminals"][...]
        terminals[timeouts[0]] = True
        file["terminals"][...] = terminals
    with OfflineDataset(copy) as data:
        assert data.terminals[timeouts[0]] and data.timeouts[timeouts[0]]
        mdp, _ = mdp_dataset(data)
        terminated = int(data.terminals.sum())
        assert mdp.size() == data.n_episodes
    assert sum(bool(episode.terminated) for episode in mdp.episodes) == terminated


# ---------------------------------------------------------------- discrete -> continuous
@pytest.mark.parametrize("task", carla_safe_envs.TASK_IDS)
def test_discrete_actions_map_to_the_same_control(task: str) -> None:
    discrete = gym.make(task, render_observation=False).unwrapped
    continuous = gym.make(task, action_mode="continuous", render_observation=False).unwrapped
    n = discrete.action_space.n
    mapped = discrete_to_continuous(task, np.arange(n))
    assert mapped.shape == (n, 2) and mapped.dtype == np.float32
    assert continuous.action_space.contains(mapped[0]) and (np.abs(mapped) <= 1).all()
    for i in range(n):
        expected = discrete.action_to_control(i)
        got = continuous.action_to_control(mapped[i])
        for name in ("throttle", "brake", "steer"):
            assert getattr(got, name) == pytest.approx(getattr(expected, name), abs=1e-6)
    assert len({tuple(row) for row in mapped.tolist()}) == n  # one value per action
    with pytest.raises(ValueError, match=r"integers in \[0, 15\)"):
        discrete_to_continuous(task, [n])
    with pytest.raises(ValueError, match="integers"):
        discrete_to_continuous(task, [-1])


def test_iql_trains_on_a_discrete_dataset_through_the_mapping(
    discrete_data: Path, iql_on_discrete: tuple[IQLAgent, dict]
) -> None:
    with OfflineDataset(discrete_data) as data:
        buffer = replay_buffer(data, action_mode="continuous", frame_stack=1, task_id=TASK)
        actions = np.concatenate([e.actions for e in buffer.episodes])
        np.testing.assert_array_equal(actions, discrete_to_continuous(TASK, data.actions))
        assert buffer.dataset_info.action_size == 2
        same = replay_buffer(data, action_mode="discrete", frame_stack=1, task_id=TASK)
        assert same.dataset_info.action_size == 15
    _, summary = iql_on_discrete
    assert summary["actions_mapped_from"] == "discrete"
    assert set(summary["losses"]) == {"critic_loss", "q_loss", "v_loss", "actor_loss"}


def test_bc_refuses_a_continuous_dataset(offline_dataset) -> None:
    path = offline_dataset(TASK, "continuous")
    with pytest.raises(AgentError, match="continuous actions but bc needs discrete"):
        make_agent("bc", TASK, preset="debug").fit(path, progress=False)
    with OfflineDataset(path) as data, pytest.raises(AgentError, match="not discrete ones"):
        replay_buffer(data, action_mode="discrete", frame_stack=1, task_id=TASK)


# ------------------------------------------------------------------------ observations
def test_act_transposes_like_d3rlpy_on_channel_first_input(
    iql_on_discrete: tuple[IQLAgent, dict],
) -> None:
    agent, _ = iql_on_discrete
    obs = bev_batch(3)
    chw = np.ascontiguousarray(obs.transpose(0, 3, 1, 2))  # what d3rlpy trained on
    actions, state = agent.act(obs)
    assert state is None  # one frame: nothing to carry
    np.testing.assert_array_equal(actions, np.clip(agent.algo.predict(chw), -1, 1))
    # the test can tell layouts apart: a reshape is not a transpose
    wrong = agent.algo.predict(np.ascontiguousarray(obs.reshape(chw.shape)))
    assert not np.allclose(actions, wrong)
    with pytest.raises(ValueError, match=r"\(B, 128, 128, 3\) uint8"):
        agent.act(chw)


def test_frame_stack_matches_the_training_transitions() -> None:
    """Acting step by step builds the same stacks as d3rlpy's FrameStackTransitionPicker
    (zeros before an episode's first frame), and episode_start resets one row only."""
    from d3rlpy.dataset import Episode, FrameStackTransitionPicker

    k, length = 3, 5
    rng = np.random.default_rng(0)
    frames = rng.integers(1, 256, size=(2, length, 3, 8, 8), dtype=np.uint8)  # (B, T, C, H, W)
    picker = FrameStackTransitionPicker(k)
    episodes = [
        Episode(
            observations=frames[b],
            actions=np.zeros((length, 1), np.int64),
            rewards=np.zeros((length, 1), np.float32),
            terminated=True,  # every step is a transition (the last one too)
        )
        for b in range(2)
    ]
    state = None
    for t in range(length):
        x, state = stack_frames(frames[:, t], state, np.full(2, t == 0), k)
        assert x.shape == (2, 3 * k, 8, 8) and x is state
        for b in range(2):
            np.testing.assert_array_equal(x[b], picker(episodes[b], t).observation)
    x, _ = stack_frames(frames[:, 0], state, np.array([True, False]), k)
    np.testing.assert_array_equal(x[0], picker(episodes[0], 0).observation)  # reset
    np.testing.assert_array_equal(
        x[1, : 3 * (k - 1)], frames[1, length - k + 1 :].reshape(-1, 8, 8)
    )
    x, state = stack_frames(frames[:, 0], None, None, 1)
    assert state is None and np.array_equal(x, frames[:, 0])


def test_stochastic_actions(iql_on_discrete: tuple[IQLAgent, dict]) -> None:
    agent, _ = iql_on_discrete
    obs = bev_batch(4, seed=1)
    greedy, _ = agent.act(obs, deterministic=True)
    sampled, _ = agent.act(obs, deterministic=False)
    assert sampled.dtype == np.float32 and sampled.shape == (4, 2)
    assert (np.abs(sampled) <= 1).all()
    assert not np.allclose(sampled, greedy)  # IQL samples its Gaussian


# --------------------------------------------------------------- training log, storage
def test_training_log_summary_and_storage(
    discrete_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    data_copy = tmp_path / "data.h5"
    shutil.copy(discrete_data, data_copy)
    agent = make_agent("bc", TASK, preset="debug")
    summary = agent.fit(data_copy, log_dir=tmp_path / "logs", progress=False)
    assert capsys.readouterr().out == ""  # d3rlpy's messages go to logging, not stdout
    assert list(cwd.iterdir()) == []  # no ./d3rlpy_logs
    config = agent.config
    epochs = config.n_steps // config.n_steps_per_epoch
    assert (summary["steps"], summary["epochs"]) == (config.n_steps, epochs)
    assert summary["updates_per_second"] > 0
    assert set(summary["losses"]) == {"loss", "imitation_loss", "regularization_loss"}
    logs = tmp_path / "logs" / "bc"
    assert (logs / "params.json").is_file()
    for key, final in summary["losses"].items():
        rows = list(csv.reader((logs / f"{key}.csv").open()))
        assert [(int(e), int(s)) for e, s, _ in rows] == [
            (e, e * config.n_steps_per_epoch) for e in range(1, epochs + 1)
        ]
        assert float(rows[-1][2]) == pytest.approx(final)
    with OfflineDataset(data_copy) as data:
        starts = data.episode_bounds()[:, 0]
        costs = [data.costs[a:b].sum() for a, b in data.episode_bounds()]
        assert summary["dataset_episodes"] == len(starts)
        assert summary["dataset_mean_episode_cost"] == pytest.approx(np.mean(costs), abs=1e-3)
        assert summary == {**summary, **dataset_statistics(data)}

    agent.save(tmp_path / "model")
    data_copy.unlink()  # loading needs the model file only
    loaded = load_agent(tmp_path / "model")
    assert (tmp_path / "model" / MODEL_FILE).is_file() and loaded.config == agent.config
    obs = bev_batch(2)
    a1, s1 = agent.act(obs)
    a2, s2 = loaded.act(obs)
    np.testing.assert_array_equal(a1, a2)
    assert a1.dtype == np.int64 and s1.shape == (2, 3 * config.frame_stack, 128, 128)
    # d3rlpy's discrete BC samples greedily: the same actions in both modes (documented)
    np.testing.assert_array_equal(agent.act(obs, deterministic=False)[0], a1)

    fresh = make_agent("bc", TASK, preset="debug")
    with pytest.raises(AgentError, match="no model yet"):
        fresh.act(obs)
    with pytest.raises(AgentError, match="no model to save"):
        fresh.save(tmp_path / "untrained")


def test_no_log_dir_writes_nothing(
    discrete_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    agent = make_agent("cql", TASK, preset="debug", config={"n_steps": 4, "n_steps_per_epoch": 2})
    summary = agent.fit(discrete_data, progress=False)
    assert set(summary["losses"]) == {"loss", "td_loss", "conservative_loss"}
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("cls", AGENT_CLASSES, ids=lambda c: c.name)
def test_presets_build_their_d3rlpy_algorithm(cls: type[D3rlpyAgent]) -> None:
    assert tuple(cls.presets) == PRESET_NAMES
    params = {}
    for name, config in cls.presets.items():
        algo = dataclasses.replace(config, device="cpu").d3rlpy_config().create(device="cpu:0")
        action_size = 15 if cls.name != "iql" else 2
        size = config.image_size
        algo.create_impl((3 * config.frame_stack, size, size), action_size)
        params[name] = sum(
            p.numel()
            for m in algo.impl.modules.get_torch_modules().values()
            for p in m.parameters()
        )
        assert config.n_steps % config.n_steps_per_epoch == 0
    assert params["debug"] < params["small"] < params["paper"]
    assert params["debug"] < params["cpu"] < params["paper"]
    assert params["debug"] < 100_000  # tiny: a debug fit takes seconds
    assert cls.presets["cpu"].image_size == 64 and cls.presets["paper"].image_size == 128


def test_config_validation_and_json_round_trip() -> None:
    with pytest.raises(AgentError, match="multiple of n_steps_per_epoch"):
        make_agent("bc", TASK, preset="debug", config={"n_steps": 15})
    with pytest.raises(AgentError, match="do not fit a 128 px image"):
        make_agent("bc", TASK, preset="debug", config={"encoder_filters": [[8, 64, 64]] * 2})
    with pytest.raises(AgentError, match="do not fit a 32 px image"):
        make_agent(
            "bc", TASK, preset="debug", config={"image_size": 32, "encoder_filters": [[8, 40, 1]]}
        )
    with pytest.raises(AgentError, match="image_size must divide"):
        make_agent("bc", TASK, preset="debug", config={"image_size": 48})
    with pytest.raises(AgentError, match="frame_stack must be >= 1"):
        make_agent("cql", TASK, preset="debug", config={"frame_stack": 0})
    with pytest.raises(AgentError, match="device must be auto, cpu or cuda"):
        make_agent("iql", TASK, preset="debug", config={"device": "tpu"})
    agent = make_agent("bc", TASK, preset="debug", config={"encoder_filters": [[4, 8, 8]]})
    assert agent.config.encoder_filters == ((4, 8, 8),)  # JSON lists become tuples
    meta = agent.metadata()["config"]
    assert make_agent("bc", TASK, preset="debug", config=meta).config == agent.config


@pytest.mark.parametrize("cls", AGENT_CLASSES)
def test_acc_balance_is_a_field_of_every_offline_config(cls: type[D3rlpyAgent]) -> None:
    """One field on the shared config: BC's ``cpu`` preset rebalances, every other preset
    samples uniformly, and a negative power is refused."""
    for preset, config in cls.presets.items():
        assert config.acc_balance == (1.0 if (cls.name, preset) == ("bc", "cpu") else 0.0)
    with pytest.raises(AgentError, match="acc_balance must be >= 0"):
        make_agent(cls.name, TASK, preset="debug", config={"acc_balance": -1.0})


def test_acc_balance_samples_the_three_accelerations_evenly(discrete_data: Path) -> None:
    with OfflineDataset(discrete_data) as data:
        acc = data.actions.astype(int) // 5
        plain = replay_buffer(data, action_mode="discrete", frame_stack=2, task_id=TASK)
        balanced = replay_buffer(
            data, action_mode="discrete", frame_stack=2, task_id=TASK, acc_balance=1.0
        )
        with pytest.raises(AgentError, match="holds continuous ones: pass acc_balance 0"):
            replay_buffer(
                data, action_mode="continuous", frame_stack=1, task_id=TASK, acc_balance=1
            )
    assert np.bincount(acc, minlength=3).min() < 0.2 * len(acc)  # the data is unbalanced
    np.random.seed(0)
    batch = balanced.sample_transition_batch(3_000)
    shares = np.bincount(batch.actions.reshape(-1).astype(int) // 5, minlength=3) / 3_000
    np.testing.assert_allclose(shares, 1 / 3, atol=0.04)
    assert batch.observations.shape == (3_000, 6, 128, 128)  # frames still stacked
    np.random.seed(0)
    shares = np.bincount(plain.sample_transition_batch(3_000).actions.reshape(-1).astype(int) // 5)
    assert shares.min() / 3_000 < 0.2


def test_importing_the_baselines_prints_no_legacy_gym_notice():
    """d3rlpy and SB3's shim import the legacy gym, which would print its notice on stderr."""
    import subprocess
    import sys

    code = "import baselines.offline, baselines.sb3, d3rlpy, stable_baselines3, gym"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "unmaintained" not in done.stderr, done.stderr
