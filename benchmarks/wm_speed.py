"""``python -m benchmarks wm-speed``: world-model training updates per second per preset.

For each preset of :data:`vlsafe.world_model.WM_PRESETS` this builds the world model and its
trainer on ``--device``, makes one synthetic batch of the preset's ``batch_size`` x
``seq_len`` windows (random frames, discrete actions, rewards, costs, labels; the cost of a
WorldModelTrainer update does not depend on the pixel values) with its frames already at the
preset's ``image_size``, as the agents feed them (``carla_safe_envs.bev.downsample`` once per
dataset; ``--full-frames`` feeds 128 px frames that the encoder averages down itself, the
cost before 2026-12-02), runs ``--warmup`` untimed
updates and then times updates until ``--updates`` are done or ``--max-seconds`` have passed
(at least one is always timed).  Batch creation and the transfer to the device are not timed:
this measures the gradient step alone, the world-model part of an agent's training loop.

Threads: torch's default (``torch.get_num_threads()``, reported) unless ``--threads`` is given.
``cpu_s_per_update`` is the process's CPU time per update (all threads): on a machine shared
with other jobs, with ``--threads 1``, it is close to the wall time the update would take on
an idle core, while ``s_per_update`` is the wall time actually observed.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

HELP = "world-model training updates per second for each preset (synthetic batches)"
DEFAULT_PRESETS = ("debug", "cpu", "small")


def synthetic_sequences(batch_size: int, length: int, seed: int = 0):
    """Random :class:`~carla_safe_envs.datasets.Sequences` of (B, T) discrete-action steps."""
    import numpy as np

    from carla_safe_envs.datasets import Sequences

    rng = np.random.default_rng(seed)
    shape = (batch_size, length)
    is_first = np.zeros(shape, dtype=bool)
    is_first[:, 0] = True
    return Sequences(
        observations=rng.integers(0, 256, (*shape, 128, 128, 3), dtype=np.uint8),
        actions=rng.integers(0, 15, shape),
        rewards=rng.normal(size=shape).astype(np.float32),
        costs=(rng.random(shape) < 0.1).astype(np.float32),
        terminals=np.zeros(shape, dtype=bool),
        timeouts=np.zeros(shape, dtype=bool),
        is_first=is_first,
        safety=rng.random(shape).astype(np.float32),
    )


def measure(
    preset: str,
    *,
    device: str = "cpu",
    updates: int = 20,
    warmup: int = 2,
    max_seconds: float = 120.0,
    full_frames: bool = False,
) -> dict[str, Any]:
    """Timing of ``preset``: updates/s, s/update, frames/s and the model's size."""
    import torch

    from carla_safe_envs.bev import downsample
    from vlsafe.wm_training import WorldModelTrainer
    from vlsafe.world_model import WM_PRESETS, WorldModel, make_batch

    config = WM_PRESETS[preset]
    model = WorldModel(config, 15).to(device)
    trainer = WorldModelTrainer(model)
    seqs = synthetic_sequences(config.batch_size, config.seq_len)
    if not full_frames:
        seqs = seqs._replace(observations=downsample(seqs.observations, config.image_size))
    batch = make_batch(seqs, "discrete", device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        trainer.update(batch)
    sync()
    timed, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while timed < updates:
        trainer.update(batch)
        sync()
        timed += 1
        if time.perf_counter() - started >= max_seconds:
            break
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    rate = timed / seconds
    return {
        "updates_per_s": rate,
        "s_per_update": seconds / timed,
        "frames_per_s": rate * config.batch_size * config.seq_len,
        "cpu_s_per_update": cpu_seconds / timed,
        "timed_updates": timed,
        "batch_size": config.batch_size,
        "seq_len": config.seq_len,
        "image_size": config.image_size,
        "frames_px": int(batch.obs.shape[2]),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        nargs="+",
        default=list(DEFAULT_PRESETS),
        choices=["debug", "cpu", "small", "paper"],
        help="presets to time (default: debug cpu small; paper takes a minute per update on a CPU)",
    )
    parser.add_argument(
        "--full-frames",
        action="store_true",
        help="feed 128 px frames (the encoder area-averages them) instead of frames at the "
        "preset's image_size",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--updates", type=int, default=20, help="timed updates (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates first (default 2)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=120.0,
        help="stop timing a preset after this long, >= 1 update (default 120)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print a JSON dict instead of a table")


def run(args: argparse.Namespace) -> int:
    import torch

    from carla_safe_envs.metrics import format_table
    from carla_safe_envs.progress import progress_bar

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("wm-speed: --device cuda asked for but torch sees no CUDA device; use --device cpu")
        return 2
    if args.updates < 1 or args.warmup < 0:
        print("wm-speed: --updates must be >= 1 and --warmup >= 0")
        return 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results: dict[str, dict[str, Any]] = {}
    with progress_bar(len(args.preset), "wm-speed") as bar:
        for preset in args.preset:
            results[preset] = measure(
                preset,
                device=args.device,
                updates=args.updates,
                warmup=args.warmup,
                max_seconds=args.max_seconds,
                full_frames=args.full_frames,
            )
            bar.update(1)
    report = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "presets": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"world-model updates per second on {args.device} ({report['threads']} threads)")
        columns = ["updates_per_s", "s_per_update", "cpu_s_per_update", "frames_per_s"]
        columns += ["batch_size", "seq_len"]
        columns += ["image_size", "frames_px", "parameters"]
        print(format_table(results, columns=columns, label="preset"))
        if "small" in results:
            base = results["small"]["cpu_s_per_update"]
            for name, row in results.items():
                print(f"{name}: {base / row['cpu_s_per_update']:.1f}x small's speed (CPU time)")
    return 0
