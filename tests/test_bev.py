"""BEV renderer: constructed scenes with known answers on the real Town03 / Town04 geometry."""

from __future__ import annotations

import math
import pickle

import cv2
import numpy as np
import pytest

from carla_safe_envs.backends.base import STATE_DIM
from carla_safe_envs.bev import (
    BAND_HALF,
    BAND_STEP,
    EGO_COLOR,
    ROAD_COLOR,
    ROUTE_COLOR,
    SPEED_CUE_COLOR,
    SPEED_CUE_MAX,
    VEHICLE_COLOR,
    BevRenderer,
    downsample,
    draw_speed_cue,
    level_band,
)
from carla_safe_envs.maps import RoadMap, load_town

NORTH = -math.pi / 2  # CARLA yaw towards -y
K = 4.0  # px/m of the default renderer
EGO_ROW, EGO_COL = 80, 64
START = (5.8, 100.0)  # Four Lane start, Town04
NO_CARS = np.empty((0, STATE_DIM))


def state(
    x: float,
    y: float,
    z: float = 0.0,
    yaw: float = NORTH,
    length: float = 4.79,
    width: float = 2.16,
):
    return np.array([x, y, z, yaw, 0.0, 0.0, length, width])


def mask(img: np.ndarray, color: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return (np.abs(img.astype(int) - color) <= tol).all(-1)


def centroid(m: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(m)
    return np.array([rows.mean(), cols.mean()])


@pytest.fixture(scope="module")
def town04() -> RoadMap:
    return load_town("Town04")


@pytest.fixture(scope="module")
def bev(town04: RoadMap) -> BevRenderer:
    return BevRenderer(town04)


def test_output_is_uint8_rgb_and_deterministic(bev: BevRenderer) -> None:
    others = np.stack([state(5.8, 90.0), state(9.3, 104.0, yaw=NORTH + 0.2)])
    route = np.stack([np.full(30, 5.8), 100.0 - np.arange(30.0)], 1)
    a = bev.render(state(*START), others, route)
    b = bev.render(state(*START), others.copy(), route.copy())
    assert a.dtype == np.uint8 and a.shape == (128, 128, 3) == bev.output_shape
    np.testing.assert_array_equal(a, b)


def test_ego_is_a_red_box_centred_at_row_80_col_64(bev: BevRenderer, town04: RoadMap) -> None:
    x = START[0] - town04.locate(*START, yaw=NORTH).lateral  # the lane centre (markings 7 px away)
    img = bev.render(state(x, START[1]), NO_CARS, None)
    assert tuple(img[EGO_ROW, EGO_COL]) == EGO_COLOR
    np.testing.assert_allclose(centroid(mask(img, EGO_COLOR)), [EGO_ROW, EGO_COL], atol=0.6)
    cover = np.clip(1.0 - img[..., 1] / ROAD_COLOR[1], 0.0, 1.0)  # red over road: G falls to 0
    assert cover[:, EGO_COL].sum() == pytest.approx(4.79 * K, abs=0.7)  # length along the rows
    assert cover[EGO_ROW, 58:71].sum() == pytest.approx(2.16 * K, abs=0.7)  # inside the lane


def test_vehicle_ahead_in_the_world_is_above_the_ego(bev: BevRenderer) -> None:
    img = bev.render(state(*START), state(5.8, 90.0)[None], None)  # 10 m north
    assert tuple(img[EGO_ROW - 40, EGO_COL]) == VEHICLE_COLOR
    np.testing.assert_allclose(
        centroid(mask(img, VEHICLE_COLOR)), [EGO_ROW - 40, EGO_COL], atol=0.6
    )


def test_vehicle_east_of_a_northbound_ego_is_on_the_image_right(bev: BevRenderer) -> None:
    img = bev.render(state(*START), state(9.3, 100.0)[None], None)  # 3.5 m east = driver's right
    np.testing.assert_allclose(
        centroid(mask(img, VEHICLE_COLOR)), [EGO_ROW, EGO_COL + 14], atol=0.6
    )


@pytest.mark.parametrize("yaw", [0.0, 0.7, NORTH, 2.5, -3.0])
def test_forward_is_up_and_the_drivers_right_is_right(bev: BevRenderer, yaw: float) -> None:
    ego = state(*START, yaw=yaw)
    fwd, right = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
    for offset, pixel in [
        (6.0 * fwd, (EGO_ROW - 24, EGO_COL)),
        (4.0 * right, (EGO_ROW, EGO_COL + 16)),
    ]:
        other = state(*(np.array(START) + offset), yaw=yaw, length=2.0, width=2.0)[None]
        img = bev.render(ego, other, None)
        np.testing.assert_allclose(centroid(mask(img, VEHICLE_COLOR)), pixel, atol=0.6)


def test_route_ahead_is_a_blue_ribbon_about_1_m_wide(bev: BevRenderer) -> None:
    route = np.stack([np.full(40, 5.8), 100.0 - np.arange(40.0)], 1)  # 1 m apart, northwards
    img = bev.render(state(*START), NO_CARS, route)
    blue = mask(img, ROUTE_COLOR, tol=60)
    assert blue[10:68, EGO_COL].all()  # from the ego's nose to the top
    assert not blue[92:].any()  # nothing behind the ego
    assert 3 <= blue[40].sum() <= 6  # ~1 m = 4 px wide
    # (R, 3) routes are filtered by level like vehicles
    img_z = bev.render(state(*START), NO_CARS, np.column_stack([route, np.full(40, 11.0)]))
    assert not mask(img_z, ROUTE_COLOR, tol=60).any()


def test_road_colour_around_the_ego_and_black_off_road(bev: BevRenderer, town04: RoadMap) -> None:
    img = bev.render(state(*START), NO_CARS, None)
    lane = town04.locate(*START, yaw=NORTH)
    centre_col = EGO_COL - lane.lateral * K  # lateral > 0: the ego is right of the lane centre
    col = int(round(centre_col)) - 3
    assert (img[100:120, col] == ROAD_COLOR).all()  # behind the ego, inside its lane
    median = EGO_COL + round((0.0 - START[0]) * K)  # x = 0: between the two carriageways
    assert (img[:, median] == 0).all()


def test_lane_markings_broken_white_and_solid_yellow(bev: BevRenderer, town04: RoadMap) -> None:
    img = bev.render(state(*START), NO_CARS, None)
    lane = town04.locate(*START, yaw=NORTH)
    centre_col = EGO_COL - lane.lateral * K
    half = 1.75 * K
    right = img[:, int(round(centre_col + half)) - 1 : int(round(centre_col + half)) + 2].max(1)
    white = (right.min(1) > 150)[:66]  # rows above the ego box
    starts = np.flatnonzero(np.diff(white.astype(int)) == 1)
    assert 0.2 < white.mean() < 0.5 and len(starts) >= 2  # broken: 3 m on / 6 m off
    left = img[:, int(round(centre_col - half)) - 1 : int(round(centre_col - half)) + 2]
    yellow = ((left[..., 0] > 150) & (left[..., 1] > 150) & (left[..., 2] < 100)).any(1)
    assert yellow.mean() > 0.95  # solid


def _pixel_world(ego: np.ndarray) -> np.ndarray:
    """World (x, y) of each pixel centre of a 128 px view of ``ego``, (128, 128, 2)."""
    yaw = ego[3]
    fwd, right = np.array([math.cos(yaw), math.sin(yaw)]), np.array([-math.sin(yaw), math.cos(yaw)])
    rows, cols = np.mgrid[0:128, 0:128]
    d = ((cols - EGO_COL)[..., None] * right - (rows - EGO_ROW)[..., None] * fwd) / K
    return ego[:2] + d


def _lane_distance(
    road: RoadMap, xy: np.ndarray, centre: np.ndarray, zmask: np.ndarray
) -> np.ndarray:
    """Distance [m] from each point of ``xy`` (N, 2) to the nearest lane centre point kept by zmask."""
    near = road.candidates(float(centre[0]), float(centre[1]), 40.0)
    pts = road.pts[near][zmask[near], :2].astype(np.float64)
    if not len(pts):
        return np.full(len(xy), np.inf)
    return np.sqrt(((xy[:, None, :] - pts[None]) ** 2).sum(-1)).min(1)


POSES = {
    "four-lane start": ("Town04", state(*START)),
    "under the bridge": ("Town04", state(10.0, 20.0)),
    "on the bridge": ("Town04", state(10.0, 6.12, z=11.0, yaw=-3.1375)),
    "highway, rotated": ("Town04", state(12.2, 60.0, yaw=NORTH + 0.6)),
    "town03 junction": ("Town03", state(-20.0, -135.0, yaw=0.0)),
    "town03 left-turn start": ("Town03", state(6.0, -101.0)),
}


@pytest.mark.parametrize("name", list(POSES))
def test_road_pixels_match_the_lane_geometry_at_the_ego_level(name: str) -> None:
    """Near a lane centre of the ego's level: road; far from all of them: black.

    Covers orientation (a mirrored or rotated layer fails off the symmetric cases) and bridges:
    the other level's lanes must not show (the overpass over the highway and vice versa).
    """
    town, ego = POSES[name]
    road = load_town(town)
    img = BevRenderer(road).render(ego, NO_CARS, None)
    xy = _pixel_world(ego)[::2, ::2].reshape(-1, 2)
    pix = img[::2, ::2].reshape(-1, 3)
    dz = np.abs(road.pts[:, 2] - BAND_STEP * level_band(ego[2]))
    drawn = _lane_distance(road, xy, ego[:2], dz < BAND_HALF)
    solid = _lane_distance(road, xy, ego[:2], dz < BAND_HALF - 0.5)
    not_ego = ~mask(img, EGO_COLOR, tol=120)[::2, ::2].reshape(-1)
    assert (pix[(drawn > 3.2) & not_ego] == 0).all(), "road drawn where there is no lane"
    assert (pix[(solid < 1.0) & not_ego].max(1) > 0).all(), "lane centre not drawn"
    assert (solid < 1.0).mean() > 0.05  # the pose is on a road


def test_overpass_hidden_from_the_highway_and_highway_from_the_overpass(bev: BevRenderer) -> None:
    # Under the bridge, heading north: the highway runs along the image columns; the bridge
    # (y = 6..40, east-west) would cross the black median at x = 0 (col 24) from row 24 down.
    below = bev.render(state(10.0, 20.0), NO_CARS, None)
    assert (below[:, 24] == 0).all()
    assert (below[:, 64] > 0).any(1).all()  # the ego's lane: road from top to bottom
    # On the bridge, heading west: the bridge runs along the ego column; the highway below
    # (x = 4..17) would cross the image right of the bridge between rows ~56 and ~109.
    above = bev.render(state(10.0, 6.12, z=11.0, yaw=-3.1375), NO_CARS, None)
    assert (above[:, 64] > 0).any(1).all()
    assert (above[60:105, 80:] == 0).all()


def test_vehicles_on_another_level_are_hidden(bev: BevRenderer) -> None:
    ego = state(10.0, 20.0)
    assert mask(bev.render(ego, state(10.0, 12.0, z=0.5)[None], None), VEHICLE_COLOR).any()
    assert not mask(bev.render(ego, state(10.0, 12.0, z=11.0)[None], None), VEHICLE_COLOR).any()


def test_overlapping_vehicles_are_filled_where_they_overlap(bev: BevRenderer) -> None:
    others = np.stack([state(5.8, 88.0), state(5.8, 90.0)])  # 4.79 m boxes, 2 m apart
    img = bev.render(state(*START), others, None)
    assert (img[EGO_ROW - 44 : EGO_ROW - 36, EGO_COL] == VEHICLE_COLOR).all()


def test_standing_still_reuses_the_road_but_redraws_everything_else(bev: BevRenderer) -> None:
    ego = state(*START, yaw=NORTH + 0.1)
    first = bev.render(ego, state(5.8, 90.0)[None], np.array([[5.8, 95.0], [5.8, 80.0]]))
    second = bev.render(ego, NO_CARS, None)
    assert mask(first, VEHICLE_COLOR).any() and mask(first, ROUTE_COLOR, tol=60).any()
    assert not mask(second, VEHICLE_COLOR).any() and not mask(second, ROUTE_COLOR, tol=60).any()
    bev.render(state(*START), NO_CARS, None)  # another pose in between
    np.testing.assert_array_equal(bev.render(ego, NO_CARS, None), second)


def test_vehicles_off_the_view_are_skipped(bev: BevRenderer) -> None:
    far = np.stack([state(5.8, 0.0), state(200.0, 100.0)])
    np.testing.assert_array_equal(
        bev.render(state(*START), far, None), bev.render(state(*START), NO_CARS, None)
    )


def test_road_is_the_layer_at_the_nearest_pixel(bev: BevRenderer) -> None:
    """The road, warped one float32 per pixel, is bit for bit a 4-channel nearest-neighbour warp."""
    ego = state(12.2, 60.0, yaw=NORTH + 0.6)
    img = bev.render(ego, NO_CARS, None)
    layer, k = bev._layer(0), K  # pixel (r, c) of the layer is world (x0 + c / k, y0 + r / k)
    c, s = math.cos(ego[3]), math.sin(ego[3])
    u, v = (ego[0] - layer.x0) * k, (ego[1] - layer.y0) * k
    m = np.array([[-s, c, EGO_COL + s * u - c * v], [-c, -s, EGO_ROW + c * u + s * v]])
    expected = cv2.warpAffine(bev.layer(0), m, (128, 128), flags=cv2.INTER_NEAREST)[..., :3]
    road = ~mask(img, EGO_COLOR, tol=0)
    assert road.mean() > 0.9 and (expected > 0).any()
    np.testing.assert_array_equal(img[road], expected[road])


def test_frames_are_fresh_arrays(bev: BevRenderer) -> None:
    ego = state(*START, yaw=NORTH + 0.05)
    first = bev.render(ego, NO_CARS, None)
    second = bev.render(ego, NO_CARS, None)  # standing still: the road is reused
    assert not np.shares_memory(first, second)
    first[:] = 7
    np.testing.assert_array_equal(bev.render(ego, NO_CARS, None), second)
    assert second.flags.c_contiguous and second.flags.owndata


def test_curved_route_follows_the_arc(bev: BevRenderer) -> None:
    """A 90 degree turn 12 m in radius, points 1 m apart: blue within 1 m of the arc, all along it."""
    ego = state(*START)
    centre = np.array([START[0] + 12.0, START[1]])  # turning right (east) from heading north
    angle = np.arange(0.0, math.pi / 2, 1 / 12)
    route = centre + 12.0 * np.stack([-np.cos(angle), -np.sin(angle)], 1)
    img = bev.render(ego, NO_CARS, route)
    blue = mask(img, ROUTE_COLOR, tol=60)
    rows, cols = np.nonzero(blue)
    world = _pixel_world(ego)[rows, cols]
    radius = np.hypot(*(world - centre).T)
    assert np.abs(radius - 12.0).max() < 1.0 and blue.sum() > 100
    a = np.linspace(0.3, 1.4, 200)  # from the ego's nose on
    fine = centre + 12.0 * np.stack([-np.cos(a), -np.sin(a)], 1)
    px = np.column_stack(
        [EGO_ROW - (START[1] - fine[:, 1]) * K, EGO_COL + (fine[:, 0] - START[0]) * K]
    )
    inside = (px >= 1).all(1) & (px < 126).all(1)
    near = [blue[r - 1 : r + 2, c - 1 : c + 2].any() for r, c in np.round(px[inside]).astype(int)]
    assert inside.sum() > 50 and all(near)


def test_route_is_cut_where_it_leaves_the_ego_level(bev: BevRenderer) -> None:
    route = np.stack([np.full(40, 5.8), 110.0 - np.arange(40.0), np.zeros(40)], 1)
    route[20:, 2] = 11.0  # from 10 m ahead (row 40) up on the overpass level
    blue = mask(bev.render(state(*START), NO_CARS, route), ROUTE_COLOR, tol=60)
    assert blue[44:70, EGO_COL].all() and blue[90:120, EGO_COL].all()  # around the ego box
    assert not blue[:36].any()


def test_long_vehicle_reaching_into_the_view_is_drawn(bev: BevRenderer) -> None:
    """Culling keeps a box whose centre is off the view: a 14 m truck centred 26 m ahead."""
    truck = state(5.8, 74.0, length=14.0, width=2.5)[None]  # reaches 19 m ahead: rows 0-4
    img = bev.render(state(*START), truck, None)
    assert (img[:4, EGO_COL] == VEHICLE_COLOR).all() and not mask(img[6:], VEHICLE_COLOR).any()


def test_video_renderer_is_512_px_and_shares_the_layers(bev: BevRenderer, town04: RoadMap) -> None:
    video = BevRenderer(town04, size=256, upscale=2)
    img = video.render(state(*START), state(5.8, 90.0)[None], None)
    assert img.shape == (512, 512, 3) == video.output_shape
    assert (video.ego_col, video.ego_row) == (128, 160)
    assert tuple(img[2 * 160, 2 * 128]) == EGO_COLOR
    assert tuple(img[2 * (160 - 40), 2 * 128]) == VEHICLE_COLOR  # 10 m ahead, 8 px/m after x2
    assert video.layer(0) is bev.layer(0)


def test_renderer_pickles_without_its_layers(bev: BevRenderer) -> None:
    bev.layer(0)
    blob = pickle.dumps(bev)
    assert len(blob) < 100_000
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(
        clone.render(state(*START), NO_CARS, None), bev.render(state(*START), NO_CARS, None)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 8},
        {"size": 128.0},
        {"px_per_m": 0.0},
        {"px_per_m": float("nan")},
        {"ego_row": 128},
        {"upscale": 0},
    ],
)
def test_invalid_arguments_are_rejected(town04: RoadMap, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        BevRenderer(town04, **kwargs)


def test_invalid_inputs_are_rejected(bev: BevRenderer) -> None:
    with pytest.raises(TypeError, match="RoadMap"):
        BevRenderer("Town04")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ego"):
        bev.render(np.zeros(7), NO_CARS, None)
    with pytest.raises(ValueError, match="others"):
        bev.render(state(*START), np.zeros((2, 7)), None)
    with pytest.raises(ValueError, match="route"):
        bev.render(state(*START), NO_CARS, np.zeros((5, 4)))


def test_level_band() -> None:
    assert [level_band(z) for z in (-0.9, 0.0, 1.9, 2.1, 6.0, 11.0)] == [0, 0, 0, 1, 2, 3]


def test_downsample_is_the_rounded_block_mean() -> None:
    frame = np.zeros((4, 4, 3), np.uint8)
    frame[:2, :2] = [[[0, 10, 255]] * 2, [[1, 11, 255]] * 2]  # block mean (0.5, 10.5, 255)
    frame[2:, 2:, 0] = [[3, 4], [4, 4]]  # block mean 3.75
    small = downsample(frame, 2)
    assert small.shape == (2, 2, 3) and small.dtype == np.uint8
    np.testing.assert_array_equal(small[0, 0], [1, 11, 255])  # halves round up
    assert small[1, 1, 0] == 4 and small[0, 1].tolist() == [0, 0, 0]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 2, 128, 128, 3), dtype=np.uint8)  # leading axes kept
    for size, k in ((64, 2), (32, 4)):
        mean = frames.reshape(5, 2, size, k, size, k, 3).astype(float).mean((3, 5))
        np.testing.assert_array_equal(downsample(frames, size), np.floor(mean + 0.5))
    assert downsample(frames, 128) is frames


