"""Simulator backends by name.

``sim`` is the embedded simulator (:mod:`carla_safe_envs.sim`).  Backends are imported lazily
from this registry so that choosing one never imports another (nor its dependencies).
"""

from __future__ import annotations

import importlib

from carla_safe_envs.backends.base import Backend

# name -> "module:class"
BACKENDS: dict[str, str] = {
    "sim": "carla_safe_envs.sim.backend:SimBackend",
}
_PLANNED = {
    "carla": "the CARLA server backend is not available yet (tracked as issue 8); use backend='sim'"
}


def make_backend(name: str, **options) -> Backend:
    """Instantiate the backend registered as ``name`` with its ``options``."""
    if name not in BACKENDS:
        hint = f" ({_PLANNED[name]})" if name in _PLANNED else ""
        raise ValueError(f"unknown backend {name!r}{hint}: expected one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["BACKENDS", "Backend", "make_backend"]
