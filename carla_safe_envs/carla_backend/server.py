"""The server process around the client: reachability, launching, and the watchdog.

* :func:`probe` is a plain TCP connect to the RPC port: a refused connection fails at once,
  where the CARLA client would wait out its whole timeout.
* :class:`ServerLauncher` runs the user's ``launch_command`` in its own process group (so
  ``CarlaUE4.sh`` and the engine it starts are stopped together) and logs its output to a
  temporary file that error messages point to.
* :class:`Watchdog` is a daemon thread: a call guarded for longer than its limit kills the
  launched server, which makes the blocked client call fail, and the backend recovers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds a server gets to exit after SIGTERM before SIGKILL [s]


def probe(host: str, port: int, timeout: float) -> str | None:
    """``None`` when something accepts TCP connections at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:  # refused, unreachable, unknown host, timed out
        return exc.strerror or str(exc) or type(exc).__name__


class ServerLauncher:
    """Starts and stops the server process of ``command`` (``{port}`` filled in)."""

    def __init__(self, command: str, port: int):
        self.argv = shlex.split(command.format(port=port))
        self.process: subprocess.Popen | None = None
        self.log_path: str | None = None
        self._lock = threading.RLock()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            with tempfile.NamedTemporaryFile(
                prefix="carla-server-", suffix=".log", delete=False
            ) as out:
                self.log_path = out.name
                log.info("launching the CARLA server: %s (output: %s)", self.argv, out.name)
                try:
                    self.process = subprocess.Popen(
                        self.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: stop() ends them all
                    )
                except OSError as exc:
                    raise FileNotFoundError(
                        f"launch_command {shlex.join(self.argv)!r} could not be started: {exc}"
                    ) from exc

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the launched process group (SIGTERM, then SIGKILL after ``grace`` seconds)."""
        with self._lock:
            proc, self.process = self.process, None
            if proc is None:
                return
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self._signal(proc, signal.SIGKILL)
                    proc.wait()
            # the group may outlive its leader (CarlaUE4.sh's engine child)
            self._signal(proc, signal.SIGKILL)

    def kill(self) -> None:
        """Kill the launched process group now (the watchdog's remedy for a hung server)."""
        with self._lock:
            if self.process is not None:
                self._signal(self.process, signal.SIGKILL)

    def restart(self) -> None:
        with self._lock:
            self.stop()
            self.start()

    @staticmethod
    def _signal(proc: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, sig)
            else:  # pragma: no cover - Windows
                proc.kill()


class Watchdog:
    """Calls ``on_expire(what)`` when a :meth:`guard`-ed block runs longer than its limit."""

    def __init__(self, on_expire: Callable[[str], None], *, poll: float = 0.05):
        self._on_expire = on_expire
        self._poll = poll
        self._deadline: float | None = None
        self._what = ""
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="carla-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, what: str, limit: float) -> Iterator[None]:
        with self._cond:
            self._deadline, self._what = time.monotonic() + limit, what
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(min(left, self._poll))
                    continue
                what, self._deadline = self._what, None  # fire once per guarded block
            log.error("watchdog: %s has been blocked past its limit; killing the server", what)
            try:
                self._on_expire(what)
            except Exception:  # the watchdog thread must survive a failed remedy
                log.exception("watchdog: recovering from a hung %s failed", what)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=1.0)
