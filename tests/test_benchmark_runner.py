"""The benchmark runner: grid presets, the result store, resuming, executors, bad input.

The smoke grid runs on the expert and BC (a learned offline model, deterministic on the CPU)
on two tasks.  The safety-label path and failing cells use a small model registered for the
test (``majority``: it takes the most frequent action of the dataset's safe states).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.__main__ import main
from benchmarks.executors import Job, LocalExecutor, RayExecutor, _saved_agent_matches
from benchmarks.grid import PRESETS, Cell, GridError, GridPreset, get_preset, make_cells
from benchmarks.prepare import resolve_labeler
from benchmarks.run import run_grid
from benchmarks.store import METRIC_FIELDS, STORE_FORMAT, ResultStore, StoreError
from carla_safe_envs.agents import (
    AGENTS,
    TABLE_MODELS,
    AgentSpec,
    BaseAgent,
    make_agent,
    source_commit,
)

TASKS = ("CarlaLeftTurn-v0", "CarlaRightTurn-v0")
MODELS = ("expert", "bc")
SMOKE = PRESETS["smoke"]
IDENTITY = ["model", "task", "seed", "episode", "eval_seed", *METRIC_FIELDS]


# ---------------------------------------------------------------------------- a test model
@dataclasses.dataclass(frozen=True)
class MajorityConfig:
    min_safety: float = 0.5  # only actions of states labeled at least this safe count


class MajorityAgent(BaseAgent):
    """Always takes the most frequent action of the dataset's safe states."""

    name = "majority"
    presets = {p: MajorityConfig() for p in ("debug", "small", "paper")}

    def _fit(self, dataset, *, log_dir, progress):
        safe = dataset.safety >= self.config.min_safety
        self.action = int(np.bincount(dataset.actions[safe], minlength=15).argmax())
        return {"steps": int(safe.sum()), "action": self.action}

    def act(self, obs, state=None, episode_start=None, deterministic=True):
        return np.full(len(obs), self.action, dtype=np.int64), state

    def _save(self, path: Path) -> None:
        (path / "action.json").write_text(json.dumps(self.action))

    def _load(self, path: Path) -> None:
        self.action = json.loads((path / "action.json").read_text())


class LocalSpec(AgentSpec):
    def load_class(self) -> type[BaseAgent]:
        return MajorityAgent


MAJORITY = LocalSpec(
    "majority", "tests:MajorityAgent", "offline", "discrete", needs_safety=True, label="Maj."
)


@pytest.fixture(autouse=True)
def majority_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(AGENTS, "majority", MAJORITY)


def grid(out: Path, executor, *, data_dir: Path | None = None, models=MODELS, tasks=TASKS):
    cells = make_cells(SMOKE, models=models, tasks=tasks)
    return run_grid(
        SMOKE,
        out,
        cells=cells,
        executor=executor,
        data_dir=data_dir,
        labeler="oracle",
        progress=False,
    )


