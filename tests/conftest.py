"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# One math thread per pytest worker: `make test` runs two workers on two cores, and torch's
# default of one thread per core made the agent tests 10x slower through contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def offline_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``offline_dataset(task, action_mode="discrete", steps=400)``: a small expert dataset
    with oracle safety labels, collected once per session (and pytest worker)."""
    pytest.importorskip("h5py")
    cache: dict[tuple[str, str, int], Path] = {}

    def make(task: str, action_mode: str = "discrete", steps: int = 400) -> Path:
        key = (task, action_mode, steps)
        if key not in cache:
            from benchmarks.label import label_dataset
            from carla_safe_envs.collection import collect
            from carla_safe_envs.datasets import OfflineDataset
            from vlsafe.labels import make_labeler

            out = tmp_path_factory.mktemp("data") / f"{task}-{action_mode}-{steps}.h5"
            collect(
                task, steps, out, seed=1, noise=(0.1, 0.3), action_mode=action_mode, progress=False
            )
            with OfflineDataset(out) as data:
                labels = label_dataset(data, make_labeler("oracle"), progress=False)
            OfflineDataset.write_column(out, "safety", labels, {"labeler": "oracle"})
            cache[key] = out
        return cache[key]

    return make
