"""``python -m benchmarks learn-check`` and its reference policies, on debug presets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import carla_safe_envs  # noqa: F401 (registers the ids)
from carla_safe_envs.evaluation import RandomPolicy, StandStillPolicy, evaluate
from carla_safe_envs.metrics import aggregate

pytest.importorskip("torch")
from benchmarks.__main__ import main  # noqa: E402
from benchmarks.learn_check import REFERENCES  # noqa: E402

TASK = "CarlaLeftTurn-v0"


@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_stand_still_never_moves_and_random_is_seeded(mode: str) -> None:
    env = gym.make(TASK, action_mode=mode)
    still = aggregate(evaluate(env, StandStillPolicy(env.action_space), episodes=1, seed=4)[0])
    assert still["TD"] == 0.0 and still["Return"] == 0.0 and still["WC"] == 0.0
    runs = [
        evaluate(env, RandomPolicy(env.action_space, 7), episodes=2, seed=4)[0] for _ in range(2)
    ]
    assert runs[0] == runs[1]  # same seed, same episodes
    assert aggregate(runs[0])["TD"] > 0.0  # random actions do move the car
    env.close()


def test_learn_check_writes_the_curve_beside_the_references(
    tmp_path: Path, offline_dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bc"
    argv = ["learn-check", "--task", TASK, "--model", "bc", "--preset", "debug", "--out", str(out)]
    argv += ["--dataset", str(offline_dataset(TASK)), "--episodes", "1", "--points", "2"]
    assert main([*argv, "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    with (out / "curve.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [r["policy"] for r in rows] == [*REFERENCES, "bc", "bc"]
    points = rows[len(REFERENCES) :]
    assert [int(r["done"]) for r in points] == [10, 20]  # debug BC: 20 updates, epochs of 10
    assert {r["unit"] for r in points} == {"updates"} and int(points[0]["total"]) == 20
    assert float(points[0]["train_seconds"]) <= float(points[1]["train_seconds"])
    refs = summary["references"]
    assert refs["stand_still"]["Return"] == 0.0 and refs["expert"]["AR"] == 1.0
    assert summary["final"]["done"] == 20 and set(summary["beats_references_on_return"]) == {
        "stand_still",
        "random",
    }
    assert summary["final"]["Return"] == pytest.approx(float(points[1]["Return"]))
    assert (out / "curve.png").stat().st_size > 10_000
    assert (out / "model" / "agent.json").is_file()
    # a finished directory is skipped; the summary comes back unchanged
    assert main([*argv, "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == summary
    # the table of every finished run under a root: the references, then the model
    assert main(["learn-check", "--table", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| task | policy | Return")
    rows = [line for line in table if line.startswith("| Left Turn")]
    assert [r.split(" | ")[1] for r in rows] == [
        "*stand still*",
        "*random*",
        "*expert*",
        "bc (debug)",
    ]
    final = summary["final"]
    assert f"| {final['Return']:.1f} | {final['Cost']:.1f} | {final['AR']:.2f} |" in rows[-1]


def test_learn_check_collects_and_labels_a_dataset_when_none_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["learn-check", "--task", TASK, "--model", "vlsafe", "--preset", "debug"]
    argv += ["--out", str(tmp_path / "vl"), "--data-dir", str(tmp_path / "data")]
    argv += ["--dataset-steps", "120", "--noise", "0.3", "--labeler", "oracle"]
    argv += ["--episodes", "1", "--points", "1", "--no-references", "--no-progress", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    dataset = Path(summary["dataset"])
    assert dataset.parent == tmp_path / "data" / "noise-0.3" and dataset.is_file()
    assert summary["references"] == {} and summary["final"]["done"] == 12
    assert np.isfinite(summary["final"]["Return"])


def test_learn_check_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["learn-check", "--task", TASK, "--model", "bc", "--out", str(tmp_path / "x")]
    assert main([*argv, "--points", "0"]) == 2
    assert "--points" in capsys.readouterr().err
    assert main(["learn-check", "--model", "bc"]) == 2
    assert "--table" in capsys.readouterr().err
    assert main([*argv[:3], "CarlaParking-v0", *argv[3:]]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main([*argv[:5], "cql", *argv[5:]]) == 2  # two runs cannot share one --out
    assert "--out-root" in capsys.readouterr().err
    assert main(["learn-check", "--table", str(tmp_path)]) == 0
    assert "no finished learn-check runs" in capsys.readouterr().out
    assert main(["learn-check", "--gallery", str(tmp_path / "g.md"), *argv[1:5]]) == 2
    assert "--gallery goes with --table" in capsys.readouterr().err
    assert main([*argv, "--preset", "debug", "--config", "bogus=1", "--no-progress"]) == 2
    assert "unknown config field" in capsys.readouterr().err


@pytest.mark.parametrize(
    "root", ["results/learn-check", "results/learn-check-noise0", "results/learn-check-ablations"]
)
def test_committed_results_make_their_table(root: str) -> None:
    """The committed learn-check summaries are readable and each makes its table row."""
    from benchmarks.learn_check import results_table, run_label

    path = Path(__file__).resolve().parents[1] / root
    summaries = [
        {**json.loads(p.read_text()), "dir": p.parent.name}
        for p in sorted(path.glob("*/summary.json"))
    ]
    if not summaries:
        pytest.skip(f"no committed runs under {root}")
    table = results_table(path)
    for summary in summaries:
        final = summary["final"]
        assert f"| {run_label(summary)} | {final['Return']:.1f} |" in table
        assert (path / summary["dir"] / "curve.png").is_file()


def test_run_label_names_what_differs_from_the_preset() -> None:
    """A run's label shows the config fields it ran with that the preset does not have now."""
    import dataclasses

    from baselines.offline import CQLAgent
    from benchmarks.learn_check import run_label

    cpu = dataclasses.asdict(CQLAgent.presets["cpu"])
    summary = {"model": "cql", "preset": "cpu", "config": {}}
    assert run_label(summary) == "cql (cpu)"
    # --config overrides equal to the preset are not an ablation...
    assert run_label({**summary, "config": {"alpha": cpu["alpha"]}}) == "cql (cpu)"
    # ...others are, and a whole stored config is compared field by field (JSON round trip)
    assert run_label({**summary, "config": {"alpha": 4.0}}) == "cql (cpu, alpha=4)"
    stored = json.loads(json.dumps({**cpu, "learning_rate": 5e-5}, default=str))
    assert run_label({**summary, "agent_config": stored}) == "cql (cpu, learning_rate=5e-05)"
    # env options other than the model's own action mode are part of what ran
    env = {"action_mode": "discrete", "speed_cue": True}
    assert run_label({**summary, "env_kwargs": env}) == "cql (cpu, speed_cue=True)"
    # so is a training seed other than the default: the same config, another run
    assert run_label({**summary, "seed": 0}) == "cql (cpu)"
    assert (
        run_label({**summary, "env_kwargs": env, "seed": 2}) == "cql (cpu, speed_cue=True, seed=2)"
    )