def identity(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[IDENTITY].sort_values(IDENTITY[:4]).reset_index(drop=True)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke grid on 2 models x 2 tasks, run once without interruption."""
    out = tmp_path_factory.mktemp("smoke")
    summary = grid(out, LocalExecutor())
    assert summary.failed == {}, summary.failed
    assert len(summary.finished) == len(MODELS) * len(TASKS)
    return out


# ---------------------------------------------------------------------------- presets
def test_presets() -> None:
    smoke = get_preset("smoke")
    assert smoke.agent_preset == "debug" and len(smoke.seeds) == 1
    assert 1 <= smoke.episodes <= 2 and 200 <= smoke.dataset_steps <= 1000
    cells = make_cells(smoke)
    assert len(cells) == 9 * 4 and {c.model for c in cells} == set(TABLE_MODELS)
    assert (get_preset("small").agent_preset, len(get_preset("small").seeds)) == ("small", 3)
    assert get_preset("paper").agent_preset == "paper"
    # the cpu grid draws the speed cue on all four tasks; the paper's grid is CarDreamer's BEV
    from benchmarks.published import TABLE_TASKS

    assert get_preset("cpu").env_kwargs == {t: {"speed_cue": True} for t in TABLE_TASKS}
    assert get_preset("paper").env_kwargs == {} and get_preset("small").env_kwargs == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.episodes = 5  # type: ignore[misc]
    assert "seeds" not in smoke.protocol() and smoke.protocol()["name"] == "smoke"


# ---------------------------------------------------------------------------- the grid
def test_smoke_grid_stores_one_row_per_episode(smoke_run: Path) -> None:
    store = ResultStore(smoke_run)
    rows = store.rows()
    assert len(rows) == len(MODELS) * len(TASKS) * SMOKE.episodes
    assert not rows.duplicated(["model", "task", "seed", "episode"]).any()
    assert set(rows["store_format"]) == {STORE_FORMAT} and set(rows["preset"]) == {"smoke"}
    assert (rows["eval_seed"] == SMOKE.eval_seed + rows["episode"]).all()
    expert = rows[rows["model"] == "expert"]
    assert expert["arrived"].all() and (expert["collisions"] == 0).all()  # it solves the turns
    assert (expert["dataset"] == "").all() and (expert["labeler"] == "").all()
    bc = rows[rows["model"] == "bc"]
    assert (bc["labeler"] == "").all()  # BC does not read the safety labels
    assert set(bc["dataset"]) == {
        f"{t}_discrete_{SMOKE.dataset_steps}steps_seed0.h5" for t in TASKS
    }
    assert (rows["train_seconds"][rows["model"] == "bc"] > 0).all()
    for column in ("config", "train", "versions"):
        json.loads(rows[column].iloc[0])
    commit = source_commit()  # each cell records the code it ran (None outside a checkout)
    recorded = {json.loads(v).get("carla-safe-commit") for v in rows["versions"]}
    assert recorded == {commit}
    assert (rows["eval_seconds"] > 0).all()
    # the datasets, their labels, the models and the logs are where the manifest says
    manifest = store.manifest
    assert sorted(map(tuple, manifest["requested"])) == sorted(
        (m, t, 0) for m in MODELS for t in TASKS
    )
    assert sorted(manifest["datasets"]) == sorted(
        f"{t}_discrete_{SMOKE.dataset_steps}steps_seed0.h5" for t in TASKS
    )
    from carla_safe_envs.cards import content_sha256, file_sha256
    from carla_safe_envs.datasets import OfflineDataset

    for name, entry in manifest["datasets"].items():
        assert Path(entry["path"]).is_file() and entry["labels"] is None
        assert entry["sha256"] == file_sha256(entry["path"])
        with OfflineDataset(entry["path"]) as data:
            assert entry["content_sha256"] == content_sha256(data)
        # every cell that trained on it records the hash of its data
        assert set(rows["dataset_sha256"][rows["dataset"] == name]) == {entry["content_sha256"]}
    assert (expert["dataset_sha256"] == "").all()
    for cell in store.finished_cells():
        assert (store.model_dir(cell) / "agent.json").is_file()
        assert "evaluated" in store.log_file(cell).read_text()


def test_resume_after_a_kill_gives_the_same_rows(smoke_run: Path, tmp_path: Path) -> None:
    class KilledAfterFirstCell:
        """The driver dies right after storing its first cell."""

        name = "local"

        def run(self, jobs):
            for result in LocalExecutor().run(jobs):
                yield result
                raise KeyboardInterrupt

    data, task = smoke_run / "datasets", TASKS[:1]  # the datasets of the uninterrupted run
    with pytest.raises(KeyboardInterrupt):
        grid(tmp_path, KilledAfterFirstCell(), data_dir=data, tasks=task)
    store = ResultStore(tmp_path)
    assert store.finished_cells() == [Cell("expert", task[0], 0)]
    half = tmp_path / "cells" / task[0] / "bc" / ".seed-0.parquet.999.tmp"
    half.parent.mkdir(parents=True)
    half.write_text("half a file, as a kill during the write would leave")

    summary = grid(tmp_path, LocalExecutor(), data_dir=data, tasks=task)
    assert summary.already_done == 1 and summary.finished == [str(Cell("bc", task[0], 0))]
    uninterrupted = ResultStore(smoke_run).rows()
    uninterrupted = uninterrupted[uninterrupted["task"] == task[0]]
    pd.testing.assert_frame_equal(identity(ResultStore(tmp_path).rows()), identity(uninterrupted))
    again = grid(tmp_path, LocalExecutor(), data_dir=data, tasks=task)  # nothing left to do
    assert again.finished == [] and again.already_done == len(MODELS)
    assert len(ResultStore(tmp_path).rows()) == len(uninterrupted)


def test_datasets_are_labeled_once_for_models_that_need_labels(
    smoke_run: Path, tmp_path: Path
) -> None:
    from carla_safe_envs.datasets import OfflineDataset

    name = f"{TASKS[0]}_discrete_{SMOKE.dataset_steps}steps_seed0.h5"
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(smoke_run / "datasets" / name, data / name)  # collected, not labeled
    summary = grid(
        tmp_path / "out", LocalExecutor(), data_dir=data, models=("majority",), tasks=TASKS[:1]
    )
    assert summary.failed == {} and summary.labeler.startswith("oracle")
    with OfflineDataset(data / name) as dataset:
        assert dataset.safety_labeler["labeler"] == "oracle" and dataset.safety.shape == (600,)
    store = ResultStore(tmp_path / "out")
    assert store.manifest["datasets"][name]["labels"]["labeler"] == "oracle"
    rows = store.rows()
    assert list(rows["labeler"]) == ["oracle"] and list(rows["dataset"]) == [name]
    stamp = (data / name).stat().st_mtime_ns
    cells = make_cells(SMOKE, models=["majority"], tasks=TASKS[:1], seeds=[1])
    run_grid(
        SMOKE,
        tmp_path / "out",
        cells=cells,
        executor=LocalExecutor(),
        data_dir=data,
        labeler="oracle",
        progress=False,
    )
    assert (data / name).stat().st_mtime_ns == stamp  # reused as it was, labels included
    assert len(ResultStore(tmp_path / "out").rows()) == 2


def test_ray_executor_gives_the_rows_of_the_local_one(smoke_run: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        summary = grid(tmp_path, RayExecutor(), models=("expert",), tasks=TASKS[:1])
    finally:
        ray.shutdown()
    assert summary.failed == {}
    rows = ResultStore(tmp_path).rows()
    assert set(rows["executor"]) == {"ray"}
    local = ResultStore(smoke_run).rows()
    local = local[(local["model"] == "expert") & (local["task"] == TASKS[0])]
    pd.testing.assert_frame_equal(identity(rows), identity(local))
    assert (tmp_path / "models" / TASKS[0] / "expert" / "seed-0" / "agent.json").is_file()
    assert "evaluated" in (tmp_path / "logs" / TASKS[0] / "expert" / "seed-0.log").read_text()


def test_a_failing_cell_is_recorded_and_the_rest_go_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Flaky(MajorityAgent):
        """Fails to train on the first task; drives straight at full throttle elsewhere."""

        def _fit(self, dataset, *, log_dir, progress):
            if self.task_id == TASKS[0]:
                raise RuntimeError("the learner diverged")
            self.action = 12  # acc +2 m/s^2, no steering
            return {"steps": 0}

    class FlakySpec(AgentSpec):
        def load_class(self):
            return Flaky

    spec = FlakySpec("majority", "tests:Flaky", "none", "discrete", label="Maj.")
    ghost = AgentSpec("ghost", "baselines.ghost:Ghost", "none", "discrete")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(AGENTS, "majority", spec)
        patch.setitem(AGENTS, "ghost", ghost)
        summary = grid(tmp_path, LocalExecutor(), models=("ghost", "majority"))
    broken, missing = Cell("majority", TASKS[0], 0), Cell("ghost", TASKS[0], 0)
    assert set(summary.failed) == {str(broken), str(missing), str(Cell("ghost", TASKS[1], 0))}
    assert "the learner diverged" in summary.failed[str(broken)]
    assert "not available" in summary.failed[str(missing)]
    store = ResultStore(tmp_path)
    assert store.finished_cells() == [Cell("majority", TASKS[1], 0)]  # ran after the failure
    assert set(store.failures()) == {
        Cell(m, t, 0) for m in ("majority", "ghost") for t in TASKS
    } - {Cell("majority", TASKS[1], 0)}
    assert "Traceback" in store.log_file(broken).read_text()
    assert "the learner diverged" in store.failures()[broken]["error"]
    # one line per cell as it ends: its result or error, and the ETA of the rest
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    assert re.fullmatch(
        rf"\[1/2\] {re.escape(str(broken))}: failed: .*the learner diverged; ETA \d+ s", lines[0]
    )
    ran = re.escape(str(Cell("majority", TASKS[1], 0)))
    number = r"-?\d+\.\d+"
    assert re.fullmatch(
        rf"\[2/2\] {ran}: Return {number}, Cost {number}, AR {number}, CR {number} \(\d+ s\)",
        lines[1],
    ), lines


def test_a_saved_agent_is_reused_only_when_identical(tmp_path: Path) -> None:
    agent = make_agent("expert", TASKS[0], preset="debug", seed=3)
    agent.save(tmp_path / "model")
    assert _saved_agent_matches(tmp_path / "model", agent)
    assert not _saved_agent_matches(tmp_path / "model", make_agent("expert", TASKS[0], seed=4))
    assert not _saved_agent_matches(tmp_path / "missing", agent)


# ---------------------------------------------------------------------------- shifts
@pytest.fixture(scope="module")
def shifted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`benchmarks run` of the expert on one task, also evaluated under the density shift."""
    out = tmp_path_factory.mktemp("shifted")
    argv = ["run", "--preset", "smoke", "--models", "expert", "--tasks", TASKS[0]]
    assert main([*argv, "--shift", "density", "--out", str(out), "--no-progress"]) == 0
    return out


def test_shifted_evaluations_are_extra_rows_of_the_cell(shifted_run: Path) -> None:
    from benchmarks.train import evaluate_agent

    store = ResultStore(shifted_run)
    assert store.manifest["protocol"]["shifts"] == ["density"]
    assert store.finished_cells() == [Cell("expert", TASKS[0], 0)]  # one cell, one file
    rows = store.rows()
    assert list(rows["condition"]) == ["train", "density=low", "density=high"]
    assert (rows["eval_seed"] == SMOKE.eval_seed).all() and (rows["episode"] == 0).all()
    assert (rows["eval_seconds"] > 0).all()
    # each row's episode is the agent's on its condition's env, on the same reset seeds
    agent = make_agent("expert", TASKS[0], preset="debug", seed=0)
    for condition, options in [
        ("train", {}),
        ("density=low", {"density": "low"}),
        ("density=high", {"density": "high"}),
    ]:
        (expected,) = evaluate_agent(agent, episodes=1, seed=SMOKE.eval_seed, options=options)
        row = rows[rows["condition"] == condition].iloc[0]
        assert {k: row[k] for k in METRIC_FIELDS} == dataclasses.asdict(expected), condition
    assert len(set(rows["cost"])) == 3  # the three densities drive differently
    log = store.log_file(Cell("expert", TASKS[0], 0)).read_text()
    assert "evaluated (density=high)" in log


def test_shifted_rows_leave_the_main_table_alone(shifted_run: Path, tmp_path: Path) -> None:
    from benchmarks.table import write_outputs

    plain = tmp_path / "plain"
    shutil.copytree(shifted_run, plain)
    (plain / "table-generalize.md").unlink()
    for file in (plain / "cells").rglob("*.parquet"):
        frame = pd.read_parquet(file)
        frame[frame["condition"] == "train"].to_parquet(file, index=False)
    _, written = write_outputs(plain, plots=False)
    assert "table-generalize.md" not in {p.name for p in written}
    for name in ("table.md", "table.csv", "table.tex"):  # as `run` wrote them with the shifts
        assert (plain / name).read_text() == (shifted_run / name).read_text()
    lines = (shifted_run / "table-generalize.md").read_text().splitlines()
    assert lines[0].startswith("carla-safe generalization, preset 'smoke', shifts density")
    body = [line.split(" | ")[:4] for line in lines[4:]]
    assert body == [
        ["| Left Turn", "Expert", condition, "1"]
        for condition in ("train", "density=low", "density=high")
    ]


def test_bad_shifts(shifted_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(
        GridError, match=r"shifts must be distinct names of density, town.*'weather'"
    ):
        dataclasses.replace(SMOKE, shifts=("weather",))
    with pytest.raises(GridError, match="distinct"):
        dataclasses.replace(SMOKE, shifts=("town", "town"))
    argv = ["run", "--preset", "smoke", "--models", "expert", "--no-table", "--no-progress"]
    assert main([*argv, "--out", "x", "--shift", "weather"]) == 2
    assert "density, town; got ['weather'] ('weather' unknown)" in capsys.readouterr().err
    assert main([*argv, "--tasks", TASKS[0], "--out", str(shifted_run)]) == 2  # stored: density
    assert "rerun with `--shift density` as stored" in capsys.readouterr().err
    assert PRESETS["cpu"].shifts == ("density",) and SMOKE.shifts == ()


# ---------------------------------------------------------------------------- bad input
def test_unknown_models_tasks_presets_and_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(GridError, match="unknown model.*'nope'.*ppo.*vlsafe"):
        make_cells(SMOKE, models=["nope"])
    with pytest.raises(GridError, match="unknown task.*CarlaParking-v0.*CarlaFourLane-v0"):
        make_cells(SMOKE, tasks=["CarlaParking-v0"])
    with pytest.raises(GridError, match="unknown preset 'huge'.*smoke, small, cpu, cpu-paper, paper"):
        get_preset("huge")
    with pytest.raises(GridError, match="non-negative"):
        make_cells(SMOKE, seeds=[-1])
    with pytest.raises(GridError, match="unknown agent preset"):
        GridPreset(name="x", agent_preset="huge", seeds=(0,), episodes=1)
    assert main(["run", "--preset", "smoke", "--out", "x", "--models", "nope", "--no-table"]) == 2
    assert "unknown model(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "--preset", "huge", "--out", "x"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_result_directories_that_cannot_be_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"format": "carla-safe/results-v0"}))
    argv = ["--preset", "smoke", "--models", "expert", "--no-table", "--no-progress"]
    assert main(["run", "--out", str(old), *argv]) == 2
    assert "incompatible result store (format 'carla-safe/results-v0')" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and is not a benchmark result directory"):
        ResultStore.open_or_create(other, SMOKE.protocol())
    small = tmp_path / "small"
    ResultStore.open_or_create(small, PRESETS["small"].protocol())
    with pytest.raises(StoreError, match="another protocol.*agent_preset.*--preset small"):
        ResultStore.open_or_create(small, SMOKE.protocol())
    store = ResultStore(small)
    with store.lock(), pytest.raises(StoreError, match="another `benchmarks run` is writing"):
        with ResultStore(small).lock():
            pass
    rows = [{"store_format": STORE_FORMAT}]
    with pytest.raises(StoreError, match="lack the columns"):
        store.write_cell(Cell("expert", TASKS[0], 0), rows)


def test_labeler_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.prepare as prepare

    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"weights")
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "find_clip_weights", lambda: (None, ["the test's nowhere"]))
        auto = resolve_labeler("auto")
        assert auto.name == "oracle" and "no CLIP weights" in auto.reason
        assert "the test's nowhere" in auto.reason
        with pytest.raises(GridError, match="no CLIP ViT-B-32 weights.*--labeler oracle"):
            resolve_labeler("clip")
        chosen = resolve_labeler("auto", checkpoint=weights)
        assert chosen.name == "clip" and chosen.options["checkpoint"] == str(weights)
    monkeypatch.setenv(prepare.CLIP_CHECKPOINT_ENV, str(weights))  # found without a search
    assert prepare.find_clip_weights()[0] == weights
    assert resolve_labeler("auto").options["checkpoint"] == str(weights)
    assert resolve_labeler("oracle").name == "oracle"


