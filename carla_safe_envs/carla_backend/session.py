"""One connection to a CARLA server and everything the backend changed there.

:class:`ServerSession` owns the client, the world, the traffic manager, the world settings it
found (restored by :meth:`ServerSession.close`) and an :class:`ActorBook` of every actor it
spawned (destroyed on reset and close), so that nothing outlives the environment on the
server -- also after exceptions, and at interpreter exit (the backend registers ``close``
with ``weakref.finalize``).  It never refers back to the backend.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from carla_safe_envs.backends.base import DT
from carla_safe_envs.carla_backend.convert import parse_version, town_of
from carla_safe_envs.carla_backend.options import (
    SUPPORTED_VERSIONS,
    CarlaBackendError,
    CarlaIncompatibleError,
    CarlaMapError,
    CarlaOptions,
    CarlaUnavailableError,
)
from carla_safe_envs.carla_backend.server import ServerLauncher, probe

log = logging.getLogger(__name__)

LAUNCH_POLL = 0.5  # seconds between attempts to reach a launched server [s]


class ActorBook:
    """The actors spawned in one world, in spawn order; sensors are stopped before destroying."""

    def __init__(self) -> None:
        self.actors: dict[int, Any] = {}  # id -> carla.Actor
        self.sensors: set[int] = set()
        self.world_id: int | None = None  # the world (episode) they live in

    def __contains__(self, actor_id: int) -> bool:
        return actor_id in self.actors

    def __len__(self) -> int:
        return len(self.actors)

    def add(self, actor, *, sensor: bool = False):
        self.actors[actor.id] = actor
        if sensor:
            self.sensors.add(actor.id)
        return actor

    def forget(self) -> None:
        """Drop every entry without destroying (their world is gone)."""
        self.actors.clear()
        self.sensors.clear()

    def destroy(self, session: ServerSession, ids: list[int] | None = None) -> None:
        """Destroy ``ids`` (default: all) on the server, sensors first, in one batch.

        Actors of a world that no longer exists (the server restarted or another town was
        loaded) are only forgotten: their ids may already name another client's actors.
        """
        ids = list(self.actors) if ids is None else [i for i in ids if i in self.actors]
        if not ids:
            return
        world = session.world
        if world is None or world.id != self.world_id:
            log.info("forgetting %d actor(s) of a world that no longer exists", len(ids))
            for i in ids:
                self.actors.pop(i, None)
                self.sensors.discard(i)
            return
        order = [i for i in ids if i in self.sensors] + [i for i in ids if i not in self.sensors]
        try:
            for i in order:
                if i in self.sensors:
                    with contextlib.suppress(RuntimeError):
                        self.actors[i].stop()
            command = session.api.command.DestroyActor
            responses = session.client.apply_batch_sync([command(i) for i in order], False)
            errors = [r.error for r in responses if r.error]
            if errors:  # e.g. already destroyed by the server; nothing left to do
                log.debug("destroying %d actor(s): %s", len(order), errors)
        finally:
            for i in order:
                self.actors.pop(i, None)
                self.sensors.discard(i)


class ServerSession:
    """Client, world, traffic manager and the original settings of one CARLA server."""

    def __init__(self, api, options: CarlaOptions):
        self.api, self.options = api, options
        self.launcher = (
            ServerLauncher(options.launch_command, options.port) if options.launch_command else None
        )
        self.client = self.world = self.tm = None
        self.version: str | None = None
        self.original_settings = None  # what close() restores
        self.synchronous = False  # whether our settings are applied to self.world
        self.actors = ActorBook()
        self._world_id: int | None = None  # the world whose settings/town we know
        self._town: str | None = None

    @property
    def connected(self) -> bool:
        return self.client is not None

    # --------------------------------------------------------------- connecting
    def connect(self) -> None:
        """Connect; when no usable server answers and a launch command is set, (re)launch the
        server and wait for it.  Raises :class:`CarlaUnavailableError` within the timeouts."""
        try:
            self._connect_once(self.options.timeout)
        except CarlaUnavailableError as exc:
            if self.launcher is None:
                raise
            log.warning("%s; launching the server", exc)
            self.launcher.restart()
            self._wait_for_launched()

    def _wait_for_launched(self) -> None:
        o, launcher = self.options, self.launcher
        deadline = time.monotonic() + o.launch_timeout
        while True:
            code = launcher.process.poll() if launcher.process is not None else None
            if code not in (None, 0):
                raise CarlaUnavailableError(
                    f"the server started by launch_command {o.launch_command!r} exited with code "
                    f"{code} before answering at {o.address}; its output is in {launcher.log_path}"
                )
            left = deadline - time.monotonic()
            try:
                self._connect_once(max(min(o.timeout, left), 0.1))
                return
            except CarlaUnavailableError as exc:
                if left <= 0:
                    raise CarlaUnavailableError(
                        f"the server started by launch_command {o.launch_command!r} did not "
                        f"answer at {o.address} within launch_timeout={o.launch_timeout:g} s "
                        f"({exc}); its output is in {launcher.log_path}"
                    ) from exc
            time.sleep(min(LAUNCH_POLL, max(deadline - time.monotonic(), 0.0)))

    def _connect_once(self, timeout: float) -> None:
        o = self.options
        why = probe(o.host, o.port, timeout)
        if why is not None:
            raise CarlaUnavailableError(
                f"no CARLA server answers at {o.address} ({why}): {o.start_hint()}"
            )
        client = self.api.Client(o.host, o.port)
        client.set_timeout(timeout)
        try:
            version = client.get_server_version()
        except RuntimeError as exc:
            raise CarlaUnavailableError(
                f"{o.address} accepts connections but no CARLA server answered within "
                f"{timeout:g} s ({exc}): another program may hold the port, or the server is "
                f"still starting or hung; {o.start_hint()}"
            ) from exc
        self._check_version(client, version)
        client.set_timeout(o.timeout)
        world = client.get_world()
        try:
            tm = client.get_trafficmanager(o.tm_port)
        except RuntimeError as exc:
            raise CarlaBackendError(
                f"the traffic manager could not start on port {o.tm_port} ({exc}): the port is "
                "probably in use by another program; pass backend_options={'tm_port': N} "
                "with a free port"
            ) from exc
        if self.original_settings is None or world.id != self._world_id:
            self.original_settings = world.get_settings()  # a fresh server's, or the first
            self._town = None
        self.client, self.world, self.tm, self.version = client, world, tm, version
        self._world_id = world.id
        log.info("connected to CARLA %s at %s", version, o.address)

    def _check_version(self, client, version: str) -> None:
        parsed = parse_version(version)
        name = ".".join(map(str, parsed)) if parsed else version
        if self.options.check_version and name not in SUPPORTED_VERSIONS:
            raise CarlaIncompatibleError(
                f"the CARLA server at {self.options.address} is version {version!r}; this "
                f"backend supports {' and '.join(SUPPORTED_VERSIONS)}: run one of those (or "
                "pass backend_options={'check_version': False} to try anyway)"
            )
        ours = parse_version(client.get_client_version())
        if parsed and ours and ours != parsed:
            log.warning(
                "CARLA client %s talks to server %s; install the matching client "
                "(pip install carla==%s) if calls fail",
                ".".join(map(str, ours)),
                name,
                name,
            )

    def responsive(self) -> bool:
        """Whether the server still answers one short call (False when not connected)."""
        if self.client is None:
            return False
        try:
            self.client.get_server_version()
        except RuntimeError:
            return False
        return True

    def kill_launched(self, what: str = "") -> None:
        """Kill the server process we launched (the watchdog's remedy for a hung ``what``)."""
        if self.launcher is not None:
            log.error("killing the launched CARLA server: %s is hung", what or "a call")
            self.launcher.kill()

    def lost(self) -> None:
        """Forget the connection without calling the server (it is gone or hung)."""
        self.client = self.world = self.tm = None
        self.synchronous = False

    def recover(self) -> bool:
        """After a failed call: reconnect (relaunching the server when configured) and clean
        up what is left of our actors.  Whether the backend is connected again."""
        self.lost()
        try:
            self.connect()
            self.actors.destroy(self)  # a still-running server: our leftovers; else forgotten
        except (CarlaBackendError, RuntimeError) as exc:
            log.error(
                "could not reconnect to the CARLA server at %s: %s", self.options.address, exc
            )
            self.lost()
            return False
        return True

    # ---------------------------------------------------------------- the world
    def use_town(self, town: str):
        """The world with ``town`` loaded (loading it if needed), in synchronous mode."""
        o, world = self.options, self.world
        if self._town is None or self._world_id != world.id:
            self._town, self._world_id = town_of(world.get_map().name), world.id
        if self._town != town:
            available = sorted({town_of(m) for m in self.client.get_available_maps()})
            if town not in available:
                raise CarlaMapError(
                    f"the CARLA server at {o.address} has no map {town!r} (it has {available}); "
                    "the CARLA 0.9.15/0.9.16 release packages include Town03 and Town04 -- use "
                    "one of those, or install the map"
                )
            log.info("loading %s on the CARLA server (up to %g s)", town, o.load_timeout)
            self.actors.forget()  # loading a town destroys every actor
            self.client.set_timeout(o.load_timeout)
            try:
                world = self.world = self.client.load_world(town)
            finally:
                self.client.set_timeout(o.timeout)
            self.tm = self.client.get_trafficmanager(o.tm_port)  # the one of the new world
            self._town, self._world_id, self.synchronous = town, world.id, False
        if not self.synchronous:
            settings = world.get_settings()
            settings.synchronous_mode = True
            settings.fixed_delta_seconds = DT
            settings.no_rendering_mode = o.no_rendering
            self.tm.set_synchronous_mode(True)
            world.apply_settings(settings)
            self.synchronous = True
        return world

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Destroy our actors, restore the settings we found, stop a launched server.

        Every part runs even when an earlier one fails (a dead server); errors are logged.
        """
        try:
            if self.connected:
                self.actors.destroy(self)
        except RuntimeError as exc:
            log.warning("destroying the actors failed (%s); the server may be gone", exc)
        finally:
            self.actors.forget()
            try:
                if self.connected:  # also after a reconnect that found our settings in place
                    self.tm.set_synchronous_mode(False)
                    self.world.apply_settings(self.original_settings)
            except RuntimeError as exc:
                log.warning("restoring the world settings failed (%s)", exc)
            finally:
                self.lost()
                if self.launcher is not None:
                    self.launcher.stop()
