"""Dataset cards: what an offline dataset holds, stated so a method's result can be read
against its data (DSRL / OSRL's convention).

:func:`dataset_card` reads a dataset file (:class:`carla_safe_envs.datasets.OfflineDataset`)
and condenses it: the mix it was collected with, episodes per (profile, noise), each group's
metrics of DESIGN section 4 (Return, Cost, AS, AR, CR, ... over its episodes, with the same
:mod:`carla_safe_envs.metrics` definitions an evaluation uses), the speed distribution of its
steps, and two hashes: ``sha256`` of the file as it is (it changes when a labeler adds its
column) and ``content_sha256`` of the step data (observations, actions, rewards, costs, flags,
episode ids, noise and profile columns: the same for two collections of the same data).
:func:`write_card` writes it beside the file as ``<file>.card.json``, ``<file>.card.md`` and
the Return-Cost scatter of its episodes, ``<file>.card.png`` (needs matplotlib).

``python -m benchmarks dataset-card FILE`` prints (and writes) a card; ``collect`` writes one
after every collection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from carla_safe_envs.metrics import EpisodeMetrics, EpisodeRecorder, aggregate

log = logging.getLogger(__name__)

CARD_FORMAT = "carla-safe/dataset-card-v1"
FAST_SPEED = 8.0  # [m/s] the card reports the share of steps above it
# the step data hashed into ``content_sha256`` (in this order; missing ones are skipped)
CONTENT_COLUMNS = (
    "observations",
    "actions",
    "rewards",
    "costs",
    "terminals",
    "timeouts",
    "episode_ids",
    "noise",
    "profile_ids",
)
_SIGNALS = ("speed", "collision", "arrived", "waypoints_reached", "distance")


def card_paths(path: str | os.PathLike) -> dict[str, Path]:
    """Where the card of dataset ``path`` goes: ``json``, ``md`` and ``png`` beside it."""
    path = Path(path)
    return {ext: path.with_name(f"{path.name}.card.{ext}") for ext in ("json", "md", "png")}


def file_sha256(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(data: Any) -> str:
    """The sha256 of a dataset's step data (:data:`CONTENT_COLUMNS`, each with its name,
    dtype and shape), read frame chunk by frame chunk: it does not depend on the HDF5
    layout, compression or creation time."""
    digest = hashlib.sha256()
    file = data._file
    for name in CONTENT_COLUMNS:
        if name not in file:
            continue
        column = file[name]
        digest.update(f"{name}:{column.dtype.str}:{column.shape}".encode())
        if name == "observations":
            for _, frames in data.iter_frames(1024):
                digest.update(np.ascontiguousarray(frames).tobytes())
        else:
            digest.update(np.ascontiguousarray(data.column(name)).tobytes())
    return digest.hexdigest()


def episode_table(data: Any) -> list[dict[str, Any]]:
    """One row per stored episode: its index, profile, noise, whether it was cut at the
    file's step budget, and its :class:`~carla_safe_envs.metrics.EpisodeMetrics` fields."""
    signals = {name: data.signal(name) for name in _SIGNALS}
    rewards, costs = data.rewards, data.costs
    names = data.profile_names
    profile_ids, noise = data.profile_ids, data.noise
    rows = []
    for k, (start, stop) in enumerate(data.episode_bounds()):
        recorder = EpisodeRecorder()
        for t in range(int(start), int(stop)):
            recorder.add(
                float(rewards[t]),
                {"cost": float(costs[t]), **{n: float(v[t]) for n, v in signals.items()}},
            )
        m = recorder.result()
        rows.append(
            {
                "episode": int(data.episode_ids[start]),
                "profile": names[int(profile_ids[start])],
                "noise": float(noise[start]),
                "cut": bool(
                    k == data.n_episodes - 1
                    and data.timeouts[stop - 1]
                    and not data.terminals[stop - 1]
                    and m.steps < 500
                ),
                **{f: getattr(m, f) for f in EpisodeMetrics.__dataclass_fields__},
            }
        )
    return rows


