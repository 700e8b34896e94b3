"""Drive it yourself: the keyboard map of every env and the play command, headless."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import carla_safe_envs
from carla_safe_envs.env import ACC_LIMIT, discrete_action_values


@pytest.mark.parametrize("task", carla_safe_envs.TASK_IDS)
@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_keys_map_to_the_controls_they_name(task: str, mode: str) -> None:
    env = gym.make(task, action_mode=mode, render_observation=False)
    keys = env.unwrapped.get_keys_to_action()
    assert len(keys) == 8 and all(env.action_space.contains(a) for a in keys.values())
    assert env.action_space.contains(env.unwrapped.noop_action())
    table = discrete_action_values(task)

    def control(action) -> tuple[float, float]:
        if mode == "discrete":
            return tuple(float(v) for v in table[action])
        return (round(float(action[0]) * ACC_LIMIT, 5), round(float(action[1]), 5))

    assert control(env.unwrapped.noop_action()) == (0.0, 0.0)  # no key: coast straight
    assert control(keys[("w",)])[0] > 0 > control(keys[("s",)])[0]
    lo, hi = round(float(table[:, 1].min()), 5), round(float(table[:, 1].max()), 5)
    assert control(keys[("a",)])[1] == lo < 0  # CARLA: negative steer is left
    assert control(keys[("a", "w")]) == (table[:, 0].max(), lo)
    assert control(keys[("d", "s")]) == (table[:, 0].min(), hi)


def test_play_runs_headless_and_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pygame")
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.setenv("SDL_AUDIODRIVER", "dummy")
    from carla_safe_envs.play import main

    video = tmp_path / "drive.mp4"
    assert (
        main(
            [
                "--task",
                "CarlaLeftTurn-v0",
                "--record",
                str(video),
                "--max-steps",
                "4",
                "--fps",
                "100",
            ]
        )
        == 0
    )
    frames = imageio.mimread(video)
    assert len(frames) >= 4 and frames[0].shape[:2] == (512, 512)
    assert np.asarray(frames[0]).std() > 0  # a real BEV, not a blank frame
