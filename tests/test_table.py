"""The comparison table: bootstrap intervals, the published numbers, the layout, the formats,
the plots, and tables of empty, partial and unusable result directories."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import main
from benchmarks.grid import PRESETS, Cell
from benchmarks.published import HIGHER_IS_BETTER, TABLE_TASKS, load_published
from benchmarks.stats import mean_interval, performance_profile
from benchmarks.store import STORE_FORMAT, ResultStore
from benchmarks.table import (
    compare_with_paper,
    format_csv,
    format_headline_markdown,
    format_latex,
    format_markdown,
    kendall_tau,
    readme_block,
    summarize,
    write_outputs,
)
from carla_safe_envs.metrics import METRIC_NAMES, EpisodeMetrics

FOUR, LEFT, NAV, RIGHT = TABLE_TASKS
LABELS = ["PPO", "SAC", "DQN", "BC", "CQL", "IQL", "DreamerV3", "FSOP", "VL-SAFE"]


# ---------------------------------------------------------------------------- intervals
def exact_bootstrap_means(values: list[float]) -> np.ndarray:
    """The mean of every one of the n^n equally likely resamples."""
    return np.array([np.mean(r) for r in itertools.product(values, repeat=len(values))])


def test_identical_seeds_give_a_zero_width_interval() -> None:
    assert mean_interval([3.5, 3.5, 3.5]) == (3.5, 3.5, 3.5)
    assert mean_interval([7.0]) == (7.0, 7.0, 7.0)


def test_intervals_match_the_exact_bootstrap_distribution() -> None:
    # two seeds: the resampled mean is x1, (x1+x2)/2, x2 with probabilities 1/4, 1/2, 1/4
    assert mean_interval([150.0, 300.0]) == (225.0, 150.0, 300.0)
    # [0, 0, 3]: P(mean = 0) = 8/27 > 2.5%, P(mean <= 2) = 26/27 < 97.5%
    assert mean_interval([0.0, 0.0, 3.0]) == (1.0, 0.0, 3.0)
    values = [1.0, 2.0, 4.0, 8.0]
    exact = np.percentile(exact_bootstrap_means(values), [2.5, 97.5])
    _, low, high = mean_interval(values, reps=20_000)
    np.testing.assert_allclose([low, high], exact, atol=0.25)  # one step of the 1/4 grid


def test_large_samples_agree_with_the_normal_approximation() -> None:
    x = np.random.default_rng(1).normal(5.0, 2.0, 400)
    point, low, high = mean_interval(x)
    half = 1.96 * x.std() / np.sqrt(len(x))
    assert point == pytest.approx(x.mean())
    assert low == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.1 * half)


def test_the_bootstrap_is_stratified() -> None:
    # each stratum keeps its run count: stratum [0, 0] always gives 0, [10] always 10
    assert mean_interval([[0.0, 0.0], [10.0]]) == pytest.approx((10 / 3, 10 / 3, 10 / 3))
    pooled = mean_interval([0.0, 0.0, 10.0])  # unstratified: the interval opens up
    assert pooled.low < pooled.point < pooled.high


def test_performance_profile() -> None:
    taus = np.array([0.5, 1.5, 3.0, 6.0])
    point, band = performance_profile([np.array([0.0, 1.0, 2.0]), np.array([5.0])], taus)
    np.testing.assert_allclose(point, [3 / 4, 2 / 4, 1 / 4, 0.0])
    assert (band[0] <= point + 1e-12).all() and (point <= band[1] + 1e-12).all()
    np.testing.assert_allclose(band[:, 2:], [[0.25, 0.0], [0.25, 0.0]])  # only [5] decides
    lower, _ = performance_profile([np.array([0.0, 1.0, 2.0])], taus, higher_is_better=False)
    np.testing.assert_allclose(lower, [1 / 3, 2 / 3, 1.0, 1.0])


# ---------------------------------------------------------------------------- published
def test_published_table_is_the_posters() -> None:
    published = load_published()
    assert len(published) == 36 and {t for t, _ in published} == set(TABLE_TASKS)
    assert published[(FOUR, "dqn")]["Return"] == 612.33
    assert published[(NAV, "vlsafe")]["Return"] == 935.63
    assert published[(LEFT, "fosp")]["Cost"] == 0.22  # the poster's "FSOP" row
    assert published[(RIGHT, "sac")]["Cost"] == 96.57
    assert published[(NAV, "iql")]["DCF"] == 3.67
    assert list(published[(FOUR, "ppo")]) == list(METRIC_NAMES)
    assert [n for n, up in HIGHER_IS_BETTER.items() if up] == ["Return", "AS", "WC", "TD", "AR"]


# ---------------------------------------------------------------------------- a store
def episode(ret: float, cost: float = 0.0, *, speed: float = 2.0, collisions: int = 0):
    return EpisodeMetrics(
        return_=ret,
        cost=cost,
        steps=100,
        avg_speed=speed,
        waypoints=50,
        distance=100.0,
        arrived=collisions == 0,
        collisions=collisions,
        collision_speed_sum=4.0 * collisions,
    )


def write(
    store: ResultStore,
    cell: Cell,
    episodes: list[EpisodeMetrics],
    shifted: dict[str, list[EpisodeMetrics]] | None = None,
) -> None:
    """Store ``cell``: its training-condition ``episodes`` and the episodes of each shifted
    condition (label -> episodes) as extra rows."""
    common = {
        "store_format": STORE_FORMAT,
        "preset": "smoke",
        "label": cell.model,
        "agent_preset": "debug",
        "episodes": len(episodes),
        "dataset": "",
        "dataset_sha256": "",
        "labeler": "",
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "config": "{}",
        "train": "{}",
        "versions": "{}",
        "executor": "local",
        "host": "test",
        "finished": "now",
    }
    conditions = {"train": episodes, **(shifted or {})}
    store.write_cell(
        cell,
        [
            {
                **common,
                **cell._asdict(),
                "condition": condition,
                "episode": k,
                "eval_seed": k,
                **dataclasses.asdict(m),
            }
            for condition, runs in conditions.items()
            for k, m in enumerate(runs)
        ],
    )


@pytest.fixture()
def store(tmp_path: Path) -> ResultStore:
    """DQN, PPO and BC on Four Lane, VL-SAFE on Right Turn, a failed PPO on Left Turn."""
    store = ResultStore.open_or_create(tmp_path / "results", PRESETS["smoke"].protocol())
    requested = [Cell("dqn", FOUR, s) for s in (0, 1, 2)] + [Cell("ppo", FOUR, 0)]
    requested += [Cell("bc", FOUR, 0)]
    requested += [Cell("vlsafe", RIGHT, s) for s in (0, 1)] + [Cell("ppo", LEFT, 0)]
    store.add_requested(requested)
    # DQN seed 0: two episodes, one with a collision; seed 1: one clean episode; seed 2 never ran
    write(store, Cell("dqn", FOUR, 0), [episode(100, 10, collisions=1), episode(200, 30)])
    write(store, Cell("dqn", FOUR, 1), [episode(300, 40)])
    write(store, Cell("ppo", FOUR, 0), [episode(500, 90)])
    write(store, Cell("bc", FOUR, 0), [episode(-50, 100, speed=1.0)])
    write(store, Cell("vlsafe", RIGHT, 0), [episode(50, 1)])
    write(store, Cell("vlsafe", RIGHT, 1), [episode(50, 1)])
    write(store, Cell("expert", RIGHT, 0), [episode(400, 2)])
    store.write_failure(Cell("ppo", LEFT, 0), "RuntimeError: diverged", "Traceback ...")
    labels = {"labeler": "oracle", "reason": "no CLIP weights on this machine (looked in: x)"}
    store.update_manifest(datasets={"d.h5": {"labels": labels}})
    return store


def test_cells_are_means_over_seeds_of_per_seed_metrics(store: ResultStore) -> None:
    table = summarize(store.root, reps=2000)
    dqn = table.cells[(FOUR, "dqn")]
    assert dqn.seeds == [0, 1] and dqn.requested == [0, 1, 2] and dqn.status == "partial"
    assert dqn.metrics["Return"] == (225.0, 150.0, 300.0)  # seeds: 150 and 300
    assert dqn.metrics["Cost"] == (30.0, 20.0, 40.0)
    assert dqn.metrics["CR"] == (0.25, 0.0, 0.5)  # seed 0: 1 of 2 episodes
    assert dqn.metrics["TCF"].point == pytest.approx(2.5)  # (1000 * 1 / 200 + 0) / 2
    assert dqn.metrics["DCF"].point == pytest.approx(2.5)  # (1 / 0.2 km + 0) / 2
    assert dqn.metrics["CS"] == (2.0, 0.0, 4.0)
    assert table.cells[(RIGHT, "vlsafe")].metrics["Return"] == (50.0, 50.0, 50.0)
    assert table.cells[(LEFT, "ppo")].status == "failed"
    assert table.cells[(NAV, "bc")].status == "missing"
    assert table.cells[(FOUR, "ppo")].published["Return"] == 356.48
    # the best of the nine per task and metric, in the metric's direction
    assert "Return" in table.cells[(FOUR, "ppo")].best and "Cost" in dqn.best
    assert "Return" not in dqn.best and "Cost" not in table.cells[(FOUR, "ppo")].best
    assert "AS" in dqn.best and "AS" in table.cells[(FOUR, "ppo")].best  # a tie marks both
    assert "AS" not in table.cells[(FOUR, "bc")].best
    assert not any("WC" in table.cells[(FOUR, m)].best for m in ("dqn", "ppo", "bc"))  # all tie
    assert not table.cells[(RIGHT, "expert")].best  # the expert is not one of the nine


def md_rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


def test_markdown_layout_published_values_and_marks(store: ResultStore) -> None:
    table = summarize(store.root, reps=2000)
    text = format_markdown(table)
    rows = md_rows(text)
    assert rows[0] == [
        "Model",
        *(f"{n} {'↑' if HIGHER_IS_BETTER[n] else '↓'}" for n in METRIC_NAMES),
    ]
    groups = [r[0] for r in rows[2:] if r[0].startswith("**")]
    assert groups == ["**Four Lane**", "**Left Turn**", "**Navigation**", "**Right Turn**"]
    body = rows[2:]
    first_group = [r[0] for r in body[1 : 1 + 10]]
    assert first_group == [*LABELS, "Expert"]  # the nine in the poster's order, then the expert
    by_task = {}
    task = None
    for row in body:
        if row[0].startswith("**"):
            task = row[0].strip("*")
        else:
            by_task[(task, row[0])] = dict(zip(METRIC_NAMES, row[1:], strict=True))
    assert by_task[("Four Lane", "DQN")]["Return"] == "225.00 [150.00, 300.00]† / 612.33"
    assert by_task[("Four Lane", "DQN")]["Cost"] == "**30.00** [20.00, 40.00]† / 57.79"
    assert by_task[("Four Lane", "PPO")]["Return"] == "**500.00** / 356.48"  # 1 seed: no CI
    assert by_task[("Right Turn", "VL-SAFE")]["Return"] == "**50.00** [50.00, 50.00] / 315.17"
    assert by_task[("Left Turn", "PPO")]["Return"] == "failed / 208.75"
    assert by_task[("Navigation", "BC")]["CS"] == "missing / 5.27"
    assert by_task[("Right Turn", "Expert")]["Return"] == "400.00 / -"
    caption = text.splitlines()[0]
    assert "preset 'smoke'" in caption and "seeds [0, 1]" in caption
    assert "oracle labeler, not CLIP, no CLIP weights on this machine" in caption
    assert "31 missing, 1 failed, 1 partial" in caption


def test_csv_and_latex(store: ResultStore) -> None:
    table = summarize(store.root, reps=2000)
    rows = list(csv.DictReader(io.StringIO(format_csv(table))))
    assert len(rows) == 4 * 10  # the nine and the expert, per task
    dqn = next(r for r in rows if (r["task"], r["model"]) == (FOUR, "dqn"))
    assert (dqn["status"], dqn["seeds"], dqn["seeds_requested"]) == ("partial", "0 1", "0 1 2")
    assert float(dqn["Return"]) == 225.0 and float(dqn["Return_low"]) == 150.0
    assert float(dqn["Return_published"]) == 612.33 and dqn["Cost_best"] == "True"
    missing = next(r for r in rows if (r["task"], r["model"]) == (NAV, "bc"))
    assert missing["status"] == "missing" and missing["Return"] == ""
    assert float(missing["Return_published"]) == -90.54
    latex = format_latex(table)
    assert r"\toprule" in latex and r"\bottomrule" in latex
    assert r"\textbf{500.00} / 356.48" in latex and r"$^\dagger$" in latex
    assert latex.count(r"\multicolumn{11}{l}") == 4


def test_empty_directory_marks_every_cell_missing(tmp_path: Path) -> None:
    ResultStore.open_or_create(tmp_path, PRESETS["smoke"].protocol())
    text, written = write_outputs(tmp_path, reps=200)
    rows = md_rows(text)[2:]
    assert len(rows) == 4 * (9 + 1)  # four group headings and the nine models, no expert
    cells = [c for r in rows if not r[0].startswith("**") for c in r[1:]]
    assert all(c.startswith("missing / ") for c in cells)
    assert "36 missing" in text.splitlines()[0]
    names = {p.name for p in written}
    assert {"table.md", "table.csv", "table.tex", "return_cost.png"} <= names
    assert "table-generalize.md" not in names  # no evaluations under a shift
    assert all(p.stat().st_size > 0 for p in written)


def test_table_command(store: ResultStore, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report" / "table.csv"
    assert (
        main(["table", str(store.root), "--format", "csv", "--out", str(out), "--reps", "500"]) == 0
    )
    printed = capsys.readouterr().out
    assert printed == out.read_text() and printed.startswith("task,task_name,model")
    for name in ("return_cost.png", "performance_profile.png"):
        assert (out.parent / name).read_bytes()[:4] == b"\x89PNG"
    assert main(["table", str(tmp_path / "nothing")]) == 2
    assert "not a benchmark result directory" in capsys.readouterr().err
    manifest = store.root / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": "x/v9"}))
    assert main(["table", str(store.root), "--no-plots"]) == 2
    assert "incompatible result store (format 'x/v9')" in capsys.readouterr().err


# ---------------------------------------------------------------------------- formats, shifts
V1 = "carla-safe/results-v1"


def as_v1(root: Path) -> None:
    """Rewrite the store at ``root`` as ``carla-safe/results-v1`` wrote it: no ``condition``
    column (every row a training-condition row), no ``shifts`` in the protocol."""
    import pandas as pd

    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format"] = V1
    del manifest["protocol"]["shifts"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    for file in (root / "cells").glob("*/*/seed-*.parquet"):
        frame = pd.read_parquet(file)
        assert set(frame["condition"]) == {"train"}
        frame = frame.drop(columns="condition").assign(store_format=V1)
        frame.to_parquet(file, index=False)


def test_a_v1_store_reads_and_tables_identically(store: ResultStore, tmp_path: Path) -> None:
    import shutil

    import pandas as pd

    old = tmp_path / "v1"
    shutil.copytree(store.root, old)
    as_v1(old)
    v1 = ResultStore(old)
    assert v1.manifest["format"] == V1 and v1.manifest["protocol"]["shifts"] == []
    rows, new_rows = v1.rows(), store.rows()
    assert set(rows["store_format"]) == {V1} and set(rows["condition"]) == {"train"}
    pd.testing.assert_frame_equal(
        rows.drop(columns="store_format"), new_rows.drop(columns="store_format")
    )
    ours, theirs = summarize(old, reps=2000), summarize(store.root, reps=2000)
    for formatter in (format_markdown, format_csv, format_latex):
        assert formatter(ours) == formatter(theirs)
    # a run goes on in it: same protocol (no shifts), v2 rows beside the v1 ones
    reopened = ResultStore.open_or_create(old, PRESETS["smoke"].protocol())
    assert reopened.manifest["format"] == STORE_FORMAT and reopened.manifest["upgraded_from"] == V1
    write(reopened, Cell("dqn", FOUR, 2), [episode(300, 40)])
    assert set(ResultStore(old).rows()["store_format"]) == {V1, STORE_FORMAT}
    assert summarize(old, reps=200).cells[(FOUR, "dqn")].seeds == [0, 1, 2]


def test_generalization_table(tmp_path: Path) -> None:
    shifted = dataclasses.replace(PRESETS["smoke"], shifts=("density",))
    plain = ResultStore.open_or_create(tmp_path / "plain", shifted.protocol())
    both = ResultStore.open_or_create(tmp_path / "both", shifted.protocol())
    train = {0: [episode(100, 10), episode(300, 30)], 1: [episode(300, 50)]}  # seeds: 200, 300
    shifts = {
        0: {"density=low": [episode(275, 5)], "density=high": [episode(50, 20, collisions=1)]},
        1: {"density=low": [episode(275, 5)], "density=high": [episode(150, 60)]},
    }
    for seed, episodes in train.items():
        write(plain, Cell("dqn", FOUR, seed), episodes)
        write(both, Cell("dqn", FOUR, seed), episodes, shifts[seed])
    for store in (plain, both):  # the expert was evaluated as trained only
        write(store, Cell("expert", RIGHT, 0), [episode(400, 2)])
    # the main table, its formats and plots read the training condition only
    text, written = write_outputs(both.root, reps=500)
    assert text == write_outputs(plain.root, reps=500)[0]
    for name in ("table.csv", "table.tex", "return_cost.png", "performance_profile.png"):
        assert (both.root / name).read_bytes() == (plain.root / name).read_bytes()
    assert not (plain.root / "table-generalize.md").exists()
    names = {p.name for p in written}
    assert {"table-generalize.md", "table-generalize.csv"} <= names
    lines = (both.root / "table-generalize.md").read_text().splitlines()
    assert "preset 'smoke', shifts density" in lines[0] and "Four Lane: density=base" in lines[0]
    rows = md_rows("\n".join(lines))
    assert rows[0] == [
        "Task",
        "Model",
        "Condition",
        "Seeds",
        "Return ↑",
        "Cost ↓",
        "AR ↑",
        "CR ↓",
        "Return drop",
    ]
    assert rows[2:] == [
        ["Four Lane", "DQN", "train", "2", "250.00 [200.00, 300.00]", "35.00 [20.00, 50.00]",
         "1.00 [1.00, 1.00]", "0.00 [0.00, 0.00]", ""],
        ["Four Lane", "DQN", "density=low", "2", "275.00 [275.00, 275.00]",
         "5.00 [5.00, 5.00]", "1.00 [1.00, 1.00]", "0.00 [0.00, 0.00]", "-10.0%"],
        ["Four Lane", "DQN", "density=high", "2", "100.00 [50.00, 150.00]",
         "40.00 [20.00, 60.00]", "0.50 [0.00, 1.00]", "0.50 [0.00, 1.00]", "+60.0%"],
    ]  # fmt: skip
    records = list(csv.DictReader(io.StringIO((both.root / "table-generalize.csv").read_text())))
    assert [r["condition"] for r in records] == ["train", "density=low", "density=high"]
    assert records[0]["Return_drop"] == "" and float(records[2]["Return_drop"]) == 0.6
    assert float(records[2]["CR_high"]) == 1.0 and records[2]["seeds"] == "0 1"


# ---------------------------------------------------------------------------- against the paper
def test_kendall_tau() -> None:
    assert kendall_tau([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]) == 1.0
    assert kendall_tau([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == -1.0
    assert kendall_tau([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(1 / 3)  # one swap
    with pytest.raises(ValueError, match="2\\+ items"):
        kendall_tau([1.0], [1.0])


@pytest.fixture()
def rivals(tmp_path: Path) -> ResultStore:
    """Left Turn: VL-SAFE (Return 100, Cost 10 and 20 over two seeds), DQN with more Return at
    a Cost inside VL-SAFE's interval, PPO with the most Return at a far higher Cost; Four Lane:
    VL-SAFE with one of its two seeds."""
    store = ResultStore.open_or_create(tmp_path / "rivals", PRESETS["smoke"].protocol())
    store.add_requested([Cell(m, LEFT, s) for m in ("vlsafe", "dqn", "ppo") for s in (0, 1)])
    store.add_requested([Cell("vlsafe", FOUR, s) for s in (0, 1)])
    for seed, cost in ((0, 10.0), (1, 20.0)):
        write(store, Cell("vlsafe", LEFT, seed), [episode(100, cost)])
        write(store, Cell("dqn", LEFT, seed), [episode(150, 15)])
        write(store, Cell("ppo", LEFT, seed), [episode(300, 50)])
    write(store, Cell("vlsafe", FOUR, 0), [episode(900, 1)])
    return store


def test_rankings_and_the_vlsafe_claim_against_the_paper(rivals: ResultStore) -> None:
    table = summarize(rivals.root, reps=2000)
    assert table.cells[(LEFT, "vlsafe")].metrics["Cost"] == (15.0, 10.0, 20.0)
    rows = {row.task: row for row in compare_with_paper(table)}
    left = rows[LEFT]
    assert left.done == ["PPO", "DQN", "VL-SAFE"]
    # published Left Turn: VL-SAFE 358.70 > DQN 214.11 > PPO 208.75, ours the reverse
    assert left.paper_order == ["VL-SAFE", "DQN", "PPO"] and left.tau == -1.0
    # DQN's Cost 15 is within VL-SAFE's interval (upper end 20), PPO's 50 is not
    assert left.ours == "no: DQN (150.00 at Cost 15.00) (of 3 models done)"
    assert left.paper == "yes"  # the poster's best Return on Left Turn is VL-SAFE's
    four = rows[FOUR]
    assert four.done == [] and four.tau is None
    assert four.ours == "VL-SAFE: 1 of 2 seeds done"
    # published Four Lane: DQN 612.33 at Cost 57.79 beats VL-SAFE's 552.43 at 69.17
    assert four.paper == "no: DQN (612.33 at Cost 57.79)"
    assert rows[NAV].ours == "VL-SAFE not in this grid" and rows[NAV].paper == "yes"
    text = format_headline_markdown(table)
    # Cost: DQN ties VL-SAFE for the lowest, both bold
    lines = md_rows(text)
    assert ["Left Turn", "DQN", "150.00 [150.00, 150.00] / 214.11", "**15.00** [15.00, 15.00] / 44.18",
            "1.00 [1.00, 1.00] / 0.90", "0.00 [0.00, 0.00] / 0.00"] in lines  # fmt: skip
    assert [
        "Left Turn",
        "3 of 9",
        "PPO > DQN > VL-SAFE",
        "VL-SAFE > DQN > PPO",
        "-1.00",
        "no: DQN (150.00 at Cost 15.00) (of 3 models done)",
        "yes",
    ] in lines


def test_the_table_command_writes_the_headline_into_a_readme(
    rivals: ResultStore, tmp_path: Path, capsys
) -> None:
    root = rivals.root.as_posix()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n<!-- headline: {root} -->\nold\n<!-- /headline -->\ntail\n")
    assert main(["table", root, "--no-plots", "--reps", "500", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert readme_block(text, root) == (rivals.root / "headline.md").read_text()
    assert text.startswith("# x\n\n<!-- headline: ") and text.endswith("<!-- /headline -->\ntail\n")
    assert "old" not in text
    readme.write_text("# no block\n")
    assert main(["table", root, "--no-plots", "--reps", "500", "--readme", str(readme)]) == 2
    assert f"has no headline block for {root}: add the two lines" in capsys.readouterr().err
