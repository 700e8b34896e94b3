"""The expert solves every task: it is how we know the tasks are solvable."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from carla_safe_envs.expert import Expert, main, run_episodes


@pytest.mark.parametrize("difficulty", ["simple", "medium"])
@pytest.mark.parametrize("env_id", ["CarlaLeftTurn-v0", "CarlaRightTurn-v0"])
def test_expert_solves_turns(env_id, difficulty):
    m = run_episodes(env_id, episodes=3, seed=100, difficulty=difficulty)
    assert m["AR"] == 1.0 and m["CR"] == 0.0, m
    assert m["WC"] > 45 and m["AS"] > 1.0


def test_expert_solves_four_lane():
    m = run_episodes("CarlaFourLane-v0", episodes=3, seed=200)
    assert m["AR"] >= 2 / 3 and m["CR"] == 0.0, m
    assert m["TD"] > 100.0


def test_expert_drives_navigation_without_collision():
    m = run_episodes("CarlaNavigation-v0", episodes=2, seed=300)
    assert m["CR"] == 0.0 and m["TD"] > 100.0, m


def test_expert_continuous_mode():
    m = run_episodes(
        "CarlaRightTurn-v0", episodes=1, seed=0, action_mode="continuous", difficulty="simple"
    )
    assert m["AR"] == 1.0


def test_noise_makes_data_diverse_and_is_seeded():
    env = gym.make("CarlaLeftTurn-v0", difficulty="simple")
    actions = []
    for _ in range(2):
        env.reset(seed=0)
        expert = Expert(env, noise=0.5, seed=4)
        taken = []
        for _ in range(50):
            taken.append(expert.act())
            env.step(taken[-1])
        actions.append(taken)
    assert actions[0] == actions[1]  # same seed, same noisy actions
    assert len(set(actions[0])) > 4  # bursts of random actions


def test_bad_noise():
    env = gym.make("CarlaLeftTurn-v0")
    with pytest.raises(ValueError, match="noise must be a probability"):
        Expert(env, noise=1.5)


def test_cli_json_and_video(tmp_path, capsys):
    rc = main(
        [
            "--task",
            "CarlaRightTurn-v0",
            "--episodes",
            "1",
            "--difficulty",
            "simple",
            "--json",
            "--video-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    row = out["CarlaRightTurn-v0"]
    assert set(row) >= {"Return", "Cost", "AS", "WC", "TD", "AR", "CR", "TCF", "DCF", "CS"}
    assert row["AR"] == 1.0
    video = tmp_path / "CarlaRightTurn-v0.mp4"
    assert video.stat().st_size > 10_000
    import imageio.v2 as imageio

    frames = imageio.mimread(video, memtest=False)
    assert frames[0].shape == (512, 512, 3) and np.asarray(frames[0]).mean() > 5


def test_cli_rejects_difficulty_for_other_tasks():
    with pytest.raises(SystemExit):
        main(["--task", "CarlaFourLane-v0", "--episodes", "1", "--difficulty", "hard"])
