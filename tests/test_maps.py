"""The compiled Town03 / Town04 lane geometry: facts of the real maps, and the compiler."""

from __future__ import annotations

import gzip
import math
import pickle

import numpy as np
import pytest

from carla_safe_envs.maps import RoadMap, load_town
from carla_safe_envs.maps.compile import DATA_DIR, compile_town
from carla_safe_envs.route import Route, lane_polyline, resample

TASK_POINTS = {
    "Town03": [
        (6.0, -101.0),
        (-26.5, -139.0),
        (-22.4, -135.4),
        (-33.8, -135.1),
        (-5.0, -110.3),
        (-3.4, -151.2),
    ],
    "Town04": [(5.8, 100.0), (9.0, 100.0), (12.2, 100.0), (15.6, 100.0)],
}


@pytest.mark.parametrize("town", ["Town03", "Town04"])
def test_lane_graph_is_well_formed(town):
    road = load_town(town)
    assert road.n_lanes > 400
    assert np.all(np.diff(road.succ_start) >= 1)  # every lane leads somewhere
    assert np.all((road.width > 2.0) & (road.width < 6.0))
    assert np.all(np.abs(road.yaw) <= math.pi + 1e-6)
    seg = np.hypot(*np.diff(road.pts[:, :2], axis=0).T)
    inner = np.diff(road.point_lane) == 0
    assert (
        np.median(seg[inner]) == pytest.approx(1.0, abs=0.01) and seg[inner].max() < 2.0
    )  # ~1 m apart
    gaps = [  # successors start where the lane ends (one Town03 lane tapers in: 3.6 m)
        np.hypot(
            *(road.pts[road.lane_start[nxt], :2] - road.pts[road.lane_start[lane + 1] - 1, :2])
        )
        for lane in range(road.n_lanes)
        for nxt in road.successors(lane)
    ]
    assert np.median(gaps) < 1.0 and max(gaps) < 4.0


@pytest.mark.parametrize("town", ["Town03", "Town04"])
def test_task_points_lie_on_driving_lanes(town):
    road = load_town(town)
    for x, y in TASK_POINTS[town]:
        lp = road.locate(x, y, radius=3.0)
        assert lp is not None and lp.distance < 0.8, (x, y, lp)
        assert road.on_road(x, y, 0.0)
    assert not road.on_road(-400.0, 400.0)


def test_four_lane_geometry_and_bridge():
    road = load_town("Town04")
    assert len(road.lanes_of_road(1072)) == 4
    north = -math.pi / 2
    for x in (5.4, 8.9, 12.4, 15.9):  # the lane centres at y = 100, heading north
        lp = road.locate(x, 100.0, 0.0, north)
        assert lp.distance < 0.1 and abs(lp.heading_error) < 0.02
    # road 39 crosses over the highway at ~11 m
    bridge = road.pts[np.isin(road.point_lane, road.lanes_of_road(39))]
    over = bridge[(bridge[:, 0] > 0) & (bridge[:, 0] < 20)]
    assert len(over) and over[:, 2].min() > 9.0 and 6.0 <= over[:, 1].mean() <= 40.0
    # the level filter separates the two: at the crossing the ground lane wins at z = 0
    assert road.lane_road[road.locate(12.4, 20.0, 0.0).lane] != 39
    assert road.lane_road[road.locate(float(over[0, 0]), float(over[0, 1]), 11.0).lane] == 39


def test_shortest_path_and_routes():
    road = load_town("Town03")
    a = road.locate(6.0, -101.0, yaw=-math.pi / 2)
    b = road.locate(-26.5, -139.0, yaw=math.pi)
    path = road.shortest_path(a.lane, b.lane)
    assert path[0] == a.lane and path[-1] == b.lane and len(path) >= 3
    assert all(nxt in road.successors(cur) for cur, nxt in zip(path, path[1:], strict=False))
    pts = resample(lane_polyline(road, path, a.s, b.s))
    spacing = np.hypot(*np.diff(pts[:, :2], axis=0).T)
    assert (
        np.allclose(spacing[:-1], 1.0, atol=0.01) and spacing[-1] <= 1.0 + 1e-6
    )  # chords on curves
    route = Route(pts)
    assert 55.0 < route.length < 75.0
    proj = route.project(float(pts[10, 0]) + 0.3, float(pts[10, 1]), search_all=True)
    assert abs(proj.progress - 10.0) < 0.5 and abs(abs(proj.lateral) - 0.3) < 0.05


def straight_lanes(n_lanes: int, succ: list[list[int]]) -> RoadMap:
    """A synthetic map: ``n_lanes`` parallel 10 m lanes heading east, linked by ``succ``."""
    pts = np.concatenate([[(x, 3.5 * i, 0.0) for x in range(11)] for i in range(n_lanes)]).astype(
        np.float32
    )
    n = len(pts)
    zeros8 = np.zeros(n, np.uint8)
    arrays = {
        "pts": pts,
        "yaw": np.zeros(n, np.float32),
        "width": np.full(n, 3.5, np.float32),
        "s": np.tile(np.arange(11, dtype=np.float32), n_lanes),
        "lmark_type": zeros8, "lmark_color": zeros8, "rmark_type": zeros8, "rmark_color": zeros8.copy(),
        "lane_start": np.arange(0, n + 1, 11),
        "lane_left": np.full(n_lanes, -1, np.int32),
        "lane_right": np.full(n_lanes, -1, np.int32),
        "succ_start": np.cumsum([0] + [len(x) for x in succ]),
        "succ": np.array([j for x in succ for j in x], np.int32),
        "lane_road": np.arange(n_lanes, dtype=np.int32),
        "lane_section": np.zeros(n_lanes, np.int32),
        "lane_id": -np.ones(n_lanes, np.int32),
        "lane_junction": -np.ones(n_lanes, np.int32),
    }  # fmt: skip
    return RoadMap("Synthetic", arrays)


def test_shortest_path_unreachable_and_lane_changes():
    road = straight_lanes(3, [[1], [1], [2]])
    assert road.shortest_path(0, 1) == [0, 1]
    with pytest.raises(ValueError, match="lane 2 is not reachable from lane 0"):
        road.shortest_path(0, 2)
    lp = road.locate(5.2, 3.4, yaw=0.0)
    assert lp.lane == 1 and abs(lp.s - 5.2) < 1e-6 and abs(lp.lateral + 0.1) < 1e-6
    assert road.locate(5.2, 3.4, yaw=math.pi) is None  # the wrong way round


def test_unknown_town_and_pickling():
    with pytest.raises(ValueError, match="unknown town 'Town99'.*Town03"):
        load_town("Town99")
    road = load_town("Town04")
    assert pickle.loads(pickle.dumps(road)) is road  # pickles as its name


def test_compiler_reproduces_the_shipped_arrays():
    carla = pytest.importorskip("carla", reason="the CARLA client wheel compiles the maps")
    xodr = gzip.open(DATA_DIR / "Town03.xodr.gz", "rt").read()
    fresh = compile_town(carla, "Town03", xodr)
    with np.load(DATA_DIR / "Town03.npz") as shipped:
        assert set(shipped.files) == set(fresh)
        for key in shipped.files:
            assert np.array_equal(shipped[key], fresh[key]), key
