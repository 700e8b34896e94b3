"""World-model check: open-loop frame predictions and head errors on dataset windows.

For windows of ``context + horizon`` steps (each inside one episode) the model observes the
first ``context`` frames (posterior: reconstructions) and then imagines the remaining
``horizon`` steps open loop from the dataset's actions (prior: predictions, no frame seen).
:func:`check_world_model` returns, separately for the observed and the open-loop steps:

- ``image_mse``: mean squared error per pixel and channel in [0, 1], at 128x128;
- ``reward_mae``, ``cost_mae``: |expected head value - target|, with the world model's
  alignment (step ``t`` predicts ``rewards[t-1]``, ``costs[t-1]``; steps without a previous
  step in the window are skipped);
- ``cont_mae``: |p(continue) - (1 - terminals[t-1])|;
- ``safety_mae`` = |p̂(s) - p(s)| against the dataset's ``safety`` labels and
  ``safety_auroc``: AUROC of the predicted unsafety ``1 - p̂(s)`` for "the label says unsafe"
  (``p(s) < 0.5``), computed with :func:`vlsafe.label_report.auroc` (None when the windows hold
  only one class or the dataset has no labels).

:func:`speed_probe` asks whether the model's state knows the ego's speed, which one BEV frame
does not show: it filters whole episodes through the model and fits ridge regressions from
the posterior's deterministic part (the GRU), its stochastic part (the image's latent) and both
to the speed the frame was taken at; it reports R^2 and RMSE on held-out episodes.

For held-out numbers pass a dataset the model was not trained on (e.g. collected with another
``--seed``).  :func:`prediction_figure` draws rows truth / model / |error| for a few windows, as
the VL-SAFE poster's figure; the separator marks where observation ends and imagination
starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from carla_safe_envs.datasets import Sequences
from vlsafe.label_report import auroc
from vlsafe.nets import action_dim
from vlsafe.world_model import WorldModel, make_batch

CELL = 128  # [px] one frame
LABEL_WIDTH = 96  # [px] row-label column of the figure
HEADER = 22  # [px] column-label strip
ROWS = ("truth", "model", "|error|")


@torch.no_grad()
def open_loop(model: WorldModel, seqs, action_mode: str, context: int) -> dict[str, np.ndarray]:
    """Predictions for :class:`~carla_safe_envs.datasets.Sequences` (B, T): the first
    ``context`` steps observed (posterior samples), the rest imagined with the dataset's
    actions (prior modes: the most likely future, not one random draw).

    Returns numpy arrays: ``images`` (B, T, 128, 128, 3) float in [0, 1], ``truth`` (same,
    uint8), ``image_mse`` (B, T) per frame, ``reward``, ``cost``, ``cont``, ``safety`` (B, T)
    head predictions, plus the batch's targets (see :class:`WorldModelBatch`).
    """
    device = next(model.parameters()).device
    batch = make_batch(seqs, action_mode, device)
    b, t = batch.obs.shape[:2]
    if not 1 <= context < t:
        raise ValueError(f"context must be in [1, {t}) for windows of {t} steps, got {context}")
    model.eval()
    post, _ = model.observe(
        batch.obs[:, :context], batch.prev_actions[:, :context], batch.is_first[:, :context]
    )
    feats = [model.feat(post)]  # (B, K, F)
    state = {k: v[:, -1] for k, v in post.items()}
    for step in range(context, t):
        state = model.img_step(state, batch.prev_actions[:, step], sample=False)
        feats.append(model.feat(state)[:, None])
    feat = torch.cat(feats, 1)  # (B, T, F)
    assert feat.shape == (b, t, model.feat_dim), feat.shape
    predicted = model.predict(feat)
    out = {k: v.cpu().numpy() for k, v in predicted.items()}
    images = model.decode(feat)  # (B, T, 128, 128, 3) in [0, 1]
    truth = batch.obs.float() / 255.0
    out["image_mse"] = (images - truth).square().mean((2, 3, 4)).cpu().numpy()  # (B, T)
    out["images"] = images.cpu().numpy()
    out["truth"] = batch.obs.cpu().numpy()
    targets = {
        "reward_target": batch.reward_target,
        "cost_target": batch.cost_target,
        "cont_target": batch.cont_target,
        "target_mask": batch.target_mask,
        "safety_target": batch.safety_target,
        "safety_mask": batch.safety_mask,
    }
    return out | {k: v.cpu().numpy() for k, v in targets.items()}


def _errors(parts: list[dict[str, np.ndarray]], steps: slice) -> dict[str, float | None]:
    """Head and image errors over the time steps ``steps`` of every window."""

    def cat(key: str) -> np.ndarray:
        return np.concatenate([p[key][:, steps] for p in parts])

    mask = cat("target_mask") > 0
    safety_mask = cat("safety_mask") > 0
    image_mse = cat("image_mse")  # (N, steps)
    result: dict[str, float | None] = {
        "image_mse": float(image_mse.mean()),
        "steps": image_mse.size,
    }
    for head in ("reward", "cost", "cont"):
        error = np.abs(cat(head) - cat(f"{head}_target"))[mask]
        result[f"{head}_mae"] = float(error.mean()) if error.size else None
    labels, predicted = cat("safety_target")[safety_mask], cat("safety")[safety_mask]
    result["safety_mae"] = float(np.abs(predicted - labels).mean()) if labels.size else None
    score = auroc(1.0 - predicted, labels < 0.5) if labels.size else float("nan")
    result["safety_auroc"] = None if np.isnan(score) else score
    return result


def check_world_model(
    model: WorldModel,
    dataset,
    *,
    context: int = 5,
    horizon: int = 15,
    windows: int = 32,
    batch_size: int = 8,
    examples: int = 2,
    seed: int = 0,
    png: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Errors of ``model`` on ``windows`` random windows of an :class:`OfflineDataset`.

    Returns ``{"observed": {...}, "open_loop": {...}, "context", "horizon", "windows",
    "labels"}`` (metrics in the module docstring); with ``png`` also writes the figure of the
    first ``examples`` windows there and adds its path under ``"png"``.
    """
    if horizon < 1 or windows < 1 or batch_size < 1:
        raise ValueError("horizon, windows and batch_size must be >= 1")
    expected = action_dim(dataset.action_mode)
    if model.action_dim != expected:
        raise ValueError(
            f"the world model takes {model.action_dim}-dim actions but {dataset.path} has "
            f"{dataset.action_mode} actions ({expected}); use a model trained on this action mode"
        )
    rng = np.random.default_rng(seed)
    parts, figure = [], None
    for start in range(0, windows, batch_size):
        n = min(batch_size, windows - start)
        seqs = dataset.sample_sequences(n, context + horizon, rng)
        part = open_loop(model, seqs, dataset.action_mode, context)
        if figure is None:
            figure = (part["truth"][:examples], part["images"][:examples])
        del part["truth"], part["images"]  # keep only the figure's frames in memory
        parts.append(part)
    result: dict[str, Any] = {
        "context": context,
        "horizon": horizon,
        "windows": windows,
        "labels": dataset.safety is not None,
        "observed": _errors(parts, slice(0, context)),
        "open_loop": _errors(parts, slice(context, None)),
    }
    if png is not None and figure is not None:
        result["png"] = str(write_png(prediction_figure(*figure, context=context), png))
    return result


