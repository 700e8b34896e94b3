"""The expert driver: privileged route following, car following and yielding.

It reads the simulator state (``env.unwrapped.snapshot``, ``.route``), never the image:

* **Route following**: pure pursuit on the planned route with a speed-dependent look-ahead.
* **Car following**: IDM towards the 4 m/s reward speed behind the nearest vehicle on the
  route corridor ahead.
* **Yielding**: every step it rolls plans forward 4 s along the route — GO (accelerate), CREEP
  (GO for 0.4 s, then brake) and STOP (brake to a standstill) — against the other vehicles,
  predicted to keep their velocity except where the traffic reacts to the ego (braking for
  its swept box, waiting at a yield zone's edge), with a safety margin around the ego's box.
  It takes GO when GO or CREEP is conflict-free (so it creeps up to a conflict but never stops
  in the path of moving traffic), else STOP, else the plan whose first conflict comes later.
  This waits for gaps at junctions and keeps clear of cut-ins with no task-specific rule.
* **Discrete actions**: the acceleration snaps to {-2, 0, 2}; the steering is quantized to the
  task's five values with error feedback, so the average steering equals the desired one.
* **Noise** (for data diversity): with probability ``noise`` per step a burst of 3-10 steps
  starts: half of them one random action held (lane departures), half *reckless* driving —
  full throttle along the route, ignoring other vehicles (collisions).  ``noise=0`` is the
  clean expert.

Command line (prints the metrics of DESIGN section 4)::

    python -m carla_safe_envs.expert --task CarlaLeftTurn-v0 --episodes 10 --seed 0 [--json]
    python -m carla_safe_envs.expert --all-tasks --episodes 3 --video-dir runs
    python -m carla_safe_envs.expert --task CarlaLeftTurn-v0 --town Town05 --density high
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np

from carla_safe_envs.backends.base import EGO_LENGTH, LENGTH, VX, VY, WIDTH, YAW, X, Y
from carla_safe_envs.env import ACC_LIMIT
from carla_safe_envs.geometry import boxes_overlap
from carla_safe_envs.junction import gap_to_zone, in_zone
from carla_safe_envs.metrics import aggregate, format_table
from carla_safe_envs.profiles import DriverProfile, get_profile
from carla_safe_envs.sim.traffic import ego_extent, idm_acceleration, swept_box
from carla_safe_envs.sim.vehicle import MAX_STEER, WHEELBASE
from carla_safe_envs.tasks import ACC_VALUES

log = logging.getLogger(__name__)

LOOK_MIN, LOOK_TIME = 3.0, 0.8  # pure-pursuit look-ahead: at least 3 m, else 0.8 s of travel
SAMPLE_TIME = 0.2  # conflict look-ahead sampling [s] (the horizon is the profile's)
GO, STOP = 2.0, -4.0  # plan accelerations [m/s^2] (the discrete -2 brakes at ~5.5 m/s^2)
CREEP = 0.4  # GO for this long, then STOP, must be safe to keep creeping forward [s]
RECKLESS_SHARE = 0.5  # share of noise bursts that speed along the route ignoring traffic
# The driver's own parameters (target speed, headway, safety margins, look-ahead, ...) are
# those of its behaviour profile (carla_safe_envs.profiles.DriverProfile; ``expert`` by
# default).  The expert's junction margin (3 m / 1 m since 2026-12-02; 1 m / 0.4 m before)
# waits for wider gaps, so its data leaves room for an imitator's timing errors: on Left Turn
# (medium, 20 episodes) the expert's cost fell from 18.7 to 10.7 at the same return and AR.
# On the highway the same margin made it hang back behind cut-ins (Four Lane AR 1.0 -> 0.8),
# so roads keep the narrow one.


class Expert:
    """Privileged driver for any of the four tasks; ``act()`` returns an action of ``env``."""

    def __init__(
        self,
        env: gym.Env,
        *,
        noise: float = 0.0,
        seed: int | None = None,
        profile: str | DriverProfile = "expert",
    ):
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be a probability in [0, 1], got {noise}")
        self.env = env.unwrapped
        self.noise = noise
        self.profile = get_profile(profile)
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self._carry = 0.0  # steering quantization error fed back
        self._burst, self._burst_action = 0, None
        self._lapse = 0  # steps left of a lapse of attention (sees no other vehicle)
        self._offset = 0.0  # lateral offset from the route while overtaking [m]
        self._delayed: deque = deque()  # actions decided, not yet carried out

    def _seen(self) -> np.ndarray:
        """The other vehicles the driver sees now (all of them for the expert)."""
        others = self.env.snapshot.others
        if self._lapse > 0:
            return others[:0]
        if math.isfinite(self.profile.view_range) and len(others):
            ego = self.env.snapshot.ego
            near = np.hypot(others[:, X] - ego[X], others[:, Y] - ego[Y]) <= self.profile.view_range
            others = others[near]
        return others

    # --------------------------------------------------------------- control
    def control(self) -> tuple[float, float]:
        """Desired (acceleration [m/s^2], steer [-1, 1]) from the current state."""
        env = self.env
        v = env.snapshot.ego_speed
        progress = env._projection.progress
        others = self._seen()
        if self.profile.overtake > 0.0:
            self._offset = self._choose_offset(progress, v, others)
        steer = self.control_steer()
        # car following along the route corridor
        acc = self._follow(progress, v, others)
        if self.profile.horizon <= 0.0:  # never yields: car following only
            return acc, steer
        # yielding: GO if it is safe, or if one more step of it still leaves a safe stop (creep
        # up to the conflict); else STOP; when neither is safe, whichever conflicts later
        go = self._conflict_time(progress, v, GO, others=others)
        if math.isinf(go) or math.isinf(
            self._conflict_time(progress, v, GO, switch=CREEP, others=others)
        ):
            plan = GO
        else:
            stop = self._conflict_time(progress, v, STOP, others=others)
            plan = STOP if math.isinf(stop) or stop > go else GO
        return min(acc, plan), steer

    def control_steer(self) -> float:
        """Pure pursuit on the route: the steer [-1, 1] towards a point ``look`` metres ahead."""
        env = self.env
        ego, route = env.snapshot.ego, env.route
        look = max(LOOK_MIN, LOOK_TIME * env.snapshot.ego_speed)
        i = min(int(env._projection.progress + look), len(route) - 1)
        tx, ty = route.points[i, :2]
        if self._offset:  # overtaking: a point beside the route (positive: to its right)
            yaw = route.seg_yaw[min(i, len(route.seg_yaw) - 1)]
            tx, ty = tx - self._offset * math.sin(yaw), ty + self._offset * math.cos(yaw)
        dx, dy = tx - ego[X], ty - ego[Y]
        c, s = math.cos(ego[YAW]), math.sin(ego[YAW])
        ahead, right = dx * c + dy * s, -dx * s + dy * c
        delta = math.atan(2.0 * right * WHEELBASE / max(ahead * ahead + right * right, 1e-6))
        return float(np.clip(delta / MAX_STEER, -1.0, 1.0))

    def _lane_points(self, progress: float, offset: float, ahead: int = 40) -> np.ndarray:
        """The next ``ahead`` metres of route, moved ``offset`` metres to its right."""
        route = self.env.route
        i0 = int(progress)
        pts = route.points[i0 : i0 + ahead, :2]
        if offset:
            yaw = route.seg_yaw[np.minimum(np.arange(i0, i0 + len(pts)), len(route.seg_yaw) - 1)]
            pts = pts + offset * np.stack([-np.sin(yaw), np.cos(yaw)], axis=1)
        return pts

    def _leader(
        self, progress: float, others: np.ndarray, offset: float
    ) -> tuple[float, float]:
        """(bumper gap [m], speed along the route [m/s]) of the nearest vehicle going our
        way in the corridor ``offset`` metres right of the route; (inf, cruise) if none."""
        snap, route = self.env.snapshot, self.env.route
        gap, lead_v = math.inf, self.profile.cruise
        if len(others):
            i0 = int(progress)
            pts = self._lane_points(progress, offset)  # the next 40 m of route
            d2 = ((others[:, None, :2] - pts[None, :, :]) ** 2).sum(-1)  # (K, W)
            k = d2.argmin(axis=1)
            near = (
                np.sqrt(d2[np.arange(len(others)), k])
                < (others[:, WIDTH] + snap.ego[WIDTH]) / 2 + 0.3
            )
            seg = np.minimum(k + i0, len(route.seg_yaw) - 1)
            near &= np.cos(others[:, YAW] - route.seg_yaw[seg]) > 0.7  # going our way, not crossing
            along = k + i0 - progress  # [m], waypoints are 1 m apart
            ahead = near & (along > 0)
            if ahead.any():
                j = np.flatnonzero(ahead)[np.argmin(along[ahead])]
                gap = along[j] - (others[j, LENGTH] + EGO_LENGTH) / 2
                yaw = route.seg_yaw[min(int(progress), len(route.seg_yaw) - 1)]
                lead_v = others[j, VX] * math.cos(yaw) + others[j, VY] * math.sin(yaw)
        return gap, lead_v

    def _follow(self, progress: float, v: float, others: np.ndarray) -> float:
        p = self.profile
        gap, lead_v = self._leader(progress, others, self._offset)
        return float(
            idm_acceleration(v, p.cruise, gap, v - lead_v, p.headway, a_max=GO, s0=p.min_gap)
        )

    def _choose_offset(self, progress: float, v: float, others: np.ndarray) -> float:
        """Overtaking: the lateral offset to drive at (0, or +-``profile.overtake``).

        Blocked (a vehicle within 30 m ahead in its corridor, slower than its cruise speed by
        1 m/s) it moves to the side whose corridor has the leader 10 m further away (or none)
        and no seen vehicle beside the ego; it returns to the route's lane once that is clear
        for 30 m.  Only on roads: where a yield zone has crossing traffic it keeps the lane.
        """
        prof = self.profile
        if self.env.scenario.traffic.yield_zone is not None:
            return 0.0

        def room(offset: float) -> float:  # free road ahead in that corridor [m]
            gap, lead_v = self._leader(progress, others, offset)
            return math.inf if lead_v >= prof.cruise - 1.0 else gap

        def beside(offset: float) -> bool:
            if not len(others):
                return False
            ego = self.env.snapshot.ego
            c, s = math.cos(ego[YAW]), math.sin(ego[YAW])
            dx, dy = others[:, X] - ego[X], others[:, Y] - ego[Y]
            along, right = dx * c + dy * s, -dx * s + dy * c
            return bool(((np.abs(along) < 8.0) & (np.abs(right - offset) < 2.0)).any())

        here = room(self._offset)
        if self._offset and room(0.0) > 30.0 and not beside(0.0):
            return 0.0
        if here > 30.0:
            return self._offset
        best, best_room = self._offset, here
        for side in (-prof.overtake, prof.overtake):
            if side == self._offset or beside(side):
                continue
            side_room = room(side)
            if side_room > best_room + 10.0:
                best, best_room = side, side_room
        return best

    def _conflict_time(
        self,
        progress: float,
        v: float,
        acc: float,
        switch: float = math.inf,
        *,
        others: np.ndarray | None = None,
    ) -> float:
        """First sampled time at which the ego, driving the route with ``acc`` until ``switch``
        seconds and braking (``STOP``) after, with its speed kept in [0, cruise + 1], comes
        within the margin of another vehicle (``inf``: no conflict).

        The others keep their velocity, except that they brake at ``OTHERS_BRAKE`` once the
        ego's swept box is in the corridor ahead of them, and stop at the edge of the task's
        yield zone while the ego is inside it: the two ways the traffic reacts to the ego.
        """
        env = self.env
        snap, route = env.snapshot, env.route
        prof = self.profile
        if others is None:
            others = snap.others
        if len(others) == 0:
            return math.inf
        zone = env.scenario.traffic.yield_zone
        box = snap.ego.copy()
        tight = box.copy()  # stopped vehicles only need clearance, not a safety margin
        tight[LENGTH] += 0.4
        tight[WIDTH] += 0.2
        margin_length, margin_width = prof.margin if zone is None else prof.junction_margin
        box[LENGTH] += margin_length
        box[WIDTH] += margin_width
        lateral = env._projection.lateral - self._offset  # converges to its lane over ~2 s
        travelled, speed = 0.0, v
        h = SAMPLE_TIME
        samples = round(prof.horizon / h)
        moved = others.copy()
        their_v = np.hypot(others[:, VX], others[:, VY])
        hx, hy = np.cos(others[:, YAW]), np.sin(others[:, YAW])
        half = others[:, WIDTH] / 2 + 0.3
        braking = np.zeros(len(others), dtype=bool)
        to_edge = np.full(len(others), np.inf)  # distance left to a yield-zone stop [m]
        no_zone = np.zeros(len(others), dtype=bool)
        for n in range(1, samples + 1):
            a = acc if n * h <= switch + 1e-9 else STOP
            speed = min(max(speed + a * h, 0.0), prof.cruise + 1.0)
            travelled += speed * h
            p = min(progress + travelled, len(route) - 1.001)
            i = int(p)
            t = p - i
            yaw = route.seg_yaw[min(i, len(route.seg_yaw) - 1)]
            off = self._offset + lateral * max(1.0 - n * h / 2.0, 0.0)
            box[X : Y + 1] = route.points[i, :2] * (1 - t) + route.points[i + 1, :2] * t
            box[X] -= off * math.sin(yaw)
            box[Y] += off * math.cos(yaw)
            box[YAW] = yaw
            tight[[X, Y, YAW]] = box[[X, Y, YAW]]
            plain = np.r_[box[:VX], speed * math.cos(yaw), speed * math.sin(yaw), snap.ego[LENGTH:]]
            inside = in_zone(zone, moved[:, X], moved[:, Y]) if zone is not None else no_zone
            for ref, who in ((swept_box(plain), ~inside), (plain, inside)):
                ex, ey = ref[X] - moved[:, X], ref[Y] - moved[:, Y]
                dx, dy = ex * hx + ey * hy, -ex * hy + ey * hx
                lon, lat = ego_extent(ref, others[:, YAW])
                braking |= who & (dx > 0) & (dx < 40.0) & (np.abs(dy) < half + lat)
            if zone is not None and in_zone(zone, box[X], box[Y]):
                to_edge = np.minimum(to_edge, gap_to_zone(zone, moved))
            decel = np.where(braking, prof.others_brake, 0.0)
            stopping = np.isfinite(to_edge)
            decel[stopping] = np.maximum(
                decel[stopping], their_v[stopping] ** 2 / (2 * np.maximum(to_edge[stopping], 0.05))
            )
            step = np.maximum(their_v - decel * h, 0.0)
            dist = (their_v + step) * h / 2
            their_v = step
            to_edge = to_edge - dist
            moved[:, X] += dist * hx
            moved[:, Y] += dist * hy
            moved[:, VX], moved[:, VY] = their_v * hx, their_v * hy
            moving = their_v > 1.0
            if (boxes_overlap(box, moved) & moving).any() or (
                boxes_overlap(tight, moved) & ~moving
            ).any():
                return n * h
        if speed == 0.0:  # stopped at the end: not in the path of moving traffic (no deadlock)
            ex, ey = box[X] - moved[:, X], box[Y] - moved[:, Y]
            dx, dy = ex * hx + ey * hy, -ex * hy + ey * hx
            lon, lat = ego_extent(box, others[:, YAW])
            if (
                (dx > 0)
                & (dx < 40.0)
                & (np.abs(dy) < half + lat)
                & (np.hypot(others[:, VX], others[:, VY]) > 1.0)
            ).any():
                return prof.horizon
        return math.inf

    # --------------------------------------------------------------- actions
    def act(self):
        """The next action in the env's action space (the profile's reaction delay applied:
        the action decided ``reaction_steps`` steps ago)."""
        p = self.profile
        if self._lapse > 0:
            self._lapse -= 1
        elif (
            p.lapse_rate > 0
            and self.env.scenario.traffic.yield_zone is None
            and self.rng.random() < p.lapse_rate
        ):
            self._lapse = int(self.rng.integers(p.lapse_steps[0], p.lapse_steps[1] + 1))
        action = self._decide()
        if p.reaction_steps == 0:
            return action
        self._delayed.append(action)
        if len(self._delayed) > p.reaction_steps:
            return self._delayed.popleft()
        return self._delayed[0]  # the first steps of an episode hold the first action

    def _decide(self):
        """The action for the current state: the driver's, or a noise burst's."""
        if self._burst > 0:
            self._burst -= 1
        elif self.noise > 0 and self.rng.random() < self.noise:
            self._burst = int(self.rng.integers(3, 11)) - 1
            reckless = self.rng.random() < RECKLESS_SHARE
            self._burst_action = None if reckless else self._random_action()
        else:
            self._burst_action = None
            return self._action(*self.control())
        if self._burst_action is None:  # reckless: keep to the route, ignore everyone, speed up
            return self._action(ACC_LIMIT, self.control_steer())
        return self._burst_action

    def _action(self, acc: float, steer: float):
        """``acc`` [m/s^2] and ``steer`` as an action of the env's space."""
        if self.env.action_mode == "continuous":
            return np.array([np.clip(acc / ACC_LIMIT, -1.0, 1.0), steer], dtype=np.float32)
        v = self.env.snapshot.ego_speed
        if acc > 0.5 and (v < self.profile.cruise or acc >= ACC_LIMIT):
            ia = 2
        elif acc < -0.5:
            ia = 0
        else:
            ia = 1
        values = np.asarray(self.env.task.steer_values)
        want = steer + self._carry
        js = int(np.argmin(np.abs(values - want)))
        self._carry = float(np.clip(want - values[js], -0.3, 0.3))
        return ia * len(values) + js

    def _random_action(self):
        if self.env.action_mode == "continuous":
            return self.rng.uniform(-1.0, 1.0, 2).astype(np.float32)
        return int(self.rng.integers(len(ACC_VALUES) * len(self.env.task.steer_values)))


