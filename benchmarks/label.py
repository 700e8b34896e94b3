"""``python -m benchmarks label`` and ``label-report``: VL-SAFE safety labels p(s) for a dataset.

``label`` runs a safety labeler (:data:`vlsafe.labels.LABELERS`) over every stored frame in
batches and writes the labels as a float32 column (default ``safety``; use e.g.
``--column safety_oracle`` to keep several labelers side by side) with attributes saying which
labeler, model and weights made them.  The column is written with
``OfflineDataset.write_column``: under a temporary name first, so an interrupted run never
leaves a half-written column or touches other data.

``label-report`` prints, per labeled column, the AUROC / average precision / calibration of
``1 - p(s)`` for a cost event within the next k steps (:mod:`vlsafe.label_report`), and can
write a PNG plot and JSON.  ``--sources`` also scores the label sources of
:mod:`vlsafe.label_sources` (``oracle``, ``frame``, ``constant:C``, ``shuffled``,
``noisy:Q``: the p(s) a grid variant trains on), made in memory with ``--label-seed``.

Both are registered in ``benchmarks.__main__.COMMANDS`` from :data:`LABEL_COMMAND` and
:data:`LABEL_REPORT_COMMAND` as ``(help, add_arguments, run)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vlsafe.label_sources import STANDARD_SOURCES

logger = logging.getLogger(__name__)

LABEL_HELP = "add VL-SAFE safety labels p(s) (clip or oracle) to a dataset file, in place"
REPORT_HELP = "AUROC / AP / calibration of a dataset's safety labels against near-future cost"


# --- label ----------------------------------------------------------------------------------


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``label``."""
    from vlsafe.labels import LABELERS

    parser.add_argument("--dataset", required=True, help="HDF5 dataset written by `collect`")
    parser.add_argument(
        "--labeler", required=True, choices=sorted(LABELERS), help="which safety labeler"
    )
    parser.add_argument("--column", default="safety", help="column to write (default safety)")
    clip = parser.add_argument_group("clip labeler")
    clip.add_argument("--model", default="ViT-B-32", help="open_clip model (default ViT-B-32)")
    clip.add_argument(
        "--pretrained",
        default="openai",
        help="open_clip pretrained tag (default openai; 'none' = untrained, for tests only)",
    )
    clip.add_argument(
        "--checkpoint",
        default=None,
        help="local open_clip weights file, used instead of --pretrained (offline machines)",
    )
    clip.add_argument("--device", default="cpu", help="torch device (default cpu)")
    clip.add_argument("--batch-size", type=int, default=64, help="frames per batch (default 64)")
    oracle = parser.add_argument_group("oracle and frame labelers (frame: no --horizon)")
    oracle.add_argument("--horizon", type=int, default=10, help="cost look-ahead [steps] (10)")
    oracle.add_argument("--ttc-safe", type=float, default=3.0, help="TTC without risk [s] (3)")
    oracle.add_argument(
        "--lateral-safe", type=float, default=1.0, help="fully unsafe lateral error [m] (1)"
    )