def test_table_splits_the_references_by_action_mode(tmp_path: Path) -> None:
    """Random and expert act in the run's action space: one row per mode where they differ."""
    from benchmarks.learn_check import results_table

    def ref(ret: float) -> dict:
        return {"Return": ret, "Cost": 1.0, "AR": 0.0, "CR": 0.0}

    point = {**ref(10.0), "done": 5, "unit": "updates"}
    for model, mode, random in (("dqn", "discrete", 56.6), ("sac", "continuous", 7.4)):
        run = tmp_path / f"{model}-CarlaLeftTurn-v0"
        run.mkdir()
        summary = {
            "model": model,
            "task": "CarlaLeftTurn-v0",
            "preset": "cpu",
            "episodes": 10,
            "env_kwargs": {"action_mode": mode},
            "references": {"stand_still": ref(0.0), "random": ref(random), "expert": ref(452.7)},
            "final": point,
            "best": point,
            "beats_references_on_return": {"stand_still": True, "random": random < 10.0},
            "train_seconds": 60.0,
        }
        (run / "summary.json").write_text(json.dumps(summary))
    table = results_table(tmp_path)
    assert table.count("*stand still*") == 1 and table.count("*expert*") == 1
    assert "| Left Turn | *random (discrete)* | 56.6 |" in table
    assert "| Left Turn | *random (continuous)* | 7.4 |" in table
    assert "| Left Turn | dqn (cpu) | 10.0 |" in table and table.count("| no |") == 1


def test_gallery_links_every_committed_curve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--gallery`` pages link each run's curve relative to where the page is written."""
    import re

    from benchmarks.learn_check import results_gallery

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    root = Path("results/learn-check")
    runs = sorted(root.glob("*/summary.json"))
    if not runs:
        pytest.skip("no committed learn-check runs")
    page = tmp_path / "deep" / "gallery.md"
    text = results_gallery(root, page)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(runs)
    assert all((page.parent / link).resolve().is_file() for link in links)
    # the committed page is exactly what the command makes (no hand edits, no stale rows)
    committed = repo / "docs" / "learn-check.md"
    assert committed.read_text() == results_gallery(root, Path("docs/learn-check.md"))