class ExpertPolicy:
    """The expert as a :class:`carla_safe_envs.evaluation.Policy` (it reads the env, not obs).

    One :class:`Expert` per environment, created on the first ``attach`` and reset on later
    ones, so its noise stream runs on across the episodes of an evaluation.
    """

    def __init__(
        self,
        *,
        noise: float = 0.0,
        seed: int | None = None,
        profile: str | DriverProfile = "expert",
    ) -> None:
        self.noise, self.seed = noise, seed
        self.profile = get_profile(profile)
        self.expert: Expert | None = None

    def attach(self, env: gym.Env) -> None:
        if self.expert is None or self.expert.env is not env.unwrapped:
            self.expert = Expert(env, noise=self.noise, seed=self.seed, profile=self.profile)
        else:
            self.expert.reset()

    def act(self, obs, state=None, episode_start=None, deterministic=True):
        if self.expert is None:
            raise RuntimeError("ExpertPolicy.act before attach(env): the expert reads the env")
        return np.asarray([self.expert.act()]), None


def run_episodes(
    env_id: str,
    *,
    episodes: int,
    seed: int,
    noise: float = 0.0,
    profile: str | DriverProfile = "expert",
    video_path: Path | None = None,
    **env_kwargs,
) -> dict[str, float]:
    """Drive ``episodes`` episodes with the expert (driving as ``profile``); the aggregated
    metrics (DESIGN 4)."""
    from carla_safe_envs.evaluation import evaluate  # noqa: PLC0415

    env_kwargs.setdefault("render_observation", False)  # the expert never looks at the image
    results, frames = evaluate(
        env_id,
        ExpertPolicy(noise=noise, seed=seed, profile=profile),
        episodes=episodes,
        seed=seed,
        video_episodes=1 if video_path is not None else 0,
        **env_kwargs,
    )
    if video_path is not None and frames:
        write_video(video_path, frames)
    return aggregate(results)


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    try:
        import imageio.v2 as imageio  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ImportError("writing videos needs imageio: pip install 'carla-safe[video]'") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    log.info("wrote %s (%d frames)", path, len(frames))


