"""The real CARLA backend (``backend="carla"``): the same snapshot, from a CARLA server.

One reset loads the task's town if needed, switches the world to synchronous mode at 0.1 s
fixed steps, destroys the previous episode's actors, spawns the ego (``vehicle.tesla.model3``,
role ``hero``) with a collision sensor and the task's traffic (:mod:`.traffic`), and ticks
once.  One step applies the control, keeps the traffic spec (flows, re-spawns), ticks once and
reads every tracked vehicle from the world snapshot of that frame (:mod:`.convert`).  The
task, reward, cost, BEV and metrics code read that snapshot exactly as they read the embedded
simulator's.

Failures: an unreachable, foreign or wrong-version server, or a missing town, raise the errors
of :mod:`.options` within the configured timeouts.  A server that dies or hangs during a step
makes :meth:`CarlaBackend.step` reconnect (relaunching the server with ``launch_command`` when
given) and raise :class:`~carla_safe_envs.backends.base.BackendInterrupted`, which the
environment turns into a truncated step with ``info["server_restarted"]``.  Actors are
destroyed and the original world settings restored on close, after exceptions too, and at
interpreter exit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import weakref

import numpy as np

from carla_safe_envs.backends.base import (
    DT,
    EGO_LENGTH,
    EGO_WIDTH,
    STATE_DIM,
    VX,
    VY,
    BackendInterrupted,
    Control,
    Scenario,
    WorldSnapshot,
)
from carla_safe_envs.carla_backend.convert import (
    pose_transform,
    state_row,
    vehicle_control,
    velocity_vector,
)
from carla_safe_envs.carla_backend.options import (
    CarlaBackendError,
    CarlaOptions,
    CarlaSpawnError,
    CarlaUnavailableError,
)
from carla_safe_envs.carla_backend.server import Watchdog
from carla_safe_envs.carla_backend.session import ServerSession
from carla_safe_envs.carla_backend.traffic import CarlaTraffic
from carla_safe_envs.maps import load_town

log = logging.getLogger(__name__)

EGO_BLUEPRINT = "vehicle.tesla.model3"
EGO_ROLE = "hero"
COLLISION_SENSOR = "sensor.other.collision"
RESET_CALLS = 10  # a reset makes about this many blocking calls (for the watchdog's limit)


def import_carla():
    """The ``carla`` client module, or an error that says how to install it."""
    try:
        import carla  # noqa: PLC0415 - optional dependency, only for backend="carla"
    except ImportError as exc:
        from gymnasium.error import DependencyNotInstalled  # noqa: PLC0415

        raise DependencyNotInstalled(
            "backend='carla' needs the CARLA client matching the server: "
            "pip install 'carla-safe[carla]' (carla==0.9.16), or pip install carla==0.9.15"
        ) from exc
    return carla


class CollisionLog:
    """Collision events from the sensor's callback thread, taken by the stepping thread.

    CARLA delivers sensor data asynchronously: an event that arrives after the tick of its
    frame returned is counted at the next step.
    """

    def __init__(self) -> None:
        self._events: list[tuple[int, str]] = []  # (frame, other actor's type id)
        self._lock = threading.Lock()

    def record(self, event) -> None:
        other = event.other_actor
        with self._lock:
            self._events.append((int(event.frame), other.type_id if other is not None else "?"))

    def take(self, upto: int) -> list[tuple[int, str]]:
        """Remove and return the events of frames up to ``upto`` (later ones stay queued)."""
        with self._lock:
            done = [e for e in self._events if e[0] <= upto]
            self._events = [e for e in self._events if e[0] > upto]
        return done


def _shutdown(session: ServerSession, watchdog: Watchdog | None) -> None:
    try:
        session.close()
    finally:
        if watchdog is not None:
            watchdog.stop()


class CarlaBackend:
    """A CARLA 0.9.15 / 0.9.16 server as a backend; options: :class:`CarlaOptions`.

    ``carla_module`` replaces the ``carla`` client module (tests pass a stand-in with the
    same API surface).  Connects in the constructor, so a missing server fails at
    ``gym.make``.
    """

    name = "carla"

    def __init__(self, *, carla_module=None, **options):
        self.options = CarlaOptions.from_kwargs(**options)
        self._api = carla_module if carla_module is not None else import_carla()
        self._session = ServerSession(self._api, self.options)
        self._watchdog = (
            Watchdog(self._session.kill_launched) if self.options.watchdog is not None else None
        )
        # runs close() at garbage collection / interpreter exit if the user never called it
        self._finalizer = weakref.finalize(self, _shutdown, self._session, self._watchdog)
        self._ego = None
        self._traffic: CarlaTraffic | None = None
        self._foreign: dict[int, object] = {}  # vehicles of other clients: id -> bounding box
        self._rows: dict[int, np.ndarray] = {}
        self._last: WorldSnapshot | None = None
        self._steps = 0
        try:
            with self._guard("connect", self.options.launch_timeout + self.options.timeout):
                self._session.connect()
        except BaseException:
            self._finalizer()
            raise

    # ------------------------------------------------------------------ helpers
    def _guard(self, what: str, limit: float):
        if self._watchdog is None:
            return contextlib.nullcontext()
        return self._watchdog.guard(what, limit + self.options.watchdog)

    @property
    def session(self) -> ServerSession:
        return self._session

    # ---------------------------------------------------------------------- API
    def reset(self, scenario: Scenario, rng: np.random.Generator) -> WorldSnapshot:
        if not self._finalizer.alive:
            raise RuntimeError("CarlaBackend.reset() after close(): make a new environment")
        road = load_town(scenario.town)  # an unknown town fails before touching the server
        self._ego = self._traffic = None
        o = self.options
        for attempt in (0, 1):
            try:
                limit = o.launch_timeout + o.load_timeout + RESET_CALLS * o.timeout
                with self._guard("reset", limit):
                    if not self._session.connected:
                        self._session.connect()
                    return self._reset_once(scenario, rng, road)
            except CarlaBackendError:
                raise
            except RuntimeError as exc:  # a failed call to the server
                if attempt == 1 or self._session.responsive():
                    raise
                log.warning("the CARLA server at %s failed during reset (%s)", o.address, exc)
                if not self._session.recover():
                    raise CarlaUnavailableError(
                        f"the CARLA server at {o.address} stopped answering during reset "
                        f"({exc}) and no server answers again; {o.start_hint()}"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _reset_once(self, scenario: Scenario, rng: np.random.Generator, road) -> WorldSnapshot:
        api, s, o = self._api, self._session, self.options
        world = s.use_town(scenario.town)
        s.actors.destroy(s)  # the previous episode's actors
        world.tick(o.timeout)  # let the destruction take effect before spawning in their place
        s.actors.world_id = world.id
        s.tm.set_random_device_seed(int(rng.integers(2**31 - 1)))
        lib = world.get_blueprint_library()
        bp = lib.find(EGO_BLUEPRINT)
        bp.set_attribute("role_name", EGO_ROLE)
        pose = scenario.ego
        ego = world.try_spawn_actor(bp, pose_transform(api, pose))
        if ego is None:
            raise CarlaSpawnError(
                f"the ego could not be spawned at {pose} on {scenario.town}: the spot is "
                "occupied (by a vehicle of another client?)"
            )
        s.actors.add(ego)
        sensor = world.spawn_actor(lib.find(COLLISION_SENSOR), api.Transform(), attach_to=ego)
        s.actors.add(sensor, sensor=True)
        collisions = CollisionLog()
        sensor.listen(collisions.record)
        if pose.speed > 0.0:
            ego.set_target_velocity(velocity_vector(api, pose.yaw, pose.speed))
        start = np.array([pose.x, pose.y, pose.z, pose.yaw, 0.0, 0.0, EGO_LENGTH, EGO_WIDTH])
        traffic = CarlaTraffic(api, s, road, scenario.traffic, rng)
        self._traffic = traffic
        traffic.spawn(start)
        self._foreign = {
            a.id: a.bounding_box
            for a in world.get_actors().filter("vehicle.*")
            if a.id not in s.actors
        }
        if self._foreign:
            log.info("%d vehicle(s) of other clients are in the world", len(self._foreign))
        frame = world.tick(o.timeout)
        collisions.take(frame)  # contacts while spawning do not count
        self._collisions, self._ego_box, self._steps = collisions, ego.bounding_box, 0
        self._ego = ego
        return self._snapshot(collision=False)

    def step(self, control: Control) -> WorldSnapshot:
        if self._ego is None:
            raise RuntimeError("CarlaBackend.step() called before reset()")
        try:
            with self._guard("step", self.options.timeout):
                self._ego.apply_control(vehicle_control(self._api, control))
                self._traffic.before_tick(self._steps, self._last.ego, self._rows)
                frame = self._session.world.tick(self.options.timeout)
                self._steps += 1
                return self._snapshot(collision=bool(self._collisions.take(frame)))
        except CarlaBackendError:
            raise
        except RuntimeError as exc:
            if self._session.responsive():
                raise
            self._interrupted(exc)

    def _interrupted(self, exc: Exception) -> None:
        """Recover from a server lost mid-episode and end the episode (raises)."""
        o = self.options
        self._ego = self._traffic = None
        log.warning("the CARLA server at %s failed during a step: %s", o.address, exc)
        with self._guard("recovery", o.launch_timeout + 2 * o.timeout):
            restarted = self._session.recover()
        raise BackendInterrupted(
            f"the CARLA server at {o.address} failed mid-episode ({exc}); "
            + ("reconnected" if restarted else "no server answers any more"),
            info={"server_restarted": restarted, "server_error": str(exc)},
        ) from exc

    def _snapshot(self, *, collision: bool) -> WorldSnapshot:
        ws = self._session.world.get_snapshot()
        mine = ws.find(self._ego.id)
        if mine is None:
            raise CarlaBackendError(
                f"the ego (actor {self._ego.id}) is no longer in the world: another client "
                "destroyed it"
            )
        ego = state_row(mine.get_transform(), mine.get_velocity(), self._ego_box)
        rows, gone = {}, []
        for boxes in (self._traffic.boxes, self._foreign):
            for i, box in boxes.items():
                a = ws.find(i)
                if a is None:
                    gone.append(i)
                else:
                    rows[i] = state_row(a.get_transform(), a.get_velocity(), box)
        if gone:  # destroyed by someone else
            self._traffic.forget(gone)
            for i in gone:
                self._foreign.pop(i, None)
        others = np.array(list(rows.values()), dtype=np.float64).reshape(-1, STATE_DIM)
        speed = math.hypot(ego[VX], ego[VY])
        snap = WorldSnapshot(
            time=self._steps * DT,
            ego=ego,
            others=others,
            collision=collision,
            collision_speed=speed if collision else 0.0,  # after the step, as CarDreamer reads it
        )
        self._rows, self._last = rows, snap
        return snap

    def close(self) -> None:
        """Destroy the actors, restore the world settings, stop a launched server."""
        self._ego = self._traffic = None
        self._finalizer()
