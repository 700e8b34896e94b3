"""``python -m benchmarks collect``: drive the privileged driver and write an offline dataset
(HDF5) and its card; ``python -m benchmarks dataset-card FILE``: a dataset's card.

See :mod:`carla_safe_envs.datasets` for the file schema,
:func:`carla_safe_envs.collection.collect` for how episodes, seeds, behaviour profiles and
noise levels are assigned (:mod:`carla_safe_envs.profiles` for the mixes) and
:mod:`carla_safe_envs.cards` for what a card holds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

HELP = "drive the expert on a task and write an offline dataset (HDF5, DSRL schema + cost)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task id, e.g. CarlaLeftTurn-v0")
    parser.add_argument("--steps", type=int, required=True, help="number of steps to store")
    parser.add_argument("--out", type=Path, required=True, help="output file (.h5)")
    parser.add_argument("--seed", type=int, default=0, help="episode k uses seed S + k")
    parser.add_argument(
        "--noise",
        type=float,
        nargs="+",
        default=None,
        help="expert noise levels cycled over episodes (default: the --mix's)",
    )
    parser.add_argument(
        "--mix",
        default=None,
        help="dataset mix of behaviour profiles: expert (default: the expert at noise "
        "0 / 0.1 / 0.3), paper (autopilot-like, as the paper's data), frontier (3-10 m/s)",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes driving episodes")
    parser.add_argument(
        "--action-mode", choices=["discrete", "continuous"], default="discrete", help="actions"
    )
    parser.add_argument(
        "--env-kwargs",
        type=json.loads,
        default=None,
        help='JSON of extra env options, e.g. \'{"difficulty": "hard"}\'',
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def summarize(path: Path, seconds: float) -> dict[str, Any]:
    """Steps, episodes, collision episodes, steps with cost, file size and steps/s."""
    import numpy as np

    from carla_safe_envs.datasets import OfflineDataset

    with OfflineDataset(path) as data:
        collided = np.unique(data.episode_ids[data.signal("collision") > 0])
        out_of_lane = np.unique(data.episode_ids[data.signal("cost_terms/out_of_lane") > 0])
        return {
            "path": str(path),
            "task": data.task,
            "steps": data.n_steps,
            "episodes": data.n_episodes,
            "collision_episodes": int(len(collided)),
            "out_of_lane_episodes": int(len(out_of_lane)),
            "steps_with_cost": int((data.costs > 0).sum()),
            "mix": data.mix["name"],
            "noise_levels": [float(p) for p in data.attrs["noise_levels"]],
            "file_mb": round(path.stat().st_size / 1e6, 2),
            "seconds": round(seconds, 1),
            "steps_per_second": round(data.n_steps / seconds, 1),
        }


def run(args: argparse.Namespace) -> int:
    from carla_safe_envs.collection import collect
    from carla_safe_envs.profiles import MIX_NAMES

    if args.mix is not None and args.mix not in MIX_NAMES:
        raise SystemExit(f"error: --mix {args.mix!r} is unknown; choose one of: {', '.join(MIX_NAMES)}")
    if args.mix is not None and args.noise:
        raise SystemExit("error: give --mix or --noise, not both (a mix names its own noise)")
    start = time.perf_counter()
    path = collect(
        args.task,
        args.steps,
        args.out,
        seed=args.seed,
        noise=tuple(args.noise) if args.noise else None,
        mix=args.mix,
        workers=args.workers,
        action_mode=args.action_mode,
        env_kwargs=args.env_kwargs,
        overwrite=args.overwrite,
        progress=True,
    )
    summary = summarize(path, time.perf_counter() - start)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        width = max(len(key) for key in summary)
        for key, value in summary.items():
            print(f"{key:<{width}}  {value}")
        _print_card(path)
    return 0


def _print_card(path: Path) -> None:
    from carla_safe_envs.cards import card_paths

    paths = card_paths(path)
    print()
    print(paths["md"].read_text())
    print(f"(card: {paths['md']}, {paths['json']}" + (
        f", scatter {paths['png']})" if paths["png"].exists() else ")"
    ))


CARD_HELP = "a dataset's card: episodes per profile and noise, their metrics, scatter, sha256"


def add_card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", type=Path, nargs="+", help="dataset files (.h5)")
    parser.add_argument("--json", action="store_true", help="print the cards as JSON")


def run_card(args: argparse.Namespace) -> int:
    from carla_safe_envs.cards import write_card

    cards = []
    for path in args.files:
        card = write_card(path)
        card.pop("episode_rows")
        cards.append(card)
        if not args.json:
            _print_card(path)
    if args.json:
        print(json.dumps(cards if len(cards) > 1 else cards[0], indent=1))
    return 0
