"""The evaluation metrics: one definition for every model, task and backend.

An :class:`EpisodeRecorder` reads the per-step ``info`` dicts an environment returns (plus the
rewards) and condenses one episode into :class:`EpisodeMetrics`; :func:`aggregate` turns a set
of episodes into the ten metrics of the VL-SAFE comparison table (VLM-RL / CarDreamer
conventions), keyed by :data:`METRIC_NAMES`:

======  ==========================================================================
Return  mean over episodes of the summed reward
Cost    mean over episodes of the summed cost
AS      average speed: mean over episodes of the episode's mean ego speed [m/s]
WC      waypoint completion: mean over episodes of the route waypoints reached
        (waypoints are 1 m apart)
TD      travel distance: mean over episodes of the distance driven [m]
AR      arrival rate: share of episodes that reached the destination
CR      collision rate: share of episodes with at least one collision
TCF     time-based collision frequency: collisions per 1000 steps, over all steps
DCF     distance-based collision frequency: collisions per km, over all distance
        (0 when nothing was driven)
CS      collision speed: mean ego speed at a collision over all collisions [m/s]
        (0 when there were none)
======  ==========================================================================

A collision is counted at its onset (a step with ``collision`` true after one without), so a
contact that lasts several steps counts once.  A missing ``cost`` is an error, never zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

METRIC_NAMES: tuple[str, ...] = (
    "Return",
    "Cost",
    "AS",
    "WC",
    "TD",
    "AR",
    "CR",
    "TCF",
    "DCF",
    "CS",
)

REQUIRED_INFO_KEYS: tuple[str, ...] = (
    "cost",  # [-] per-step safety cost, >= 0
    "speed",  # [m/s] ego speed
    "collision",  # the ego collided during this step
    "arrived",  # the ego reached the destination
    "waypoints_reached",  # route waypoints reached so far in the episode (cumulative)
    "distance",  # [m] distance driven so far in the episode (cumulative)
)


class MissingInfoKeyError(KeyError):
    """An environment's ``info`` dict lacks a key the metrics (or a wrapper) need."""

    def __init__(self, key: str, *, where: str, info: Mapping[str, Any]) -> None:
        self.key = key
        self.message = (
            f"{where}: the step's info dict has no {key!r} (keys present: "
            f"{sorted(map(str, info))}). A carla-safe environment reports "
            f"{', '.join(REQUIRED_INFO_KEYS)} in info on every step; a missing value is an "
            "error, never read as 0. Wrap the environment so that it reports it."
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


@dataclass(frozen=True)
class EpisodeMetrics:
    """One episode, condensed.

    Attributes:
        return_: summed reward.
        cost: summed cost.
        steps: number of environment steps (0.1 s each in carla-safe).
        avg_speed: mean ego speed over the steps [m/s].
        waypoints: route waypoints reached by the end of the episode.
        distance: distance driven [m].
        arrived: the episode reached the destination.
        collisions: collision onsets (steps with a collision after one without).
        collision_speed_sum: ego speed summed over the collision onsets [m/s].
    """

    return_: float
    cost: float
    steps: int
    avg_speed: float
    waypoints: int
    distance: float
    arrived: bool
    collisions: int
    collision_speed_sum: float


class EpisodeRecorder:
    """Accumulates one episode's rewards and info dicts into :class:`EpisodeMetrics`.

    Call :meth:`add` after every ``env.step`` (not after ``reset``: the metrics count steps),
    :meth:`result` at the end of the episode and :meth:`reset` before the next one.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the current episode."""
        self._return = 0.0
        self._cost = 0.0
        self._steps = 0
        self._speed_sum = 0.0  # [m/s]
        self._waypoints = 0
        self._distance = 0.0  # [m]
        self._arrived = False
        self._in_collision = False
        self._collisions = 0
        self._collision_speed_sum = 0.0  # [m/s]

    def add(self, reward: float, info: Mapping[str, Any]) -> None:
        """Record one step's reward and ``info``.

        Raises:
            MissingInfoKeyError: ``info`` lacks one of :data:`REQUIRED_INFO_KEYS`.
            ValueError: the cost is negative or not finite.
        """
        for key in REQUIRED_INFO_KEYS:
            if key not in info:
                raise MissingInfoKeyError(key, where="EpisodeRecorder.add", info=info)
        cost = float(info["cost"])
        if not cost >= 0.0 or math.isinf(cost):
            raise ValueError(f"info['cost'] must be a finite float >= 0; got {info['cost']!r}")
        speed = float(info["speed"])
        collision = bool(info["collision"])
        self._return += float(reward)
        self._cost += cost
        self._steps += 1
        self._speed_sum += speed
        self._waypoints = int(info["waypoints_reached"])
        self._distance = float(info["distance"])
        self._arrived = self._arrived or bool(info["arrived"])
        if collision and not self._in_collision:
            self._collisions += 1
            self._collision_speed_sum += speed
        self._in_collision = collision

    def result(self) -> EpisodeMetrics:
        """The episode recorded since the last :meth:`reset`.

        Raises:
            ValueError: no step was recorded.
        """
        if self._steps == 0:
            raise ValueError("EpisodeRecorder.result(): no step recorded since reset()")
        return EpisodeMetrics(
            return_=self._return,
            cost=self._cost,
            steps=self._steps,
            avg_speed=self._speed_sum / self._steps,
            waypoints=self._waypoints,
            distance=self._distance,
            arrived=self._arrived,
            collisions=self._collisions,
            collision_speed_sum=self._collision_speed_sum,
        )


def episode_metrics(rewards: Sequence[float], infos: Sequence[Mapping[str, Any]]) -> EpisodeMetrics:
    """:class:`EpisodeMetrics` of a whole recorded episode (one reward and info per step)."""
    if len(rewards) != len(infos):
        raise ValueError(f"got {len(rewards)} rewards but {len(infos)} info dicts")
    recorder = EpisodeRecorder()
    for reward, info in zip(rewards, infos, strict=True):
        recorder.add(reward, info)
    return recorder.result()


def aggregate(episodes: Sequence[EpisodeMetrics]) -> dict[str, float]:
    """The ten table metrics over ``episodes`` (see the module docstring), plus ``episodes``.

    Returns:
        ``{name: value for name in METRIC_NAMES}`` (floats) and ``"episodes"``: the episode
        count (an int).

    Raises:
        ValueError: ``episodes`` is empty.
    """
    n = len(episodes)
    if n == 0:
        raise ValueError("aggregate() needs at least one episode")
    steps = sum(e.steps for e in episodes)
    collisions = sum(e.collisions for e in episodes)
    km = sum(e.distance for e in episodes) / 1000.0
    return {
        "Return": sum(e.return_ for e in episodes) / n,
        "Cost": sum(e.cost for e in episodes) / n,
        "AS": sum(e.avg_speed for e in episodes) / n,
        "WC": sum(e.waypoints for e in episodes) / n,
        "TD": sum(e.distance for e in episodes) / n,
        "AR": sum(e.arrived for e in episodes) / n,
        "CR": sum(e.collisions > 0 for e in episodes) / n,
        "TCF": 1000.0 * collisions / steps,
        "DCF": collisions / km if km > 0.0 else 0.0,
        "CS": sum(e.collision_speed_sum for e in episodes) / collisions if collisions else 0.0,
        "episodes": n,
    }


def format_table(
    rows: Mapping[str, Mapping[str, float]],
    *,
    columns: Sequence[str] | None = None,
    label: str = "",
    digits: int = 2,
) -> str:
    """A Markdown table (readable as plain text) of metrics, one row per label.

    Args:
        rows: row label (model, task, ...) -> metrics, e.g. from :func:`aggregate`.
        columns: metric names in order; default: the :data:`METRIC_NAMES` present in any row,
            then any other keys in first-seen order.  A row lacking a column shows ``-``.
        label: header of the label column.
        digits: decimals for floats (ints, such as ``episodes``, are printed as they are).
    """
    if columns is None:
        seen = dict.fromkeys(key for metrics in rows.values() for key in metrics)
        columns = [name for name in METRIC_NAMES if name in seen]
        columns += [key for key in seen if key not in METRIC_NAMES]

    def cell(value: float | None) -> str:
        if value is None:
            return "-"
        if isinstance(value, int):  # counts (and bools) as they are
            return str(value)
        return f"{value:.{digits}f}"

    table = [[label, *columns]]
    table += [
        [str(name), *(cell(metrics.get(c)) for c in columns)] for name, metrics in rows.items()
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "| " + " | ".join([first, *rest]) + " |"

    rule = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]])
    return "\n".join([line(table[0]), rule + "|", *(line(row) for row in table[1:])])