def test_downsample_rejects_what_it_cannot_average() -> None:
    frames = np.zeros((2, 128, 128, 3), np.uint8)
    with pytest.raises(ValueError, match="must divide"):
        downsample(frames, 48)
    with pytest.raises(ValueError, match="uint8"):
        downsample(frames.astype(np.float32), 64)
    with pytest.raises(ValueError, match="must divide"):
        downsample(np.zeros((128, 64, 3), np.uint8), 32)


@pytest.mark.parametrize("speed, rows", [(0.0, 0.0), (4.0, 51.2), (2.5, 32.0), (25.0, 128.0)])
def test_speed_cue_bar_height_encodes_speed(speed, rows):
    image = np.zeros((128, 128, 3), np.uint8)
    draw_speed_cue(image, speed)
    bar = image[:, :4]
    assert not image[:, 4:].any()  # only the 4 px column at the left edge
    full = np.all(bar == SPEED_CUE_COLOR, axis=2).all(axis=1)
    assert full.sum() == int(rows) and full[128 - int(rows) :].all()
    # the magenta mass, partial top row included, is the bar's exact height
    assert bar[..., 0].sum() / (4 * 255.0) == pytest.approx(rows, abs=0.5 / 255 * 4)
    assert rows == pytest.approx(128 * min(speed / SPEED_CUE_MAX, 1.0))


def test_speed_cue_survives_area_downsampling():
    """4 and 7 m/s, the expert's speed and a speeding collapse, stay apart at 32 px."""
    heights = []
    for speed in (4.0, 4.1, 7.0):
        image = draw_speed_cue(np.zeros((128, 128, 3), np.uint8), speed)
        small = downsample(image[None], 32)[0]
        heights.append(small[:, 0, 0].sum() / 255.0)  # bar height in 32 px rows
    assert heights[0] == pytest.approx(12.8, abs=0.01)
    assert heights[2] == pytest.approx(22.4, abs=0.01)
    assert 0.2 < heights[1] - heights[0] < 0.4  # 0.1 m/s is a third of a pixel


def test_speed_cue_rejects_bad_input():
    with pytest.raises(ValueError, match="speed"):
        draw_speed_cue(np.zeros((8, 8, 3), np.uint8), -1.0)
    with pytest.raises(ValueError, match="uint8"):
        draw_speed_cue(np.zeros((8, 8, 3), np.float32), 1.0)