def _metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    fields = EpisodeMetrics.__dataclass_fields__
    episodes = [EpisodeMetrics(**{f: r[f] for f in fields}) for r in rows]
    out = aggregate(episodes)
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def dataset_card(path: str | os.PathLike) -> dict[str, Any]:
    """The card of the dataset file ``path`` (JSON-ready; see the module docstring)."""
    from carla_safe_envs.datasets import OfflineDataset

    path = Path(path)
    with OfflineDataset(path) as data:
        rows = episode_table(data)
        speed = data.signal("speed")
        attrs = data.attrs
        card = {
            "format": CARD_FORMAT,
            "file": path.name,
            "sha256": file_sha256(path),
            "content_sha256": content_sha256(data),
            "task": data.task,
            "action_mode": data.action_mode,
            "env_kwargs": json.loads(attrs.get("env_kwargs", "{}")),
            "seed": int(attrs["seed"]),
            "steps": data.n_steps,
            "episodes": data.n_episodes,
            "mix": data.mix,
            "labels": plain_attrs(data.safety_labeler) if data.safety_labeler is not None else None,
            "speed": {
                "mean": round(float(speed.mean()), 3),
                "p90": round(float(np.percentile(speed, 90)), 3),
                "share_above_8": round(float((speed > FAST_SPEED).mean()), 4),
            },
            "steps_with_cost": round(float((data.costs > 0).mean()), 4),
            "metrics": _metrics(rows),
            "groups": [],
            "episode_rows": rows,
        }
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["profile"], r["noise"]), []).append(r)
    for (profile, noise), members in groups.items():
        card["groups"].append({"profile": profile, "noise": noise, **_metrics(members)})
    return card


def plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """HDF5 attributes as JSON-ready Python values (arrays as lists, bytes decoded)."""
    out = {}
    for name, value in attrs.items():
        value = value.tolist() if hasattr(value, "tolist") else value
        out[name] = value.decode() if isinstance(value, bytes) else value
    return out


_MD_METRICS = ("episodes", "Return", "Cost", "AS", "AR", "CR", "DCF")


def card_markdown(card: Mapping[str, Any], png_name: str | None = None) -> str:
    """The card as a Markdown page (the groups' table, the speed line, the hashes)."""
    mix = card["mix"] or {}
    lines = [
        f"# Dataset card: {card['file']}",
        "",
        f"{card['task']}, {card['action_mode']} actions, {card['steps']} steps in "
        f"{card['episodes']} episodes, collection seed {card['seed']}, env options "
        f"{json.dumps(card['env_kwargs'], sort_keys=True)}.",
        "",
        f"Mix **{mix.get('name', '?')}**: {mix.get('description') or '(no description)'}.",
        "",
        "| profile | noise | " + " | ".join(_MD_METRICS) + " |",
        "|---|---:|" + "---:|" * len(_MD_METRICS),
    ]
    for g in [*card["groups"], {"profile": "**all**", "noise": "", **card["metrics"]}]:
        cells = [str(g[k]) if k == "episodes" else f"{g[k]:.2f}" for k in _MD_METRICS]
        noise = g["noise"] if g["noise"] == "" else f"{g['noise']:g}"
        lines.append(f"| {g['profile']} | {noise} | " + " | ".join(cells) + " |")
    s = card["speed"]
    lines += [
        "",
        f"Speed over all steps: mean {s['mean']:.2f} m/s, p90 {s['p90']:.2f} m/s, "
        f"{100 * s['share_above_8']:.1f}% of steps above {FAST_SPEED:g} m/s; "
        f"{100 * card['steps_with_cost']:.1f}% of steps have a cost.",
        "",
    ]
    if png_name:
        lines += [f"![Return and Cost of every episode]({png_name})", ""]
    labels = card.get("labels")
    if labels:
        lines += [f"Safety labels p(s): {labels.get('labeler', '?')}.", ""]
    lines += [f"sha256 `{card['sha256']}`", "", f"content sha256 `{card['content_sha256']}`", ""]
    return "\n".join(lines)


def plot_scatter(card: Mapping[str, Any], out: str | os.PathLike) -> Path:
    """The Return-Cost scatter of the card's episodes, one colour per profile, written to
    ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=110)
    rows = card["episode_rows"]
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    for i, name in enumerate(profiles):
        mine = [r for r in rows if r["profile"] == name]
        crashed = np.array([r["collisions"] > 0 for r in mine])
        x = np.array([r["cost"] for r in mine])
        y = np.array([r["return_"] for r in mine])
        color = f"C{i % 10}"
        ax.scatter(x[~crashed], y[~crashed], s=14, color=color, label=name, alpha=0.75)
        ax.scatter(x[crashed], y[crashed], s=22, color=color, marker="x", alpha=0.9)
    ax.set_xlabel("episode Cost")
    ax.set_ylabel("episode Return")
    mix = (card["mix"] or {}).get("name", "?")
    ax.set_title(
        f"{card['task']}, mix {mix}: {card['episodes']} episodes (x: collided)", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)
    return out


def write_card(path: str | os.PathLike) -> dict[str, Any]:
    """Write the card of dataset ``path`` beside it (``.card.json``, ``.card.md`` and, with
    matplotlib installed, ``.card.png``); returns the card."""
    card = dataset_card(path)
    paths = card_paths(path)
    png = None
    try:
        plot_scatter(card, paths["png"])
        png = paths["png"].name
    except ImportError:
        log.warning("no matplotlib: the card of %s has no scatter plot", path)
    paths["json"].write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    paths["md"].write_text(card_markdown(card, png))
    log.info("wrote the dataset card %s", paths["md"])
    return card