def test_job_is_picklable() -> None:
    import pickle

    job = Job(Cell("expert", TASKS[0], 0), "debug", 1, 0, None, "", "m", "l")
    assert pickle.loads(pickle.dumps(job)) == job


@pytest.mark.parametrize("grid", list(PRESETS))
def test_grid_budgets_are_valid_agent_configs(grid: str) -> None:
    preset = PRESETS[grid]
    assert set(preset.agent_config) <= set(TABLE_MODELS)
    for model, overrides in preset.agent_config.items():
        agent = make_agent(model, "CarlaLeftTurn-v0", preset=preset.agent_preset, config=overrides)
        for key, value in overrides.items():
            assert getattr(agent.config, key) == value


def test_a_cell_is_made_with_the_grid_budget(tmp_path: Path) -> None:
    budget = {"noise": 0.25}
    job = Job(
        cell=Cell("expert", "CarlaLeftTurn-v0", 0),
        agent_preset="debug",
        episodes=1,
        eval_seed=0,
        dataset=None,
        labeler="",
        model_dir=str(tmp_path / "model"),
        log_file=str(tmp_path / "log.txt"),
        config=budget,
    )
    results = list(LocalExecutor(workers=1).run([job]))
    assert len(results) == 1
    saved = json.loads((tmp_path / "model" / "agent.json").read_text())
    assert saved["config"]["noise"] == 0.25


