"""The one environment class of the four tasks; ``step`` is written once, here.

Description:
    A CarDreamer safe-driving task (Four Lane, Left Turn, Right Turn, Navigation) on the real
    CARLA Town03 / Town04 roads.  The ego follows a planned route (drawn blue in the BEV) among
    background traffic; the task decides the start, the route and the traffic.

Action Space:
    ``action_mode="discrete"`` (default): ``Discrete(15)``, ``acc = [-2, 0, 2][a // 5]`` m/s^2,
    ``steer = [-0.6, -0.2, 0, 0.2, 0.6][a % 5]`` (Right Turn: ``[-0.9, -0.3, 0, 0.3, 0.9]``).
    ``action_mode="continuous"``: ``Box(-1, 1, (2,))`` = (acc / 3, steer), i.e. DESIGN's
    acc in [-3, 3] m/s^2 normalized as Gymnasium's checker and SB3 recommend.  Control:
    ``throttle = clip(acc / 3, 0, 1)``, ``brake = clip(-acc / 3, 0, 1)``.  Actions outside the
    space raise ``ValueError`` (nothing is clipped silently).

Observation Space:
    ``Box(0, 255, (128, 128, 3), uint8)``: bird's-eye view, ego heading up at column 64 /
    row 80, 4 px per metre (20 m ahead, 12 m behind, 16 m each side); road grey, lane markings
    white / yellow, route blue, ego red, other vehicles green.  ``render_observation=False``
    returns black frames (for fast rollouts that do not look at the image).  ``speed_cue=True``
    (not CarDreamer's: default off) draws the ego's speed as a magenta bar up the left edge,
    full height at 10 m/s (:func:`carla_safe_envs.bev.draw_speed_cue`): one frame shows no
    speed, and the models that see one frame (or a 32 px one) cannot tell 4 m/s from 7.

Rewards (CarDreamer), reported by name in ``info["reward_terms"]``:
    ``waypoint`` +2 per route waypoint reached (waypoints 1 m apart); ``speed``
    0.5 x (4 - |v_long - 4| - 2 min(|v_lat|, 0.5)) with velocities along / across the route;
    ``collision`` -30 x speed [m/s]; ``out_of_lane`` -3 (e - 0.5) when the lateral error
    e > 0.5 m; ``arrival`` +20 on reaching the destination.

Cost (``info["cost"]``, per step, in {0, 1}; components in ``info["cost_terms"]``):
    1 when any of these unsafe events holds at the step, else 0: ``collision`` (the ego's box
    touched another vehicle), ``out_of_lane`` (lateral error from the route > 0.5 m),
    ``off_road`` (the ego's centre is off every driving lane), ``ttc`` (time to collision with
    any vehicle under constant velocities < 2 s).  Zero at reset.

Starting State:
    The task's start pose at rest (Four Lane: a random one of the four lanes; Navigation: a
    random lane point) and freshly spawned traffic, all drawn from the seed.

Episode End:
    ``terminated`` on a collision, on leaving the route (lateral error > 3 m) or on arrival
    (the last waypoint reached); ``truncated`` after 500 steps (``max_episode_steps``), or when
    the backend lost the episode (``backend="carla"``: the server died or hung; that step
    simulates nothing, has zero reward and cost, and its info carries the backend's flags,
    e.g. ``info["server_restarted"]``).

Arguments:
    ``gym.make(ID, backend="sim", action_mode="discrete", render_mode=None,
    render_observation=True, speed_cue=False, backend_options=None, **task_options)``; task options:
    Four Lane ``num_vehicles``, ``traffic_speed``, ``stretch_min``, ``stretch_max``,
    ``change_length``; Left/Right Turn ``difficulty`` (simple / medium / hard),
    ``flow_speed``; Navigation ``num_vehicles``, ``traffic_speed``, ``route_length``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from carla_safe_envs.backends import make_backend
from carla_safe_envs.backends.base import (
    DT,
    VY,
    BackendInterrupted,
    Control,
    Pose,
    TrafficSpec,
    WorldSnapshot,
    X,
    Y,
)
from carla_safe_envs.bev import BevRenderer, draw_speed_cue
from carla_safe_envs.geometry import time_to_collision
from carla_safe_envs.maps import load_town
from carla_safe_envs.tasks import ACC_VALUES, TASKS

OBS_SIZE = 128  # [px]
DESIRED_SPEED = 4.0  # [m/s]
LANE_TOLERANCE = 0.5  # lateral error above which the ego is out of its lane [m]
OFF_ROUTE = 3.0  # lateral error that ends the episode [m]
TTC_THRESHOLD = 2.0  # [s]
ACC_LIMIT = 3.0  # continuous action a[0] = 1 is this acceleration [m/s^2]
ACTION_MODES = ("discrete", "continuous")
REWARD_TERMS = ("waypoint", "speed", "collision", "out_of_lane", "arrival")
COST_TERMS = ("collision", "out_of_lane", "off_road", "ttc")
RESET_OPTIONS = {"ego": Pose, "traffic": TrafficSpec}


@dataclass(frozen=True)
class StepSignals:
    """What the reward, cost, termination and metrics read after a step."""

    new_waypoints: int
    v_long: float  # [m/s] along the route
    v_lat: float  # [m/s] across the route
    speed: float  # [m/s]
    lateral_error: float  # [m]
    collision: bool
    collision_speed: float  # [m/s]
    off_road: bool
    ttc: float  # [s]
    arrived: bool


def reward_terms(sig: StepSignals) -> dict[str, float]:
    """CarDreamer's reward, by term."""
    e = sig.lateral_error
    return {
        "waypoint": 2.0 * sig.new_waypoints,
        "speed": 0.5
        * (DESIRED_SPEED - abs(sig.v_long - DESIRED_SPEED) - 2.0 * min(abs(sig.v_lat), 0.5)),
        "collision": -30.0 * sig.collision_speed if sig.collision else 0.0,
        "out_of_lane": -3.0 * (e - LANE_TOLERANCE) if e > LANE_TOLERANCE else 0.0,
        "arrival": 20.0 if sig.arrived else 0.0,
    }


