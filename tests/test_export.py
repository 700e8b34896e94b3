"""Exports read by the field's own loaders: DSRL's contract, Minari and d3rlpy for real.

DSRL (``dsrl`` 0.1.0) cannot be installed beside carla-safe (it pins gymnasium 0.28.1 and
pulls bullet-safety-gym and safety-gymnasium), so the DSRL file is checked against what DSRL's
``OfflineEnv.get_dataset`` does: read every key of the file recursively, assert the seven
keys, compare observation and action shapes with the env the file names
(:func:`carla_safe_envs.export.check_dsrl`).  Minari and d3rlpy load their exports with the
real libraries.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import main
from carla_safe_envs.datasets import DatasetError, OfflineDataset
from carla_safe_envs.export import (
    DSRL_KEYS,
    ExportView,
    check_dsrl,
    export_env_spec,
    make_export_env,
    next_indices,
    reset_infos,
    write_dsrl,
)

TASK = "CarlaLeftTurn-v0"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 150-step Left Turn dataset (two episodes), a safety column written beside."""
    pytest.importorskip("h5py")
    from carla_safe_envs.collection import collect

    out = tmp_path_factory.mktemp("export") / "left.h5"
    collect(
        TASK, 150, out, seed=1, noise=(0.3,), env_kwargs={"difficulty": "medium"}, progress=False
    )
    OfflineDataset.write_column(out, "safety", np.linspace(0, 1, 150), {"labeler": "test"})
    return out


def read_like_dsrl(path: Path) -> dict[str, np.ndarray]:
    """What DSRL's ``get_dataset`` reads: every dataset of the file, nested names joined by /."""
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as file:
        file.visititems(
            lambda name, obj: out.update({name: obj[()]}) if hasattr(obj, "shape") else None
        )
    return out


def test_dsrl_file_passes_dsrl_checks_against_the_env_it_names(
    source: Path, tmp_path: Path
) -> None:
    import h5py

    view = ExportView(image_size=16, flatten=True, action_mode="continuous")
    out = write_dsrl(OfflineDataset(source), tmp_path / "left-dsrl.h5", view)
    arrays = read_like_dsrl(out)
    with h5py.File(out, "r") as file:
        spec_json = file.attrs["env_spec"]
    env = make_export_env(spec_json, render_observation=False)
    assert env.observation_space.shape == (16 * 16 * 3,)
    assert env.action_space.shape == (2,)
    assert env.unwrapped.action_mode == "continuous"
    assert env.spec.kwargs["difficulty"] == "medium"  # every env option travels
    check_dsrl(arrays, env)
    assert set(DSRL_KEYS) <= set(arrays)
    with OfflineDataset(source) as data:
        ends = np.r_[data.episode_ids[1:] != data.episode_ids[:-1], True]
        assert ends.sum() == data.n_episodes == 2
        # next_observations: the next row inside an episode, never the next episode's first
        obs, nxt = arrays["observations"], arrays["next_observations"]
        np.testing.assert_array_equal(nxt[~ends], obs[1:][~ends[:-1]])
        np.testing.assert_array_equal(nxt[ends], obs[ends])
        assert np.array_equal(next_indices(data)[ends], np.flatnonzero(ends))
        # the env's own observation of the first state is the exported first row
        reset_obs, _ = make_export_env(spec_json).reset(seed=1)
        np.testing.assert_array_equal(reset_obs, obs[0])
        np.testing.assert_allclose(arrays["costs"], data.costs)
        np.testing.assert_array_equal(arrays["terminals"], data.terminals.astype(np.float32))
        np.testing.assert_array_equal(arrays["safety"], data.column("safety"))
        np.testing.assert_array_equal(arrays["infos/ttc"], data.signal("ttc"))
        assert arrays["episode_ids"].shape == (150,)


