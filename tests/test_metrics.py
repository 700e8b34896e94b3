"""The metrics module against hand-computed values."""

from __future__ import annotations

import math
from typing import Any

import pytest

from carla_safe_envs.metrics import (
    METRIC_NAMES,
    REQUIRED_INFO_KEYS,
    EpisodeMetrics,
    EpisodeRecorder,
    MissingInfoKeyError,
    aggregate,
    episode_metrics,
    format_table,
)


def info(
    *,
    cost: float = 0.0,
    speed: float = 0.0,
    collision: bool = False,
    arrived: bool = False,
    waypoints: int = 0,
    distance: float = 0.0,
) -> dict[str, Any]:
    return {
        "cost": cost,
        "speed": speed,
        "collision": collision,
        "arrived": arrived,
        "waypoints_reached": waypoints,
        "distance": distance,
        "ttc": math.inf,  # extra keys are ignored
    }


def episode(**fields: Any) -> EpisodeMetrics:
    defaults: dict[str, Any] = {
        "return_": 0.0,
        "cost": 0.0,
        "steps": 1,
        "avg_speed": 0.0,
        "waypoints": 0,
        "distance": 0.0,
        "arrived": False,
        "collisions": 0,
        "collision_speed_sum": 0.0,
    }
    return EpisodeMetrics(**(defaults | fields))


def test_metric_names_order() -> None:
    assert METRIC_NAMES == ("Return", "Cost", "AS", "WC", "TD", "AR", "CR", "TCF", "DCF", "CS")


def test_recorder_hand_computed_episode() -> None:
    steps = [
        (1.0, info(cost=0.0, speed=2.0, waypoints=1, distance=0.2)),
        (0.5, info(cost=1.0, speed=4.0, waypoints=2, distance=0.6, collision=True)),
        (-2.0, info(cost=1.0, speed=3.0, waypoints=2, distance=0.9, collision=True)),  # same one
        (0.5, info(cost=0.0, speed=1.0, waypoints=3, distance=1.0)),
        (3.0, info(cost=0.5, speed=6.0, waypoints=4, distance=1.6, collision=True)),  # second
    ]
    recorder = EpisodeRecorder()
    for reward, step_info in steps:
        recorder.add(reward, step_info)
    assert recorder.result() == EpisodeMetrics(
        return_=3.0,
        cost=2.5,
        steps=5,
        avg_speed=16.0 / 5,
        waypoints=4,
        distance=1.6,
        arrived=False,
        collisions=2,
        collision_speed_sum=4.0 + 6.0,
    )


def test_recorder_reset_and_arrival() -> None:
    recorder = EpisodeRecorder()
    recorder.add(5.0, info(collision=True, speed=3.0))
    recorder.reset()
    recorder.add(1.0, info(speed=2.0, arrived=True, waypoints=7, distance=7.5))
    result = recorder.result()
    assert result.steps == 1 and result.return_ == 1.0 and result.collisions == 0
    assert result.arrived and result.waypoints == 7 and result.distance == 7.5
    # A collision on the first step after reset is an onset.
    recorder.reset()
    recorder.add(0.0, info(collision=True, speed=5.0))
    assert recorder.result().collisions == 1


@pytest.mark.parametrize("key", REQUIRED_INFO_KEYS)
def test_missing_key_is_an_error_naming_it(key: str) -> None:
    step_info = info()
    del step_info[key]
    with pytest.raises(MissingInfoKeyError, match=repr(key)) as error:
        EpisodeRecorder().add(0.0, step_info)
    assert isinstance(error.value, KeyError) and error.value.key == key


@pytest.mark.parametrize("cost", [-0.1, math.nan, math.inf])
def test_bad_cost_rejected(cost: float) -> None:
    with pytest.raises(ValueError, match="cost"):
        EpisodeRecorder().add(0.0, info(cost=cost))


def test_result_without_steps() -> None:
    with pytest.raises(ValueError, match="no step"):
        EpisodeRecorder().result()


