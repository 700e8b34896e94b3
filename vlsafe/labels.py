"""Safety labelers: p(s), the probability that a stored BEV state is safe (VL-SAFE phase 1).

Every labeler follows :class:`SafetyLabeler`: ``labeler(frames, signals) -> p`` with ``frames``
(N, H, W, 3) uint8 RGB BEV images and ``signals`` per-step arrays aligned with them; ``p`` is
(N,) float32 in [0, 1].  Three implementations, listed in :data:`LABELERS`:

- ``clip`` (:class:`ClipLabeler`): open_clip scores each frame against the two VL-SAFE prompts
  (``../shared/DESIGN.md`` section 5); p(s) = softmax(logit_scale x cosine similarities)[safe].
  It ignores ``signals``.
- ``oracle`` (:class:`OracleLabeler`): privileged ground truth from the simulator state
  (near-future cost, time-to-collision, lateral error); the reference the CLIP labels are
  judged against, and a labeler usable where no CLIP weights are available.  It ignores frames.
- ``frame`` (:class:`FrameLabeler`): the oracle's terms of the frame's own state only
  (time-to-collision, lateral error; no future cost, nothing that depends on the action taken
  there): the best a one-frame scorer could do with privileged signals.  It ignores frames.

``python -m vlsafe.labels --bench`` measures CLIP throughput on the CPU (see
:func:`benchmark_clip`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SAFE_PROMPT = "red vehicle is driving safely with no car accidents."
UNSAFE_PROMPT = (
    "The red car is deviating from its trajectory, driving off the road, or encountering an "
    "accident."
)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP image normalization, RGB in [0, 1]
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class SafetyLabeler(Protocol):
    """Maps frames (and aligned per-step signals) to p(s), the probability a state is safe.

    Attributes:
        name: registry name of the labeler (stored beside the labels it writes).
        required_signals: names of the ``signals`` entries ``__call__`` reads; ``future_cost``
            means "max cost over the next ``horizon`` steps of the episode" (the labeler then
            has a ``horizon`` attribute).
        uses_frames: False if the frames are ignored (callers may pass (N, 0, 0, 3) arrays
            instead of reading images from disk).
    """

    name: str
    required_signals: tuple[str, ...]
    uses_frames: bool

    def __call__(
        self, frames: np.ndarray, signals: Mapping[str, np.ndarray]
    ) -> np.ndarray:  # (N, H, W, 3) uint8, {name: (N,)} -> (N,) float32 in [0, 1]
        ...


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be an (N, H, W, 3) uint8 RGB array, got shape {frames.shape} "
            f"dtype {frames.dtype}"
        )


# --- CLIP -----------------------------------------------------------------------------------


class ClipWeightsUnavailable(RuntimeError):
    """The CLIP weights could not be downloaded (typically: no internet on this machine)."""


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(
            "the clip labeler needs open_clip: `pip install open_clip_torch` "
            "(or `pip install -e '.[vlsafe]'`), or use --labeler oracle"
        ) from error
    return open_clip


def load_clip_model(
    model: str, *, pretrained: str | None, checkpoint: str | Path | None, device: str
) -> Any:
    """An open_clip model in eval mode, with clear errors for every way loading fails.

    Args:
        model: open_clip architecture name (``open_clip.list_models()``) or ``hf-hub:...``.
        pretrained: open_clip pretrained tag (``open_clip.list_pretrained_tags_by_model``);
            None builds an untrained model (same compute; for tests and speed measurements).
        checkpoint: local weights file, used instead of ``pretrained`` (offline machines).
        device: torch device string.
    """
    open_clip = _import_open_clip()
    if not model.startswith("hf-hub:") and model not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if model.lower()[:5] in m.lower()][:10]
        raise ValueError(
            f"unknown open_clip model {model!r}"
            + (f"; similar names: {close}" if close else "")
            + "; `python -c 'import open_clip; print(open_clip.list_models())'` lists them all"
        )
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP checkpoint {str(path)!r} does not exist; pass the path of a weights file "
                f"for {model!r} that open_clip can load (e.g. the open_clip_pytorch_model.bin "
                "cached under ~/.cache/huggingface/hub on a machine with internet)"
            )
        weights: str | None = str(path)
    else:
        weights = pretrained
        if (
            weights is not None
            and not model.startswith("hf-hub:")
            and weights not in open_clip.list_pretrained_tags_by_model(model)
        ):
            raise ValueError(
                f"unknown pretrained tag {weights!r} for open_clip model {model!r}; valid tags: "
                f"{open_clip.list_pretrained_tags_by_model(model)} (or pass checkpoint=PATH)"
            )
    try:
        clip_model = open_clip.create_model(model, pretrained=weights, device=device)
    except (RuntimeError, OSError) as error:
        if checkpoint is None and weights is not None and "download" in str(error).lower():
            raise ClipWeightsUnavailable(
                f"could not download the CLIP weights {model!r} / {weights!r} from the hub "
                f"(no internet on this machine?): {error}. Either run once on a machine with "
                f'internet: `python -c "import open_clip; '
                f"open_clip.create_model_and_transforms('{model}', pretrained='{weights}')\"` "
                "(it caches the weights under ~/.cache/huggingface; copy that folder here), or "
                "copy the weights file here and pass checkpoint=PATH (--checkpoint PATH)."
            ) from error
        raise
    return clip_model.eval()


class ClipLabeler:
    """p(s) from open_clip zero-shot classification with the VL-SAFE prompts.

    p(s) = softmax(logit_scale * [cos(f_img, f_safe), cos(f_img, f_unsafe)])[0], with the
    text features computed once at construction.  Frames are preprocessed as the model's own
    preprocessing does (resize the shortest side to the model's image size with antialiased
    bicubic, i.e. PIL's kernel; center crop; CLIP mean/std), but batched in torch on uint8
    tensors.

    Args:
        model: open_clip architecture (default ``ViT-B-32``, as in VL-SAFE).
        pretrained: open_clip pretrained tag (default ``openai``); None = untrained weights.
        checkpoint: local weights file used instead of ``pretrained`` (offline machines).
        device: torch device.
        batch_size: frames per forward pass.
        prompts: (safe, unsafe) prompt texts.
    """

    name: ClassVar[str] = "clip"
    required_signals: ClassVar[tuple[str, ...]] = ()
    uses_frames: ClassVar[bool] = True

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = "openai",
        *,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        prompts: tuple[str, str] = (SAFE_PROMPT, UNSAFE_PROMPT),
    ) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        open_clip = _import_open_clip()
        self.model_name = model
        self.pretrained = None if checkpoint is not None else pretrained
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_clip_model(
            model, pretrained=pretrained, checkpoint=checkpoint, device=device
        )
        cfg = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        size = cfg.get("size", self.model.visual.image_size)
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.resize_mode: str = cfg.get("resize_mode", "shortest")
        mean = torch.tensor(cfg.get("mean", OPENAI_MEAN), device=self.device) * 255.0
        std = torch.tensor(cfg.get("std", OPENAI_STD), device=self.device) * 255.0
        self._mean = mean.view(1, 3, 1, 1)  # on the [0, 255] scale of uint8 pixels
        self._std = std.view(1, 3, 1, 1)
        tokenizer = open_clip.get_tokenizer(model)
        with torch.inference_mode():
            text = self.model.encode_text(tokenizer(list(prompts)).to(self.device))
            self._text_features = torch.nn.functional.normalize(text, dim=-1)  # (2, D)
            self._logit_scale = self.model.logit_scale.exp()  # logit_bias cancels in softmax

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, S, S) float32, normalized as the model expects."""
        import torch.nn.functional as F

        x = frames.to(self.device).permute(0, 3, 1, 2).float()  # (B, 3, H, W) in [0, 255]
        height, width = x.shape[-2:]
        out_h, out_w = self.image_size
        if (height, width) != (out_h, out_w):
            if self.resize_mode == "squash" or (height == width and out_h == out_w):
                size = (out_h, out_w)
            elif self.resize_mode == "shortest":
                scale = max(out_h / height, out_w / width)
                size = (max(out_h, round(height * scale)), max(out_w, round(width * scale)))
            else:
                raise NotImplementedError(
                    f"resize_mode {self.resize_mode!r} of {self.model_name!r} is only supported "
                    "for square frames and models"
                )
            # antialias=True uses PIL's bicubic kernel (a = -0.5) for up- and downscaling
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
            top, left = (size[0] - out_h) // 2, (size[1] - out_w) // 2
            x = x[..., top : top + out_h, left : left + out_w]
        x = x.clamp_(0.0, 255.0)  # PIL clips to uint8
        return ((x - self._mean) / self._std).contiguous()  # NCHW, as the model expects

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed images -> (B,) p(safe)."""
        import torch

        features = torch.nn.functional.normalize(self.model.encode_image(images), dim=-1)
        logits = self._logit_scale * features @ self._text_features.T  # (B, 2)
        return logits.softmax(dim=-1)[:, 0]

    def __call__(
        self, frames: np.ndarray, signals: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N,) float32 p(safe); ``signals`` is ignored."""
        import torch

        _check_frames(frames)
        out = np.empty(len(frames), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(frames), self.batch_size):
                batch = torch.from_numpy(
                    np.ascontiguousarray(frames[start : start + self.batch_size])
                )
                p = self.probabilities(self.preprocess(batch))
                out[start : start + len(batch)] = p.float().cpu().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        """What made the labels (stored beside them)."""
        return {
            "labeler": self.name,
            "model": self.model_name,
            "pretrained": self.pretrained or "",
            "checkpoint": self.checkpoint or "",
        }


# --- oracle ---------------------------------------------------------------------------------


class OracleLabeler:
    """Privileged ground-truth p(s) from the simulator state.

    p(s) = 1 - max(r_cost, r_ttc, r_lat), each risk term in [0, 1]:

    - r_cost = clip(future_cost, 0, 1): a cost within the next ``horizon`` steps of the
      episode (``signals["future_cost"]``, max over those steps, so 1 if a cost event comes);
    - r_ttc = clip(1 - ttc / ttc_safe, 0, 1): 0 for ttc >= ttc_safe or no conflict (inf / nan),
      rising linearly to 1 at ttc = 0;
    - r_lat = clip((|lateral_error| - lateral_safe / 2) / (lateral_safe / 2), 0, 1): 0 within
      half of ``lateral_safe`` of the lane centre, 1 at ``lateral_safe`` and beyond.

    Args:
        horizon: look-ahead of the ``future_cost`` signal [steps].
        ttc_safe: time-to-collision at and above which a state carries no TTC risk [s].
        lateral_safe: lateral distance from the lane centre that counts as fully unsafe [m].
    """

    name: ClassVar[str] = "oracle"
    required_signals: ClassVar[tuple[str, ...]] = ("future_cost", "ttc", "lateral_error")
    uses_frames: ClassVar[bool] = False

    def __init__(self, horizon: int = 10, ttc_safe: float = 3.0, lateral_safe: float = 1.0) -> None:
        if horizon < 1 or ttc_safe <= 0 or lateral_safe <= 0:
            raise ValueError(
                f"need horizon >= 1, ttc_safe > 0 and lateral_safe > 0, got horizon={horizon}, "
                f"ttc_safe={ttc_safe}, lateral_safe={lateral_safe}"
            )
        self.horizon = horizon
        self.ttc_safe = ttc_safe
        self.lateral_safe = lateral_safe

    def __call__(self, frames: np.ndarray, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """Frames are only used for their count; -> (N,) float32 p(safe)."""
        arrays = self._signal_arrays(frames, signals)
        return self._p_safe(arrays["future_cost"], arrays["ttc"], arrays["lateral_error"])

    def _signal_arrays(
        self, frames: np.ndarray, signals: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """``signals[name]`` (N,) float64 for each required signal, checked against frames."""
        missing = [name for name in self.required_signals if name not in signals]
        if missing:
            raise KeyError(
                f"the {self.name} labeler needs the signals {list(self.required_signals)}; "
                f"missing {missing} (got {sorted(signals)})"
            )
        n = len(frames)
        arrays = {
            name: np.asarray(signals[name], dtype=np.float64) for name in self.required_signals
        }
        for name, values in arrays.items():
            if values.shape != (n,):
                raise ValueError(f"signal {name!r} has shape {values.shape}, expected ({n},)")
        return arrays

    def _p_safe(
        self, future_cost: np.ndarray, ttc: np.ndarray, lateral_error: np.ndarray
    ) -> np.ndarray:
        """1 - max(r_cost, r_ttc, r_lat) (N,) float32 of the class docstring."""
        r_cost = np.clip(np.nan_to_num(future_cost, nan=0.0), 0.0, 1.0)
        ttc = np.nan_to_num(ttc, nan=np.inf)
        r_ttc = np.clip(1.0 - ttc / self.ttc_safe, 0.0, 1.0)
        half = self.lateral_safe / 2
        lateral = np.nan_to_num(np.abs(lateral_error), nan=0.0)
        r_lat = np.clip((lateral - half) / half, 0.0, 1.0)
        risk = np.maximum(np.maximum(r_cost, r_ttc), r_lat)
        return (1.0 - risk).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """What made the labels (stored beside them)."""
        return {
            "labeler": self.name,
            "horizon": self.horizon,
            "ttc_safe": self.ttc_safe,
            "lateral_safe": self.lateral_safe,
        }


# --- frame-only --------------------------------------------------------------------------


class FrameLabeler(OracleLabeler):
    """Privileged p(s) of the current state only: the oracle without its look-ahead.

    p(s) = 1 - max(r_ttc, r_lat), the oracle's two state terms (same formulas and
    thresholds), on the signals of the state the frame shows (``state/ttc``,
    ``state/lateral_error``: :meth:`~carla_safe_envs.datasets.OfflineDataset.state_signal`,
    the info of the step before; nan at an episode's first step, read as no risk).  It
    drops the oracle's ``r_cost`` (a cost within the next ``horizon`` steps) and its use of
    ``infos[i]``, which result from the action taken at the frame: what a one-frame scorer
    such as CLIP could know at best.  The time to collision (constant velocities) is its only
    measure of proximity to other vehicles: the datasets store no gap distance.

    Args:
        ttc_safe: time-to-collision at and above which a state carries no TTC risk [s].
        lateral_safe: lateral distance from the lane centre that counts as fully unsafe [m].
    """

    name: ClassVar[str] = "frame"
    required_signals: ClassVar[tuple[str, ...]] = ("state/ttc", "state/lateral_error")

    def __init__(self, ttc_safe: float = 3.0, lateral_safe: float = 1.0) -> None:
        super().__init__(horizon=1, ttc_safe=ttc_safe, lateral_safe=lateral_safe)

    def __call__(self, frames: np.ndarray, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """Frames are only used for their count; -> (N,) float32 p(safe)."""
        arrays = self._signal_arrays(frames, signals)
        ttc, lateral = arrays["state/ttc"], arrays["state/lateral_error"]
        return self._p_safe(np.zeros_like(ttc), ttc, lateral)

    def describe(self) -> dict[str, Any]:
        """What made the labels (stored beside them)."""
        return {"labeler": self.name, "ttc_safe": self.ttc_safe, "lateral_safe": self.lateral_safe}


LABELERS: dict[str, type] = {"clip": ClipLabeler, "oracle": OracleLabeler, "frame": FrameLabeler}


def dataset_signals(dataset: Any, labeler: Any) -> dict[str, np.ndarray]:
    """The full (N,) arrays of ``labeler.required_signals`` read from ``dataset`` (an
    :class:`~carla_safe_envs.datasets.OfflineDataset`): ``future_cost`` is the max cost over
    the next ``labeler.horizon`` steps, ``state/<name>`` the info of the frame's own state
    (:meth:`~carla_safe_envs.datasets.OfflineDataset.state_signal`), any other name an
    ``infos`` column."""
    signals = {}
    for name in labeler.required_signals:
        if name == "future_cost":
            signals[name] = np.asarray(dataset.future_cost(labeler.horizon))
        elif name.startswith("state/"):
            signals[name] = np.asarray(dataset.state_signal(name.removeprefix("state/")))
        else:
            signals[name] = np.asarray(dataset.signal(name))
    return signals


def make_labeler(name: str, **options: Any) -> SafetyLabeler:
    """The labeler registered as ``name`` in :data:`LABELERS`, built with ``options``."""
    try:
        cls = LABELERS[name]
    except KeyError:
        raise ValueError(
            f"unknown safety labeler {name!r}; valid names: {sorted(LABELERS)}"
        ) from None
    return cls(**options)


# --- speed ----------------------------------------------------------------------------------


class ClipSpeed(NamedTuple):
    """CLIP throughput on one device [frames/s]."""

    model: str
    batch_size: int
    threads: int
    raw_fps: float  # model.encode_image on already-preprocessed tensors
    pipeline_fps: float  # ClipLabeler: uint8 frames -> p(s)

    @property
    def ratio(self) -> float:
        return self.pipeline_fps / self.raw_fps


def benchmark_clip(
    model: str = "ViT-B-32",
    *,
    batch_size: int = 64,
    batches: int = 3,
    rounds: int = 2,
    threads: int = 2,
    frame_size: int = 128,
    seed: int = 0,
) -> ClipSpeed:
    """Frames/s of raw ``encode_image`` vs the whole labeler, on the CPU, untrained weights.

    Untrained weights cost the same compute as trained ones.  Both are timed for ``batches``
    batches of ``batch_size`` after one warm-up batch, alternating ``rounds`` times; the best
    round of each counts.  ``threads`` is passed to ``torch.set_num_threads``.
    """
    import torch

    torch.set_num_threads(threads)
    labeler = ClipLabeler(model, pretrained=None, batch_size=batch_size)
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (batches * batch_size, frame_size, frame_size, 3), np.uint8)
    images = torch.randn(batch_size, 3, *labeler.image_size)
    labeler(frames[:batch_size], {})  # warm-up
    raw_times, pipeline_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(batches):
                labeler.model.encode_image(images)
        raw_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        labeler(frames, {})
        pipeline_times.append(time.perf_counter() - start)
    n = batches * batch_size
    return ClipSpeed(model, batch_size, threads, n / min(raw_times), n / min(pipeline_times))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vlsafe.labels --bench``: print CLIP raw vs pipeline frames/s."""
    parser = argparse.ArgumentParser(prog="python -m vlsafe.labels", description=main.__doc__)
    parser.add_argument("--bench", action="store_true", help="measure CLIP throughput")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model (default ViT-B-32)")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per batch (64)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per round (3)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds, best kept (2)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return 2
    speed = benchmark_clip(
        args.model,
        batch_size=args.batch_size,
        batches=args.batches,
        rounds=args.rounds,
        threads=args.threads,
    )
    print(
        f"{speed.model} batch {speed.batch_size}, {speed.threads} CPU threads: "
        f"raw encode_image {speed.raw_fps:.1f} frames/s, labeler pipeline "
        f"{speed.pipeline_fps:.1f} frames/s, ratio {speed.ratio:.1%} (target >= 90%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