def test_a_dataset_of_other_env_options_is_not_reused(smoke_run: Path, tmp_path: Path) -> None:
    """A dataset collected without ``speed_cue`` cannot feed a grid that draws the cue."""
    from benchmarks.grid import DatasetKey
    from benchmarks.prepare import DatasetFailure, PreparedDataset, prepare_datasets

    key = DatasetKey(TASKS[0], "discrete", SMOKE.dataset_steps, 0)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(smoke_run / "datasets" / key.filename, data / key.filename)
    same = prepare_datasets([key], data, preset=SMOKE, progress=False)[key]
    assert isinstance(same, PreparedDataset)  # the same options: reused
    cued = dataclasses.replace(SMOKE, env_kwargs={TASKS[0]: {"speed_cue": True}})
    failed = prepare_datasets([key], data, preset=cued, progress=False)[key]
    assert isinstance(failed, DatasetFailure)
    assert "env options {}, not" in failed.error and "{'speed_cue': True}" in failed.error


def test_durations_and_progress_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from carla_safe_envs.progress import _StderrProgress, format_duration, write_line

    assert [format_duration(x) for x in (0.4, 59.4, 90, 3000, 3599, 11_100)] == [
        "0 s",
        "59 s",
        "2 min",
        "50 min",
        "1 h 00 min",
        "3 h 05 min",
    ]
    counter = _StderrProgress(3, "grid")
    counter.update()
    write_line(counter, "[1/3] a cell")  # on a line of its own, not after the counter
    write_line(None, "[2/3] another")
    assert capsys.readouterr().err == "\rgrid: 1/3\n[1/3] a cell\n[2/3] another\n"