def main(argv: list[str] | None = None) -> int:
    import carla_safe_envs  # noqa: PLC0415 - registers the ids

    parser = argparse.ArgumentParser(
        prog="python -m carla_safe_envs.expert", description=__doc__.split("\n\n")[0]
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--task", choices=carla_safe_envs.TASK_IDS, help="environment id")
    target.add_argument("--all-tasks", action="store_true", help="every task in turn")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise", type=float, default=0.0, help="probability of a random-action burst per step"
    )
    parser.add_argument(
        "--difficulty", choices=("simple", "medium", "hard"), help="Left/Right Turn only"
    )
    parser.add_argument(
        "--density", choices=("low", "base", "high"), help="traffic level (every task)"
    )
    parser.add_argument(
        "--town", help="lay the task out on another town (see docs/generalization.md)"
    )
    parser.add_argument("--action-mode", choices=("discrete", "continuous"), default="discrete")
    parser.add_argument(
        "--video-dir", type=Path, help="write a BEV video of the first episode per task here"
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    logging.basicConfig(
        level=logging.INFO if not args.json else logging.WARNING,
        format="%(message)s",
        stream=sys.stderr,
    )
    tasks = carla_safe_envs.TASK_IDS if args.all_tasks else (args.task,)
    if args.town and args.all_tasks:  # only the tasks that can be laid out on that town
        from carla_safe_envs.tasks import TASKS  # noqa: PLC0415

        tasks = tuple(t for t in tasks if args.town in TASKS[t].towns)
        if not tasks:
            parser.error(f"no task runs on town {args.town!r}")
    elif args.town:
        from carla_safe_envs.tasks import TASKS  # noqa: PLC0415

        if args.town not in TASKS[args.task].towns:
            parser.error(
                f"{args.task} has no town {args.town!r}: expected one of {list(TASKS[args.task].towns)}"
            )
    rows = {}
    for env_id in tasks:
        kwargs = {"action_mode": args.action_mode}
        if args.difficulty:
            if "Turn" not in env_id:
                if not args.all_tasks:
                    parser.error(f"--difficulty applies to the Left/Right Turn tasks, not {env_id}")
            else:
                kwargs["difficulty"] = args.difficulty
        if args.density:
            kwargs["density"] = args.density
        if args.town:
            kwargs["town"] = args.town
        video = args.video_dir / f"{env_id}.mp4" if args.video_dir else None
        t0 = time.perf_counter()
        rows[env_id] = run_episodes(
            env_id,
            episodes=args.episodes,
            seed=args.seed,
            noise=args.noise,
            video_path=video,
            **kwargs,
        )
        log.info("%s: %d episodes in %.1f s", env_id, args.episodes, time.perf_counter() - t0)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
