"""Label sources (vlsafe.label_sources): what each makes of a collected dataset, seeded
transforms, the frame-only state signals, the relabeled dataset file and ``label-report
--sources``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlsafe.label_report import report
from vlsafe.label_sources import (
    STANDARD_SOURCES,
    LabelSource,
    LabelSourceError,
    label_digest,
    parse_label_source,
)
from vlsafe.labels import FrameLabeler, OracleLabeler, dataset_signals

pytest.importorskip("h5py")

TASK = "CarlaLeftTurn-v0"


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from carla_safe_envs.collection import collect

    out = tmp_path_factory.mktemp("sources") / "left.h5"
    return collect(TASK, 300, out, seed=3, noise=(0.1, 0.3), progress=False)


@pytest.fixture()
def dataset(dataset_path: Path):
    from carla_safe_envs.datasets import OfflineDataset

    with OfflineDataset(dataset_path) as data:
        yield data


def oracle_of(dataset) -> np.ndarray:
    labeler = OracleLabeler()
    frames = np.empty((dataset.n_steps, 0, 0, 3), np.uint8)
    return labeler(frames, dataset_signals(dataset, labeler))


def test_parse_every_standard_source_and_round_trip_its_spec() -> None:
    for spec in STANDARD_SOURCES:
        assert parse_label_source(spec).spec == spec
    assert parse_label_source("constant:1") == LabelSource("constant", 1.0)
    assert parse_label_source("noisy:0.3") == LabelSource("noisy", 0.3)
    assert [parse_label_source(s).seeded for s in STANDARD_SOURCES] == [
        False,
        False,
        False,
        False,
        True,
        True,
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("clip", r"unknown label source 'clip'; valid: oracle"),
        ("noisy", r"needs a number in \[0, 1\] after 'noisy'"),
        ("noisy:lots", r"needs a number"),
        ("constant:1.5", r"must be in \[0, 1\]"),
        ("frame:0.2", r"'frame' takes no value"),
    ],
)
def test_bad_source_specs_say_what_is_valid(text: str, match: str) -> None:
    with pytest.raises(LabelSourceError, match=match):
        parse_label_source(text)


def test_state_signal_is_the_previous_steps_info_within_the_episode(dataset) -> None:
    for name in ("ttc", "lateral_error"):
        after, state = dataset.signal(name), dataset.state_signal(name)
        starts = dataset.episode_bounds()[:, 0]
        assert len(starts) >= 2, "the test needs an episode boundary"
        assert np.all(np.isnan(state[starts]))
        inside = np.setdiff1d(np.arange(dataset.n_steps), starts)
        np.testing.assert_array_equal(state[inside], after[inside - 1])


def test_each_source_makes_what_it_says(dataset) -> None:
    oracle = oracle_of(dataset)
    assert 0 < oracle.mean() < 1, "the noisy expert must see some risk"
    np.testing.assert_array_equal(parse_label_source("oracle").labels(dataset), oracle)
    frame = parse_label_source("frame").labels(dataset)
    expected = FrameLabeler()._p_safe(
        np.zeros(dataset.n_steps),
        dataset.state_signal("ttc").astype(np.float64),
        dataset.state_signal("lateral_error").astype(np.float64),
    )
    np.testing.assert_array_equal(frame, expected)
    assert not np.array_equal(frame, oracle)  # no look-ahead
    assert np.all(parse_label_source("constant:1").labels(dataset) == 1.0)
    assert np.all(parse_label_source("constant:0").labels(dataset) == 0.0)
    shuffled = parse_label_source("shuffled").labels(dataset, seed=1)
    np.testing.assert_array_equal(np.sort(shuffled), np.sort(oracle))  # same marginal
    assert not np.array_equal(shuffled, oracle)
    np.testing.assert_array_equal(parse_label_source("noisy:0").labels(dataset, seed=1), oracle)
    flipped_all = parse_label_source("noisy:1").labels(dataset, seed=1)
    np.testing.assert_allclose(flipped_all, 1 - oracle, atol=1e-6)
    noisy = parse_label_source("noisy:0.3").labels(dataset, seed=1)
    assert np.all(np.isclose(noisy, oracle) | np.isclose(noisy, 1 - oracle))  # kept or flipped
    assert 0.2 < (noisy != oracle).mean() < 0.4


def test_seeded_sources_are_deterministic_per_seed(dataset) -> None:
    for spec in ("shuffled", "noisy:0.3"):
        source = parse_label_source(spec)
        first, again = source.labels(dataset, seed=2), source.labels(dataset, seed=2)
        np.testing.assert_array_equal(first, again)
        assert label_digest(first) == label_digest(again)
        assert label_digest(first) != label_digest(source.labels(dataset, seed=3))
        record = source.describe(2, first)
        assert record["source"] == spec and record["seed"] == 2
        assert record["sha256"] == label_digest(first) and record["mean"] == pytest.approx(
            float(first.mean()), abs=1e-6
        )
    assert "seed" not in parse_label_source("frame").describe(5)


def test_report_scores_every_source(dataset) -> None:
    result = report(dataset, k=(10, 30), sources=STANDARD_SOURCES, seed=0)
    assert list(result["sources"]) == list(STANDARD_SOURCES)
    scores = {spec: entry["auroc"] for spec, entry in result["sources"].items()}
    for k in ("10", "30"):
        assert scores["constant:1"][k] == 0.5 and scores["constant:0"][k] == 0.5  # all tied
        assert scores["oracle"][k] > scores["shuffled"][k]
        assert scores["oracle"][k] > scores["noisy:0.3"][k] > 0.5
    assert scores["oracle"]["10"] > 0.95  # it looks 10 steps ahead
    assert 0.5 < scores["frame"]["10"] < scores["oracle"]["10"]
    assert abs(scores["shuffled"]["10"] - 0.5) < 0.1
    assert result["labelers"] == {}  # nothing written into the file


def test_relabeled_file_reads_as_the_source_with_other_labels(
    dataset_path: Path, tmp_path: Path
) -> None:
    from carla_safe_envs.datasets import OfflineDataset, write_relabeled

    before = dataset_path.read_bytes()
    with OfflineDataset(dataset_path) as data:
        values = parse_label_source("shuffled").labels(data, seed=0)
        n = data.n_steps
    out = write_relabeled(dataset_path, tmp_path / "relabeled.h5", values, {"labeler": "x"})
    assert out.stat().st_size < dataset_path.stat().st_size / 3  # the frames are linked
    with OfflineDataset(dataset_path) as data, OfflineDataset(out) as copy:
        assert copy.attrs.keys() == data.attrs.keys() and copy.n_steps == n
        assert (copy.task, copy.action_mode, copy.attrs["seed"]) == (TASK, "discrete", 3)
        np.testing.assert_array_equal(copy.safety, values)
        assert copy.safety_labeler == {"labeler": "x"}
        np.testing.assert_array_equal(
            copy.frames([0, n // 2, n - 1]), data.frames([0, n // 2, n - 1])
        )
        np.testing.assert_array_equal(copy.actions, data.actions)
        np.testing.assert_array_equal(copy.signal("ttc"), data.signal("ttc"))
        windows = copy.sample_sequences(3, 8, np.random.default_rng(0))
        assert windows.safety.shape == (3, 8)
    assert dataset_path.read_bytes() == before  # the shared file is untouched
    with pytest.raises(ValueError, match=rf"shape \({n},\)"):
        write_relabeled(dataset_path, tmp_path / "bad.h5", values[:-1])


def test_label_report_sources_on_the_command_line(
    dataset_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.__main__ import main

    data = ["label-report", "--dataset", str(dataset_path)]
    assert main(data) == 1  # nothing labeled, no sources asked for
    capsys.readouterr()
    assert main([*data, "--sources", "--json", "--label-seed", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["sources"]) == list(STANDARD_SOURCES)
    assert result["sources"]["shuffled"]["source"]["seed"] == 4
    assert main([*data, "--sources", "frame", "noisy:0.1"]) == 0
    text = capsys.readouterr().out
    assert "source frame" in text and "source noisy:0.1" in text and "AUROC@30" in text
    assert main([*data, "--sources", "bogus"]) == 2
    assert "unknown label source 'bogus'" in capsys.readouterr().err