def cost_terms(sig: StepSignals) -> dict[str, float]:
    """Indicators of the unsafe events; the step's cost is 1 if any holds."""
    return {
        "collision": float(sig.collision),
        "out_of_lane": float(sig.lateral_error > LANE_TOLERANCE),
        "off_road": float(sig.off_road),
        "ttc": float(sig.ttc < TTC_THRESHOLD),
    }


def discrete_action_values(task_id: str) -> np.ndarray:
    """(n, 2) float64: (acc [m/s^2], steer) of each discrete action of ``task_id``, index
    ``i = acc_index * len(steer_values) + steer_index`` (CarDreamer's order); the one table
    :meth:`CarlaSafeEnv.action_to_control` reads."""
    steer_values = TASKS[task_id].steer_values
    return np.array([(acc, steer) for acc in ACC_VALUES for steer in steer_values])


def discrete_to_continuous(task_id: str, actions: Any) -> np.ndarray:
    """(..., 2) float32: the continuous-mode actions ``(acc / ACC_LIMIT, steer)`` that give the
    same control as the discrete ``actions`` (indices, any shape) of ``task_id``."""
    table = (discrete_action_values(task_id) / (ACC_LIMIT, 1.0)).astype(np.float32)
    index = np.asarray(actions)
    if not np.issubdtype(index.dtype, np.integer) or (
        index.size and (index.min() < 0 or index.max() >= len(table))
    ):
        raise ValueError(
            f"discrete actions of {task_id} must be integers in [0, {len(table)}), got {actions!r}"
        )
    return table[index]


