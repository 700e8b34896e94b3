"""A stand-in for the part of the ``carla`` client API that the CARLA backend uses.

``FakeCarla()`` looks like the ``carla`` module (value classes, ``Client``, ``command``).
Behind its clients is a :class:`FakeSimulator` per address, which keeps a world (settings,
actors, frames) and moves the vehicles on ``tick`` with simple kinematics:

* the server is *alive* exactly while something accepts TCP connections on its port and
  sends a token line: a :class:`Listener` thread here, or a stand-in server process
  (``python fake_carla.py PORT``, what a test's ``launch_command`` runs).  Every call first
  connects there, so a killed server makes calls fail with CARLA's time-out message, and a
  new token (a restarted server) means a fresh world: default settings, no actors, new id;
* ``calls`` records every call with its arguments, for assertions on what the backend did;
* vehicles closer than ``CONTACT`` metres to the ego raise a collision event on its sensor.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import os
import socket
import sys
import threading
import time
from types import SimpleNamespace

DT = 0.1
CONTACT = 2.5  # centre distance at which the fake reports a collision with the ego [m]


# ------------------------------------------------------------------ value classes
class Vector3D:
    def __init__(self, x=0.0, y=0.0, z=0.0):
        self.x, self.y, self.z = float(x), float(y), float(z)


class Location(Vector3D):
    pass


class Rotation:
    def __init__(self, pitch=0.0, yaw=0.0, roll=0.0):
        self.pitch, self.yaw, self.roll = float(pitch), float(yaw), float(roll)


class Transform:
    def __init__(self, location=None, rotation=None):
        self.location = location or Location()
        self.rotation = rotation or Rotation()


class BoundingBox:
    def __init__(self, location, extent):
        self.location, self.extent = location, extent


class VehicleControl:
    def __init__(self, throttle=0.0, steer=0.0, brake=0.0, hand_brake=False, reverse=False,
                 manual_gear_shift=False, gear=0):  # fmt: skip
        self.throttle, self.steer, self.brake = throttle, steer, brake
        self.hand_brake, self.reverse, self.manual_gear_shift = (
            hand_brake,
            reverse,
            manual_gear_shift,
        )


class WorldSettings:
    FIELDS = ("synchronous_mode", "no_rendering_mode", "fixed_delta_seconds")

    def __init__(self, synchronous_mode=False, no_rendering_mode=False, fixed_delta_seconds=None):
        self.synchronous_mode = synchronous_mode
        self.no_rendering_mode = no_rendering_mode
        self.fixed_delta_seconds = fixed_delta_seconds

    def as_tuple(self):
        return tuple(getattr(self, f) for f in self.FIELDS)


class DestroyActor:
    def __init__(self, actor_id):
        self.actor_id = actor_id


# ------------------------------------------------------------------- the server
def serve(sock: socket.socket, token: bytes) -> None:
    """Accept connections forever, answering each with ``token``."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.sendall(token + b"\n")


class Listener:
    """An in-process 'server process': alive from ``start()`` to ``stop()``."""

    def __init__(self, port: int = 0):
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.token = f"listener-{id(self)}-{time.monotonic_ns()}".encode()
        threading.Thread(target=serve, args=(self.sock, self.token), daemon=True).start()

    def stop(self) -> None:
        with _suppress():
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


BLUEPRINTS = {  # id -> (base_type, wheels, half extents)
    "vehicle.tesla.model3": ("car", 4, (2.3955, 1.0818, 0.7462)),
    "vehicle.audi.a2": ("car", 4, (1.8577, 0.9, 0.7748)),
    "vehicle.nissan.patrol": ("car", 4, (2.3, 0.96, 0.93)),
    "vehicle.carlamotors.carlacola": ("truck", 4, (2.6, 1.3, 1.2)),
    "vehicle.kawasaki.ninja": ("motorcycle", 2, (1.0, 0.4, 0.6)),
    "sensor.other.collision": ("sensor", 0, (0.0, 0.0, 0.0)),
}


class Attribute:
    def __init__(self, value):
        self.value = value

    def as_str(self):
        return str(self.value)

    def as_int(self):
        return int(self.value)


class Blueprint:
    def __init__(self, bp_id):
        self.id = bp_id
        base, wheels, _ = BLUEPRINTS[bp_id]
        self.attributes = {"role_name": "", "base_type": base, "number_of_wheels": wheels}

    def has_attribute(self, name):
        return name in self.attributes

    def get_attribute(self, name):
        return Attribute(self.attributes[name])

    def set_attribute(self, name, value):
        self.attributes[name] = value