# ---------------------------------------------------------------------------- variants
def test_variants_expand_only_the_models_they_change() -> None:
    from benchmarks.grid import ABLATION_VARIANTS, DEFAULT_VARIANT, VARIANTS, Variant

    ablation = get_preset("cpu-paper-ablation")
    assert ablation.variants == ABLATION_VARIANTS and set(ABLATION_VARIANTS) <= set(VARIANTS)
    cells = make_cells(ablation, models=["vlsafe", "bc"])
    by_variant = {v: [c for c in cells if c.variant == v] for v in {c.variant for c in cells}}
    assert set(by_variant) == {DEFAULT_VARIANT, *ABLATION_VARIANTS}
    assert len(by_variant[DEFAULT_VARIANT]) == 2 * 4 * 3  # both models, 4 tasks, 3 seeds
    for name in ABLATION_VARIANTS:  # VL-SAFE only: BC reads no p(s) and has no weighting
        assert {c.model for c in by_variant[name]} == {"vlsafe"} and len(by_variant[name]) == 12
    assert len(make_cells(ablation, models=["vlsafe"])) == 84  # the issue's ~70 cells + main
    # the ablation is the cpu grid's protocol but for its name and the shifts it leaves out
    cpu, ours = get_preset("cpu").protocol(), ablation.protocol()
    assert {k for k in cpu if cpu[k] != ours[k]} == {"name", "shifts", "dataset_mix"}
    assert "variants" not in ours  # recorded per variant in the store instead
    # a default cell keeps its path and name; a variant's sits beside it
    plain, variant = Cell("vlsafe", TASKS[0], 2), Cell("vlsafe", TASKS[0], 2, "frame")
    assert plain == Cell("vlsafe", TASKS[0], 2, DEFAULT_VARIANT) and plain.model_key == "vlsafe"
    assert plain.key == f"{TASKS[0]}/vlsafe/seed-2" and str(plain) == f"vlsafe {TASKS[0]} seed 2"
    assert variant.key == f"{TASKS[0]}/vlsafe@frame/seed-2"
    assert str(variant) == f"vlsafe [frame] {TASKS[0]} seed 2"
    assert make_cells(SMOKE, models=["bc"]) == make_cells(
        SMOKE, models=["bc"], variants=["default"]
    )
    with pytest.raises(GridError, match="variant 'frame' changes none of the models"):
        make_cells(SMOKE, models=["bc"], variants=["default", "frame"])
    with pytest.raises(GridError, match="unknown variant 'nope'; choose 'default' or one of: "):
        make_cells(SMOKE, models=["vlsafe"], variants=["nope"])
    with pytest.raises(GridError, match="changes nothing"):
        Variant("idle")
    with pytest.raises(GridError, match="lower-case"):
        Variant("Frame Labels", labels="frame")
    with pytest.raises(GridError, match="unknown label source 'clip'"):
        Variant("clip", labels="clip")
    with pytest.raises(GridError, match="leave out 'default'"):
        dataclasses.replace(SMOKE, variants=("default",))
    with pytest.raises(GridError, match="unknown variant"):
        dataclasses.replace(SMOKE, variants=("nope",))


