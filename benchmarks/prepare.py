"""The offline datasets a grid needs: collected once per task and action mode (or reused),
and labeled with p(s) when a model needs safety labels.

Datasets are keyed by task, action mode, steps and collection seed
(:class:`benchmarks.grid.DatasetKey`, which is also the file name), so a restarted or extended
run reuses them; :func:`carla_safe_envs.collection.collect` writes each file atomically.  The
safety labeler is resolved once per run (:func:`resolve_labeler`): CLIP when its weights are
on this machine (nothing is downloaded), else the privileged oracle labeler, and the reason
is kept for the table's caption.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.grid import DatasetKey, GridError, GridPreset

log = logging.getLogger(__name__)

CLIP_MODEL = "ViT-B-32"  # VL-SAFE's CLIP
CLIP_PRETRAINED = "openai"
CLIP_CHECKPOINT_ENV = "CARLA_SAFE_CLIP_CHECKPOINT"  # a local weights file, if set
SAFETY_COLUMN = "safety"


@dataclass(frozen=True)
class LabelerChoice:
    """The resolved safety labeler: registry name, constructor options, and why."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""


def find_clip_weights(
    model: str = CLIP_MODEL, pretrained: str = CLIP_PRETRAINED
) -> tuple[Path | None, list[str]]:
    """A CLIP weights file already on this machine (never downloads), and where it looked:
    ``$CARLA_SAFE_CLIP_CHECKPOINT``, the Hugging Face cache open_clip downloads into, and
    open_clip's URL cache (``~/.cache/clip``)."""
    looked = [f"${CLIP_CHECKPOINT_ENV}"]
    env = os.environ.get(CLIP_CHECKPOINT_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return path, looked
        looked[0] += f" ({path} does not exist)"
    try:
        import open_clip
    except ImportError:
        return None, looked + ["(open_clip is not installed)"]
    cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        looked.append(f"the Hugging Face cache ({repo})")
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            pass
        else:
            names = [filename] if filename else []
            names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            for name in names:
                found = try_to_load_from_cache(repo, name)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found), looked
    url = cfg.get("url", "")
    if url:
        path = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        looked.append(str(path.parent))
        if path.is_file():
            return path, looked
    return None, looked


def resolve_labeler(choice: str, checkpoint: str | os.PathLike | None = None) -> LabelerChoice:
    """The labeler for ``choice`` (``auto``, ``clip`` or ``oracle``); ``checkpoint`` is a
    CLIP weights file that takes precedence over the search of :func:`find_clip_weights`.

    Raises:
        GridError: ``clip`` was asked for and no weights are on this machine.
    """
    if choice == "oracle":
        return LabelerChoice("oracle", reason="the oracle labeler was chosen")
    if choice not in ("auto", "clip"):
        raise GridError(f"unknown labeler {choice!r}; choose one of: auto, clip, oracle")
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise GridError(f"CLIP checkpoint {path} does not exist")
        looked: list[str] = []
    else:
        path, looked = find_clip_weights()
    if path is not None:
        options = {"model": CLIP_MODEL, "checkpoint": str(path)}
        return LabelerChoice("clip", options, reason=f"CLIP {CLIP_MODEL} weights from {path}")
    if choice == "clip":
        raise GridError(
            f"no CLIP {CLIP_MODEL} weights on this machine (looked in: {', '.join(looked)}); "
            f"pass --clip-checkpoint FILE, set ${CLIP_CHECKPOINT_ENV}, or use --labeler oracle"
        )
    return LabelerChoice(
        "oracle",
        reason=f"no CLIP weights on this machine (looked in: {', '.join(looked)})",
    )


@dataclass(frozen=True)
class PreparedDataset:
    """A dataset file ready for training, and what labeled it (None: not labeled)."""

    path: Path
    labels: Mapping[str, Any] | None
    sha256: str = ""  # of the file as the cells train on it (labels included)
    content_sha256: str = ""  # of its step data (carla_safe_envs.cards.content_sha256)