class Actor:
    def __init__(self, sim, actor_id, bp, transform, parent=None):
        self.sim, self.id, self.type_id, self.parent = sim, actor_id, bp.id, parent
        self.attributes = dict(bp.attributes)
        hx, hy, hz = BLUEPRINTS[bp.id][2]
        self.bounding_box = BoundingBox(Location(0.05, 0.0, hz), Vector3D(hx, hy, hz))
        self.transform, self.velocity = transform, Vector3D()
        self.control, self.autopilot, self.path, self.speed = None, False, [], 0.0
        self.callback = None

    # vehicles
    def apply_control(self, control):
        self.sim.rpc("apply_control", self.id)
        self.control = control

    def set_autopilot(self, enabled, port):
        self.sim.rpc("set_autopilot", self.id, enabled, port)
        self.autopilot = enabled

    def set_target_velocity(self, v):
        self.sim.rpc("set_target_velocity", self.id, (v.x, v.y, v.z))
        self.velocity = Vector3D(v.x, v.y, v.z)

    # sensors
    def listen(self, callback):
        self.sim.rpc("listen", self.id)
        self.callback = callback

    def stop(self):
        self.sim.rpc("stop", self.id)
        self.callback = None


class TrafficManager:
    def __init__(self, sim, port):
        self.sim, self.port = sim, port

    def __getattr__(self, name):  # every setter the backend uses, recorded
        if name not in TM_METHODS:
            raise AttributeError(name)

        def call(*args):
            self.sim.rpc(f"tm.{name}", *args)
            if name == "set_desired_speed":
                args[0].speed = args[1] / 3.6
            elif name == "set_path":
                args[0].path = [(p.x, p.y) for p in args[1]]

        return call


TM_METHODS = {
    "set_synchronous_mode", "set_random_device_seed", "set_desired_speed", "auto_lane_change",
    "distance_to_leading_vehicle", "ignore_lights_percentage", "set_path",
}  # fmt: skip


