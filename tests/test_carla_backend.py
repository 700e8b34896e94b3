"""The CARLA backend (issue 8).

Server-free: the CARLA <-> snapshot translation on values built by the real ``carla`` wheel
(transforms, the Town03 OpenDRIVE map's own waypoints), the options, the unreachable-server
errors with the real client, and the backend's bookkeeping and recovery against
``fake_carla`` (a stand-in API whose server is alive while a socket listens; see there).
Tests that need a real CARLA server run only when ``CARLA_HOST`` is set.
"""

from __future__ import annotations

import gzip
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from fake_carla import Blueprint, FakeCarla, Listener

import carla_safe_envs  # noqa: F401 - registers the ids
from carla_safe_envs.backends.base import (
    LENGTH,
    VX,
    VY,
    WIDTH,
    YAW,
    Control,
    Pose,
    TrafficSpec,
    X,
    Y,
)
from carla_safe_envs.carla_backend import (
    CarlaBackend,
    CarlaBackendError,
    CarlaIncompatibleError,
    CarlaMapError,
    CarlaOptions,
    CarlaSpawnError,
    CarlaUnavailableError,
)
from carla_safe_envs.carla_backend.convert import (
    parse_version,
    pose_transform,
    state_row,
    town_of,
    vehicle_control,
    yaw_from_carla,
    yaw_to_carla,
)
from carla_safe_envs.maps import load_town
from carla_safe_envs.maps.road import DATA_DIR
from carla_safe_envs.tasks import ACC_VALUES, TASKS

FAKE_SERVER = Path(__file__).with_name("fake_carla.py")
FULL_THROTTLE = 12  # acc +2, steer 0
requires_server = pytest.mark.skipif(
    not os.environ.get("CARLA_HOST"), reason="needs a CARLA server: set CARLA_HOST (and CARLA_PORT)"
)