def ridge_fit_score(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    ridge: float = 1.0,
) -> dict[str, float]:
    """Held-out ``r2`` and ``rmse`` of a ridge regression of ``y`` (N,) on ``x`` (N, D),
    features standardised on the training rows; ``ridge`` is the penalty per training row
    (scale-free: the same on 100 or 10,000 rows)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std
    offset = y_train.mean()
    gram = a.T @ a + ridge * len(a) * np.eye(a.shape[1])
    weights = np.linalg.solve(gram, a.T @ (y_train - offset))
    residual = y_test - (b @ weights + offset)
    mse = float((residual**2).mean())
    return {"r2": 1.0 - mse / max(float(y_test.var()), 1e-12), "rmse": mse**0.5}


@torch.no_grad()
def speed_probe(
    model: WorldModel, dataset, *, episodes: int = 60, ridge: float = 1e-3
) -> dict[str, Any]:
    """How well ``model``'s posterior state encodes the ego speed, on the first ``episodes``
    episodes of an :class:`OfflineDataset` (every third one held out).

    Each episode is filtered from its first step with the dataset's actions; the target of
    step ``t`` is the speed its frame was taken at (``infos/speed`` of step ``t - 1``, 0 at
    the start).  Returns ``{"deter" | "stoch" | "feat": {"r2", "rmse"}, "steps",
    "test_steps", "speed_std"}``: R^2 near 1 means a linear read-out recovers the speed.
    """
    speed = dataset.signal("speed")
    bounds = dataset.episode_bounds()[:episodes]
    if len(bounds) < 3:
        raise ValueError(f"{dataset.path} has {len(bounds)} episodes; the probe needs >= 3")
    device = next(model.parameters()).device
    model.eval()
    feats, targets, held_out = [], [], []
    for index, (start, stop) in enumerate(bounds):
        rows = np.arange(start, stop)
        seqs = Sequences(
            observations=dataset.frames(rows)[None],
            actions=dataset.actions[rows][None],
            rewards=dataset.rewards[rows][None],
            costs=dataset.costs[rows][None],
            terminals=dataset.terminals[rows][None],
            timeouts=dataset.timeouts[rows][None],
            is_first=(rows == start)[None],
            safety=None,
        )
        batch = make_batch(seqs, dataset.action_mode, device)
        post, _ = model.observe(batch.obs, batch.prev_actions, batch.is_first)
        feats.append((post["deter"][0].cpu().numpy(), post["stoch"][0].flatten(-2).cpu().numpy()))
        targets.append(np.r_[0.0, speed[rows[:-1]]])
        held_out.append(np.full(len(rows), index % 3 == 0))
    y, test = np.concatenate(targets), np.concatenate(held_out)
    deter = np.concatenate([f[0] for f in feats])
    stoch = np.concatenate([f[1] for f in feats])
    parts = {"deter": deter, "stoch": stoch, "feat": np.concatenate([deter, stoch], 1)}
    result: dict[str, Any] = {
        name: ridge_fit_score(x[~test], y[~test], x[test], y[test], ridge)
        for name, x in parts.items()
    }
    result |= {"steps": len(y), "test_steps": int(test.sum()), "speed_std": float(y.std())}
    return result


def prediction_figure(truth: np.ndarray, predicted: np.ndarray, *, context: int) -> np.ndarray:
    """An RGB uint8 image: for each window, rows truth / model / |error|, one column per step.

    ``truth`` (N, T, 128, 128, 3) uint8, ``predicted`` (N, T, 128, 128, 3) float in [0, 1].
    A white line separates the observed steps (< ``context``) from the imagined ones.
    """
    import cv2

    n, t = truth.shape[:2]
    assert truth.shape == predicted.shape and truth.shape[2:] == (CELL, CELL, 3), (
        truth.shape,
        predicted.shape,
    )
    model = np.clip(predicted * 255.0 + 0.5, 0, 255).astype(np.uint8)
    error = np.abs(truth.astype(np.int16) - model.astype(np.int16)).astype(np.uint8)
    height = HEADER + n * len(ROWS) * CELL
    canvas = np.full((height, LABEL_WIDTH + t * CELL, 3), 32, dtype=np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for step in range(t):
        text = f"{'obs' if step < context else 'img'} t={step}"
        x = LABEL_WIDTH + step * CELL + 6
        cv2.putText(canvas, text, (x, 16), font, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    for window in range(n):
        for row, frames in enumerate((truth[window], model[window], error[window])):
            y = HEADER + (window * len(ROWS) + row) * CELL
            label = f"{ROWS[row]} #{window}" if row == 0 else ROWS[row]
            cv2.putText(canvas, label, (6, y + CELL // 2), font, 0.45, (255, 255, 255), 1)
            canvas[y : y + CELL, LABEL_WIDTH:] = frames.transpose(1, 0, 2, 3).reshape(CELL, -1, 3)
    x = LABEL_WIDTH + context * CELL
    canvas[HEADER:, x - 1 : x + 1] = 255
    return canvas


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 image as PNG (parent folders created); its path."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path} (is the suffix .png and the folder writable?)")
    return path
