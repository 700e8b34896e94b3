"""The ``python -m benchmarks`` command line and the ``speed`` measurement."""

from __future__ import annotations

import json
import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from benchmarks import speed
from benchmarks.__main__ import COMMANDS, build_parser, main


class EpisodicEnv(gym.Env[np.ndarray, int]):
    """Ends every ``length`` steps; remembers the actions it was given."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, length: int = 3) -> None:
        self.observation_space = gym.spaces.Box(0, 1, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(15)
        self.length, self.t = length, 0
        self.actions: list[int] = []
        self.resets = 0
        self.closed = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        self.resets += 1
        return np.zeros(2, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        self.actions.append(int(action))
        return np.zeros(2, np.float32), 0.0, self.t >= self.length, False, {"cost": 0.0}

    def close(self) -> None:
        self.closed = True


# --- command line --------------------------------------------------------------------------


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, command in COMMANDS.items():
        assert name in out and command.help[:20] in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: python -m benchmarks {name}" in capsys.readouterr().out


def test_speed_help_lists_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["speed", "--help"])
    out = capsys.readouterr().out
    for option in ("--steps", "--tasks", "--json", "--highway-steps", "--no-highway"):
        assert option in out


def test_unknown_command_lists_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no-such-command" in err
    for name in COMMANDS:
        assert repr(name) in err or name in err


def test_missing_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_registry_drives_the_parser() -> None:
    ran: list[Any] = []
    commands = {"echo": speed_like_command(ran)}
    args = build_parser(commands).parse_args(["echo", "--value", "3"])
    assert args.run(args) == 0 and ran == [3]


def speed_like_command(ran: list[Any]) -> Any:
    from benchmarks.__main__ import Command

    def add_arguments(parser: Any) -> None:
        parser.add_argument("--value", type=int, default=1)

    def run(args: Any) -> int:
        ran.append(args.value)
        return 0

    return Command("echo a value", add_arguments, run)


@pytest.mark.parametrize("bad", ["0", "-5", "x"])
def test_speed_rejects_bad_step_counts(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["speed", "--steps", bad])
    assert exit_info.value.code == 2
    assert "--steps" in capsys.readouterr().err


# --- measurement ---------------------------------------------------------------------------


def test_measure_dummy_env_counts_resets_apart() -> None:
    envs: list[EpisodicEnv] = []

    def make() -> EpisodicEnv:
        envs.append(EpisodicEnv(length=3))
        return envs[-1]

    result = speed.measure_steps_per_second(make, steps=10, warmup=3, seed=0)
    env = envs[0]
    assert result.steps == 10 and len(env.actions) == 13
    # Steps 1..13; episodes end after steps 3, 6, 9, 12; the first (in warm-up) is not counted.
    assert result.resets == 3 and env.resets == 1 + 4
    assert result.steps_per_second > 0 and result.step_seconds > 0
    assert result.reset_seconds > 0 and result.reset_ms > 0
    assert env.closed


def test_measure_uses_seeded_actions() -> None:
    runs = []
    for _ in range(2):
        env = EpisodicEnv(length=1000)
        speed.measure_steps_per_second(lambda env=env: env, steps=50, warmup=0, seed=7)
        runs.append(env.actions)
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_measure_rejects_zero_steps() -> None:
    with pytest.raises(ValueError, match="steps >= 1"):
        speed.measure_steps_per_second(EpisodicEnv, steps=0)


def test_measure_all_report() -> None:
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    report = speed.measure_all(
        {"Dummy-v0": {"bev": EpisodicEnv, "no_render": EpisodicEnv}},
        highway=EpisodicEnv,
        steps=20,
        highway_steps=5,
        warmup=0,
    )
    if affinity is not None:
        assert os.sched_getaffinity(0) == affinity  # pinning is undone afterwards
        assert report.cpu in affinity
    data = json.loads(json.dumps(report.to_json()))
    assert set(data) == {"cpu", "tasks", "highway"}
    task = data["tasks"]["Dummy-v0"]
    assert task["bev"]["steps"] == 20 and task["bev"]["steps_per_second"] > 0
    assert task["no_render_over_highway"] == pytest.approx(
        task["no_render"]["steps_per_second"] / data["highway"]["steps_per_second"]
    )
    assert data["highway"]["id"] == "highway-fast-v0"
    table = report.to_table()
    assert "Dummy-v0" in table and "highway-fast-v0" in table and "bev / highway" in table


def test_report_without_highway() -> None:
    report = speed.measure_all(
        {"Dummy-v0": {"bev": EpisodicEnv}}, highway=None, steps=5, highway_steps=5, warmup=0
    )
    assert report.to_json()["highway"] is None
    assert report.to_json()["tasks"]["Dummy-v0"]["bev_over_highway"] is None
    assert "/ highway" not in report.to_table()


def test_highway_fast_rate_is_positive() -> None:
    pytest.importorskip("highway_env")
    result = speed.measure_highway_fast(steps=3, warmup=1)
    assert result.steps == 3 and result.steps_per_second > 0


def test_highway_config_is_fresh() -> None:
    config = speed.highway_image_config()
    config["observation"]["observation_shape"] = (1, 1)
    assert speed.highway_image_config()["observation"]["observation_shape"] == (128, 128)


def test_speed_command_on_a_real_task(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["speed", "--tasks", "CarlaRightTurn-v0", "--steps", "30", "--highway-steps", "3", "--json"]
    )
    assert rc == 0
    task = json.loads(capsys.readouterr().out)["tasks"]["CarlaRightTurn-v0"]
    assert {"bev", "no_render", "bev_over_highway", "no_render_over_highway"} <= set(task)
    assert task["bev"]["steps_per_second"] > 0 and task["no_render"]["steps_per_second"] > 0
    assert task["bev_over_highway"] > 0


def test_speed_rejects_unknown_task() -> None:
    with pytest.raises(SystemExit, match="unknown task id"):
        main(["speed", "--tasks", "CarlaParking-v0", "--no-highway"])
