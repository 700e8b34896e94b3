"""``python -m benchmarks generalize``: a trained model evaluated on every density / town."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.__main__ import COMMANDS, main
from benchmarks.generalize import relative_drops, shift_conditions, training_condition
from carla_safe_envs.metrics import METRIC_NAMES


def test_registered() -> None:
    assert "generalize" in COMMANDS


def test_conditions_of_each_shift() -> None:
    assert list(shift_conditions("CarlaLeftTurn-v0", "density")) == [
        "density=low",
        "density=base",
        "density=high",
    ]
    towns = shift_conditions("CarlaFourLane-v0", "town")
    assert towns == {f"town={t}": {"town": t} for t in ("Town04", "Town05", "Town10HD")}
    assert training_condition("CarlaFourLane-v0", "town", {}) == "town=Town04"
    assert training_condition("CarlaLeftTurn-v0", "density", {"density": "high"}) == "density=high"
    with pytest.raises(ValueError, match=r"unknown shift 'weather'.*density.*town"):
        shift_conditions("CarlaLeftTurn-v0", "weather")


def test_drop_arithmetic() -> None:
    drops = relative_drops(
        {"Return": 200.0, "CR": 0.0, "Cost": 10.0},
        {"Return": 150.0, "CR": 0.5, "Cost": 15.0},
        ["Return", "CR", "Cost"],
    )
    assert drops == {"Return": 0.25, "CR": None, "Cost": -0.5}


def _check_report(report: dict, shift: str, labels: list[str]) -> None:
    assert report["shift"] == shift and list(report["conditions"]) == labels
    train = report["conditions"][report["train_condition"]]["metrics"]
    for row in report["conditions"].values():
        assert set(METRIC_NAMES) <= set(row["metrics"])
        for name in METRIC_NAMES:
            drop, value = row["drop"][name], row["metrics"][name]
            if train[name] == 0:
                assert drop is None
            else:
                assert math.isclose(drop, (train[name] - value) / abs(train[name]))
    assert all(
        d in (0.0, None) for d in report["conditions"][report["train_condition"]]["drop"].values()
    )


def test_generalize_a_trained_bc_model(tmp_path, offline_dataset, capsys) -> None:
    from carla_safe_envs.agents import make_agent

    agent = make_agent("bc", "CarlaLeftTurn-v0", preset="debug", seed=0)
    agent.fit(offline_dataset("CarlaLeftTurn-v0"), log_dir=tmp_path / "logs", progress=False)
    agent.save(tmp_path / "bc")
    argv = ["generalize", "--model-dir", str(tmp_path / "bc"), "--shift", "density"]
    assert main([*argv, "--episodes", "1", "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["model"], report["task"], report["episodes"]) == ("bc", "CarlaLeftTurn-v0", 1)
    assert report["train_condition"] == "density=base"
    _check_report(report, "density", ["density=low", "density=base", "density=high"])
    assert report["conditions"]["density=high"]["env_kwargs"] == {"density": "high"}


def test_generalize_town_table(tmp_path, capsys) -> None:
    from carla_safe_envs.agents import make_agent

    make_agent("expert", "CarlaRightTurn-v0", preset="debug").save(tmp_path / "expert")
    argv = ["generalize", "--model-dir", str(tmp_path / "expert"), "--shift", "town"]
    assert main([*argv, "--episodes", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert "expert on CarlaRightTurn-v0, shift town" in lines[0]
    assert lines[1].startswith("| condition") and all(m in lines[1] for m in METRIC_NAMES)
    assert "| town=Town03 *" in out and "town=Town10HD" in out
    assert len(lines) == 3 + 5  # title, header, rule, five towns


def test_bad_model_dir_is_an_error(tmp_path, capsys) -> None:
    assert main(["generalize", "--model-dir", str(tmp_path), "--shift", "town"]) == 2
    assert "error:" in capsys.readouterr().err
