"""The shared agent tester: every registered model goes through the same checks.

For each model of :data:`carla_safe_envs.agents.AGENTS` (the nine of the comparison table and the
expert): a ``debug`` fit (online in the env, or offline from a small labeled dataset), ``act``
on a batch returns valid actions of the right shape, save/load gives identical deterministic
actions, and an evaluation through the one loop returns every metric.  Then the bad inputs of
the protocol: wrong dataset, wrong mode, unknown names, a directory of another model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import main
from benchmarks.train import evaluate_agent
from carla_safe_envs.agents import (
    AGENTS,
    PRESET_NAMES,
    TABLE_MODELS,
    AgentError,
    BaseAgent,
    get_spec,
    load_agent,
    make_agent,
    read_metadata,
    source_commit,
    versions,
)
from carla_safe_envs.metrics import METRIC_NAMES, aggregate

TASK = "CarlaLeftTurn-v0"
BATCH = 4


def agent_class(name: str) -> type[BaseAgent]:
    """The implementation of ``name``; skipped only when a third-party optional dependency
    is missing (a registered model without its implementation fails)."""
    try:
        return get_spec(name).load_class()
    except AgentError as exc:
        if "is not installed" not in str(exc):
            raise
        pytest.skip(str(exc))


def dataset_for(name: str, offline_dataset) -> Path | None:
    spec = get_spec(name)
    if spec.training != "offline":
        return None
    return offline_dataset(TASK, spec.action_mode)


def observations(n: int, seed: int = 0) -> np.ndarray:
    """A batch of real BEV frames from the task (a few random steps in)."""
    import gymnasium as gym

    env = gym.make(TASK)
    env.action_space.seed(seed)
    frames = []
    obs, _ = env.reset(seed=seed)
    for _ in range(n):
        frames.append(obs)
        obs, *_ = env.step(env.action_space.sample())
    env.close()
    return np.stack(frames)


def check_actions(actions: np.ndarray, mode: str, n: int) -> None:
    actions = np.asarray(actions)
    if mode == "discrete":
        assert actions.shape == (n,) and np.issubdtype(actions.dtype, np.integer)
        assert ((actions >= 0) & (actions < 15)).all()
    else:
        assert actions.shape == (n, 2) and actions.dtype == np.float32
        assert (np.abs(actions) <= 1.0).all()


def test_registry_holds_the_table_models_the_osrl_extras_and_the_expert() -> None:
    from carla_safe_envs.agent_registry import OSRL_MODELS

    assert set(TABLE_MODELS) | set(OSRL_MODELS) | {"expert"} == set(AGENTS)
    assert not set(OSRL_MODELS) & set(TABLE_MODELS)
    assert all("not in paper" in get_spec(name).label for name in OSRL_MODELS)
    labels = [get_spec(name).label for name in TABLE_MODELS]
    assert labels == ["PPO", "SAC", "DQN", "BC", "CQL", "IQL", "DreamerV3", "FSOP", "VL-SAFE"]


def test_the_old_import_paths_are_the_seam_itself() -> None:
    """``baselines.agent`` and ``baselines`` re-export :mod:`carla_safe_envs.agents`: the
    same objects, one registry."""
    import baselines
    import baselines.agent
    import carla_safe_envs.agents as seam

    for name in seam.__all__:
        assert getattr(baselines.agent, name) is getattr(seam, name), name
    assert baselines.make_agent is make_agent and baselines.load_agent is load_agent
    assert baselines.AGENTS is AGENTS is seam.AGENTS


@pytest.mark.parametrize("name", list(AGENTS))
def test_presets_and_names(name: str) -> None:
    cls = agent_class(name)
    assert cls.name == name
    assert tuple(cls.presets) == PRESET_NAMES == ("debug", "small", "cpu", "paper")
    for preset in cls.presets.values():
        assert dataclasses.is_dataclass(preset)
        with pytest.raises(dataclasses.FrozenInstanceError):
            preset.__setattr__(dataclasses.fields(preset)[0].name, None)


@pytest.mark.parametrize("name", list(AGENTS))
def test_fit_act_save_load_evaluate(name: str, tmp_path: Path, offline_dataset) -> None:
    agent_class(name)
    spec = get_spec(name)
    agent = make_agent(name, TASK, preset="debug", seed=0)
    calls: list[tuple[int, int, str]] = []
    obs = observations(BATCH)

    def hook(done: int, total: int, unit: str) -> None:  # the agent can act mid-training
        calls.append((done, total, unit))
        check_actions(agent.act(obs, None, None, deterministic=True)[0], spec.action_mode, BATCH)

    summary = agent.fit(
        dataset_for(name, offline_dataset),
        log_dir=tmp_path / "logs",
        progress=False,
        hook=hook,
        hook_points=2,
    )
    assert summary["seconds"] >= 0
    if spec.training == "none":
        assert calls == []
    else:  # once at half the budget (or the first report past it), once at its end
        assert len(calls) == 2, calls
        (half, total, unit), (end, total_again, _) = calls
        assert total == total_again and total // 2 <= half < total <= end
        assert unit == ("env_steps" if spec.training == "online" else "updates")
    agent.save(tmp_path / "model")
    meta = read_metadata(tmp_path / "model")
    assert (meta["model"], meta["task"], meta["preset"]) == (name, TASK, "debug")
    assert meta["train"]["seconds"] == summary["seconds"]
    loaded = load_agent(tmp_path / "model")
    assert type(loaded) is type(agent) and loaded.config == agent.config

    if name != "expert":  # the expert reads the simulator, not observations
        start = np.ones(BATCH, dtype=bool)
        actions, _ = agent.act(obs, None, start, deterministic=True)
        check_actions(actions, spec.action_mode, BATCH)
        again, _ = loaded.act(obs, None, start, deterministic=True)
        np.testing.assert_array_equal(actions, again)
        sampled, _ = agent.act(obs, None, start, deterministic=False)
        check_actions(sampled, spec.action_mode, BATCH)

    results = evaluate_agent(loaded, episodes=1, seed=5)
    metrics = aggregate(results)
    assert set(METRIC_NAMES) <= set(metrics)
    assert all(math.isfinite(metrics[key]) for key in METRIC_NAMES)


def test_online_model_refuses_a_dataset(offline_dataset) -> None:
    agent = make_agent("expert", TASK, preset="debug")
    assert get_spec("expert").training == "none"
    with pytest.raises(AgentError, match="takes no dataset"):
        agent.fit(offline_dataset(TASK))


def test_offline_model_needs_a_fitting_dataset(offline_dataset, tmp_path: Path) -> None:
    agent_class("bc")
    agent = make_agent("bc", TASK, preset="debug")
    with pytest.raises(AgentError, match="needs a dataset.*collect"):
        agent.fit(None)
    other = make_agent("bc", "CarlaRightTurn-v0", preset="debug")
    with pytest.raises(AgentError, match="CarlaLeftTurn-v0 data"):
        other.fit(offline_dataset(TASK))


def test_vlsafe_needs_safety_labels(tmp_path: Path) -> None:
    agent_class("vlsafe")
    from carla_safe_envs.collection import collect

    path = collect(TASK, 60, tmp_path / "unlabeled.h5", seed=0, progress=False)
    with pytest.raises(AgentError, match="no safety labels.*benchmarks label"):
        make_agent("vlsafe", TASK, preset="debug").fit(path)


def test_bad_names_modes_and_config() -> None:
    with pytest.raises(AgentError, match="unknown model 'nope'.*vlsafe"):
        make_agent("nope", TASK)
    with pytest.raises(AgentError, match="unknown task"):
        make_agent("expert", "CarlaParking-v0")
    with pytest.raises(AgentError, match="unknown preset 'huge'.*debug"):
        make_agent("expert", TASK, preset="huge")
    with pytest.raises(AgentError, match="unknown config field.*noise"):
        make_agent("expert", TASK, config={"nosie": 0.1})
    with pytest.raises(AgentError, match="acts in the 'discrete' action mode"):
        make_agent("expert", TASK, env_kwargs={"action_mode": "continuous"})
    agent_class("sac")
    with pytest.raises(AgentError, match="acts in the 'continuous' action mode.*ppo"):
        make_agent("sac", TASK, env_kwargs={"action_mode": "discrete"})


def test_directory_of_another_model_is_refused(tmp_path: Path) -> None:
    make_agent("expert", TASK, preset="debug").save(tmp_path / "expert")
    bc = agent_class("bc")
    with pytest.raises(AgentError, match="holds a 'expert' agent, not 'bc'"):
        bc.load(tmp_path / "expert")
    with pytest.raises(AgentError, match="not a saved agent"):
        load_agent(tmp_path / "missing")
    meta = tmp_path / "expert" / "agent.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": "other/v0"}))
    with pytest.raises(AgentError, match="format 'other/v0'"):
        load_agent(tmp_path / "expert")


def test_train_and_evaluate_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "expert"
    argv = ["train", "--model", "expert", "--task", TASK, "--preset", "debug", "--out", str(out)]
    assert main([*argv, "--config", "noise=0.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "expert"
    assert (
        main(["evaluate", "--model-dir", str(out), "--episodes", "2", "--no-progress", "--json"])
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["episodes"] == 2 and metrics["AR"] == 1.0 and metrics["CR"] == 0.0
    # user errors exit 2 with a message, no traceback
    assert main(["evaluate", "--model-dir", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "not a saved agent" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "x"), "--config", "bogus=1"]) == 2
    assert "unknown config field" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ppo", "sac", "bc", "iql"])
def test_low_resolution_models_act_on_full_frames(
    name: str, tmp_path: Path, offline_dataset
) -> None:
    """The ``cpu`` presets' 64 px frames: trained on area-averaged frames, acting on the env's
    128 px ones (averaged the same way inside ``act``), identical after a round trip."""
    agent_class(name)
    spec = get_spec(name)
    agent = make_agent(name, TASK, preset="debug", seed=0, config={"image_size": 64})
    data = offline_dataset(TASK) if spec.training == "offline" else None
    agent.fit(data, progress=False)
    obs = observations(BATCH)
    actions, _ = agent.act(obs, None, np.ones(BATCH, dtype=bool))
    check_actions(actions, spec.action_mode, BATCH)
    agent.save(tmp_path / "model")
    again, _ = load_agent(tmp_path / "model").act(obs, None, np.ones(BATCH, dtype=bool))
    np.testing.assert_array_equal(actions, again)
    with pytest.raises(ValueError, match="128, 128"):
        agent.act(obs[:, ::2, ::2], None, None)


def test_the_readme_agent_example_implements_and_registers_the_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's "How the code is laid out" example, written out as the module it names,
    imported, made, evaluated, saved and loaded through the seam."""
    import re
    import sys

    from carla_safe_envs.evaluation import evaluate

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(\s*# my_package/coast\.py.*?)```", readme, re.DOTALL)
    assert block, "the README's agent example (# my_package/coast.py) is missing"
    lines = block.group(1).splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    package = tmp_path / "my_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "coast.py").write_text("\n".join(line[indent:] for line in lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import my_package.coast  # registers "coast"

        agent = make_agent("coast", TASK, preset="debug", config={"action": 2})
        assert isinstance(agent, my_package.coast.CoastAgent)
        assert set(agent.fit(progress=False)) == {"seconds"}  # nothing to learn
        actions, _ = agent.act(observations(2))
        np.testing.assert_array_equal(actions, [2, 2])
        episodes, _ = evaluate(agent.make_env(), agent, episodes=1, seed=0)
        assert episodes[0].steps >= 1
        loaded = load_agent(agent.save(tmp_path / "coast"))
        assert type(loaded) is type(agent) and loaded.config == agent.config
    finally:  # the process's registry and modules as they were
        AGENTS.pop("coast", None)
        sys.modules.pop("my_package.coast", None)
        sys.modules.pop("my_package", None)


# ---------------------------------------------------------------------------- provenance
def test_source_commit_names_the_code_a_result_came_from(tmp_path: Path) -> None:
    import subprocess

    def git(*args: str) -> str:
        command = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
        return subprocess.run([*command, *args], capture_output=True, text=True, check=True).stdout

    assert source_commit.__wrapped__(tmp_path) is None  # not a checkout
    git("init", "-q")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "x.py").write_text("a = 1\n")
    (tmp_path / "notes.md").write_text("n\n")
    git("add", ".")
    git("commit", "-qm", "one")
    head = git("rev-parse", "HEAD").strip()
    assert source_commit.__wrapped__(tmp_path) == head
    (tmp_path / "notes.md").write_text("results, not code\n")  # outside CODE_PATHS
    (tmp_path / "vlsafe").mkdir()
    (tmp_path / "vlsafe" / "new.py").write_text("b = 2\n")  # untracked
    assert source_commit.__wrapped__(tmp_path) == head
    (tmp_path / "benchmarks" / "x.py").write_text("a = 2\n")
    assert source_commit.__wrapped__(tmp_path) == head + "-dirty"
    assert versions().get("carla-safe-commit") == source_commit()  # this checkout's, if one
