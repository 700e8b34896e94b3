"""Safety labelers (vlsafe.labels), the label quality report and the label commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vlsafe import label_report
from vlsafe.label_report import auroc, average_precision, calibration_bins
from vlsafe.labels import (
    LABELERS,
    ClipLabeler,
    ClipWeightsUnavailable,
    OracleLabeler,
    SafetyLabeler,
    make_labeler,
)

open_clip = pytest.importorskip("open_clip")

TINY_CLIP = {"model": "ViT-S-32", "pretrained": None, "batch_size": 4}  # untrained, offline
TEST_OPTIONS: dict[str, dict[str, Any]] = {"clip": TINY_CLIP, "oracle": {}, "frame": {}}
TASK = "CarlaLeftTurn-v0"


@pytest.fixture(scope="module")
def clip_labeler() -> ClipLabeler:
    return ClipLabeler(**TINY_CLIP)


def random_inputs(n: int, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)
    signals = {
        "future_cost": rng.integers(0, 2, n).astype(np.float32),
        "ttc": np.where(rng.random(n) < 0.5, np.inf, rng.random(n) * 6).astype(np.float32),
        "lateral_error": rng.normal(0, 0.7, n).astype(np.float32),
    }
    signals["state/ttc"], signals["state/lateral_error"] = signals["ttc"], signals["lateral_error"]
    return frames, signals


# --- labelers -------------------------------------------------------------------------------


def test_every_labeler_has_test_options() -> None:
    assert set(TEST_OPTIONS) == set(LABELERS)


@pytest.mark.parametrize("name", sorted(LABELERS))
def test_labeler_returns_probabilities(name: str, clip_labeler: ClipLabeler) -> None:
    labeler = clip_labeler if name == "clip" else make_labeler(name, **TEST_OPTIONS[name])
    assert isinstance(labeler, SafetyLabeler)
    assert labeler.name == name
    frames, signals = random_inputs(7)  # not a multiple of the batch size
    p = labeler(frames, signals)
    assert p.shape == (7,) and p.dtype == np.float32
    assert np.all((p >= 0) & (p <= 1))
    assert labeler(frames[:0], {k: v[:0] for k, v in signals.items()}).shape == (0,)


def test_clip_is_batch_size_independent(clip_labeler: ClipLabeler) -> None:
    frames, _ = random_inputs(6, seed=1)
    big = ClipLabeler(**{**TINY_CLIP, "batch_size": 64})
    big.model.load_state_dict(clip_labeler.model.state_dict())
    big._text_features = clip_labeler._text_features
    np.testing.assert_allclose(big(frames, {}), clip_labeler(frames, {}), atol=1e-5)


def test_clip_preprocessing_matches_open_clip_transform(clip_labeler: ClipLabeler) -> None:
    import torch
    from PIL import Image

    frames, _ = random_inputs(2, seed=2)
    frames[:, 32:96, 32:96] = 200  # some structure besides noise
    transform = open_clip.image_transform(
        clip_labeler.image_size, is_train=False, mean=None, std=None
    )
    reference = torch.stack([transform(Image.fromarray(frame)) for frame in frames])
    ours = clip_labeler.preprocess(torch.from_numpy(frames))
    assert ours.shape == reference.shape == (2, 3, *clip_labeler.image_size)
    # PIL resizes in two passes, clipping and rounding to uint8 between them; ours stays float.
    # On noise that differs by a grey level or so, rarely (overshoots clipped) by more.
    error = (ours - reference).abs()
    assert error.mean() < 0.01
    assert torch.quantile(error.flatten()[::7], 0.99) < 0.05


def test_clip_rejects_bad_frames(clip_labeler: ClipLabeler) -> None:
    with pytest.raises(ValueError, match="uint8"):
        clip_labeler(np.zeros((2, 128, 128, 3), dtype=np.float32), {})


def test_oracle_formula() -> None:
    oracle = OracleLabeler(horizon=10, ttc_safe=3.0, lateral_safe=1.0)
    signals = {  # open road, cost ahead, ttc at half, lateral error at 3/4, nan ttc / lateral
        "future_cost": np.array([0, 1, 0, 0, 0], dtype=np.float32),
        "ttc": np.array([np.inf, np.inf, 1.5, np.inf, np.nan], dtype=np.float32),
        "lateral_error": np.array([0.2, 0.0, 0.0, -0.75, np.nan], dtype=np.float32),
    }
    p = oracle(np.zeros((5, 0, 0, 3), np.uint8), signals)
    np.testing.assert_allclose(p, [1.0, 0.0, 0.5, 0.5, 1.0])


def test_oracle_ranks_states_before_collisions_as_less_safe() -> None:
    # one episode driving into a collision at step 40: closing gap, cost from step 40 on
    n = 50
    ttc = np.full(n, np.inf, dtype=np.float32)
    ttc[25:40] = np.linspace(3.5, 0.1, 15)
    costs = (np.arange(n) >= 40).astype(np.float32)
    future = np.array([costs[t + 1 : t + 11].max(initial=0.0) for t in range(n)], np.float32)
    signals = {"future_cost": future, "ttc": ttc, "lateral_error": np.zeros(n, np.float32)}
    p = OracleLabeler()(np.zeros((n, 0, 0, 3), np.uint8), signals)
    assert np.all(p[:20] == 1.0)  # open road
    assert p[30:40].max() < p[:20].min()  # just before the collision
    assert np.all(np.diff(p[25:30]) <= 0)  # risk grows as the gap closes


def test_oracle_needs_its_signals() -> None:
    with pytest.raises(KeyError, match="ttc"):
        OracleLabeler()(np.zeros((2, 0, 0, 3), np.uint8), {"future_cost": np.zeros(2)})
    with pytest.raises(ValueError, match="horizon"):
        OracleLabeler(horizon=0)


def test_frame_formula_is_the_oracle_without_its_look_ahead() -> None:
    frame = make_labeler("frame")
    signals = {  # open road, ttc at half, lateral error at 3/4, nan (an episode's first step)
        "state/ttc": np.array([np.inf, 1.5, np.inf, np.nan], dtype=np.float32),
        "state/lateral_error": np.array([0.2, 0.0, -0.75, np.nan], dtype=np.float32),
    }
    p = frame(np.zeros((4, 0, 0, 3), np.uint8), signals)
    np.testing.assert_allclose(p, [1.0, 0.5, 0.5, 1.0])
    oracle = {"future_cost": np.ones(4), "ttc": signals["state/ttc"]}
    oracle["lateral_error"] = signals["state/lateral_error"]
    assert np.all(OracleLabeler()(np.zeros((4, 0, 0, 3), np.uint8), oracle) == 0.0)
    assert frame.describe() == {"labeler": "frame", "ttc_safe": 3.0, "lateral_safe": 1.0}
    with pytest.raises(KeyError, match="frame labeler needs.*state/ttc"):
        frame(np.zeros((2, 0, 0, 3), np.uint8), {"ttc": np.zeros(2)})


def test_unknown_labeler_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'nope'.*\['clip', 'frame', 'oracle'\]"):
        make_labeler("nope")


def test_clip_errors_are_actionable(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_weights.bin"
    with pytest.raises(FileNotFoundError, match="no_such_weights.bin"):
        ClipLabeler("ViT-S-32", checkpoint=missing)
    with pytest.raises(ValueError, match="list_models"):
        ClipLabeler("ViT-Nope-99", pretrained=None)
    with pytest.raises(ValueError, match="unknown pretrained tag 'nope'.*openai"):
        ClipLabeler("ViT-B-32", pretrained="nope")


def test_download_failure_points_to_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Failed to download weights for tag 'openai': no connection")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(ClipWeightsUnavailable, match="--checkpoint") as info:
        ClipLabeler("ViT-B-32", pretrained="openai")
    assert "internet" in str(info.value) and "create_model_and_transforms" in str(info.value)


# --- metrics --------------------------------------------------------------------------------


def test_auroc_and_ap_known_cases() -> None:
    labels = np.array([0, 0, 1, 1])
    perfect = np.array([0.1, 0.2, 0.8, 0.9])
    assert auroc(perfect, labels) == 1.0 and average_precision(perfect, labels) == 1.0
    assert auroc(-perfect, labels) == 0.0
    assert average_precision(-perfect, labels) == pytest.approx((1 / 3 + 2 / 4) / 2)
    ties = np.full(4, 0.3)
    assert auroc(ties, labels) == 0.5 and average_precision(ties, labels) == 0.5
    # scikit-learn's documented examples (roc_auc_score / average_precision_score)
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc(scores, labels) == pytest.approx(0.75)
    assert average_precision(scores, labels) == pytest.approx(0.8333333333)
    # a tie between a positive and a negative, by hand: pairs (0.9 > 0.5) = 1, (0.5 = 0.5) = 1/2
    # AP: threshold 0.9 -> P 1, R 1/2; threshold 0.5 -> P 2/3, R 1: 1/2 * 1 + 1/2 * 2/3
    scores, labels = np.array([0.5, 0.5, 0.9]), np.array([0, 1, 1])
    assert auroc(scores, labels) == pytest.approx(0.75)
    assert average_precision(scores, labels) == pytest.approx(5 / 6)


def test_auroc_equals_pairwise_probability() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.3
    pos, neg = scores[labels][:, None], scores[~labels][None, :]
    expected = np.mean((pos > neg) + 0.5 * (pos == neg))
    assert auroc(scores, labels) == pytest.approx(expected)


def test_metrics_with_one_class_are_nan() -> None:
    assert np.isnan(auroc(np.arange(3.0), np.zeros(3)))
    assert np.isnan(average_precision(np.arange(3.0), np.zeros(3)))
    assert np.isnan(auroc(np.arange(3.0), np.ones(3)))
    with pytest.raises(ValueError, match="length"):
        auroc(np.arange(3.0), np.ones(2))


def test_calibration_bins() -> None:
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    labels = np.array([0, 0, 1, 1, 1])
    bins = calibration_bins(p, labels, bins=10)
    assert bins.count.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins.mean_predicted[1] == pytest.approx(0.15)
    assert bins.fraction_positive[1] == 0.5 and np.isnan(bins.fraction_positive[2])
    assert bins.fraction_positive[9] == 1.0
    ece = (1 * 0.05 + 2 * 0.35 + 2 * 0.025) / 5
    assert bins.expected_calibration_error == pytest.approx(ece)
    assert json.dumps(bins.to_dict())  # JSON-friendly


# --- report and command line on a collected dataset ----------------------------------------


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("h5py")
    from carla_safe_envs.collection import collect

    out = tmp_path_factory.mktemp("labels") / "left.h5"
    return collect(TASK, 150, out, seed=3, noise=(0.1, 0.3), progress=False)


def run_cli(argv: list[str]) -> int:
    from benchmarks.__main__ import Command, build_parser
    from benchmarks.label import LABEL_COMMAND, LABEL_REPORT_COMMAND

    commands = {"label": Command(*LABEL_COMMAND), "label-report": Command(*LABEL_REPORT_COMMAND)}
    args = build_parser(commands).parse_args(argv)
    return args.run(args)


def test_label_commands_end_to_end(
    dataset_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from carla_safe_envs.datasets import OfflineDataset

    data = ["--dataset", str(dataset_path)]
    assert run_cli(["label-report", *data]) == 1  # nothing labeled yet
    assert run_cli(["label", *data, "--labeler", "oracle"]) == 0
    clip = ["--labeler", "clip", "--model", "ViT-S-32", "--pretrained", "none"]
    assert run_cli(["label", *data, *clip, "--batch-size", "64", "--column", "safety_clip"]) == 0
    with OfflineDataset(dataset_path) as dataset:
        assert dataset.safety.shape == (dataset.n_steps,) and dataset.safety.dtype == np.float32
        assert dataset.safety_labeler["labeler"] == "oracle"
        columns = label_report.labeled_columns(dataset)
    assert {name: labeler for name, (labeler, _) in columns.items()} == {
        "safety": "oracle",
        "safety_clip": "clip",
    }
    capsys.readouterr()
    png = tmp_path / "report.png"
    assert run_cli(["label-report", *data, "--k", "10", "30", "--json", "--png", str(png)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["k"] == [10, 30] and set(result["labelers"]) == {"safety", "safety_clip"}
    oracle = result["labelers"]["safety"]
    assert 0 < result["event_rate"]["10"] < 1, "the noisy expert must hit some cost"
    assert oracle["auroc"]["10"] > 0.8  # the oracle looks 10 steps ahead
    assert 0 <= result["labelers"]["safety_clip"]["auroc"]["30"] <= 1
    assert run_cli(["label-report", *data]) == 0
    assert "AUROC@10" in capsys.readouterr().out


def test_label_commands_report_user_errors(
    dataset_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["label", "--dataset", str(tmp_path / "x.h5"), "--labeler", "oracle"]) == 2
    assert "no dataset at" in capsys.readouterr().err
    assert run_cli(["label-report", "--dataset", str(tmp_path / "x.h5")]) == 2
    assert "collect" in capsys.readouterr().err
    other = tmp_path / "other.h5"
    other.write_bytes(b"not an hdf5 file")
    assert run_cli(["label", "--dataset", str(other), "--labeler", "oracle"]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err
    before = dataset_path.read_bytes()
    argv = ["label", "--dataset", str(dataset_path), "--labeler", "clip", "--checkpoint"]
    assert run_cli([*argv, str(tmp_path / "missing.bin")]) == 2
    assert "missing.bin" in capsys.readouterr().err
    assert dataset_path.read_bytes() == before  # nothing written


def test_roc_on_grid_keeps_vertical_steps() -> None:
    fpr, tpr = label_report.roc_curve(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
    grid = label_report._roc_on_grid(fpr, tpr)
    assert grid[0] == 1.0 and np.all(grid == 1.0)  # a perfect ranking: (0, 1) at once


def test_clip_speed_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from vlsafe.labels import main

    threads = str(torch.get_num_threads())  # leave the process setting as it was
    argv = ["--bench", "--model", "ViT-S-32", "--batch-size", "2", "--batches", "1"]
    assert main([*argv, "--rounds", "1", "--threads", threads]) == 0
    out = capsys.readouterr().out
    assert "raw encode_image" in out and "labeler pipeline" in out and "ratio" in out
