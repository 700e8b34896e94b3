"""``python -m benchmarks speed``: environment steps per second on one core.

Measures, in one process pinned to one CPU core (``os.sched_setaffinity`` where the OS has it;
OpenCV is held to one thread meanwhile), for each carla-safe task:

- ``bev``: ``gym.make(task_id)``, the default BEV image observation;
- ``no_render``: ``gym.make(task_id, render_observation=False)``, simulation only;

and, in the same run, highway-env's ``highway-fast-v0`` with a 128 x 128 image observation as
the reference.  highway-env (1.12) has no RGB image observation type (its
``observation_factory`` knows Kinematics, OccupancyGrid, TimeToCollision, Lidar, ... and
``GrayscaleObservation``), so the reference uses ``GrayscaleObservation`` (128 x 128, one frame,
ITU-R 601 weights): it draws the RGB frame with pygame, then converts it to gray, which costs
as much as an RGB image observation plus one dot product.  Note that one highway-fast step is
1 s of simulated time (policy 1 Hz, simulation 5 Hz) against 0.1 s for carla-safe; the ratio
compares steps, the unit an RL agent consumes.

Actions are drawn from the env's seeded action space before timing starts; an episode end
triggers a reset whose time is counted apart (``resets``, ``reset_ms``), never in the step
rate; env creation and ``warmup`` steps are not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym

from carla_safe_envs.metrics import format_table
from carla_safe_envs.progress import progress_bar

logger = logging.getLogger(__name__)

HELP = "environment steps per second on one core, carla-safe tasks vs highway-fast-v0"

HIGHWAY_ID = "highway-fast-v0"
HIGHWAY_OBSERVATION = "GrayscaleObservation 128x128 (highway-env has no RGB image observation)"
MODES = ("bev", "no_render")  # gym.make(id) / gym.make(id, render_observation=False)

EnvFactory = Callable[[], gym.Env]


def highway_image_config() -> dict[str, Any]:
    """highway-env config for a 128 x 128 single-frame image observation (a fresh dict)."""
    return {
        "observation": {
            "type": "GrayscaleObservation",
            "observation_shape": (128, 128),  # [px]
            "stack_size": 1,
            "weights": [0.2989, 0.5870, 0.1140],  # RGB -> gray (ITU-R 601)
        }
    }


def make_highway_fast() -> gym.Env:
    """``highway-fast-v0`` with :func:`highway_image_config`."""
    try:
        import highway_env
    except ImportError as error:
        raise gym.error.DependencyNotInstalled(
            "the speed comparison needs highway-env: `pip install highway-env` "
            "(or `pip install -e '.[dev]'`), or pass --no-highway"
        ) from error
    gym.register_envs(highway_env)
    return gym.make(HIGHWAY_ID, config=highway_image_config())


def carla_safe_factories(task_id: str) -> dict[str, EnvFactory]:
    """The two measured variants of a carla-safe task, by mode (see :data:`MODES`)."""
    import carla_safe_envs  # noqa: F401  (registers the ids)

    return {
        "bev": lambda: gym.make(task_id),
        "no_render": lambda: gym.make(task_id, render_observation=False),
    }


# --- measurement ---------------------------------------------------------------------------


@contextlib.contextmanager
def pinned_to_one_core() -> Iterator[int | None]:
    """Pin this process to one of its allowed CPUs (and OpenCV to one thread) meanwhile.

    Yields the CPU index, or ``None`` where the OS has no ``sched_setaffinity``.
    """
    if not hasattr(os, "sched_setaffinity"):
        logger.warning("os.sched_setaffinity is not available: timing without pinning")
        yield None
        return
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    os.sched_setaffinity(0, {cpu})
    try:
        import cv2
    except ImportError:
        cv2 = None
    threads = cv2.getNumThreads() if cv2 is not None else 0
    if cv2 is not None:
        cv2.setNumThreads(1)
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)
        if cv2 is not None:
            cv2.setNumThreads(threads)


@dataclass(frozen=True)
class SpeedResult:
    """Timing of one environment variant."""

    steps: int  # timed steps
    step_seconds: float  # [s] wall time inside env.step, summed
    resets: int  # episode ends during the timed steps
    reset_seconds: float  # [s] wall time inside those env.reset calls, summed

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.step_seconds if self.step_seconds > 0 else float("inf")

    @property
    def reset_ms(self) -> float:
        """Mean reset time [ms] (0 when there was none)."""
        return 1000.0 * self.reset_seconds / self.resets if self.resets else 0.0

    def to_json(self) -> dict[str, float]:
        return asdict(self) | {"steps_per_second": self.steps_per_second, "reset_ms": self.reset_ms}


def measure_steps_per_second(
    make_env: EnvFactory,
    *,
    steps: int,
    seed: int = 0,
    warmup: int = 10,
    desc: str = "",
) -> SpeedResult:
    """Step rate of the env ``make_env()`` builds, under random actions.

    Args:
        make_env: builds the environment (its construction is not timed).
        steps: timed steps (>= 1).
        seed: seeds ``reset`` and the action space.
        warmup: untimed steps first (lazy initialization, caches).
        desc: progress bar label.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0; got steps={steps}, warmup={warmup}")
    env = make_env()
    try:
        env.action_space.seed(seed)
        actions = [env.action_space.sample() for _ in range(warmup + steps)]
        env.reset(seed=seed)
        clock = time.perf_counter
        step_seconds = reset_seconds = 0.0
        resets = 0
        with progress_bar(steps, desc or "steps") as bar:
            for i, action in enumerate(actions):
                timed = i >= warmup
                start = clock()
                _, _, terminated, truncated, _ = env.step(action)
                elapsed = clock() - start
                if timed:
                    step_seconds += elapsed
                    bar.update()
                if terminated or truncated:
                    start = clock()
                    env.reset()
                    if timed:
                        reset_seconds += clock() - start
                        resets += 1
    finally:
        env.close()
    return SpeedResult(steps, step_seconds, resets, reset_seconds)


