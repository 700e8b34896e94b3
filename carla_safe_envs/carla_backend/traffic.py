"""Background traffic on a CARLA server: a :class:`TrafficSpec` realized with the traffic manager.

The spec means the same as in the embedded simulator; only the drivers differ (CARLA's traffic
manager instead of IDM / MOBIL).  Spawn positions come from the shared compiled map and every
random choice from the episode's generator:

* ``autopilot``: ``count`` cars on free points of ``lanes`` (``spacing`` apart, 10 m..``radius``
  from the ego, on its road level), driven by the traffic manager at 0.7-1.2 x ``speed`` with lane
  changes as ``lane_changes`` says, obeying traffic lights; every 2 s the cars further than
  ``radius`` from the ego are destroyed and re-spawned at least 40 m away (out of the BEV).
* ``flow``: a stream already flowing from ``spawn`` down the straightest lane path (100 m of
  it at reset), fed at the spawn pose whenever the last car has cleared it by a gap drawn from
  ``gap``; the traffic manager drives them along that path (``set_path``) at ``speed``,
  ignoring traffic lights (as CarDreamer's flows do), and they are destroyed at its end
  (150 m).  ``gap=None`` spawns nothing.
* ``placed``: one car at each pose, driven straight on at the pose's speed (a car placed at
  speed 0 stays parked).

The ``yield_zone`` of a spec is the embedded simulator's model of how CARLA's traffic manager
gives way at junctions; here the traffic manager itself decides.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from carla_safe_envs.backends.base import Pose, TrafficSpec, X, Y, Z
from carla_safe_envs.carla_backend.convert import (
    KMH_PER_MPS,
    pose_transform,
    velocity_vector,
)
from carla_safe_envs.carla_backend.options import CarlaBackendError, CarlaSpawnError
from carla_safe_envs.maps import RoadMap
from carla_safe_envs.route import lane_polyline, resample, straightest_successor

log = logging.getLogger(__name__)

TRAFFIC_ROLE = "carla_safe_traffic"  # role_name of every background vehicle we spawn
MIN_EGO_DISTANCE = 10.0  # autopilot vehicles spawn at least this far from the ego [m]
VIEW_CLEARANCE = 40.0  # re-spawns happen at least this far from the ego (outside the BEV) [m]
RESPAWN_PERIOD = 20  # steps between re-spawns of far autopilot vehicles (2 s)
SPEED_SPREAD = (0.7, 1.2)  # desired speeds of autopilot vehicles, x spec.speed
LEADING_DISTANCE = 2.5  # traffic manager's standstill gap (the embedded IDM's s0) [m]
PATH_LENGTH = 150.0  # length of the path of flow and placed vehicles [m]
PREFILL = 100.0  # a flow starts filled this far down its path [m]
PATH_STEP = 5  # spacing of the locations handed to the traffic manager's set_path [m]
EXIT_MARGIN = 5.0  # flow vehicles this close to the end of the path leave [m]
OFF_PATH = 8.0  # flow vehicles this far off their path (turned elsewhere) leave [m]
ENTRY_CLEARANCE = 2.6  # half a new vehicle: the flow feeds once the last car is this + gap in


class CarlaTraffic:
    """The background vehicles of one episode (ids in ``boxes``, spawn order)."""

    def __init__(self, api, session, road: RoadMap, spec: TrafficSpec, rng: np.random.Generator):
        self.api, self.session, self.road, self.spec, self.rng = api, session, road, spec, rng
        self.boxes: dict[int, object] = {}  # id -> carla.BoundingBox of each of our vehicles
        self._flow: list[int] = []  # flow vehicles, oldest first
        self._line: np.ndarray | None = None  # (N, 3) flow path, 1 m apart from the spawn
        self._next_gap = 0.0
        lib = session.world.get_blueprint_library()
        self._cars = _car_blueprints(lib) if spec.kind != "none" else []
        self._pool = None
        if spec.kind == "autopilot" and spec.lanes:
            self._pool = np.concatenate(
                [np.arange(road.lane_start[i], road.lane_start[i + 1]) for i in spec.lanes]
            )

    # ------------------------------------------------------------------ spawning
    def spawn(self, ego: np.ndarray) -> None:
        """The traffic of the episode's start, around the ego row ``ego``."""
        kind = self.spec.kind
        if kind == "autopilot":
            self._spawn_autopilot(self.spec.count, ego, {}, MIN_EGO_DISTANCE)
        elif kind == "flow":
            self._init_flow()
        elif kind == "placed":
            for pose in self.spec.placed:
                self._spawn_placed(pose)

    def _spawn(
        self,
        pose: Pose,
        speed: float,
        *,
        lane_change: bool = False,
        ignore_lights: bool = False,
        path: np.ndarray | None = None,
    ):
        """One background car at ``pose`` driven at ``speed`` [m/s]; ``None`` if occupied."""
        api, tm = self.api, self.session.tm
        bp = self._cars[int(self.rng.integers(len(self._cars)))]
        bp.set_attribute("role_name", TRAFFIC_ROLE)
        actor = self.session.world.try_spawn_actor(bp, pose_transform(api, pose))
        if actor is None:
            return None
        self.session.actors.add(actor)
        self.boxes[actor.id] = actor.bounding_box
        if speed <= 0.0:  # parked
            actor.apply_control(api.VehicleControl(brake=1.0, hand_brake=True))
            return actor
        actor.set_autopilot(True, self.session.options.tm_port)
        tm.set_desired_speed(actor, speed * KMH_PER_MPS)
        tm.auto_lane_change(actor, lane_change)
        tm.distance_to_leading_vehicle(actor, LEADING_DISTANCE)
        if ignore_lights:
            tm.ignore_lights_percentage(actor, 100.0)
        if path is not None and len(path):
            tm.set_path(actor, [api.Location(x=p[0], y=p[1], z=p[2]) for p in path.tolist()])
        actor.set_target_velocity(velocity_vector(api, pose.yaw, speed))
        return actor

    def _spawn_autopilot(
        self, n: int, ego: np.ndarray, rows: dict[int, np.ndarray], min_dist: float
    ) -> None:
        """Up to ``n`` autopilot cars on free lane points ``min_dist``..radius from the ego."""
        road, spec = self.road, self.spec
        pool = self._pool
        if pool is None:
            pool = road.candidates(float(ego[X]), float(ego[Y]), spec.radius)
        p = road.pts[pool].astype(np.float64)
        d2 = (p[:, 0] - ego[X]) ** 2 + (p[:, 1] - ego[Y]) ** 2
        ok = (d2 >= min_dist**2) & (d2 <= spec.radius**2) & (np.abs(p[:, 2] - ego[Z]) < 8.0)
        candidates = self.rng.permutation(pool[ok])
        taken = [ego[X : Y + 1]] + [r[X : Y + 1] for r in rows.values()]
        taken = np.array(taken, dtype=np.float64).reshape(-1, 2)
        for j in candidates[: max(40 * n, 200)]:
            if n <= 0:
                break
            q = road.pts[j].astype(np.float64)
            if np.any(((taken - q[:2]) ** 2).sum(1) < spec.spacing**2):
                continue
            speed = float(self.rng.uniform(*SPEED_SPREAD)) * spec.speed
            pose = Pose(float(q[0]), float(q[1]), float(road.yaw[j]), z=float(q[2]))
            if self._spawn(pose, speed, lane_change=spec.lane_changes) is not None:
                n -= 1
                taken = np.vstack([taken, q[None, :2]])
        if n > 0:
            log.debug("autopilot traffic: %d vehicle(s) found no free spawn point", n)

    def _path_from(self, x: float, y: float, z: float, yaw: float, what: str) -> np.ndarray:
        """(N, 3) points 1 m apart along the straightest lane path from a pose on a lane."""
        road = self.road
        lp = road.locate(x, y, z, yaw, radius=4.0)
        if lp is None:
            raise ValueError(f"{what} ({x}, {y}) is not on a {road.town} lane heading its way")
        lanes, total = [lp.lane], road.lane_length[lp.lane] - lp.s
        while total < PATH_LENGTH and len(road.successors(lanes[-1])):
            lanes.append(straightest_successor(road, lanes[-1]))
            total += road.lane_length[lanes[-1]]
        return resample(lane_polyline(road, lanes, lp.s))

    def _init_flow(self) -> None:
        s = self.spec.spawn
        self._line = self._path_from(s.x, s.y, s.z, s.yaw, "flow spawn")
        if self.spec.gap is None:
            return
        at = 0.0
        while at <= min(PREFILL, len(self._line) - 1 - EXIT_MARGIN):
            actor = self._spawn_on_flow(int(at))
            length = 2.0 * actor.bounding_box.extent.x if actor is not None else 4.6
            at += length + float(self.rng.uniform(*self.spec.gap))
        self._next_gap = float(self.rng.uniform(*self.spec.gap))

    def _spawn_on_flow(self, k: int):
        line = self._line
        d = line[min(k + 1, len(line) - 1), :2] - line[max(k - 1, 0), :2]
        pose = Pose(
            float(line[k, 0]), float(line[k, 1]), math.atan2(d[1], d[0]), z=float(line[k, 2])
        )
        actor = self._spawn(pose, self.spec.speed, ignore_lights=True, path=line[k::PATH_STEP][1:])
        if actor is not None:
            self._flow.append(actor.id)
        return actor

    def _spawn_placed(self, pose: Pose) -> None:
        line = self._path_from(pose.x, pose.y, pose.z, pose.yaw, "placed vehicle")
        actor = self._spawn(pose, pose.speed, ignore_lights=True, path=line[PATH_STEP::PATH_STEP])
        if actor is None:
            raise CarlaSpawnError(f"placed vehicle at {pose} could not be spawned: occupied")

    # ---------------------------------------------------------------------- step
    def before_tick(self, step: int, ego: np.ndarray, rows: dict[int, np.ndarray]) -> None:
        """Keep the spec between ticks: ``rows`` are the last snapshot rows by actor id."""
        if self.spec.kind == "flow" and self._line is not None:
            self._flow_step(rows)
        elif self.spec.kind == "autopilot" and step > 0 and step % RESPAWN_PERIOD == 0:
            r2 = self.spec.radius**2
            far = [
                i
                for i in self.boxes
                if i in rows and (rows[i][X] - ego[X]) ** 2 + (rows[i][Y] - ego[Y]) ** 2 > r2
            ]
            if far:
                self.remove(far)
                near = {i: r for i, r in rows.items() if i not in far}
                self._spawn_autopilot(len(far), ego, near, VIEW_CLEARANCE)

    def _flow_step(self, rows: dict[int, np.ndarray]) -> None:
        line = self._line
        leaving, progress = [], {}
        for i in self._flow:
            if i not in rows:
                continue
            d2 = (line[:, 0] - rows[i][X]) ** 2 + (line[:, 1] - rows[i][Y]) ** 2
            k = int(np.argmin(d2))
            progress[i] = float(k)
            if k >= len(line) - 1 - EXIT_MARGIN or d2[k] > OFF_PATH**2:
                leaving.append(i)
        if leaving:
            self.remove(leaving)
        if self.spec.gap is None:
            return
        # the rear of the car nearest the spawn (one spawned since the last snapshot: at it)
        rear = min(
            (progress.get(i, 0.0) - self.boxes[i].extent.x for i in self._flow), default=math.inf
        )
        if rear >= self._next_gap + ENTRY_CLEARANCE and self._spawn_on_flow(0) is not None:
            self._next_gap = float(self.rng.uniform(*self.spec.gap))

    def remove(self, ids: list[int]) -> None:
        """Destroy some of our vehicles (they left the flow or the ego's surroundings)."""
        self.session.actors.destroy(self.session, ids)
        for i in ids:
            self.boxes.pop(i, None)
        self._flow = [i for i in self._flow if i in self.boxes]

    def forget(self, ids) -> None:
        """Vehicles that disappeared from the world without us (destroyed by someone else)."""
        for i in ids:
            self.boxes.pop(i, None)
        self._flow = [i for i in self._flow if i in self.boxes]


def _car_blueprints(lib) -> list:
    """The server's car blueprints (sorted by id, so a seed picks the same ones)."""
    bps = sorted(lib.filter("vehicle.*"), key=lambda b: b.id)
    cars = [
        b
        for b in bps
        if b.has_attribute("base_type") and b.get_attribute("base_type").as_str().lower() == "car"
    ]
    if not cars:  # servers whose blueprints carry no base_type
        cars = [
            b
            for b in bps
            if b.has_attribute("number_of_wheels")
            and b.get_attribute("number_of_wheels").as_int() == 4
        ]
    if not cars:
        raise CarlaBackendError("the CARLA server offers no 4-wheeled vehicle blueprints")
    return cars
