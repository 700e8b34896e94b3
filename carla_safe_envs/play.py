"""``python -m carla_safe_envs.play --task ID``: drive a task yourself with the keyboard.

A window shows the 512 px BEV (``render_mode="rgb_array"`` through ``gymnasium.utils.play``,
which needs pygame); ``w`` accelerates, ``s`` brakes, ``a`` / ``d`` steer
(:meth:`carla_safe_envs.env.CarlaSafeEnv.get_keys_to_action`), Escape quits.  ``--record
FILE.mp4`` writes every frame shown to a video (needs imageio, the ``video`` extra);
``--max-steps N`` quits after N steps (for scripted and headless runs:
``SDL_VIDEODRIVER=dummy``).  Each step's cost and episode totals are logged at INFO.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

import carla_safe_envs

log = logging.getLogger(__name__)


class RecordRenders(gym.Wrapper):
    """Appends every frame ``render()`` returns to an open imageio writer."""

    def __init__(self, env: gym.Env, writer: Any):
        super().__init__(env)
        self.writer = writer
        self.frames = 0

    def render(self):
        frame = self.env.render()
        if frame is not None:
            self.writer.append_data(frame)
            self.frames += 1
        return frame


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m carla_safe_envs.play", description=__doc__)
    parser.add_argument("--task", required=True, choices=carla_safe_envs.TASK_IDS)
    parser.add_argument("--action-mode", choices=["discrete", "continuous"], default="discrete")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--fps", type=int, default=10, help="frames (steps) per second")
    parser.add_argument("--record", type=Path, default=None, help="write the frames to a video")
    parser.add_argument("--max-steps", type=int, default=None, help="quit after N steps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the keyboard driver; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        import pygame
        from gymnasium.utils.play import play
    except ImportError as error:
        raise SystemExit(f"play needs pygame: pip install pygame ({error})") from error
    env: gym.Env = gym.make(args.task, render_mode="rgb_array", action_mode=args.action_mode)
    keys = env.unwrapped.get_keys_to_action()
    writer = None
    if args.record is not None:
        try:
            import imageio.v2 as imageio
        except ImportError as error:
            raise SystemExit("--record needs imageio: pip install 'carla-safe[video]'") from error
        args.record.parent.mkdir(parents=True, exist_ok=True)
        writer = imageio.get_writer(args.record, fps=args.fps)
        env = RecordRenders(env, writer)
    steps, episode_return, episode_cost = 0, 0.0, 0.0

    def on_step(obs, next_obs, action, reward, terminated, truncated, info) -> None:
        nonlocal steps, episode_return, episode_cost
        steps += 1
        episode_return += float(reward)
        episode_cost += float(info["cost"])
        log.info("step %d action %s reward %.2f cost %.0f", steps, action, reward, info["cost"])
        if terminated or truncated:
            log.info("episode end: return %.2f cost %.0f", episode_return, episode_cost)
            episode_return = episode_cost = 0.0
        if args.max_steps is not None and steps >= args.max_steps:
            pygame.event.post(pygame.event.Event(pygame.QUIT))

    try:
        play(
            env, fps=args.fps, keys_to_action=keys, noop=env.unwrapped.noop_action(), seed=args.seed, callback=on_step
        )
    finally:
        if writer is not None:
            writer.close()
        env.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
