"""Progress bars for long commands: tqdm on stderr when installed, else a plain counter."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...


class _StderrProgress:
    """A one-line progress counter on stderr, for when tqdm is not installed."""

    def __init__(self, total: int, desc: str, interval: float = 0.5) -> None:
        self.total, self.desc, self.interval = total, desc, interval
        self.n, self._shown = 0, 0.0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._shown >= self.interval or self.n >= self.total:
            self._shown = now
            print(f"\r{self.desc}: {self.n}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        print(file=sys.stderr, flush=True)


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Progress | None]:
    """A tqdm bar on stderr if tqdm is installed, else a plain stderr counter; ``None`` (no
    output) when ``enabled`` is false, so callers write ``if bar is not None: bar.update()``."""
    if not enabled:
        yield None
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        bar: Any = _StderrProgress(total, desc)
    else:
        bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, mininterval=0.5)
    try:
        yield bar
    finally:
        bar.close()


def write_line(bar: Progress | None, text: str) -> None:
    """Print ``text`` on its own line on stderr without breaking ``bar`` (a tqdm bar redraws
    below it)."""
    write = getattr(bar, "write", None)
    if write is not None:
        write(text, file=sys.stderr)
    else:
        if isinstance(bar, _StderrProgress):
            print(file=sys.stderr)  # leave the counter's line
        print(text, file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    """``seconds`` as ``"45 s"``, ``"12 min"`` or ``"3 h 05 min"``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
