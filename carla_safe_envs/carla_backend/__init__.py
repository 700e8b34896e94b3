"""The real CARLA backend (``backend="carla"``), for CARLA 0.9.15 / 0.9.16 servers.

Importing this package does not import the ``carla`` client; constructing
:class:`CarlaBackend` does (and connects).  The package is not named ``carla`` so that it never
shadows the client module.

    gym.make("CarlaFourLane-v0", backend="carla",
             backend_options={"host": "localhost", "port": 2000, "timeout": 10.0})
"""

from carla_safe_envs.carla_backend.backend import CarlaBackend
from carla_safe_envs.carla_backend.options import (
    SUPPORTED_VERSIONS,
    CarlaBackendError,
    CarlaIncompatibleError,
    CarlaMapError,
    CarlaOptions,
    CarlaSpawnError,
    CarlaUnavailableError,
)

__all__ = [
    "SUPPORTED_VERSIONS",
    "CarlaBackend",
    "CarlaBackendError",
    "CarlaIncompatibleError",
    "CarlaMapError",
    "CarlaOptions",
    "CarlaSpawnError",
    "CarlaUnavailableError",
]