class FakeSimulator:
    """The state of the server at one address (see the module docstring)."""

    _ids = itertools.count(1000)

    def __init__(self, host, port, *, version="0.9.16", maps=("Town03", "Town04")):
        self.host, self.port, self.version, self.maps = host, port, version, maps
        self.token = None
        self.calls: list[tuple] = []
        self.hang = False  # the next tick blocks while the server is up (a hung server)
        self.busy_ports: set[int] = set()  # ports on which a traffic manager cannot start
        self.boots = 0

    def _boot(self, token):
        self.token, self.boots = token, self.boots + 1
        self.world_id = next(self._ids)
        self.town = "Town10HD_Opt"
        self.settings = WorldSettings()
        self.actors: dict[int, Actor] = {}
        self.frame = 0

    def rpc(self, name, *args):
        """Reach the server (fails like CARLA's client when it is down); log the call."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.settimeout(0.5)
                token = s.makefile("rb").readline().strip()
        except OSError:
            token = b""
        if not token:
            raise RuntimeError(
                "time-out of 500ms while waiting for the simulator, make sure the simulator "
                f"is ready and connected to {self.host}:{self.port}"
            )
        if token != self.token:
            self._boot(token)
        self.calls.append((name, *args))

    def names(self):
        return [c[0] for c in self.calls]

    def alive_up(self):
        try:
            self.rpc("ping")
            return True
        except RuntimeError:
            return False

    def spawn(self, bp, transform, parent=None):
        actor = Actor(self, next(self._ids), bp, transform, parent)
        actor.attributes = dict(bp.attributes)
        self.actors[actor.id] = actor
        return actor

    def vehicles(self):
        return [a for a in self.actors.values() if a.type_id.startswith("vehicle.")]

    def step(self):
        """Move every vehicle by DT and report contacts with the ego."""
        self.frame += 1
        for a in self.vehicles():
            t, v = a.transform, a.velocity
            if a.control is not None and not a.autopilot:
                c = a.control
                speed = math.hypot(v.x, v.y)
                speed = max(speed + (4.0 * c.throttle - 8.0 * c.brake) * DT, 0.0)
                if c.hand_brake:
                    speed = 0.0
                t.rotation.yaw += math.degrees(speed / 2.9 * math.tan(0.6 * c.steer) * DT)
                yaw = math.radians(t.rotation.yaw)
                a.velocity = Vector3D(speed * math.cos(yaw), speed * math.sin(yaw))
            elif a.autopilot:
                yaw = math.radians(t.rotation.yaw)
                reach = a.speed * DT + 0.5
                while a.path and math.dist(a.path[0], (t.location.x, t.location.y)) < reach:
                    a.path.pop(0)
                if a.path:
                    yaw = math.atan2(a.path[0][1] - t.location.y, a.path[0][0] - t.location.x)
                    t.rotation.yaw = math.degrees(yaw)
                a.velocity = Vector3D(a.speed * math.cos(yaw), a.speed * math.sin(yaw))
            t.location.x += a.velocity.x * DT
            t.location.y += a.velocity.y * DT
        for sensor in [a for a in self.actors.values() if a.callback is not None]:
            ego = sensor.parent
            for other in self.vehicles():
                if other is not ego and _dist(ego, other) < CONTACT:
                    sensor.callback(SimpleNamespace(frame=self.frame, other_actor=other))


def _dist(a, b):
    return math.hypot(
        a.transform.location.x - b.transform.location.x,
        a.transform.location.y - b.transform.location.y,
    )


# ------------------------------------------------------------------ client side
class ActorList(list):
    def filter(self, pattern):
        return ActorList(a for a in self if fnmatch.fnmatch(a.type_id, pattern))


class BlueprintLibrary(list):
    def filter(self, pattern):
        return [b for b in self if fnmatch.fnmatch(b.id, pattern)]

    def find(self, bp_id):
        return next(b for b in self if b.id == bp_id)


class ActorSnapshot:
    def __init__(self, actor):
        loc, rot, v = actor.transform.location, actor.transform.rotation, actor.velocity
        self._t = Transform(Location(loc.x, loc.y, loc.z), Rotation(rot.pitch, rot.yaw, rot.roll))
        self._v = Vector3D(v.x, v.y, v.z)

    def get_transform(self):
        return self._t

    def get_velocity(self):
        return self._v


class World:
    def __init__(self, sim):
        self.sim = sim
        self.id = sim.world_id

    def get_map(self):
        self.sim.rpc("get_map")
        return SimpleNamespace(name=f"Carla/Maps/{self.sim.town}")

    def get_settings(self):
        self.sim.rpc("get_settings")
        return WorldSettings(*self.sim.settings.as_tuple())

    def apply_settings(self, settings):
        self.sim.rpc("apply_settings", settings.as_tuple())
        self.sim.settings = WorldSettings(*settings.as_tuple())

    def tick(self, seconds=0.0):
        self.sim.rpc("tick")
        deadline = time.monotonic() + 20.0  # a test whose watchdog fails must not hang
        while self.sim.hang:  # a hung server: blocks until it is killed
            time.sleep(0.02)
            self.sim.hang = self.sim.alive_up() and time.monotonic() < deadline
            if not self.sim.hang:
                self.sim.rpc("tick")  # raises when the server is gone
        self.sim.step()
        return self.sim.frame

    def get_snapshot(self):
        self.sim.rpc("get_snapshot")
        snaps = {i: ActorSnapshot(a) for i, a in self.sim.actors.items()}
        return SimpleNamespace(frame=self.sim.frame, find=snaps.get)

    def get_blueprint_library(self):
        self.sim.rpc("get_blueprint_library")
        return BlueprintLibrary(Blueprint(b) for b in BLUEPRINTS)

    def try_spawn_actor(self, bp, transform):
        self.sim.rpc("try_spawn_actor", bp.id)
        loc = transform.location
        for a in self.sim.vehicles():
            if math.hypot(a.transform.location.x - loc.x, a.transform.location.y - loc.y) < 2.0:
                return None
        return self.sim.spawn(bp, transform)

    def spawn_actor(self, bp, transform, attach_to=None):
        self.sim.rpc("spawn_actor", bp.id)
        return self.sim.spawn(bp, transform, parent=attach_to)

    def get_actors(self):
        self.sim.rpc("get_actors")
        return ActorList(self.sim.actors.values())


class Client:
    def __init__(self, fake, host, port):
        self.sim = fake.simulator(host, port)
        self.timeout = None

    def set_timeout(self, seconds):
        self.timeout = seconds

    def get_server_version(self):
        self.sim.rpc("get_server_version")
        return self.sim.version

    def get_client_version(self):
        return "0.9.16"

    def get_world(self):
        self.sim.rpc("get_world")
        return World(self.sim)

    def get_available_maps(self):
        self.sim.rpc("get_available_maps")
        return [f"/Game/Carla/Maps/{m}" for m in self.sim.maps]

    def load_world(self, town):
        self.sim.rpc("load_world", town)
        self.sim.world_id = next(FakeSimulator._ids)
        self.sim.town, self.sim.actors, self.sim.settings = town, {}, WorldSettings()
        return World(self.sim)

    def get_trafficmanager(self, port):
        self.sim.rpc("get_trafficmanager", port)
        if port in self.sim.busy_ports:
            raise RuntimeError(
                "trying to create rpc server for traffic manager; but the system failed to "
                "create because of bind error."
            )
        return TrafficManager(self.sim, port)

    def apply_batch_sync(self, commands, do_tick=False):
        self.sim.rpc("apply_batch_sync", [c.actor_id for c in commands])
        out = []
        for c in commands:
            gone = self.sim.actors.pop(c.actor_id, None) is None
            out.append(
                SimpleNamespace(error="actor not found" if gone else "", actor_id=c.actor_id)
            )
        return out


class FakeCarla:
    """The module stand-in: ``backend_options={"carla_module": FakeCarla()}``."""

    Vector3D, Location, Rotation, Transform = Vector3D, Location, Rotation, Transform
    VehicleControl, WorldSettings, BoundingBox = VehicleControl, WorldSettings, BoundingBox
    command = SimpleNamespace(DestroyActor=DestroyActor)

    def __init__(self, **simulator_options):
        self._options = simulator_options
        self.simulators: dict[tuple[str, int], FakeSimulator] = {}

    def simulator(self, host, port) -> FakeSimulator:
        key = (host, port)
        if key not in self.simulators:
            self.simulators[key] = FakeSimulator(host, port, **self._options)
        return self.simulators[key]

    def Client(self, host, port):  # noqa: N802 - mirrors carla.Client
        return Client(self, host, port)


if __name__ == "__main__":  # a stand-in server process: python fake_carla.py PORT
    server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    serve(server, f"process-{os.getpid()}".encode())
