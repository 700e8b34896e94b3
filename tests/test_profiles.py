"""Behaviour profiles, dataset mixes, dataset cards and the paper-mix calibration."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import carla_safe_envs  # noqa: F401  (registers the ids)
from benchmarks.__main__ import main
from benchmarks.calibrate import CRITERIA, format_markdown, measure
from benchmarks.grid import PRESETS, Cell, DatasetKey, GridError, GridPreset, dataset_for
from benchmarks.stats import describe_seed_intervals, seed_interval
from benchmarks.store import STORE_FORMAT, ResultStore
from carla_safe_envs.cards import card_paths, dataset_card
from carla_safe_envs.collection import collect, resolve_mix
from carla_safe_envs.datasets import OfflineDataset
from carla_safe_envs.expert import Expert, run_episodes
from carla_safe_envs.metrics import EpisodeMetrics
from carla_safe_envs.profiles import (
    MIXES,
    PROFILES,
    DatasetMix,
    DriverProfile,
    ProfileError,
    get_mix,
    get_profile,
    noise_mix,
)

LEFT, FOUR = "CarlaLeftTurn-v0", "CarlaFourLane-v0"


# ------------------------------------------------------------------------------ profiles
def test_profiles_are_documented_and_round_trip() -> None:
    assert {"expert", "autopilot", "cautious", "reckless"} <= set(PROFILES)
    for profile in PROFILES.values():
        assert profile.description
        params = json.loads(json.dumps(profile.params()))  # JSON-ready
        assert DriverProfile.from_params(params) == profile
    assert PROFILES["autopilot"].cruise > 2 * PROFILES["expert"].cruise
    assert PROFILES["reckless"].horizon == 0.0  # never yields
    assert PROFILES["cautious"].headway > PROFILES["expert"].headway


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cruise", 0.0, "cruise"),
        ("headway", -1.0, "headway"),
        ("lapse_rate", 1.5, "probability"),
        ("overtake", 3.5, "overtake"),
        ("lapse_steps", (5, 2), "lapse_steps"),
        ("margin", (-1.0, 0.0), "margin"),
    ],
)
def test_profile_values_out_of_range_are_named(field: str, value, message: str) -> None:
    with pytest.raises(ProfileError, match=f"'bad'.*{message}"):
        DriverProfile("bad", **{field: value})


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(ProfileError, match="unknown driver profile 'x'.*autopilot"):
        get_profile("x")
    with pytest.raises(ProfileError, match="unknown dataset mix 'x'.*paper.*frontier"):
        get_mix("x")


class _Counting(Expert):
    """An expert whose decisions are 0, 1, 2, ... (to see the reaction delay alone)."""

    def _decide(self):
        self._n = getattr(self, "_n", -1) + 1
        return self._n


def test_reaction_delay_carries_out_each_decision_k_steps_late() -> None:
    env = gym.make(FOUR, render_observation=False)
    env.reset(seed=0)
    late = _Counting(env, profile=dataclasses.replace(PROFILES["expert"], reaction_steps=2))
    assert [late.act() for _ in range(6)] == [0, 0, 0, 1, 2, 3]
    now = _Counting(env, profile="expert")
    assert [now.act() for _ in range(4)] == [0, 1, 2, 3]
    env.close()


def test_lapses_hide_the_traffic_on_roads_but_never_at_a_junction() -> None:
    always = dataclasses.replace(PROFILES["expert"], lapse_rate=1.0, lapse_steps=(5, 5))
    road = gym.make(FOUR, render_observation=False)
    road.reset(seed=0)
    driver = Expert(road, profile=always, seed=0)
    assert len(driver._seen()) > 0  # attentive before its first step
    driver.act()
    assert driver._lapse == 5 and len(driver._seen()) == 0
    junction = gym.make(LEFT, render_observation=False)
    junction.reset(seed=0)
    turning = Expert(junction, profile=always, seed=0)
    for _ in range(20):
        turning.act()
        junction.step(turning.act())
        assert turning._lapse == 0
    road.close()
    junction.close()


@pytest.mark.parametrize(
    ("task", "noise", "ret", "cost"),
    [(FOUR, 0.0, 1064.2997689582205, 9.0), (LEFT, 0.3, -184.43921390560308, 47.0)],
)
def test_the_expert_profile_drives_as_the_expert_did(task, noise, ret, cost) -> None:
    """The profile refactor must not change the expert's data (the ``cpu`` grid's): these are
    the 2-episode numbers of the expert before profiles existed (commit 431bef9), the noisy
    one included (same random draws)."""
    m = run_episodes(task, episodes=2, seed=0, noise=noise, profile="expert")
    assert (m["Return"], m["Cost"]) == (pytest.approx(ret, abs=1e-9), cost)
    env = gym.make(FOUR, render_observation=False)
    env.reset(seed=0)
    assert Expert(env).profile == PROFILES["expert"]
    env.close()


def test_profiles_drive_as_their_parameters_say() -> None:
    """Same episodes (Four Lane, seeds 0-1): the autopilot is much faster than the expert and
    overtakes, the cautious driver slower."""
    speed = {
        name: run_episodes(FOUR, episodes=2, seed=0, profile=name)["AS"]
        for name in ("expert", "autopilot", "cautious")
    }
    assert speed["autopilot"] > 1.6 * speed["expert"] > 1.6 * speed["cautious"]
    env = gym.make(FOUR, render_observation=False)
    env.reset(seed=1)
    driver = Expert(env, profile="autopilot", seed=1)
    offsets = set()
    for _ in range(240):
        _, _, terminated, truncated, _ = env.step(driver.act())
        offsets.add(driver._offset)
        if terminated or truncated:
            break
    assert offsets - {0.0}, "the autopilot never overtook on Four Lane seed 1"
    assert max(abs(o) for o in offsets) == PROFILES["autopilot"].overtake
    env.close()


# ------------------------------------------------------------------------------ mixes
def test_mixes_cycle_their_components() -> None:
    paper = MIXES["paper"]
    shares = paper.shares()
    assert math.isclose(sum(shares.values()), 1.0)
    assert shares["autopilot"] > 0.5 and {"expert", "cautious", "reckless"} <= set(shares)
    cycle = paper.cycle()
    first = [next(cycle) for _ in range(2 * len(paper.components))]
    assert first[: len(paper.components)] == first[len(paper.components) :]
    assert [p["name"] for p in paper.describe()["profiles"]] == [p.name for p in paper.profiles]
    assert MIXES["expert"] == noise_mix((0.0, 0.1, 0.3))
    assert noise_mix((0.1, 0.3)).name == "expert@0.1,0.3"
    speeds = sorted({c.profile.cruise for c in MIXES["frontier"].components})
    assert speeds[0] <= 3.0 and speeds[-1] >= 10.0
    with pytest.raises(ValueError, match="not both"):
        resolve_mix("paper", [0.1])
    with pytest.raises(ProfileError, match="no components"):
        DatasetMix("empty", ())


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("paper") / "left.h5"
    return collect(LEFT, 700, out, mix="paper", progress=False)


def test_a_mix_dataset_records_its_profiles_per_episode(paper_data: Path) -> None:
    mix = MIXES["paper"]
    with OfflineDataset(paper_data) as data:
        assert data.mix == json.loads(json.dumps(mix.describe()))
        names, ids = data.profile_names, data.profile_ids
        for k, (start, stop) in enumerate(data.episode_bounds()):
            component = mix.components[k % len(mix.components)]
            assert {names[i] for i in ids[start:stop]} == {component.profile.name}
            assert set(data.noise[start:stop]) == {np.float32(component.noise)}


def test_the_expert_mix_is_the_expert_at_its_noise_levels(tmp_path: Path) -> None:
    a = collect(LEFT, 300, tmp_path / "a.h5", progress=False, card=False)
    b = collect(LEFT, 300, tmp_path / "b.h5", mix="expert", progress=False, card=False)
    with OfflineDataset(a) as da, OfflineDataset(b) as db:
        assert da.mix["name"] == db.mix["name"] == "expert"
        assert np.array_equal(da.actions, db.actions)
        assert np.array_equal(da.noise, db.noise)
        assert not da.profile_ids.any()
    assert not card_paths(a)["json"].exists()  # card=False


# ------------------------------------------------------------------------------ cards
def test_the_card_states_what_the_dataset_holds(paper_data: Path) -> None:
    card = json.loads(card_paths(paper_data)["json"].read_text())  # written by collect
    with OfflineDataset(paper_data) as data:
        assert card["episodes"] == data.n_episodes and card["steps"] == data.n_steps
        returns = [float(data.rewards[s:e].sum()) for s, e in data.episode_bounds()]
        speed = data.signal("speed")
    assert [r["return_"] for r in card["episode_rows"]] == pytest.approx(returns, rel=1e-5)
    assert sum(g["episodes"] for g in card["groups"]) == card["episodes"]
    assert card["metrics"]["Return"] == pytest.approx(np.mean(returns), abs=1e-3)
    assert card["speed"]["mean"] == pytest.approx(float(speed.mean()), abs=1e-3)
    assert card["mix"]["name"] == "paper"
    assert len(card["sha256"]) == len(card["content_sha256"]) == 64
    assert card_paths(paper_data)["png"].read_bytes()[:4] == b"\x89PNG"
    md = card_paths(paper_data)["md"].read_text()
    assert "| autopilot |" in md and card["sha256"] in md


def test_content_hash_is_the_datas_not_the_files(tmp_path: Path, paper_data: Path) -> None:
    again = collect(LEFT, 700, tmp_path / "again.h5", mix="paper", progress=False, card=False)
    first, second = dataset_card(paper_data), dataset_card(again)
    assert first["content_sha256"] == second["content_sha256"]
    other = collect(LEFT, 700, tmp_path / "s1.h5", mix="paper", seed=1, progress=False, card=False)
    assert dataset_card(other)["content_sha256"] != first["content_sha256"]


def test_collect_and_dataset_card_commands(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d.h5"
    argv = ["collect", "--task", LEFT, "--steps", "150", "--out", str(out), "--mix", "paper"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mix" in printed and "# Dataset card: d.h5" in printed
    card_paths(out)["json"].unlink()
    assert main(["dataset-card", str(out), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["file"] == "d.h5" and card_paths(out)["json"].exists()
    with pytest.raises(SystemExit, match="unknown"):
        main(
            [
                "collect",
                "--task",
                LEFT,
                "--steps",
                "10",
                "--out",
                str(tmp_path / "x.h5"),
                "--mix",
                "nope",
            ]
        )


# ------------------------------------------------------------------------------ the grid
def test_grid_presets_name_their_mix() -> None:
    preset = PRESETS["cpu-paper"]
    assert preset.dataset_mix == "paper" and preset.seeds == (0, 1, 2, 3, 4)
    assert preset.protocol()["dataset_mix"] == "paper"
    key = dataset_for(Cell("bc", LEFT, 0), preset)
    assert key == DatasetKey(LEFT, "discrete", 20_000, 0, "paper")
    assert key.filename.endswith("_paper.h5")
    old = dataset_for(Cell("bc", LEFT, 0), PRESETS["cpu"])
    assert old.filename == f"{LEFT}_discrete_20000steps_seed0.h5"  # unchanged for old stores
    with pytest.raises(GridError, match="unknown dataset mix 'x'"):
        GridPreset(name="bad", agent_preset="debug", seeds=(0,), episodes=1, dataset_mix="x")


def test_old_stores_read_as_the_expert_mix() -> None:
    store = ResultStore(Path(__file__).parents[1] / "results" / "cpu")
    assert store.manifest["protocol"]["dataset_mix"] is None
    assert store.manifest["protocol"] == json.loads(json.dumps(PRESETS["cpu"].protocol()))


# ------------------------------------------------------------------------------ intervals
def test_seed_intervals() -> None:
    assert seed_interval([3.0]) == (3.0, 3.0, 3.0)
    assert seed_interval([1.0, 5.0, 3.0]) == (3.0, 1.0, 5.0)  # the range with 2-3 seeds
    t = seed_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # t_{0.975, 4} = 2.7764
    half = 2.776445 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5)
    assert (
        t.point == 3.0 and t.low == pytest.approx(3.0 - half) and t.high == pytest.approx(3 + half)
    )
    assert describe_seed_intervals([3, 3, 1]) == "the range of the n = 3 seeds' values"
    assert "Student-t" in describe_seed_intervals([5, 3]) and "n = 3" in describe_seed_intervals(
        [5, 3]
    )


# ------------------------------------------------------------------------------ calibrate
def _bc_cell(store: ResultStore, task: str, seed: int, speed: float, crash: bool, ret: float):
    m = EpisodeMetrics(ret, 10.0, 100, speed, 50, 60.0, not crash, int(crash), 4.0 * crash)
    common = {
        "store_format": STORE_FORMAT,
        "preset": "cpu-paper",
        "label": "BC",
        "agent_preset": "cpu",
        "episodes": 2,
        "dataset": "d.h5",
        "dataset_sha256": "ab",
        "labeler": "",
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "config": "{}",
        "train": "{}",
        "versions": "{}",
        "executor": "local",
        "host": "t",
        "finished": "now",
    }
    other = dataclasses.replace(m, collisions=0, arrived=True, collision_speed_sum=0.0)
    rows = [
        {
            **common,
            "model": "bc",
            "task": task,
            "seed": seed,
            "condition": "train",
            "episode": k,
            "eval_seed": k,
            **dataclasses.asdict(e),
        }
        for k, e in enumerate([m, other])
    ]
    store.write_cell(Cell("bc", task, seed), rows)


def test_calibrate_checks_each_criterion(tmp_path: Path, monkeypatch) -> None:
    preset = dataclasses.replace(PRESETS["cpu-paper"], episodes=2)
    store = ResultStore.open_or_create(tmp_path / "s", preset.protocol())
    for seed in (0, 1):
        _bc_cell(store, FOUR, seed, speed=8.0, crash=True, ret=-50.0)  # CR 0.5: too many
        _bc_cell(store, LEFT, seed, speed=6.0, crash=False, ret=100.0)
    import benchmarks.calibrate as calibrate_module  # noqa: F401
    import carla_safe_envs.expert as expert_module

    monkeypatch.setattr(expert_module, "run_episodes", lambda task, **kw: {"Return": 500.0})
    result = measure(store.root, [0, 1])
    checks = {(c["task"], c["metric"]): c for c in result["checks"]}
    assert len(checks) == len(CRITERIA)
    assert checks[(FOUR, "AS")]["holds"] and checks[(FOUR, "AS")]["bc"] == 8.0
    assert not checks[(FOUR, "CR")]["holds"] and checks[(FOUR, "CR")]["bc"] == 0.5
    assert checks[(FOUR, "Return/expert")]["bc"] == pytest.approx(-0.1)
    assert checks[(LEFT, "AR")]["holds"] and checks[(LEFT, "CR")]["holds"]
    assert checks[(FOUR, "CR")]["paper_bc"] == 0.2  # the poster's BC row
    assert checks[("CarlaNavigation-v0", "AS")]["bc"] is None
    assert not result["holds"] and result["missing_seeds"]["CarlaNavigation-v0"] == [0, 1]
    text = format_markdown(result)
    assert "does NOT hold" in text and "| CarlaFourLane-v0 | CR | 0.1 - 0.35 | 0.50 |" in text