def measure_highway_fast(*, steps: int, seed: int = 0, warmup: int = 10) -> SpeedResult:
    """:func:`measure_steps_per_second` of :func:`make_highway_fast`."""
    return measure_steps_per_second(
        make_highway_fast, steps=steps, seed=seed, warmup=warmup, desc=HIGHWAY_ID
    )


@dataclass
class SpeedReport:
    """Step rates of every task and mode, with the highway-fast reference."""

    cpu: int | None  # the core the run was pinned to
    tasks: dict[str, dict[str, SpeedResult]] = field(default_factory=dict)  # id -> mode -> result
    highway: SpeedResult | None = None

    def ratio(self, result: SpeedResult) -> float | None:
        """``result``'s step rate over highway-fast's (``None`` without the reference)."""
        if self.highway is None:
            return None
        return result.steps_per_second / self.highway.steps_per_second

    def to_json(self) -> dict[str, Any]:
        tasks: dict[str, Any] = {}
        for task_id, modes in self.tasks.items():
            tasks[task_id] = {mode: result.to_json() for mode, result in modes.items()}
            for mode, result in modes.items():
                tasks[task_id][f"{mode}_over_highway"] = self.ratio(result)
        highway = None
        if self.highway is not None:
            highway = {"id": HIGHWAY_ID, "observation": HIGHWAY_OBSERVATION}
            highway |= self.highway.to_json()
        return {"cpu": self.cpu, "tasks": tasks, "highway": highway}

    def to_table(self) -> str:
        rows: dict[str, dict[str, float]] = {}
        for task_id, modes in self.tasks.items():
            row: dict[str, float] = {}
            for mode, result in modes.items():
                row[f"{mode} steps/s"] = result.steps_per_second
                ratio = self.ratio(result)
                if ratio is not None:
                    row[f"{mode} / highway"] = ratio
            rows[task_id] = row
        if self.highway is not None:
            rows[f"{HIGHWAY_ID} (128x128 gray)"] = {"bev steps/s": self.highway.steps_per_second}
        columns = [f"{mode} steps/s" for mode in MODES]
        if self.highway is not None:
            columns += [f"{mode} / highway" for mode in MODES]
        return format_table(rows, columns=columns, label="task", digits=1)


def measure_all(
    tasks: Mapping[str, Mapping[str, EnvFactory]],
    *,
    highway: EnvFactory | None,
    steps: int,
    highway_steps: int,
    seed: int = 0,
    warmup: int = 10,
) -> SpeedReport:
    """Time every task's modes and the reference in this process, pinned to one core."""
    with pinned_to_one_core() as cpu:
        report = SpeedReport(cpu=cpu)
        if highway is not None:
            report.highway = measure_steps_per_second(
                highway, steps=highway_steps, seed=seed, warmup=warmup, desc=HIGHWAY_ID
            )
        for task_id, modes in tasks.items():
            report.tasks[task_id] = {
                mode: measure_steps_per_second(
                    factory, steps=steps, seed=seed, warmup=warmup, desc=f"{task_id} {mode}"
                )
                for mode, factory in modes.items()
            }
    return report


# --- command line --------------------------------------------------------------------------


def _count(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps", type=_count, default=2000, help="timed steps per env (default 2000)"
    )
    parser.add_argument(
        "--highway-steps",
        type=_count,
        default=300,
        help="timed steps for highway-fast-v0 (default 300; it is far slower per step)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        metavar="ID",
        help="task ids to time (default: every id in carla_safe_envs.TASK_IDS)",
    )
    parser.add_argument("--seed", type=int, default=0, help="reset / action seed (default 0)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument(
        "--no-highway", action="store_true", help="skip the highway-fast-v0 reference"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON dict instead of a table")


def _task_ids(requested: Sequence[str] | None) -> list[str]:
    try:
        from carla_safe_envs import TASK_IDS
    except ImportError as error:
        raise SystemExit(
            f"speed: cannot read carla_safe_envs.TASK_IDS ({error}); is carla-safe installed "
            "(`pip install -e .`)?"
        ) from error
    if not requested:
        return list(TASK_IDS)
    unknown = [task_id for task_id in requested if task_id not in TASK_IDS]
    if unknown:
        raise SystemExit(f"speed: unknown task id(s) {unknown}; valid: {', '.join(TASK_IDS)}")
    return list(requested)


def run(args: argparse.Namespace) -> int:
    tasks = {task_id: carla_safe_factories(task_id) for task_id in _task_ids(args.tasks)}
    report = measure_all(
        tasks,
        highway=None if args.no_highway else make_highway_fast,
        steps=args.steps,
        highway_steps=args.highway_steps,
        seed=args.seed,
        warmup=args.warmup,
    )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        where = f"pinned to CPU {report.cpu}" if report.cpu is not None else "not pinned"
        print(f"steps per second, one process {where}; reference: {HIGHWAY_OBSERVATION}")
        print(report.to_table())
    return 0