def _check_reused(path: Path, key: DatasetKey, preset: GridPreset) -> None:
    from carla_safe_envs.datasets import OfflineDataset
    from carla_safe_envs.profiles import noise_mix

    with OfflineDataset(path) as data:
        attrs = data.attrs
        found = (data.task, data.action_mode, data.n_steps, int(attrs["seed"]))
        mix = data.mix["name"]
        env = json.loads(attrs["env_kwargs"]) if "env_kwargs" in attrs else {}
    wanted = (key.task, key.action_mode, key.steps, key.seed)
    wanted_mix = key.mix if key.mix is not None else noise_mix(preset.dataset_noise).name
    wanted_env = json.loads(json.dumps(dict(preset.env_kwargs.get(key.task, {}))))
    if found != wanted or mix != wanted_mix or env != wanted_env:
        raise GridError(
            f"{path} holds (task, action mode, steps, seed) {found} of mix {mix!r} with env "
            f"options {env}, not {wanted} of mix {wanted_mix!r} with env options "
            f"{wanted_env}; remove it or use another --data-dir"
        )


@dataclass(frozen=True)
class DatasetFailure:
    """A dataset that could not be collected or labeled (its cells fail with this error)."""

    error: str
    traceback: str


def prepare_datasets(
    keys: Iterable[DatasetKey],
    data_dir: str | os.PathLike,
    *,
    preset: GridPreset,
    labeled: Iterable[DatasetKey] = (),
    labeler: LabelerChoice | None = None,
    progress: bool = True,
) -> dict[DatasetKey, PreparedDataset | DatasetFailure]:
    """Collect the missing datasets of ``keys`` into ``data_dir``, label those in
    ``labeled`` that have no safety column yet, and return them all.  A reused file is
    checked against its key; existing labels are kept (whatever labeled them).  A dataset
    that fails is returned as a :class:`DatasetFailure`; the others go on."""
    import traceback

    data_dir = Path(data_dir)
    labeled = set(labeled)
    made: dict[str, Any] = {}  # the labeler, made on first use (loading CLIP takes seconds)
    out: dict[DatasetKey, PreparedDataset | DatasetFailure] = {}
    for key in sorted(set(keys)):
        try:
            out[key] = _prepare_one(
                key,
                data_dir / key.filename,
                preset=preset,
                labeler=labeler if key in labeled else None,
                made=made,
                progress=progress,
            )
        except Exception as exc:  # noqa: BLE001 - the cells of this dataset fail, not the grid
            log.error("dataset %s failed: %s", key.filename, exc)
            out[key] = DatasetFailure(f"dataset {key.filename}: {exc}", traceback.format_exc())
    return out


def _prepare_one(
    key: DatasetKey,
    path: Path,
    *,
    preset: GridPreset,
    labeler: LabelerChoice | None,
    made: dict[str, Any],
    progress: bool,
) -> PreparedDataset:
    from benchmarks.label import label_dataset
    from carla_safe_envs.collection import collect
    from carla_safe_envs.datasets import OfflineDataset
    from vlsafe.labels import make_labeler

    if path.is_file():
        _check_reused(path, key, preset)
    else:
        log.info("collecting %s", path)
        collect(
            key.task,
            key.steps,
            path,
            seed=key.seed,
            noise=preset.dataset_noise if key.mix is None else None,
            mix=key.mix,
            action_mode=key.action_mode,
            env_kwargs=preset.env_kwargs.get(key.task),
            progress=progress,
        )
    values = None
    with OfflineDataset(path) as data:
        labels = data.safety_labeler
        if labeler is not None and labels is None:
            if labeler.name not in made:
                made[labeler.name] = make_labeler(labeler.name, **labeler.options)
            built = made[labeler.name]
            started = time.perf_counter()
            batch = 64 if built.uses_frames else 4096
            values = label_dataset(data, built, batch_size=batch, progress=progress)
            labels = {
                **built.describe(),
                "reason": labeler.reason,
                "seconds": round(time.perf_counter() - started, 3),
            }
    if values is not None:  # written after the reader closed
        OfflineDataset.write_column(path, SAFETY_COLUMN, values, labels)
    from carla_safe_envs.cards import content_sha256, file_sha256, plain_attrs

    with OfflineDataset(path) as data:
        content = content_sha256(data)
    return PreparedDataset(
        path, plain_attrs(labels) if labels is not None else None, file_sha256(path), content
    )
