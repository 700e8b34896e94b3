"""Training and storing the world model: the optimiser step and the checkpoint file.

:class:`WorldModelTrainer` runs Adam on :meth:`vlsafe.world_model.WorldModel.loss_terms` with
global-norm clipping and stops before any update when a loss term (or the gradient norm) is
not finite (:class:`NonFiniteLossError` names it).  :func:`save_world_model` /
:func:`load_world_model` write and read one ``.pt`` file holding the config, the action width
and the weights (the agents keep theirs as ``world_model.pt`` in their directory).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vlsafe.rssm import State
from vlsafe.world_model import WorldModel, WorldModelBatch, WorldModelConfig


class NonFiniteLossError(FloatingPointError):
    """A world-model loss term (or the gradient norm) became NaN or inf; ``term`` names it."""

    def __init__(self, term: str, value: float):
        self.term, self.value = term, value
        super().__init__(
            f"world-model loss term {term!r} is {value}; training stopped before the update. "
            "Keep the last good checkpoint and lower the learning rate (WorldModelConfig.lr) "
            "or check the dataset for non-finite rewards / costs / labels."
        )


class WorldModelTrainer:
    """Adam on the world-model loss with global-norm gradient clipping and a finiteness check."""

    def __init__(self, model: WorldModel, config: WorldModelConfig | None = None):
        self.model, self.config = model, config or model.config
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=self.config.lr, eps=self.config.eps
        )
        self.updates = 0
        self.last_post: State | None = None  # posterior States (B, T, ...) of the last update

    def update(self, batch: WorldModelBatch) -> dict[str, float]:
        """One gradient step; metrics by name incl. ``total`` and ``grad_norm`` (before clipping).

        The detached posterior States (B, T, ...) of the batch are kept in ``self.last_post``
        (imagination starts from them, so the agents need not observe the batch again).
        Raises :class:`NonFiniteLossError` naming the first non-finite term (the model's
        parameters are left untouched).
        """
        self.model.train()
        terms, post = self.model.loss_terms(batch)
        for name, value in terms.items():
            if not torch.isfinite(value):
                raise NonFiniteLossError(name, float(value.detach()))
        total = self.model.total_loss(terms)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError("grad_norm", float(grad_norm))
        self.optimizer.step()
        self.updates += 1
        self.last_post = post
        metrics = {k: float(v.detach()) for k, v in terms.items()}
        return metrics | {"total": float(total.detach()), "grad_norm": float(grad_norm)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])


# --- checkpoints --------------------------------------------------------------------------


def save_world_model(path: str | os.PathLike, model: WorldModel) -> Path:
    """Write ``{"config": asdict(config), "action_dim", "state_dict"}`` to ``path`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = {
        "config": asdict(model.config),
        "action_dim": model.action_dim,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_world_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> WorldModel:
    """The :class:`WorldModel` saved by :func:`save_world_model` at ``path`` (in eval mode)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no world model at {path}: train one with `python -m benchmarks train`"
        )
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or not {"config", "action_dim", "state_dict"} <= set(payload):
        raise ValueError(
            f"{path} is not a world-model checkpoint (expected keys config, action_dim, "
            "state_dict as written by vlsafe.wm_training.save_world_model)"
        )
    try:
        config = WorldModelConfig(**payload["config"])
    except TypeError as error:
        raise ValueError(f"{path} has a config this version cannot read: {error}") from error
    model = WorldModel(config, int(payload["action_dim"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not match its config: {error}") from error
    return model.to(map_location).eval()