def closed_port() -> socket.socket:
    """A socket bound to a free port and not listening: connecting there is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


@pytest.fixture
def server():
    listener = Listener()
    yield listener
    listener.stop()


def options(port: int, **extra) -> dict:
    return {"host": "127.0.0.1", "port": port, "tm_port": 1, "timeout": 1.0, **extra}


def fake_env(fake, port, task="CarlaLeftTurn-v0", backend_options=None, **task_options):
    opts = {"carla_module": fake, **options(port), **(backend_options or {})}
    return gym.make(task, backend="carla", backend_options=opts, **task_options)


# ----------------------------------------------------------------- translation
@pytest.mark.parametrize("deg", [0.0, 90.0, -90.0, 179.9, 180.0, -180.0, 270.0, -450.2, 719.0])
def test_yaw_from_carla_wraps_degrees_to_radians(deg):
    yaw = yaw_from_carla(deg)
    assert -math.pi < yaw <= math.pi
    assert math.cos(yaw) == pytest.approx(math.cos(math.radians(deg)), abs=1e-12)
    assert math.sin(yaw) == pytest.approx(math.sin(math.radians(deg)), abs=1e-12)
    assert yaw_from_carla(yaw_to_carla(yaw)) == pytest.approx(yaw)


def test_state_row_agrees_with_carla_transform_maths():
    carla = pytest.importorskip("carla")
    rng = np.random.default_rng(0)
    for _ in range(50):
        yaw_deg = float(rng.uniform(-720, 720))
        t = carla.Transform(carla.Location(*rng.uniform(-300, 300, 3)), carla.Rotation(yaw=yaw_deg))
        box = carla.BoundingBox(
            carla.Location(*rng.uniform(-0.5, 0.5, 2), 0.7), carla.Vector3D(2.4, 1.1, 0.75)
        )
        v = carla.Vector3D(*rng.uniform(-10, 10, 2), 0.0)
        row = state_row(t, v, box)
        centre = t.transform(box.location)  # CARLA's own local -> world mapping
        fwd = t.get_forward_vector()
        assert row[X] == pytest.approx(centre.x, abs=1e-4)
        assert row[Y] == pytest.approx(centre.y, abs=1e-4)
        assert row[2] == pytest.approx(t.location.z, abs=1e-4)  # ground, not the box centre
        assert row[YAW] == pytest.approx(math.atan2(fwd.y, fwd.x), abs=1e-5)
        assert (row[VX], row[VY]) == pytest.approx((v.x, v.y))
        assert (row[LENGTH], row[WIDTH]) == pytest.approx((4.8, 2.2))


def test_recorded_town03_waypoints_land_on_the_compiled_lanes():
    """CARLA's own map API (the same OpenDRIVE a server loads) and the compiled map agree on
    positions and headings: no axis is mirrored, no yaw sign flipped."""
    carla = pytest.importorskip("carla")
    xodr = gzip.open(DATA_DIR / "Town03.xodr.gz", "rt").read()
    cmap = carla.Map("Town03", xodr)
    road = load_town("Town03")
    zero = carla.BoundingBox(carla.Location(), carla.Vector3D())
    wps = [w for w in cmap.generate_waypoints(25.0) if w.lane_type == carla.LaneType.Driving]
    assert len(wps) > 200
    for wp in wps[::5]:
        row = state_row(wp.transform, carla.Vector3D(), zero)
        ahead = wp.next(2.0)
        if ahead and not wp.is_junction:  # the heading points to where the lane goes
            d = ahead[0].transform.location - wp.transform.location
            assert math.cos(row[YAW] - math.atan2(d.y, d.x)) > 0.95
        lp = road.locate(row[X], row[Y], row[2], row[YAW], radius=2.0)
        assert lp is not None and lp.distance < 0.3 and abs(lp.heading_error) < 0.1


def test_pose_transform_spawns_where_the_pose_is():
    carla = pytest.importorskip("carla")
    t = pose_transform(carla, Pose(6.0, -101.0, -math.pi / 2, z=0.2))
    assert (t.location.x, t.location.y, t.location.z) == pytest.approx((6.0, -101.0, 0.5))
    fwd = t.get_forward_vector()  # yaw -90 deg: heading north, towards -y in CARLA
    assert (fwd.x, fwd.y) == pytest.approx((0.0, -1.0), abs=1e-6)


@pytest.mark.parametrize("task", ["CarlaLeftTurn-v0", "CarlaRightTurn-v0"])
def test_every_discrete_action_maps_to_carlas_vehicle_control(task):
    carla = pytest.importorskip("carla")
    env = gym.make(task)
    steers = TASKS[task].steer_values
    for a in range(env.action_space.n):
        c = vehicle_control(carla, env.unwrapped.action_to_control(a))
        acc, steer = ACC_VALUES[a // 5], steers[a % 5]
        assert isinstance(c, carla.VehicleControl)
        assert c.throttle == pytest.approx(max(acc / 3, 0.0), abs=1e-6)
        assert c.brake == pytest.approx(max(-acc / 3, 0.0), abs=1e-6)
        assert c.steer == pytest.approx(steer, abs=1e-6)
        assert not (c.hand_brake or c.reverse or c.manual_gear_shift)


def test_vehicle_control_clips_to_carlas_ranges():
    c = vehicle_control(FakeCarla(), Control(throttle=1.7, brake=-0.2, steer=-1.4))
    assert (c.throttle, c.brake, c.steer) == (1.0, 0.0, -1.0)


def test_names_and_versions():
    assert town_of("Carla/Maps/Town03") == town_of("/Game/Carla/Maps/Town03") == "Town03"
    assert parse_version("0.9.16") == (0, 9, 16)
    assert parse_version("0.9.15-dirty") == (0, 9, 15)
    assert parse_version("garbage") is None


def test_the_backend_package_does_not_import_the_client():
    code = "import sys, carla_safe_envs.carla_backend; assert 'carla' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --------------------------------------------------------------------- options
def test_options_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("CARLA_HOST", "sim-box")
    monkeypatch.setenv("CARLA_PORT", "3000")
    monkeypatch.delenv("CARLA_TM_PORT", raising=False)
    o = CarlaOptions()
    assert (o.host, o.port, o.tm_port, o.address) == ("sim-box", 3000, 9000, "sim-box:3000")
    monkeypatch.setenv("CARLA_TM_PORT", "8123")
    assert CarlaOptions(port=62000).tm_port == 8123
    monkeypatch.delenv("CARLA_TM_PORT")
    assert CarlaOptions(port=62000).tm_port == 56000


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"prot": 2000}, TypeError, r"unknown option\(s\) \['prot'\].*'port'"),
        ({"port": 70000}, ValueError, "port=70000 is out of range"),
        ({"port": 2000, "tm_port": 2001}, ValueError, "tm_port=2001 collides"),
        ({"timeout": 0}, ValueError, "timeout=0 is out of range"),
        ({"watchdog": 30.0}, ValueError, "watchdog needs launch_command"),
        ({"launch_command": "run {gpu}"}, ValueError, "only the {port} placeholder"),
    ],
)
def test_bad_options(kwargs, error, message):
    with pytest.raises(error, match=message):
        CarlaOptions.from_kwargs(**kwargs)


def test_bad_port_in_the_environment(monkeypatch):
    monkeypatch.setenv("CARLA_PORT", "twothousand")
    with pytest.raises(ValueError, match="CARLA_PORT='twothousand' is not a port number"):
        CarlaOptions()


# ------------------------------------------------------------ unreachable server
def test_closed_port_fails_fast_naming_the_address():
    pytest.importorskip("carla")
    with closed_port() as s:
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(CarlaUnavailableError) as err:
            CarlaBackend(host="127.0.0.1", port=port, tm_port=1, timeout=1.5)
    assert time.monotonic() - t0 < 2.0
    assert f"127.0.0.1:{port}" in str(err.value)
    assert "CarlaUE4.sh -RenderOffScreen -carla-rpc-port" in str(err.value)


def test_gym_make_without_a_server_fails_fast(monkeypatch):
    pytest.importorskip("carla")
    with closed_port() as s:
        port = s.getsockname()[1]
        monkeypatch.setenv("CARLA_HOST", "127.0.0.1")
        monkeypatch.setenv("CARLA_PORT", str(port))
        t0 = time.monotonic()
        with pytest.raises(
            CarlaUnavailableError, match=f"no CARLA server answers at 127.0.0.1:{port}"
        ):
            gym.make("CarlaFourLane-v0", backend="carla")
    assert time.monotonic() - t0 < 3.0


def test_a_port_that_is_not_carla_fails_within_the_timeout():
    pytest.importorskip("carla")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(CarlaUnavailableError, match="accepts connections but no CARLA server"):
            CarlaBackend(host="127.0.0.1", port=port, tm_port=1, timeout=1.0)
    assert time.monotonic() - t0 < 4.0


def test_unsupported_server_version(server):
    with pytest.raises(CarlaIncompatibleError, match=r"version '0\.9\.13'.*0\.9\.15 and 0\.9\.16"):
        CarlaBackend(carla_module=FakeCarla(version="0.9.13"), **options(server.port))
    backend = CarlaBackend(
        carla_module=FakeCarla(version="0.9.13"), check_version=False, **options(server.port)
    )
    backend.close()


def test_missing_map(server):
    env = fake_env(FakeCarla(maps=("Town10HD_Opt", "Town04")), server.port)
    with pytest.raises(
        CarlaMapError, match=r"no map 'Town03' \(it has \['Town04', 'Town10HD_Opt'\]"
    ):
        env.reset(seed=0)
    env.close()


def test_traffic_manager_port_in_use(server):
    fake = FakeCarla()
    fake.simulator("127.0.0.1", server.port).busy_ports.add(1)
    with pytest.raises(CarlaBackendError, match="traffic manager could not start on port 1"):
        CarlaBackend(carla_module=fake, **options(server.port))


# -------------------------------------------------------- episodes on the fake
def test_reset_loads_the_town_in_sync_mode_and_spawns_the_scene(server):
    fake = FakeCarla()
    env = fake_env(fake, server.port, difficulty="hard", flow_speed=8.0)
    _, info = env.reset(seed=3)
    sim = fake.simulator("127.0.0.1", server.port)
    assert ("load_world", "Town03") in sim.calls
    assert sim.settings.as_tuple() == (True, True, 0.1)  # synchronous, no rendering, 0.1 s
    assert ("tm.set_synchronous_mode", True) in sim.calls
    ego = [a for a in sim.vehicles() if a.attributes["role_name"] == "hero"]
    assert len(ego) == 1 and ego[0].type_id == "vehicle.tesla.model3"
    sensors = [a for a in sim.actors.values() if a.type_id == "sensor.other.collision"]
    assert len(sensors) == 1 and sensors[0].parent is ego[0] and sensors[0].callback is not None
    # the snapshot is the ego's box centre where the task starts it, in the task's frame
    start = env.unwrapped.scenario.ego
    snap = env.unwrapped.snapshot
    assert math.hypot(snap.ego[X] - start.x, snap.ego[Y] - start.y) < 0.1
    assert abs(math.remainder(snap.ego[YAW] - start.yaw, math.tau)) < 1e-6
    assert (snap.ego[LENGTH], snap.ego[WIDTH]) == pytest.approx((4.791, 2.1636))
    # the hard flow: cars 6-8 m apart behind each other from the spawn, driven along its path
    flow = [a for a in sim.vehicles() if a.attributes["role_name"] == "carla_safe_traffic"]
    assert len(flow) == len(snap.others) >= 8
    assert all(
        a.type_id in ("vehicle.tesla.model3", "vehicle.audi.a2", "vehicle.nissan.patrol")
        for a in flow
    )
    first = flow[0].transform.location
    assert math.hypot(first.x + 22.4, first.y + 135.4) < 1.0
    assert all(a.autopilot and a.speed == pytest.approx(8.0) and len(a.path) > 10 for a in flow)
    assert all(("tm.ignore_lights_percentage", a, 100.0) in sim.calls for a in flow)
    assert info["backend"] == "carla" and info["cost"] == 0.0
    env.close()


def test_reset_destroys_the_previous_actors_sensor_first(server):
    fake = FakeCarla()
    env = fake_env(fake, server.port, difficulty="medium")
    env.reset(seed=0)
    sim = fake.simulator("127.0.0.1", server.port)
    for _ in range(3):
        env.step(FULL_THROTTLE)
    first = dict(sim.actors)
    sensor = next(i for i, a in first.items() if a.type_id.startswith("sensor."))
    n = len(sim.calls)
    env.reset(seed=1)
    destroyed = [c[1] for c in sim.calls[n:] if c[0] == "apply_batch_sync"]
    assert len(destroyed) == 1 and set(destroyed[0]) == set(first) and destroyed[0][0] == sensor
    assert ("stop", sensor) in sim.calls[n:]
    assert not set(first) & set(sim.actors) and len(sim.actors) >= 3
    assert "load_world" not in sim.names()[n:]  # the town is already loaded
    env.close()
    assert not sim.actors  # close destroys the second episode's actors too


def test_close_restores_the_settings_and_destroys_ours_after_a_failed_reset(server):
    fake = FakeCarla()
    sim = fake.simulator("127.0.0.1", server.port)
    env = fake_env(fake, server.port)
    env.reset(seed=0)  # Town03 loaded, its settings as the server had them: asynchronous
    env.close()
    assert sim.settings.as_tuple() == (False, False, None) and not sim.actors
    # Another client's car parked on the ego's start: the reset fails after spawning nothing
    # of ours but the previous episode is gone, and close() still restores everything.
    env = fake_env(fake, server.port)
    env.reset(seed=0)
    start = env.unwrapped.scenario.ego
    stranger = sim.spawn(
        Blueprint("vehicle.audi.a2"),
        pose_transform(fake, Pose(start.x + 0.5, start.y, start.yaw, z=start.z)),
    )
    with pytest.raises(CarlaSpawnError, match="the ego could not be spawned"):
        env.reset(seed=1)
    assert sim.settings.synchronous_mode
    env.close()
    assert sim.settings.as_tuple() == (False, False, None)
    assert ("tm.set_synchronous_mode", False) in sim.calls
    assert list(sim.actors) == [stranger.id]  # the stranger's car is left alone


def test_a_failed_traffic_spawn_leaves_nothing_behind(server):
    fake = FakeCarla()
    sim = fake.simulator("127.0.0.1", server.port)
    env = fake_env(fake, server.port)
    off_lane = TrafficSpec(kind="placed", placed=(Pose(300.0, 300.0, 0.0),))
    with pytest.raises(ValueError, match="placed vehicle .* is not on a Town03 lane"):
        env.reset(seed=0, options={"traffic": off_lane})
    assert len(sim.actors) == 2  # the ego and its sensor were spawned before the error
    env.close()
    assert not sim.actors and sim.settings.as_tuple() == (False, False, None)


def test_vehicles_of_other_clients_are_in_the_snapshot(server):
    fake = FakeCarla()
    sim = fake.simulator("127.0.0.1", server.port)
    env = fake_env(fake, server.port, difficulty="simple")
    env.reset(seed=0)
    other = sim.spawn(
        Blueprint("vehicle.nissan.patrol"),
        fake.Transform(fake.Location(-20.0, -130.0, 0.0), fake.Rotation(yaw=-450.0)),
    )
    env.reset(seed=0)
    (row,) = env.unwrapped.snapshot.others
    assert row[X] == pytest.approx(-20.0, abs=1e-6)  # offset 0.05 m along yaw -90: along -y
    assert row[Y] == pytest.approx(-130.05, abs=1e-6)
    assert row[YAW] == pytest.approx(-math.pi / 2)
    assert (row[LENGTH], row[WIDTH]) == pytest.approx((4.6, 1.92))
    sim.actors.pop(other.id)  # destroyed by its owner: it leaves the snapshot
    _, _, _, _, info = env.step(7)
    assert len(env.unwrapped.snapshot.others) == 0 and not info["collision"]
    env.close()


def test_collision_sensor_ends_the_episode_with_the_collision_terms(server):
    fake = FakeCarla()
    env = fake_env(fake, server.port, difficulty="simple")
    env.reset(seed=0)
    route = env.unwrapped.route.points
    d = route[9, :2] - route[7, :2]
    parked = Pose(*route[8, :2], math.atan2(d[1], d[0]), z=route[8, 2], speed=0.0)
    env.reset(seed=0, options={"traffic": TrafficSpec(kind="placed", placed=(parked,))})
    for _ in range(60):
        _, reward, terminated, truncated, info = env.step(FULL_THROTTLE)
        if terminated:
            break
    assert terminated and not truncated and info["collision"]
    assert info["cost_terms"]["collision"] == 1.0
    assert info["reward_terms"]["collision"] == pytest.approx(-30.0 * info["speed"])
    assert info["speed"] > 2.0
    env.close()


def test_flow_is_fed_at_the_spawn_and_leaves_at_the_path_end(server):
    fake = FakeCarla()
    sim = fake.simulator("127.0.0.1", server.port)
    env = fake_env(fake, server.port, difficulty="hard", flow_speed=20.0)
    env.reset(seed=2)
    backend = env.unwrapped.backend
    end = backend._traffic._line[-1, :2]
    initial = {a.id for a in sim.vehicles() if a.attributes["role_name"] != "hero"}
    destroyed: set[int] = set()
    for _ in range(80):  # 8 s at 20 m/s: the first cars reach the end of the 150 m path
        rows, n = dict(backend._rows), len(sim.calls)
        _, _, terminated, truncated, _ = env.step(2)  # the ego brakes and stays
        assert not (terminated or truncated)
        for c in sim.calls[n:]:
            if c[0] == "apply_batch_sync":  # only cars at the end of the path leave
                assert all(np.hypot(*(rows[i][:2] - end)) < 12.0 for i in c[1])
                destroyed.update(c[1])
    now = {a.id for a in sim.vehicles() if a.attributes["role_name"] != "hero"}
    assert destroyed & initial  # the first cars left...
    new = now - initial
    assert new and all(i in backend._traffic.boxes for i in new)  # ...new ones entered
    line = backend._traffic._line  # 1 m apart: the nearest index is the distance along it
    at = sorted(np.argmin(np.hypot(*(line[:, :2] - backend._rows[i][:2]).T)) for i in new)
    assert at[0] < 30 and all(
        6 + 4 <= b - a <= 8 + 5.2 + 2 for a, b in zip(at, at[1:], strict=False)
    )
    assert len(env.unwrapped.snapshot.others) == len(now)
    env.close()


def test_autopilot_traffic_is_kept_around_the_ego(server):
    fake = FakeCarla()
    sim = fake.simulator("127.0.0.1", server.port)
    task = TASKS["CarlaFourLane-v0"](load_town("Town04"), num_vehicles=8)
    scenario, _ = task.episode(np.random.default_rng(0))
    backend = CarlaBackend(carla_module=fake, **options(server.port))
    snap = backend.reset(scenario, np.random.default_rng(0))
    assert len(snap.others) == 8
    assert all(("tm.auto_lane_change", a, True) in sim.calls for a in sim.vehicles()[1:])
    ego = next(a for a in sim.vehicles() if a.attributes["role_name"] == "hero")
    ego.transform.location.y -= 200.0  # the ego jumps 200 m north
    for _ in range(20):
        snap = backend.step(Control(0.0, 1.0, 0.0))
    rows = dict(backend._rows)
    far = {i for i, r in rows.items() if math.hypot(r[X] - snap.ego[X], r[Y] - snap.ego[Y]) > 150}
    assert far
    snap = backend.step(Control(0.0, 1.0, 0.0))  # the 21st step re-spawns the far ones
    assert not far & set(sim.actors) and len(snap.others) == 8
    dist = np.hypot(snap.others[:, X] - snap.ego[X], snap.others[:, Y] - snap.ego[Y])
    new = len(far)
    assert np.sum((dist >= 40.0 - 1.0) & (dist <= 150.0 + 1.0)) >= new
    backend.close()


# ------------------------------------------------------------ server failures
def test_a_dead_server_truncates_the_episode_and_reset_says_why(server):
    fake = FakeCarla()
    env = fake_env(fake, server.port)
    env.reset(seed=0)
    env.step(FULL_THROTTLE)
    server.stop()
    t0 = time.monotonic()
    obs, reward, terminated, truncated, info = env.step(FULL_THROTTLE)
    assert time.monotonic() - t0 < 5.0
    assert truncated and not terminated and reward == 0.0
    assert info["server_restarted"] is False and "time-out" in info["server_error"]
    assert info["cost"] == 0.0 and obs.shape == (128, 128, 3)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(FULL_THROTTLE)
    with pytest.raises(CarlaUnavailableError, match=f"127.0.0.1:{server.port}"):
        env.reset(seed=1)
    revived = Listener(server.port)  # the server is back (a fresh one): reset reconnects
    try:
        env.reset(seed=1)
        sim = fake.simulator("127.0.0.1", server.port)
        assert sim.boots == 2 and sim.town == "Town03"  # a fresh server: the town reloaded
        assert sim.settings.synchronous_mode and len(sim.actors) >= 2
        env.close()
        assert sim.settings.as_tuple() == (False, False, None) and not sim.actors
    finally:
        revived.stop()


def test_launch_command_restarts_a_dead_server(server, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the launched servers' logs
    fake = FakeCarla()
    command = f"{sys.executable} {FAKE_SERVER} {{port}}"
    env = fake_env(fake, server.port, backend_options={"launch_command": command})
    env.reset(seed=0)
    sim = fake.simulator("127.0.0.1", server.port)
    old = set(sim.actors)
    server.stop()
    _, reward, terminated, truncated, info = env.step(FULL_THROTTLE)
    assert truncated and not terminated and info["server_restarted"] is True
    launcher = env.unwrapped.backend.session.launcher
    process = launcher.process
    assert process.poll() is None and sim.boots == 2
    n = len(sim.calls)
    env.reset(seed=0)  # a fresh world: the old ids are never sent to the new server
    sent = [i for c in sim.calls[n:] if c[0] == "apply_batch_sync" for i in c[1]]
    assert not old & set(sent) and sim.settings.synchronous_mode
    env.close()
    assert process.wait(timeout=5) is not None  # close() stops the server it launched
    assert len(list(tmp_path.glob("carla-server-*.log"))) == 1  # its output, for debugging


def test_watchdog_recovers_a_hung_server(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the launched servers' logs
    fake = FakeCarla()
    with closed_port() as s:
        port = s.getsockname()[1]
    command = f"{sys.executable} {FAKE_SERVER} {{port}}"
    env = fake_env(
        fake,
        port,
        backend_options={"launch_command": command, "watchdog": 0.5, "launch_timeout": 20},
    )  # nothing answers at first: the backend launches the server
    launcher = env.unwrapped.backend.session.launcher
    first = launcher.process
    env.reset(seed=0)
    sim = fake.simulator("127.0.0.1", port)
    sim.hang = True
    t0 = time.monotonic()
    _, _, _, truncated, info = env.step(FULL_THROTTLE)
    assert time.monotonic() - t0 < 10.0
    assert truncated and info["server_restarted"] is True
    assert first.poll() is not None and launcher.process.poll() is None  # killed, relaunched
    env.reset(seed=0)
    env.step(FULL_THROTTLE)
    env.close()


# ------------------------------------------------------------ with a CARLA server
@requires_server
def test_parity_of_a_scripted_episode_with_the_embedded_simulator():
    """One expert-driven Left Turn (no traffic) on both backends: the same route, and the same
    outcome and reward / cost terms within tolerance."""
    from carla_safe_envs.evaluation import run_episode
    from carla_safe_envs.expert import ExpertPolicy

    totals, routes = {}, {}
    for backend in ("sim", "carla"):
        env = gym.make("CarlaLeftTurn-v0", backend=backend, difficulty="simple")
        terms: dict[str, float] = {}

        def add(step, terms=terms):
            for group in ("reward_terms", "cost_terms"):
                for k, v in step["info"][group].items():
                    terms[f"{group}/{k}"] = terms.get(f"{group}/{k}", 0.0) + v

        metrics, _ = run_episode(env, ExpertPolicy(), seed=0, on_step=add)
        routes[backend] = env.unwrapped.route.points.copy()
        totals[backend] = (metrics, terms)
        env.close()
    np.testing.assert_array_equal(routes["sim"], routes["carla"])
    (m_sim, t_sim), (m_carla, t_carla) = totals["sim"], totals["carla"]
    assert m_sim.arrived and m_carla.arrived and m_carla.collisions == 0
    assert t_carla["reward_terms/waypoint"] == t_sim["reward_terms/waypoint"]
    assert t_carla["reward_terms/arrival"] == t_sim["reward_terms/arrival"]
    assert t_carla["reward_terms/speed"] == pytest.approx(t_sim["reward_terms/speed"], rel=0.25)
    assert m_carla.return_ == pytest.approx(m_sim.return_, rel=0.2)
    assert t_carla["cost_terms/off_road"] <= t_sim["cost_terms/off_road"] + 5
    assert t_carla["cost_terms/out_of_lane"] <= t_sim["cost_terms/out_of_lane"] + 20


@requires_server
def test_server_episode_with_flow_and_cleanup():
    env = gym.make("CarlaLeftTurn-v0", backend="carla", difficulty="medium")
    env.reset(seed=0)
    start = env.unwrapped.scenario.ego
    snap = env.unwrapped.snapshot
    assert math.hypot(snap.ego[X] - start.x, snap.ego[Y] - start.y) < 0.5
    assert abs(math.remainder(snap.ego[YAW] - start.yaw, math.tau)) < math.radians(3)
    backend = env.unwrapped.backend
    first = dict(backend._rows)  # the flow's rows by actor id
    assert len(first) >= 3
    for _ in range(50):
        env.step(2)  # brake: wait at the start
    moved = [np.hypot(*(r[:2] - first[i][:2])) for i, r in backend._rows.items() if i in first]
    assert moved and max(moved) > 5.0  # the traffic manager drives the flow
    session = env.unwrapped.backend.session
    world, original = session.world, session.original_settings
    ours = set(session.actors.actors)
    env.close()
    settings = world.get_settings()
    assert settings.synchronous_mode == original.synchronous_mode
    assert not ours & {a.id for a in world.get_actors()}
