"""The published comparison table of VL-SAFE, shipped as data, and the table's fixed layout.

``benchmarks/data/published.csv`` holds the poster's numbers (``seed/vl-safe-poster.txt``,
"Experiment Results": 9 models x 4 tasks x 10 metrics) keyed by carla-safe task id and model
name; :func:`load_published` is the one reader.  :data:`TABLE_TASKS` is the poster's row-group
order and names, :data:`HIGHER_IS_BETTER` the direction of each metric (the poster's arrows).
"""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType

from carla_safe_envs.metrics import METRIC_NAMES

PUBLISHED_FILE = "published.csv"
SOURCE = "the VL-SAFE poster's comparison table"

#: task id -> the poster's row-group name, in the poster's order.
TABLE_TASKS: Mapping[str, str] = MappingProxyType(
    {
        "CarlaFourLane-v0": "Four Lane",
        "CarlaLeftTurn-v0": "Left Turn",
        "CarlaNavigation-v0": "Navigation",
        "CarlaRightTurn-v0": "Right Turn",
    }
)

#: metric -> True when larger is better (Return, AS, WC, TD, AR), False when smaller is
#: better (Cost, CR, TCF, DCF, CS).
HIGHER_IS_BETTER: Mapping[str, bool] = MappingProxyType(
    {
        "Return": True,
        "Cost": False,
        "AS": True,
        "WC": True,
        "TD": True,
        "AR": True,
        "CR": False,
        "TCF": False,
        "DCF": False,
        "CS": False,
    }
)
assert tuple(HIGHER_IS_BETTER) == METRIC_NAMES


@functools.cache
def load_published() -> Mapping[tuple[str, str], Mapping[str, float]]:
    """``{(task id, model name): {metric: value}}`` of the published table (read once).

    Raises:
        ValueError: the shipped file is malformed (a missing metric, task or model).
    """
    text = resources.files("benchmarks").joinpath("data", PUBLISHED_FILE).read_text()
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    table: dict[tuple[str, str], Mapping[str, float]] = {}
    for row in rows:
        missing = [name for name in ("task", "model", *METRIC_NAMES) if not row.get(name)]
        if missing:
            raise ValueError(f"{PUBLISHED_FILE}: row {row} lacks {missing}")
        if row["task"] not in TABLE_TASKS:
            raise ValueError(f"{PUBLISHED_FILE}: unknown task {row['task']!r}")
        values = {name: float(row[name]) for name in METRIC_NAMES}
        table[(row["task"], row["model"])] = MappingProxyType(values)
    return MappingProxyType(table)
