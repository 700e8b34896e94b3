"""Options of the CARLA backend and the errors it raises on purpose."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

SUPPORTED_VERSIONS = ("0.9.15", "0.9.16")
TM_PORT_OFFSET = 6000  # default traffic-manager port: the server's port + 6000 (2000 -> 8000)
START_HINT = (
    "start one with `./CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}` "
    "(CARLA 0.9.15 or 0.9.16; the port and the next two must be free), or pass "
    "backend_options={{'launch_command': '...'}} to let the backend start it"
)


class CarlaBackendError(RuntimeError):
    """Base class of the errors that ``backend="carla"`` raises on purpose."""


class CarlaUnavailableError(CarlaBackendError):
    """No CARLA server answers at the configured address."""


class CarlaIncompatibleError(CarlaBackendError):
    """Something answers, but not a supported CARLA server (wrong program or version)."""


class CarlaMapError(CarlaBackendError):
    """The task's town is not installed on the server."""


class CarlaSpawnError(CarlaBackendError):
    """The ego could not be spawned (its start is occupied)."""


def _env_port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not a port number: expected an integer "
            "in 1..65535"
        ) from None


def _check_port(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{name}={value!r} is out of range: expected 1 <= {name} <= 65535")


@dataclass(frozen=True)
class CarlaOptions:
    """Options of ``backend="carla"``: ``gym.make(ID, backend="carla", backend_options={...})``.

    Attributes:
        host: the server's address (default: ``$CARLA_HOST``, else ``"localhost"``).
        port: its RPC port, ``-carla-rpc-port`` (default: ``$CARLA_PORT``, else 2000); the
            server also uses the next two ports (streaming, secondary).
        tm_port: the traffic manager's port (default: ``$CARLA_TM_PORT``, else port + 6000,
            or port - 6000 above 65535).
            Every environment on one server needs its own server port *and* TM port.
        timeout: seconds any one call to the server may take before it counts as lost [s].
        load_timeout: seconds loading a town may take [s].
        launch_command: shell-style command that starts a server (``{port}`` is replaced by
            ``port``), e.g. ``"/opt/carla/CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}"``.
            Run when no server answers at start-up and whenever the server dies or hangs; the
            process it starts is stopped by ``close()``.
        launch_timeout: seconds a launched server may take to answer [s].
        watchdog: if set, a call to the server that blocks longer than this (plus ``timeout``
            / ``load_timeout``) kills the launched server, so the backend relaunches it and
            the episode ends as truncated: for unattended long runs.  Needs ``launch_command``.
        check_version: refuse servers other than CARLA 0.9.15 / 0.9.16.
        no_rendering: run the server with ``no_rendering_mode`` (nothing here uses its
            cameras; set False to watch the spectator view).
    """

    host: str = field(
        default_factory=lambda: os.environ.get("CARLA_HOST", "").strip() or "localhost"
    )
    port: int = field(default_factory=lambda: _env_port("CARLA_PORT", 2000))
    tm_port: int | None = None
    timeout: float = 10.0
    load_timeout: float = 120.0
    launch_command: str | None = None
    launch_timeout: float = 120.0
    watchdog: float | None = None
    check_version: bool = True
    no_rendering: bool = True

    @classmethod
    def from_kwargs(cls, **kwargs) -> CarlaOptions:
        """Options from keyword arguments; unknown names raise ``TypeError``."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(
                f"backend 'carla': unknown option(s) {unknown}; accepted options are {valid}"
            )
        return cls(**kwargs)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a non-empty string, got {self.host!r}")
        _check_port("port", self.port)
        if self.tm_port is None:
            default = self.port + TM_PORT_OFFSET
            if default > 65535:
                default = self.port - TM_PORT_OFFSET
            object.__setattr__(self, "tm_port", _env_port("CARLA_TM_PORT", default))
        _check_port("tm_port", self.tm_port)
        if self.port <= self.tm_port <= self.port + 2:
            raise ValueError(
                f"tm_port={self.tm_port} collides with the server's ports "
                f"{self.port}-{self.port + 2} (RPC, streaming, secondary): pick another tm_port"
            )
        for name in ("timeout", "load_timeout", "launch_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 3600:
                raise ValueError(f"{name}={value!r} is out of range: expected 0 < {name} <= 3600 s")
        if self.launch_command is not None:
            if not isinstance(self.launch_command, str) or not self.launch_command.strip():
                raise ValueError("launch_command must be a non-empty command string or None")
            try:
                self.launch_command.format(port=self.port)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"launch_command {self.launch_command!r}: only the {{port}} placeholder is "
                    f"replaced (write literal braces as {{{{ }}}}): {exc!r}"
                ) from None
        if self.watchdog is not None:
            if not isinstance(self.watchdog, (int, float)) or self.watchdog <= 0:
                raise ValueError(f"watchdog={self.watchdog!r}: expected seconds > 0, or None")
            if self.launch_command is None:
                raise ValueError(
                    "watchdog needs launch_command: it recovers a hung server by killing the "
                    "server process that the backend launched"
                )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start_hint(self) -> str:
        return START_HINT.format(port=self.port)