def labeler_options(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor options of ``args.labeler`` from the command line."""
    if args.labeler == "clip":
        pretrained = None if str(args.pretrained).lower() == "none" else args.pretrained
        return {
            "model": args.model,
            "pretrained": pretrained,
            "checkpoint": args.checkpoint,
            "device": args.device,
            "batch_size": args.batch_size,
        }
    if args.labeler == "oracle":
        return {
            "horizon": args.horizon,
            "ttc_safe": args.ttc_safe,
            "lateral_safe": args.lateral_safe,
        }
    if args.labeler == "frame":
        return {"ttc_safe": args.ttc_safe, "lateral_safe": args.lateral_safe}
    raise ValueError(f"no command-line options known for labeler {args.labeler!r}")


def label_dataset(
    dataset: Any, labeler: Any, *, batch_size: int = 256, progress: bool = True
) -> np.ndarray:
    """(N,) float32 p(s) of every step of ``dataset``, streaming frames in batches."""
    from carla_safe_envs.progress import progress_bar
    from vlsafe.labels import dataset_signals

    n = dataset.n_steps
    signals = dataset_signals(dataset, labeler)
    labels = np.empty(n, dtype=np.float32)
    if labeler.uses_frames:
        batches = dataset.iter_frames(batch_size)
    else:  # skip reading images the labeler ignores
        batches = (
            (start, np.empty((min(batch_size, n - start), 0, 0, 3), dtype=np.uint8))
            for start in range(0, n, batch_size)
        )
    with progress_bar(n, f"label {labeler.name}", progress) as bar:
        for start, frames in batches:
            stop = start + len(frames)
            batch_signals = {name: values[start:stop] for name, values in signals.items()}
            labels[start:stop] = labeler(frames, batch_signals)
            if bar is not None:
                bar.update(len(frames))
    if not np.all((labels >= 0) & (labels <= 1)):
        raise RuntimeError(f"labeler {labeler.name!r} returned values outside [0, 1]")
    return labels


def _fail(error: Exception) -> int:
    """Print a user error (bad file, name, path, missing weights) and return exit code 2."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    print(f"error: {message}", file=sys.stderr)
    return 2


USER_ERRORS = (FileNotFoundError, ValueError, KeyError, ImportError, RuntimeError)


def run_label(args: argparse.Namespace) -> int:
    """Label ``args.dataset`` in place; returns the exit code (2 on a user error)."""
    from carla_safe_envs.datasets import OfflineDataset
    from vlsafe.labels import make_labeler

    path = Path(args.dataset)
    started = time.perf_counter()
    try:
        with OfflineDataset(path) as dataset:  # checks the file before the model loads
            labeler = make_labeler(args.labeler, **labeler_options(args))
            batch = args.batch_size if labeler.uses_frames else 4096
            labels = label_dataset(dataset, labeler, batch_size=batch)
        seconds = time.perf_counter() - started
        attrs = {
            **labeler.describe(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 3),
        }
        OfflineDataset.write_column(path, args.column, labels, attrs)  # after the reader closed
    except USER_ERRORS as error:
        return _fail(error)
    print(
        f"{path}: wrote column {args.column!r} ({args.labeler}) for {len(labels)} steps in "
        f"{seconds:.1f} s; mean p(safe) {labels.mean():.3f}"
    )
    return 0


# --- label-report ---------------------------------------------------------------------------


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``label-report``."""
    parser.add_argument("--dataset", required=True, help="HDF5 dataset with safety labels")
    parser.add_argument(
        "--k", type=int, nargs="+", default=[10, 30], help="cost look-aheads [steps] (10 30)"
    )
    parser.add_argument("--bins", type=int, default=10, help="calibration bins (default 10)")
    parser.add_argument("--png", default=None, help="write ROC + calibration plot here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--sources",
        nargs="*",
        default=None,
        metavar="SOURCE",
        help="also score these label sources, made in memory from the dataset's signals "
        "(oracle, frame, constant:C, shuffled, noisy:Q); a bare --sources: "
        + " ".join(STANDARD_SOURCES),
    )
    parser.add_argument(
        "--label-seed", type=int, default=0, help="seed of the shuffled / noisy sources (0)"
    )


def run_report(args: argparse.Namespace) -> int:
    """Print the label report of ``args.dataset``; returns the exit code."""
    from carla_safe_envs.datasets import OfflineDataset
    from vlsafe.label_report import format_report, plot, report

    sources = args.sources
    if sources is not None and not sources:
        sources = list(STANDARD_SOURCES)
    try:
        with OfflineDataset(Path(args.dataset)) as dataset:
            result = report(
                dataset, k=args.k, bins=args.bins, sources=sources or (), seed=args.label_seed
            )
    except USER_ERRORS as error:
        return _fail(error)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_report(result))
    if args.png:
        print(f"wrote {plot(result, args.png)}", file=sys.stderr if args.json else sys.stdout)
    return 0 if result["labelers"] or result.get("sources") else 1


LABEL_COMMAND = (LABEL_HELP, add_label_arguments, run_label)
LABEL_REPORT_COMMAND = (REPORT_HELP, add_report_arguments, run_report)
