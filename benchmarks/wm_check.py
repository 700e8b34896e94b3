"""``python -m benchmarks wm-check``: a world model's open-loop predictions against a dataset.

Loads ``DIR/world_model.pt`` (written by the world-model agents with
:func:`vlsafe.wm_training.save_world_model`), observes ``--context`` frames of random windows
of ``--dataset``, imagines ``--horizon`` more steps with the dataset's actions, writes the
truth / model / |error| figure to ``--out`` and prints the image and head errors
(:mod:`vlsafe.wm_check`).  Pass a dataset the model was not trained on for held-out numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "world-model check: PNG of open-loop predictions vs truth, and head errors (MAE, AUROC)"
WEIGHTS = "world_model.pt"  # the file inside --model-dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help=f"agent directory holding {WEIGHTS}")
    parser.add_argument("--dataset", required=True, help="HDF5 dataset (ideally held out)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--context", type=int, default=5, help="observed steps (default 5)")
    parser.add_argument("--horizon", type=int, default=15, help="imagined steps (default 15)")
    parser.add_argument("--windows", type=int, default=32, help="windows scored (default 32)")
    parser.add_argument("--examples", type=int, default=2, help="windows drawn (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="window sampling seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--speed-probe",
        action="store_true",
        help="also fit read-outs of the ego speed from the model's state on whole episodes",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def format_result(result: dict) -> str:
    """The errors as a small plain-text table, observed vs open-loop steps."""
    from carla_safe_envs.metrics import format_table

    rows = {name: result[name] for name in ("observed", "open_loop")}
    lines = [
        f"{result['windows']} windows: {result['context']} observed + {result['horizon']} "
        f"imagined steps; safety labels: {'yes' if result['labels'] else 'no'}",
        format_table(rows, label="steps", digits=4),
    ]
    if "speed_probe" in result:
        probe = result["speed_probe"]
        lines.append(
            f"speed read-out on {probe['test_steps']} held-out steps (speed std "
            f"{probe['speed_std']:.2f} m/s): "
            + ", ".join(
                f"{part} R^2 {probe[part]['r2']:.2f} (RMSE {probe[part]['rmse']:.2f} m/s)"
                for part in ("deter", "stoch", "feat")
            )
        )
    if "png" in result:
        lines.append(f"wrote {result['png']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from carla_safe_envs.datasets import OfflineDataset
    from vlsafe.wm_check import check_world_model, speed_probe
    from vlsafe.wm_training import load_world_model

    weights = Path(args.model_dir) / WEIGHTS
    try:
        model = load_world_model(weights, map_location=args.device)
        with OfflineDataset(args.dataset) as dataset:
            result = check_world_model(
                model,
                dataset,
                context=args.context,
                horizon=args.horizon,
                windows=args.windows,
                batch_size=min(8, args.windows),
                examples=args.examples,
                seed=args.seed,
                png=args.out,
            )
            if args.speed_probe:
                result["speed_probe"] = speed_probe(model, dataset)
    except (FileNotFoundError, ValueError, KeyError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result |= {"model_dir": str(args.model_dir), "dataset": str(args.dataset)}
    print(json.dumps(result, indent=1) if args.json else format_result(result))
    return 0
