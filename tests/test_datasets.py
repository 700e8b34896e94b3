"""Offline datasets: collection, the HDF5 schema, the lazy reader, the Minari export."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from benchmarks.__main__ import main  # noqa: E402
from carla_safe_envs import collection, datasets  # noqa: E402
from carla_safe_envs.collection import collect  # noqa: E402
from carla_safe_envs.datasets import SCHEMA, DatasetError, OfflineDataset  # noqa: E402

TASK = "CarlaLeftTurn-v0"
STEPS = 300
NOISE = (0.1, 0.3)  # short noisy episodes: several episodes in a few hundred steps


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "left.h5"
    return collect(TASK, STEPS, out, seed=3, noise=NOISE, progress=False)


@pytest.fixture()
def data(dataset_path: Path):
    with OfflineDataset(dataset_path) as dataset:
        yield dataset


def test_schema_shapes_and_dtypes(dataset_path: Path) -> None:
    with h5py.File(dataset_path, "r") as file:
        assert file.attrs["schema"] == SCHEMA and file.attrs["complete"]
        assert file.attrs["task"] == TASK and file.attrs["seed"] == 3
        assert list(file.attrs["noise_levels"]) == list(NOISE)
        assert json.loads(file.attrs["env_kwargs"]) == {}
        assert int(file.attrs["n_steps"]) == STEPS
        obs = file["observations"]
        assert obs.shape == (STEPS, 128, 128, 3) and obs.dtype == np.uint8
        assert obs.compression is not None and obs.chunks[0] == collection.CHUNK_FRAMES
        assert file["actions"].shape == (STEPS,) and file["actions"].dtype == np.int64
        for name in ("rewards", "costs", "noise"):
            assert file[name].shape == (STEPS,) and file[name].dtype == np.float32
        for name in ("terminals", "timeouts"):
            assert file[name].dtype == bool
        assert file["episode_ids"].dtype == np.int32
        for key in datasets.INFO_KEYS:
            assert file[f"infos/{key}"].shape == (STEPS,)
        assert set(file["infos/cost_terms"]) == {"collision", "out_of_lane", "off_road", "ttc"}
        assert "waypoint" in file["infos/reward_terms"]


def test_episodes_are_whole_and_end_in_terminal_or_timeout(data: OfflineDataset) -> None:
    bounds = data.episode_bounds()
    assert len(bounds) == data.n_episodes >= 2
    assert bounds[0, 0] == 0 and bounds[-1, 1] == data.n_steps
    ends = bounds[:, 1] - 1
    assert (data.terminals[ends] | data.timeouts[ends]).all()
    inner = np.setdiff1d(np.arange(data.n_steps), ends)
    assert not (data.terminals[inner] | data.timeouts[inner]).any()
    assert data.timeouts[-1]  # cut at the budget
    assert list(np.unique(data.episode_ids)) == list(range(data.n_episodes))
    for k, (a, b) in enumerate(bounds):
        assert (data.noise[a:b] == NOISE[k % len(NOISE)]).all()
    assert data.costs.sum() > 0 and data.signal("cost_terms/out_of_lane").sum() > 0


def test_stored_steps_replay_in_the_env(data: OfflineDataset) -> None:
    """Re-driving the stored actions gives the stored frames, rewards, costs and ends."""
    import carla_safe_envs  # noqa: F401

    env = gym.make(TASK, render_observation=True)
    for k, (a, b) in enumerate(data.episode_bounds()[:2]):
        obs, _ = env.reset(seed=3 + k)
        for i in range(a, b):
            assert np.array_equal(obs, data.frames([i])[0])
            obs, reward, terminated, truncated, info = env.step(int(data.actions[i]))
            assert reward == pytest.approx(data.rewards[i], rel=1e-6, abs=1e-6)
            assert info["cost"] == data.costs[i]
            assert terminated == data.terminals[i]
            assert info["collision"] == data.signal("collision")[i]
    env.close()


class _FailingEnv(gym.Wrapper):
    def __init__(self, env: gym.Env, fail_at: int) -> None:
        super().__init__(env)
        self.count, self.fail_at = 0, fail_at

    def step(self, action):
        self.count += 1
        if self.count >= self.fail_at:
            raise KeyboardInterrupt
        return self.env.step(action)


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_collection_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    make_env = collection._make_env
    monkeypatch.setattr(collection, "_make_env", lambda *a: _FailingEnv(make_env(*a), 40))
    out = tmp_path / "x.h5"
    if existing:
        out.write_bytes(b"previous content")
    with pytest.raises(KeyboardInterrupt):
        collect(TASK, 100, out, progress=False, overwrite=existing)
    assert not datasets.partial_path(out).exists()
    if existing:
        assert out.read_bytes() == b"previous content"
    else:
        assert not out.exists()


def test_refuses_to_overwrite(dataset_path: Path) -> None:
    with pytest.raises(FileExistsError, match="overwrite"):
        collect(TASK, 10, dataset_path, progress=False)


def test_two_workers_equal_one(tmp_path: Path, dataset_path: Path) -> None:
    out = collect(TASK, STEPS, tmp_path / "w2.h5", seed=3, noise=NOISE, workers=2, progress=False)
    with h5py.File(dataset_path, "r") as one, h5py.File(out, "r") as two:
        names: list[str] = []
        one.visititems(lambda name, obj: names.append(name) if hasattr(obj, "shape") else None)
        assert names
        for name in names:
            assert np.array_equal(one[name][()], two[name][()]), name


def test_frames_in_requested_order(data: OfflineDataset) -> None:
    frames = data.frames([5, 2, 5])
    assert frames.shape == (3, 128, 128, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[0], frames[2])
    starts = [start for start, _ in data.iter_frames(128)]
    assert starts == [0, 128, 256]
    with pytest.raises(IndexError):
        data.frames([STEPS])


def test_frames_loaded_at_a_lower_resolution_serve_every_reader(data: OfflineDataset) -> None:
    from carla_safe_envs.bev import downsample

    full = data.frames(np.arange(data.n_steps))
    window = data.sample_sequences(3, 8, np.random.default_rng(2))
    assert data.frame_size == 128
    assert data.load_frames(64) is data and data.frame_size == 64
    np.testing.assert_array_equal(data.frames([7, 3]), downsample(full[[7, 3]], 64))
    small = data.sample_sequences(3, 8, np.random.default_rng(2))  # the same windows
    np.testing.assert_array_equal(small.observations, downsample(window.observations, 64))
    np.testing.assert_array_equal(small.rewards, window.rewards)
    assert data.sample_transitions(4, np.random.default_rng(0)).observations.shape == (
        4,
        64,
        64,
        3,
    )
    assert next(data.iter_frames(16))[1].shape == (16, 64, 64, 3)


def test_transitions_next_observation_is_next_step_of_same_episode(data: OfflineDataset) -> None:
    rng = np.random.default_rng(0)
    batch = data.sample_transitions(32, rng)
    assert batch.observations.shape == (32, 128, 128, 3)
    assert batch.next_observations.shape == (32, 128, 128, 3)
    rng = np.random.default_rng(0)
    indices = rng.integers(data.n_steps, size=32)
    ends = set((data.episode_bounds()[:, 1] - 1).tolist())
    for j, i in enumerate(indices):
        expected = i if i in ends else i + 1
        assert np.array_equal(batch.next_observations[j], data.frames([expected])[0])
        assert batch.actions[j] == data.actions[i] and batch.costs[j] == data.costs[i]


def test_sequences_never_cross_episodes(data: OfflineDataset) -> None:
    lengths = np.diff(data.episode_bounds(), axis=1).ravel()
    length = int(lengths.min()) + 1 if lengths.min() < lengths.max() else int(lengths.min())
    batch = data.sample_sequences(16, length, np.random.default_rng(1))
    assert batch.observations.shape == (16, length, 128, 128, 3)
    assert batch.actions.shape == (16, length) and batch.safety is None
    assert not batch.is_first[:, 1:].any()
    # a window's rewards match a contiguous run of one episode
    for row in range(16):
        starts = data.sequence_starts(length)
        matches = [
            s for s in starts if np.array_equal(data.rewards[s : s + length], batch.rewards[row])
        ]
        assert matches
        assert not (data.terminals[matches[0] : matches[0] + length - 1]).any()
    with pytest.raises(ValueError, match="no episode"):
        data.sample_sequences(2, int(lengths.max()) + 1, np.random.default_rng(0))


def test_future_cost_matches_a_direct_loop(data: OfflineDataset) -> None:
    k = 10
    costs, ids = data.costs, data.episode_ids
    expected = np.zeros(data.n_steps, dtype=np.float32)
    for t in range(data.n_steps):
        window = [costs[u] for u in range(t + 1, min(t + k + 1, data.n_steps)) if ids[u] == ids[t]]
        expected[t] = max(window, default=0.0)
    assert np.array_equal(data.future_cost(k), expected)


def test_write_column_round_trip_and_interrupted_write(
    tmp_path: Path, dataset_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "copy.h5"
    path.write_bytes(dataset_path.read_bytes())
    values = np.linspace(0, 1, STEPS, dtype=np.float32)
    OfflineDataset.write_column(path, "safety", values, {"labeler": "oracle"})
    with OfflineDataset(path) as data:
        assert np.array_equal(data.safety, values)
        assert data.safety_labeler == {"labeler": "oracle"}
        assert data.sample_sequences(2, 5, np.random.default_rng(0)).safety.shape == (2, 5)
        rewards = data.rewards.copy()

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    with pytest.raises(KeyboardInterrupt):
        datasets.write_column(path, "safety", 1 - values, {"labeler": "clip"})
    monkeypatch.undo()
    with OfflineDataset(path) as data:
        assert np.array_equal(data.safety, values)
        assert data.safety_labeler == {"labeler": "oracle"}
        assert np.array_equal(data.rewards, rewards)
    datasets.write_column(path, "safety", 1 - values, {"labeler": "clip"})  # replaces
    with OfflineDataset(path) as data:
        assert np.array_equal(data.safety, 1 - values)
    with pytest.raises(ValueError, match="shape"):
        datasets.write_column(path, "safety", values[:10])
    with pytest.raises(ValueError, match="reserved"):
        datasets.write_column(path, "costs", values)


def test_minari_round_trip(tmp_path: Path, data: OfflineDataset) -> None:
    minari = pytest.importorskip("minari")
    exported = data.to_minari("carla-safe/leftturn-test-v0", path=tmp_path)
    assert exported.total_steps == data.n_steps
    assert exported.total_episodes == data.n_episodes
    episode = next(exported.iterate_episodes([0]))
    a, b = data.episode_bounds()[0]
    assert np.array_equal(episode.actions, data.actions[a:b])
    assert np.array_equal(episode.infos["cost"][1:], data.costs[a:b])
    assert np.array_equal(episode.observations[0], data.frames([0])[0])
    assert minari is not None


def test_bad_files_raise_clear_errors(tmp_path: Path, dataset_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="collect"):
        OfflineDataset(tmp_path / "missing.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        OfflineDataset(text)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(dataset_path.read_bytes()[:5000])
    with pytest.raises(DatasetError, match="not a readable HDF5"):
        OfflineDataset(truncated)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as file:
        file.attrs["schema"] = "d4rl"
    with pytest.raises(DatasetError, match="schema 'd4rl'"):
        OfflineDataset(other)
    incomplete = tmp_path / "incomplete.h5"
    with h5py.File(incomplete, "w") as file:
        file.attrs["schema"] = SCHEMA
    with pytest.raises(DatasetError, match="incomplete"):
        OfflineDataset(incomplete)


def test_collect_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.h5"
    argv = ["collect", "--task", TASK, "--steps", "60", "--out", str(out), "--noise", "0.3"]
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 60 and summary["episodes"] >= 1
    assert {"collision_episodes", "steps_with_cost", "file_mb", "steps_per_second"} <= set(summary)
    with pytest.raises(FileExistsError):
        main(argv)
    assert main([*argv, "--overwrite"]) == 0