def test_episode_metrics_helper() -> None:
    result = episode_metrics([1.0, 2.0], [info(speed=1.0), info(speed=3.0, distance=0.3)])
    assert (result.return_, result.steps, result.avg_speed, result.distance) == (3.0, 2, 2.0, 0.3)
    with pytest.raises(ValueError, match="rewards"):
        episode_metrics([1.0], [])


def test_aggregate_hand_computed() -> None:
    episodes = [
        episode(
            return_=10.0,
            cost=2.0,
            steps=100,
            avg_speed=4.0,
            waypoints=50,
            distance=40.0,
            arrived=True,
        ),
        episode(
            return_=-2.0,
            cost=6.0,
            steps=200,
            avg_speed=2.0,
            waypoints=20,
            distance=60.0,
            collisions=2,
            collision_speed_sum=3.0 + 5.0,
        ),
        episode(return_=4.0, cost=1.0, steps=100, avg_speed=3.0, waypoints=29, distance=100.0),
    ]
    result = aggregate(episodes)
    assert list(result) == [*METRIC_NAMES, "episodes"]
    expected = {
        "Return": 4.0,
        "Cost": 3.0,
        "AS": 3.0,
        "WC": 33.0,
        "TD": 200.0 / 3,
        "AR": 1 / 3,
        "CR": 1 / 3,
        "TCF": 1000.0 * 2 / 400,  # 5 collisions per 1000 steps
        "DCF": 2 / 0.2,  # 2 collisions in 0.2 km
        "CS": 4.0,
        "episodes": 3,
    }
    assert result == pytest.approx(expected)


def test_aggregate_no_collisions_no_distance() -> None:
    result = aggregate([episode(steps=10), episode(steps=5)])
    assert result["TCF"] == 0.0 and result["DCF"] == 0.0 and result["CS"] == 0.0
    assert result["CR"] == 0.0 and result["episodes"] == 2
    with pytest.raises(ValueError, match="at least one"):
        aggregate([])


def test_aggregate_matches_paper_scale() -> None:
    """DQN on Four Lane in the seed table: CR 0.11, TD ~150 m -> TCF ~0.33, DCF ~0.73."""
    episodes = [
        episode(
            steps=333, distance=150.0, collisions=int(i < 11), collision_speed_sum=4.25 * (i < 11)
        )
        for i in range(100)
    ]
    result = aggregate(episodes)
    assert result["CR"] == pytest.approx(0.11)
    assert result["TCF"] == pytest.approx(0.33, abs=0.005)
    assert result["DCF"] == pytest.approx(0.73, abs=0.01)
    assert result["CS"] == pytest.approx(4.25)


def test_recorder_feeds_aggregate() -> None:
    recorder = EpisodeRecorder()
    for t in range(10):
        recorder.add(1.0, info(cost=0.1, speed=5.0, collision=t == 9, distance=0.5 * (t + 1)))
    result = aggregate([recorder.result()])
    assert result["TCF"] == pytest.approx(100.0)  # 1 collision in 10 steps
    assert result["DCF"] == pytest.approx(200.0)  # 1 collision in 5 m
    assert result["CS"] == 5.0 and result["Cost"] == pytest.approx(1.0)


def test_format_table() -> None:
    rows = {
        "ppo": {"Return": 356.48, "Cost": 79.3, "CR": 0.09, "episodes": 10},
        "vlsafe": {"Return": 552.431, "CR": 0.05, "episodes": 10},
    }
    text = format_table(rows, label="model")
    lines = text.splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "model",
        "Return",
        "Cost",
        "CR",
        "episodes",
    ]
    assert set(lines[1]) <= {"|", "-", ":"}
    assert [c.strip() for c in lines[2].strip("|").split("|")] == [
        "ppo",
        "356.48",
        "79.30",
        "0.09",
        "10",
    ]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == [
        "vlsafe",
        "552.43",
        "-",
        "0.05",
        "10",
    ]
    assert len({len(line) for line in lines}) == 1  # columns line up as plain text


def test_format_table_explicit_columns() -> None:
    text = format_table({"a": {"AR": 1.0, "CS": 3.14159}}, columns=["CS"], digits=3)
    assert "3.142" in text and "AR" not in text