class CarlaSafeEnv(gym.Env):
    __doc__ = __doc__
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: str,
        *,
        backend: str = "sim",
        action_mode: str = "discrete",
        render_mode: str | None = None,
        render_observation: bool = True,
        speed_cue: bool = False,
        backend_options: dict[str, Any] | None = None,
        **task_options: Any,
    ):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}: expected one of {sorted(TASKS)}")
        if action_mode not in ACTION_MODES:
            raise ValueError(
                f"unknown action_mode {action_mode!r}: expected one of {list(ACTION_MODES)}"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"unsupported render_mode {render_mode!r}: expected None or 'rgb_array'"
            )
        task_cls = TASKS[task]
        self.road = load_town(task_cls.town_for(task_options))  # the `town` option, if any
        self.task = task_cls(self.road, **task_options)
        self.backend = make_backend(backend, **(backend_options or {}))
        self.action_mode = action_mode
        self.render_mode = render_mode
        self.render_observation = bool(render_observation)
        if not isinstance(speed_cue, (bool, np.bool_)):
            raise TypeError(f"speed_cue must be True or False, got {speed_cue!r}")
        self.speed_cue = bool(speed_cue)
        self.observation_space = spaces.Box(0, 255, (OBS_SIZE, OBS_SIZE, 3), np.uint8)
        self._discrete_table = discrete_action_values(task)  # (n, 2) (acc, steer)
        if action_mode == "discrete":
            self._discrete_values = [tuple(v) for v in self._discrete_table.tolist()]
            self.action_space = spaces.Discrete(len(self._discrete_values))
        else:
            self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)  # (acc / ACC_LIMIT, steer)
        self._bev = BevRenderer(self.road, size=OBS_SIZE)
        self._video: BevRenderer | None = None
        self.snapshot: WorldSnapshot | None = None
        self.scenario = None
        self.route = None

    # ----------------------------------------------------------------- actions
    def action_to_control(self, action) -> Control:
        """The CARLA control of an action; raises ``ValueError`` for actions outside the space."""
        if self.action_mode == "discrete":
            if isinstance(action, (int, np.integer)) and not isinstance(action, bool):
                i = int(action)  # the common case, without building an array
            else:
                a = np.asarray(action)
                if a.shape not in ((), (1,)) or not np.issubdtype(a.dtype, np.integer):
                    raise ValueError(
                        f"discrete action must be one integer in [0, {self.action_space.n}), got {action!r}"
                    )
                i = int(a.reshape(()))
            if not 0 <= i < self.action_space.n:
                raise ValueError(
                    f"discrete action {i} is out of range: expected 0 <= action < {self.action_space.n}"
                )
            acc, steer = self._discrete_values[i]
        else:
            a = np.asarray(action, dtype=np.float64)
            if a.shape != (2,) or not np.all(np.isfinite(a)):
                raise ValueError(
                    f"continuous action must be a finite (acc, steer) pair of shape (2,), got {action!r}"
                )
            if np.any(np.abs(a) > 1.0 + 1e-6):
                raise ValueError(
                    f"continuous action {a.tolist()} is out of range: expected both components in [-1, 1]"
                )
            acc, steer = ACC_LIMIT * float(a[0]), float(a[1])
        return Control(
            throttle=min(max(acc / 3.0, 0.0), 1.0),
            brake=min(max(-acc / 3.0, 0.0), 1.0),
            steer=steer,
        )

    def get_keys_to_action(self) -> dict[tuple[str, ...], Any]:
        """Keyboard controls for ``gymnasium.utils.play`` (``python -m carla_safe_envs.play``):
        ``w`` accelerate, ``s`` brake, ``a`` / ``d`` steer left / right (the strongest
        steer), combinations of one of each; no key is :meth:`noop_action` (coast straight)."""
        acc = {"": 1, "w": 2, "s": 0}  # index into ACC_VALUES (-2, 0, 2) [m/s^2]
        n_steer = len(self._discrete_table) // len(ACC_VALUES)
        steer = {"": n_steer // 2, "a": 0, "d": n_steer - 1}  # CARLA: negative steer is left
        keys: dict[tuple[str, ...], Any] = {}
        for a_key, a in acc.items():
            for s_key, st in steer.items():
                combo = tuple(sorted(a_key + s_key))
                if not combo:
                    continue  # no key: gymnasium's play takes it as `noop`
                if self.action_mode == "discrete":
                    keys[combo] = a * n_steer + st
                else:
                    acc_value, steer_value = self._discrete_table[a * n_steer + st]
                    keys[combo] = np.array([acc_value / ACC_LIMIT, steer_value], np.float32)
        return keys

    def noop_action(self) -> Any:
        """The action of no key in :meth:`get_keys_to_action`: no acceleration, no steer."""
        index = int(np.flatnonzero((self._discrete_table == 0.0).all(axis=1))[0])
        if self.action_mode == "discrete":
            return index
        return np.zeros(2, np.float32)

    # -------------------------------------------------------------------- API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode.  ``options`` may script it: ``{"ego": Pose}`` replaces the start
        pose (the route stays the task's), ``{"traffic": TrafficSpec}`` the traffic."""
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(
                f"unknown reset option(s) {unknown}: expected {list(RESET_OPTIONS)} (task options go to gym.make)"
            )
        for key, expected in RESET_OPTIONS.items():
            if key in options and not isinstance(options[key], expected):
                raise TypeError(
                    f"reset option {key!r} must be a {expected.__name__}, got {type(options[key]).__name__}"
                )
        scenario, self.route = self.task.episode(self.np_random)
        if options:
            scenario = dataclasses.replace(scenario, **options)
        self.scenario = scenario
        backend_rng = np.random.default_rng(int(self.np_random.integers(2**63)))
        self.snapshot = self.backend.reset(scenario, backend_rng)
        self._waypoints = 0
        self._distance = 0.0
        proj = self.route.project(*self.snapshot.ego[X : Y + 1].tolist(), search_all=True)
        self._projection = proj
        info = self._info(
            self._signals(self.snapshot, proj, new_waypoints=0, initial=True), reward={}, cost={}
        )
        return self._observe(), info

    def step(self, action):
        if self.snapshot is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        control = self.action_to_control(action)
        px, py = self.snapshot.ego[X : Y + 1].tolist()
        try:
            snap = self.snapshot = self.backend.step(control)
        except BackendInterrupted as exc:
            return self._interrupted(exc)
        x, y = snap.ego[X : Y + 1].tolist()  # Python floats: scalar maths on numpy is slower
        self._distance += math.hypot(x - px, y - py)
        proj = self._projection = self.route.project(x, y)
        reached = min(int(proj.progress + 1e-6), len(self.route) - 1)
        new = max(reached - self._waypoints, 0)
        self._waypoints += new
        sig = self._signals(snap, proj, new_waypoints=new)
        rterms, cterms = reward_terms(sig), cost_terms(sig)
        reward = float(sum(rterms.values()))
        off_route = sig.lateral_error > OFF_ROUTE
        terminated = sig.collision or off_route or sig.arrived
        info = self._info(sig, reward=rterms, cost=cterms)
        return self._observe(), reward, terminated, False, info

    def _interrupted(self, exc: BackendInterrupted):
        """End the episode as truncated: the backend lost it (nothing was simulated)."""
        sig = self._signals(self.snapshot, self._projection, new_waypoints=0, initial=True)
        info = self._info(sig, reward={}, cost={})
        info["off_route"] = False
        info.update(exc.info)
        obs = self._observe()
        self.snapshot = None  # the next step needs a reset
        return obs, 0.0, False, True, info

    def _signals(
        self, snap: WorldSnapshot, proj, *, new_waypoints: int, initial: bool = False
    ) -> StepSignals:
        ego = snap.ego
        x, y, z, _, vx, vy = ego[: VY + 1].tolist()
        c, s = math.cos(proj.yaw), math.sin(proj.yaw)
        return StepSignals(
            new_waypoints=new_waypoints,
            v_long=vx * c + vy * s,
            v_lat=-vx * s + vy * c,
            speed=math.hypot(vx, vy),
            lateral_error=abs(proj.lateral),
            collision=snap.collision and not initial,
            collision_speed=snap.collision_speed,
            # on the route's lane there is no need to search the map
            off_road=abs(proj.lateral) > 0.5 * proj.width - 0.25 and not self.road.on_road(x, y, z),
            ttc=time_to_collision(ego, snap.others),
            arrived=(not initial) and self._waypoints >= len(self.route) - 1,
        )

    def _info(self, sig: StepSignals, *, reward: dict, cost: dict) -> dict[str, Any]:
        cost = cost or dict.fromkeys(COST_TERMS, 0.0)
        return {
            "cost": float(max(cost.values())),
            "cost_terms": cost,
            "reward_terms": reward or dict.fromkeys(REWARD_TERMS, 0.0),
            "speed": sig.speed,
            "collision": sig.collision,
            "out_of_lane": sig.lateral_error > LANE_TOLERANCE,
            "off_road": sig.off_road,
            "off_route": sig.lateral_error > OFF_ROUTE,  # at reset too: one set of info keys
            "arrived": sig.arrived,
            "waypoints_reached": self._waypoints,
            "distance": self._distance,
            "lateral_error": sig.lateral_error,
            "ttc": sig.ttc,
            "backend": self.backend.name,
        }

    def _route_ahead(self) -> np.ndarray:
        return self.route.ahead(self._projection.progress)

    def _observe(self) -> np.ndarray:
        if not self.render_observation:
            return np.zeros(self.observation_space.shape, np.uint8)
        ego = self.snapshot.ego
        image = self._bev.render(ego, self.snapshot.others, self._route_ahead())
        if self.speed_cue:
            draw_speed_cue(image, self.snapshot.ego_speed)
        return image

    def render(self):
        """A 512 x 512 BEV of the last state (64 m x 64 m) when ``render_mode="rgb_array"``."""
        if self.render_mode is None:
            gym.logger.warn(
                "render() called with render_mode=None; pass render_mode='rgb_array' to gym.make"
            )
            return None
        if self.snapshot is None:
            raise gym.error.ResetNeeded("call reset() before render()")
        if self._video is None:
            self._video = BevRenderer(self.road, size=256, upscale=2)
        return self._video.render(self.snapshot.ego, self.snapshot.others, self._route_ahead())

    def close(self) -> None:
        self.backend.close()
        super().close()


__all__ = ["CarlaSafeEnv", "COST_TERMS", "REWARD_TERMS", "DT"]
