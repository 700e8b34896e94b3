"""``python -m benchmarks export``: a collected dataset in the format of DSRL / OSRL, Minari or
d3rlpy, for those libraries' own loaders (:mod:`carla_safe_envs.export`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "export a dataset for DSRL/OSRL (HDF5), Minari or d3rlpy, loadable as it is"
FORMATS = ("dsrl", "minari", "d3rlpy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="a collected dataset (.h5)")
    parser.add_argument("--format", choices=FORMATS, required=True, help="target library")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file (dsrl, d3rlpy; default DATASET-<format>.h5) or Minari root "
        "directory (minari; default MINARI_DATASETS_PATH or ~/.minari/datasets)",
    )
    parser.add_argument(
        "--image-size", type=int, default=128, help="frame side [px], a divisor of 128"
    )
    parser.add_argument(
        "--flatten", action="store_true", help="flat (S*S*3,) uint8 observations (OSRL)"
    )
    parser.add_argument(
        "--actions",
        choices=["discrete", "continuous"],
        default=None,
        help="continuous: a discrete file's indices as their (acc / 3, steer) values",
    )
    parser.add_argument(
        "--dataset-id",
        default=None,
        help="Minari dataset id (default carla-safe/<task>-<file stem>-v0)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from carla_safe_envs.datasets import OfflineDataset
    from carla_safe_envs.export import ExportView, write_dsrl

    view = ExportView(image_size=args.image_size, flatten=args.flatten, action_mode=args.actions)
    with OfflineDataset(args.dataset) as data:
        summary = {"format": args.format, "source": str(args.dataset), "steps": data.n_steps}
        if args.format == "minari":
            task = data.task.removeprefix("Carla").removesuffix("-v0").lower()
            stem = args.dataset.stem.replace("_", "-").lower()
            dataset_id = args.dataset_id or f"carla-safe/{task}-{stem}-v0"
            exported = data.to_minari(dataset_id, path=args.out, view=view)
            summary |= {"dataset_id": dataset_id, "episodes": exported.total_episodes}
        else:
            out = args.out or args.dataset.with_name(f"{args.dataset.stem}-{args.format}.h5")
            if out.exists() and not args.overwrite:
                raise SystemExit(f"{out} exists; pass --overwrite to replace it")
            if args.format == "dsrl":
                write_dsrl(data, out, view, overwrite=args.overwrite)
            else:
                from baselines.d3rlpy_data import write_replay_buffer

                write_replay_buffer(data, out, view)
            summary["out"] = str(out)
    print(json.dumps(summary, indent=2))
    return 0