def test_dsrl_checks_fail_as_dsrl_does(source: Path) -> None:
    from carla_safe_envs.export import dsrl_arrays

    with OfflineDataset(source) as data:
        arrays = dsrl_arrays(data, ExportView(image_size=32), extras=False)
        env = make_export_env(export_env_spec(data, ExportView(image_size=32)).to_json())
        check_dsrl(arrays, env)  # the 32 px view fits its own env
        with pytest.raises(DatasetError, match="missing key next_observations"):
            check_dsrl({k: v for k, v in arrays.items() if k != "next_observations"}, env)
        full = make_export_env(export_env_spec(data).to_json())
        with pytest.raises(DatasetError, match="Observation shape does not match"):
            check_dsrl(arrays, full)
        with pytest.raises(ValueError, match="divide 128"):
            ExportView(image_size=48)


def test_minari_recovers_the_env_of_the_data_with_real_reset_infos(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    minari = pytest.importorskip("minari")
    with OfflineDataset(source) as data:
        data.to_minari("carla-safe/left-export-v0", path=tmp_path, view=ExportView(image_size=64))
        starts = reset_infos(data)
        bounds = data.episode_bounds()
        costs = data.costs
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    dataset = minari.load_dataset("carla-safe/left-export-v0")
    env = dataset.recover_environment()
    assert env.action_space == dataset.action_space == env.unwrapped.action_space
    assert env.observation_space == dataset.observation_space
    assert env.observation_space.shape == (64, 64, 3)
    assert env.spec.kwargs["difficulty"] == "medium"
    assert env.spec.kwargs["action_mode"] == "discrete"
    episode = next(dataset.iterate_episodes([0]))
    a, b = bounds[0]
    obs, info = env.reset(seed=1)  # episode 0 of a seed-1 collection
    np.testing.assert_array_equal(obs, episode.observations[0])
    assert episode.infos["speed"][0] == info["speed"] == 0.0  # the car starts at rest
    assert episode.infos["speed"][1] > 0.0  # row 1 is the first step's, not a copy
    assert episode.infos["ttc"][0] == np.float32(info["ttc"]) == np.float32(starts[0]["ttc"])
    assert episode.infos["cost_terms.collision"][0] == 0.0
    np.testing.assert_array_equal(episode.infos["cost"][1:], costs[a:b])
    np.testing.assert_allclose(episode.infos["columns.safety"][:-1], np.linspace(0, 1, 150)[a:b])
    assert len(episode.infos["cost"]) == b - a + 1 == len(episode.observations)


def test_d3rlpy_loads_its_export(source: Path, tmp_path: Path) -> None:
    pytest.importorskip("d3rlpy")
    import h5py
    from d3rlpy.dataset import InfiniteBuffer, ReplayBuffer

    out = tmp_path / "left-d3rlpy.h5"
    assert (
        main(
            [
                "export",
                "--dataset",
                str(source),
                "--format",
                "d3rlpy",
                "--out",
                str(out),
                "--image-size",
                "32",
                "--actions",
                "continuous",
            ]
        )
        == 0
    )
    with open(out, "rb") as f:
        buffer = ReplayBuffer.load(f, InfiniteBuffer())
    with OfflineDataset(source) as data:
        assert sum(e.size() for e in buffer.episodes) == data.n_steps
        first = buffer.episodes[0]
        assert first.observations.shape[1:] == (3, 32, 32)
        from carla_safe_envs.env import discrete_to_continuous

        a, b = data.episode_bounds()[0]
        np.testing.assert_allclose(first.actions, discrete_to_continuous(TASK, data.actions[a:b]))
        with h5py.File(out, "r") as file:
            np.testing.assert_array_equal(file["carla_safe/costs"][()], data.costs)
            np.testing.assert_array_equal(file["carla_safe/infos/speed"][()], data.signal("speed"))


def test_export_command_writes_dsrl(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.h5"
    args = [
        "export",
        "--dataset",
        str(source),
        "--format",
        "dsrl",
        "--out",
        str(out),
        "--image-size",
        "16",
        "--flatten",
    ]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out)
    assert read_like_dsrl(out)["observations"].shape == (150, 768)
    with pytest.raises(SystemExit, match="exists"):
        main(args)
