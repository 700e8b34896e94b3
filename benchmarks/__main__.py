"""``python -m benchmarks <command>`` (also installed as ``carla-safe``).

Each command lives in its own module and is listed once in :data:`COMMANDS` as
``name -> Command(help, add_arguments, run)``: ``add_arguments(parser)`` declares its options
and ``run(args) -> exit code`` does the work.  A command module keeps heavy imports (torch,
RL libraries, simulators) inside ``run`` so that ``--help`` and the other commands stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from benchmarks import collect, export, generalize, speed, wm_check, wm_speed
from benchmarks.calibrate import CALIBRATE_COMMAND
from benchmarks.label import LABEL_COMMAND, LABEL_REPORT_COMMAND
from benchmarks.learn_check import LEARN_CHECK_COMMAND
from benchmarks.run import RUN_COMMAND
from benchmarks.table import TABLE_COMMAND
from benchmarks.train import EVALUATE_COMMAND, TRAIN_COMMAND


class Command(NamedTuple):
    """One subcommand of the command line."""

    help: str  # one line for the command list
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # returns the process exit code


COMMANDS: dict[str, Command] = {
    "speed": Command(speed.HELP, speed.add_arguments, speed.run),
    "collect": Command(collect.HELP, collect.add_arguments, collect.run),
    "dataset-card": Command(collect.CARD_HELP, collect.add_card_arguments, collect.run_card),
    "export": Command(export.HELP, export.add_arguments, export.run),
    "label": Command(*LABEL_COMMAND),
    "label-report": Command(*LABEL_REPORT_COMMAND),
    "train": Command(*TRAIN_COMMAND),
    "evaluate": Command(*EVALUATE_COMMAND),
    "run": Command(*RUN_COMMAND),
    "table": Command(*TABLE_COMMAND),
    "wm-check": Command(wm_check.HELP, wm_check.add_arguments, wm_check.run),
    "wm-speed": Command(wm_speed.HELP, wm_speed.add_arguments, wm_speed.run),
    "generalize": Command(generalize.HELP, generalize.add_arguments, generalize.run),
    "learn-check": Command(*LEARN_CHECK_COMMAND),
    "calibrate": Command(*CALIBRATE_COMMAND),
}

PROG = "python -m benchmarks"


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The argument parser with one subparser per entry of ``commands`` (default COMMANDS)."""
    commands = COMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="carla-safe benchmarks: environment speed, data collection, training, "
        "evaluation and the comparison table (installed as `carla-safe` too).",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level on stderr (default WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in commands.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command and return its exit code.

    An unknown command exits with status 2 and a message listing the valid ones.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
