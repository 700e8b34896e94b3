"""Simulator backends by name.

``sim`` is the embedded simulator (:mod:`carla_safe_envs.sim`), ``carla`` a CARLA 0.9.15 /
0.9.16 server (:mod:`carla_safe_envs.carla_backend`).  Backends are imported lazily from this
registry so that choosing one never imports another (nor its dependencies).
"""

from __future__ import annotations

import importlib

from carla_safe_envs.backends.base import Backend, BackendInterrupted

# name -> "module:class"
BACKENDS: dict[str, str] = {
    "sim": "carla_safe_envs.sim.backend:SimBackend",
    "carla": "carla_safe_envs.carla_backend:CarlaBackend",
}


def make_backend(name: str, **options) -> Backend:
    """Instantiate the backend registered as ``name`` with its ``options``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: expected one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["BACKENDS", "Backend", "BackendInterrupted", "make_backend"]
