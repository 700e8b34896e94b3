"""Compile the shipped CARLA OpenDRIVE maps into plain numpy lane geometry.

Run once, when the maps or this compiler change (``make maps``):

    python -m carla_safe_envs.maps.compile [--towns Town03 Town04 ...] [--step 1.0]

It parses ``data/<Town>.xodr.gz`` offline with the ``carla`` client wheel
(``carla.Map(name, xodr_text)``; no server) and writes ``data/<Town>.npz``, which the
embedded backend and the BEV renderer load without the ``carla`` wheel.  Nothing from
``carla`` pickles, so shipping plain arrays is also what lets vector-env workers start fast.

Layout of the ``.npz`` (L lanes, N centre-line points, M successor links); coordinates are
CARLA world coordinates (x east, y south, left-handed, yaw clockwise):

    pts        (N, 3) float32  centre-line points x, y, z                              [m]
    yaw        (N,)   float32  heading, atan2(dy, dx) in CARLA's frame, in (-pi, pi]  [rad]
    width      (N,)   float32  lane width                                              [m]
    s          (N,)   float32  arc length from the lane's first point                  [m]
    lmark_type, rmark_type (N,) uint8  marking on the lane's left / right boundary
                                       (see ``MARK_TYPES``); left/right as seen driving
    lmark_color, rmark_color (N,) uint8  0 white, 1 yellow
    lane_start (L+1,) int64    points of lane i are pts[lane_start[i]:lane_start[i+1]]
    lane_road, lane_section, lane_id, lane_junction (L,) int32  OpenDRIVE ids (-1: no junction)
    lane_left, lane_right (L,) int32  neighbour lane in the same direction (-1: none)
    succ_start (L+1,) int64, succ (M,) int32   successor lanes of lane i
"""

from __future__ import annotations

import argparse
import gzip
import logging
import math
import time
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
TOWNS = ("Town03", "Town04", "Town01", "Town02", "Town05", "Town10HD")  # task towns first

# Marking codes stored per point; index = code.
MARK_TYPES = (
    "NONE",
    "Broken",
    "Solid",
    "SolidSolid",
    "SolidBroken",
    "BrokenSolid",
    "BrokenBroken",
    "Other",
)
MARK_COLORS = ("White", "Yellow")

log = logging.getLogger(__name__)


def _import_carla():
    try:
        import carla  # noqa: PLC0415 - optional, only needed to recompile the maps
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "Compiling the maps needs the CARLA client wheel: pip install 'carla-safe[carla]' "
            "(or pip install carla==0.9.16). The shipped .npz files make it unnecessary at runtime."
        ) from exc
    return carla


def _key(wp) -> tuple[int, int, int]:
    return (wp.road_id, wp.section_id, wp.lane_id)


def _mark_code(marking) -> tuple[int, int]:
    name = str(marking.type)
    t = MARK_TYPES.index(name) if name in MARK_TYPES else MARK_TYPES.index("Other")
    c = 1 if str(marking.color) == "Yellow" else 0
    return t, c


def _wrap(angle: float) -> float:
    return math.atan2(math.sin(angle), math.cos(angle))


def compile_town(carla, name: str, xodr_text: str, step: float = 1.0) -> dict[str, np.ndarray]:
    """Sample every driving lane of the map at ``step`` metres and link lanes into a graph."""
    cmap = carla.Map(name, xodr_text)
    driving = carla.LaneType.Driving
    lanes: list[list] = []  # waypoints of each lane, entry to end
    index: dict[tuple[int, int, int], int] = {}
    for entry, _exit in cmap.get_topology():
        k = _key(entry)
        if k in index:  # get_topology repeats lanes
            continue
        wps = [entry, *entry.next_until_lane_end(step)]
        # next_until_lane_end can return a waypoint of the successor lane as its last element.
        wps = [w for w in wps if _key(w) == k]
        if len(wps) < 2:
            continue
        index[k] = len(lanes)
        lanes.append(wps)

    pts, yaw, width, s_arc, marks = [], [], [], [], []
    lane_start = [0]
    meta = {"lane_road": [], "lane_section": [], "lane_id": [], "lane_junction": []}
    for wps in lanes:
        xyz = np.array(
            [[w.transform.location.x, w.transform.location.y, w.transform.location.z] for w in wps]
        )
        seg = np.linalg.norm(np.diff(xyz[:, :2], axis=0), axis=1)
        pts.append(xyz)
        yaw.extend(_wrap(math.radians(w.transform.rotation.yaw)) for w in wps)
        width.extend(w.lane_width for w in wps)
        s_arc.append(np.concatenate([[0.0], np.cumsum(seg)]))
        marks.extend(
            (*_mark_code(w.left_lane_marking), *_mark_code(w.right_lane_marking)) for w in wps
        )
        lane_start.append(lane_start[-1] + len(wps))
        w0 = wps[len(wps) // 2]
        meta["lane_road"].append(w0.road_id)
        meta["lane_section"].append(w0.section_id)
        meta["lane_id"].append(w0.lane_id)
        meta["lane_junction"].append(w0.junction_id if w0.is_junction else -1)

    def neighbour(wps, side: str) -> int:
        w0 = wps[len(wps) // 2]
        other = w0.get_left_lane() if side == "left" else w0.get_right_lane()
        if other is None or other.lane_type != driving or (other.lane_id > 0) != (w0.lane_id > 0):
            return -1
        return index.get(_key(other), -1)

    succ_start, succ = [0], []
    for i, wps in enumerate(lanes):
        nxt = set()
        for w in wps[-1].next(step):
            j = index.get(_key(w), -1)
            if j >= 0 and j != i:
                nxt.add(j)
        succ.extend(sorted(nxt))
        succ_start.append(len(succ))

    m = np.array(marks, dtype=np.uint8).reshape(-1, 4)
    out = {
        "pts": np.concatenate(pts).astype(np.float32),
        "yaw": np.array(yaw, dtype=np.float32),
        "width": np.array(width, dtype=np.float32),
        "s": np.concatenate(s_arc).astype(np.float32),
        "lmark_type": m[:, 0],
        "lmark_color": m[:, 1],
        "rmark_type": m[:, 2],
        "rmark_color": m[:, 3],
        "lane_start": np.array(lane_start, dtype=np.int64),
        "lane_left": np.array([neighbour(w, "left") for w in lanes], dtype=np.int32),
        "lane_right": np.array([neighbour(w, "right") for w in lanes], dtype=np.int32),
        "succ_start": np.array(succ_start, dtype=np.int64),
        "succ": np.array(succ, dtype=np.int32),
    }
    out.update({k: np.array(v, dtype=np.int32) for k, v in meta.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--towns", nargs="+", default=list(TOWNS))
    parser.add_argument("--step", type=float, default=1.0, help="centre-line sampling step [m]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    carla = _import_carla()
    for town in args.towns:
        src = DATA_DIR / f"{town}.xodr.gz"
        if not src.exists():
            raise FileNotFoundError(
                f"{src} not found: copy the OpenDRIVE file there (gzip-compressed)."
            )
        t0 = time.perf_counter()
        arrays = compile_town(carla, town, gzip.open(src, "rt").read(), step=args.step)
        dst = DATA_DIR / f"{town}.npz"
        np.savez_compressed(dst, **arrays)
        log.info(
            "%s: %d lanes, %d points, %d links -> %s (%.1f kB, %.1f s)",
            town,
            len(arrays["lane_start"]) - 1,
            len(arrays["pts"]),
            len(arrays["succ"]),
            dst.name,
            dst.stat().st_size / 1e3,
            time.perf_counter() - t0,
        )


if __name__ == "__main__":
    main()