def test_a_config_variant_goes_on_top_of_the_grid_budget() -> None:
    from benchmarks.grid import cell_config, cell_label_source

    preset = dataclasses.replace(SMOKE, agent_config={"vlsafe": {"updates": 7}})
    plain, beta0 = Cell("vlsafe", TASKS[0], 0), Cell("vlsafe", TASKS[0], 0, "beta-0")
    assert cell_config(plain, preset) == {"updates": 7}
    config = cell_config(beta0, preset)
    assert config == {"updates": 7, "weighted_actor.beta_r": 0.0, "weighted_actor.beta_c": 0.0}
    agent = make_agent("vlsafe", TASKS[0], preset="debug", config=config)
    assert agent.config.updates == 7
    assert (agent.config.weighted_actor.beta_r, agent.config.weighted_actor.beta_c) == (0.0, 0.0)
    assert cell_label_source(beta0) is None and cell_label_source(plain) is None
    assert cell_label_source(Cell("vlsafe", TASKS[0], 0, "noisy-0.3")) == "noisy:0.3"


@pytest.fixture(scope="module")
def variant_run(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``majority`` (it counts the states labeled safe) on one task under four label
    variants, on a copy of the smoke grid's dataset."""
    out = tmp_path_factory.mktemp("variants")
    name = f"{TASKS[0]}_discrete_{SMOKE.dataset_steps}steps_seed0.h5"
    (out / "data").mkdir()
    shutil.copy(smoke_run / "datasets" / name, out / "data" / name)
    with pytest.MonkeyPatch.context() as patch:  # module scope: before the autouse fixture
        patch.setitem(AGENTS, "majority", MAJORITY)
        cells = make_cells(
            SMOKE,
            models=["majority"],
            tasks=TASKS[:1],
            seeds=[0, 1],
            variants=["default", "constant-1", "constant-0", "shuffled"],
        )
        summary = run_grid(
            SMOKE,
            out / "store",
            cells=cells,
            executor=LocalExecutor(),
            data_dir=out / "data",
            labeler="oracle",
            progress=False,
        )
    assert summary.failed == {} and len(summary.finished) == 8
    return out


def test_a_label_variant_trains_on_its_labels(variant_run: Path) -> None:
    from carla_safe_envs.datasets import OfflineDataset
    from vlsafe.label_sources import label_digest, parse_label_source

    name = f"{TASKS[0]}_discrete_{SMOKE.dataset_steps}steps_seed0.h5"
    path = variant_run / "data" / name
    with OfflineDataset(path) as data:
        oracle = data.safety
        shuffled = {s: parse_label_source("shuffled").labels(data, s) for s in (0, 1)}
    store = ResultStore(variant_run / "store")
    rows = store.rows()
    steps = {
        (r.variant, r.seed): json.loads(r.train)["steps"] for r in rows.itertuples(index=False)
    }
    safe = int((oracle >= 0.5).sum())
    assert 0 < safe < SMOKE.dataset_steps
    for seed in (0, 1):  # the count of states labeled safe that majority trained on
        assert steps[("default", seed)] == safe
        assert steps[("constant-1", seed)] == SMOKE.dataset_steps
        assert steps[("constant-0", seed)] == 0
        assert steps[("shuffled", seed)] == safe  # a permutation keeps the count
    labelers = {(r.variant, r.seed): r.labeler for r in rows.itertuples(index=False)}
    assert labelers[("default", 0)] == "oracle" and labelers[("constant-1", 0)] == "constant:1"
    assert labelers[("shuffled", 1)] == "shuffled seed=1"
    train = json.loads(rows[rows["variant"] == "shuffled"]["train"].iloc[0])
    assert train["dataset"] == str(path) and train["labels"]["source"] == "shuffled"
    # the manifest: each variant's definition and each label cell's labels, by fingerprint
    manifest = store.manifest
    assert manifest["variants"]["constant-0"] == {"config": {}, "labels": "constant:0"}
    assert "default" not in manifest["variants"]
    records = manifest["variant_labels"]
    assert records[f"{TASKS[0]}/majority@shuffled/seed-1"]["sha256"] == label_digest(shuffled[1])
    assert records[f"{TASKS[0]}/majority@shuffled/seed-0"]["seed"] == 0
    assert records[f"{TASKS[0]}/majority@constant-1/seed-0"]["mean"] == 1.0
    assert len(records) == 6 and all(r["dataset"] == name for r in records.values())
    # the shared dataset keeps its own labels; default cells keep their paths
    with OfflineDataset(path) as data:
        np.testing.assert_array_equal(data.safety, oracle)
    assert (variant_run / "store" / "cells" / TASKS[0] / "majority" / "seed-0.parquet").is_file()
    plain = [entry for entry in manifest["requested"] if len(entry) == 3]  # as before variants
    assert plain == [["majority", TASKS[0], 0], ["majority", TASKS[0], 1]]
    assert ["majority", TASKS[0], 1, "shuffled"] in manifest["requested"]
    assert set(store.finished_cells()) == set(store.requested())
    assert len(store.requested()) == 8


def test_variant_rows_are_rows_of_their_own_in_the_table(variant_run: Path) -> None:
    from benchmarks.table import format_markdown, summarize

    table = summarize(variant_run / "store", reps=200)
    variants = ["majority@constant-1", "majority@constant-0", "majority@shuffled"]
    assert table.models[-4:] == ["majority", *variants]  # after their model, registry order
    for key in ["majority", *variants]:
        cell = table.cells[(TASKS[0], key)]
        assert cell.status == "ok" and cell.seeds == [0, 1] and cell.published is None
    assert table.cells[(TASKS[0], "majority@constant-0")].label == "Maj. [constant-0]"
    assert "| Maj. [shuffled] |" in format_markdown(table)


def test_a_variant_run_resumes_and_regenerates_bit_for_bit(
    variant_run: Path, tmp_path: Path
) -> None:
    cells = make_cells(
        SMOKE, models=["majority"], tasks=TASKS[:1], seeds=[0, 1], variants=["shuffled"]
    )
    again = run_grid(
        SMOKE,
        variant_run / "store",
        cells=cells,
        executor=LocalExecutor(),
        data_dir=variant_run / "data",
        labeler="oracle",
        progress=False,
    )
    assert again.finished == [] and again.already_done == 2
    fresh = run_grid(
        SMOKE,
        tmp_path,
        cells=cells,
        executor=LocalExecutor(),
        data_dir=variant_run / "data",
        labeler="oracle",
        progress=False,
    )
    assert fresh.failed == {}
    old = ResultStore(variant_run / "store")
    new = ResultStore(tmp_path)
    stored = old.rows()
    stored = stored[stored["variant"] == "shuffled"]
    columns = [*IDENTITY, "variant", "labeler"]
    pd.testing.assert_frame_equal(
        new.rows()[columns].sort_values(columns[:4]).reset_index(drop=True),
        stored[columns].sort_values(columns[:4]).reset_index(drop=True),
    )
    assert new.manifest["variant_labels"] == {
        k: v for k, v in old.manifest["variant_labels"].items() if "@shuffled" in k
    }


def test_a_variant_cannot_be_redefined_in_a_store(variant_run: Path) -> None:
    store = ResultStore(variant_run / "store")
    with pytest.raises(StoreError, match=r"variant\(s\) \['shuffled'\] defined otherwise"):
        store.record_variants({"shuffled": {"config": {}, "labels": "noisy:0.5"}})
    store.record_variants({"shuffled": {"config": {}, "labels": "shuffled"}})  # as stored


def test_run_variants_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--preset", "smoke", "--out", str(tmp_path), "--models", "bc"]
    assert main([*argv, "--variants", "frame"]) == 2
    assert "variant 'frame' changes none of the models ['bc']" in capsys.readouterr().err
    assert main([*argv, "--variants", "bogus"]) == 2
    assert "unknown variant 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()  # refused before anything was written
