"""The typed, frozen configs of the stable-baselines3 agents (PPO, DQN, SAC) and their presets.

The defaults are the ``paper`` preset, derived from rl-baselines3-zoo's recommended image
settings (``hyperparams/ppo.yml`` and ``dqn.yml``, entry ``atari``; the zoo has no pixel SAC
entry, see :class:`SACConfig`); each class docstring says where and why ours differ.
``small`` (CPU-trainable in hours), ``cpu`` (one core, well under an hour) and ``debug`` (a few
hundred steps, for tests) name only the fields they change.  Each config builds its
algorithm's constructor arguments (:meth:`SB3Config.algorithm_kwargs`); the agents that use
them are :mod:`baselines.sb3`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from stable_baselines3.common.utils import LinearSchedule

from carla_safe_envs.agents import AgentError

FRAME_BYTES = 128 * 128 * 3  # one uint8 BEV frame: 48 KiB

VecEnvKind = Literal["dummy", "subproc"]
VEC_ENV_KINDS: tuple[VecEnvKind, ...] = ("dummy", "subproc")


@dataclass(frozen=True)
class SB3Config:
    """Fields every SB3 agent has (the defaults are overridden per algorithm).

    Attributes:
        total_timesteps: environment steps of one ``fit``, summed over the ``n_envs``
            environments (0.1 s of driving each); SB3 rounds it up to whole rollouts
            (PPO) or ``train_freq`` chunks (DQN, SAC).
        n_envs: environments stepped in lockstep to collect experience.
        vec_env: ``"dummy"`` steps them one after the other in this process (best when the
            network, not the ~1 ms simulator step, takes the time, as on a CPU);
            ``"subproc"`` runs one process per environment.
        learning_rate: Adam step size (PPO decays it linearly to 0, see ``linear_decay``).
        gamma: discount factor per 0.1 s step (0.99: a horizon of ~10 s of driving).
        batch_size: transitions per gradient step (PPO: per minibatch).
        features_dim: width of the Nature-CNN's output layer (its three conv layers are
            fixed: 32x8x8/4, 64x4x4/2, 64x3x3/1, giving 12 x 12 x 64 maps on a 128 px BEV).
        image_size: side [px] of the observation the policy sees: 128 (the env's BEV) or a
            divisor; smaller frames are area-averaged by
            :class:`carla_safe_envs.wrappers.DownsampleObservation` in the training envs and
            by the same function in ``act`` (64 px: 4 x 4 x 64 CNN maps, ~4x cheaper).
        frame_stack: the policy sees the last ``frame_stack`` frames, oldest first, stacked on
            the channel axis (SB3's ``VecFrameStack`` in training, the same stacks in ``act``;
            zeros before an episode's first frame).  One BEV frame shows no speed: the zoo's
            Atari entries stack 4.
        augment_shift: random-shift augmentation of the frames in each gradient step, up to
            this many px at ``image_size`` on each axis (DrQ's 4 px on 84 px frames); 0: none.
            Acting never sees a shifted frame (:class:`baselines.sb3_pixel.ShiftedNatureCNN`).
        device: torch device, ``"auto"`` = CUDA when available, else the CPU.
    """

    total_timesteps: int = 1_000_000
    n_envs: int = 1
    vec_env: VecEnvKind = "dummy"
    learning_rate: float = 3e-4
    gamma: float = 0.99
    batch_size: int = 256
    features_dim: int = 512
    image_size: int = 128
    frame_stack: int = 1
    augment_shift: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        positive = (
            "total_timesteps",
            "n_envs",
            "batch_size",
            "features_dim",
            "image_size",
            "frame_stack",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise AgentError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.augment_shift < self.image_size // 4:
            raise AgentError(
                f"augment_shift must be in [0, image_size / 4) px, got {self.augment_shift} "
                f"at image_size {self.image_size}"
            )
        if self.vec_env not in VEC_ENV_KINDS:
            raise AgentError(
                f"vec_env must be one of {', '.join(VEC_ENV_KINDS)}, got {self.vec_env!r}"
            )
        if 128 % self.image_size or self.image_size < 36:
            raise AgentError(
                f"image_size must divide the 128 px BEV and be at least 36 px (the Nature CNN's "
                f"smallest input), e.g. 128 or 64; got {self.image_size}"
            )
        if not 0.0 < self.gamma <= 1.0:
            raise AgentError(f"gamma must be in (0, 1], got {self.gamma}")
        if not self.learning_rate > 0.0:
            raise AgentError(f"learning_rate must be > 0, got {self.learning_rate}")

    def policy(self) -> Any:
        """The SB3 policy (a name or class) the algorithm is built with."""
        return "CnnPolicy"

    def algorithm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the SB3 algorithm's constructor (besides policy, env, seed)."""
        extractor: dict[str, Any] = {"features_dim": self.features_dim}
        policy_kwargs: dict[str, Any] = {"features_extractor_kwargs": extractor}
        if self.augment_shift:
            from baselines.sb3_pixel import ShiftedNatureCNN

            policy_kwargs["features_extractor_class"] = ShiftedNatureCNN
            extractor["shift"] = self.augment_shift
        return {
            "learning_rate": self.learning_rate,
            "gamma": self.gamma,
            "batch_size": self.batch_size,
            "device": self.device,
            "policy_kwargs": policy_kwargs,
        }


@dataclass(frozen=True)
class PPOConfig(SB3Config):
    """PPO (Schulman et al. 2017, arXiv:1707.06347), zoo ``ppo.yml`` ``atari`` entry.

    The zoo's values are kept: 8 envs x 128 steps per rollout, 4 epochs of minibatches of
    256, learning rate 2.5e-4 and clip range 0.1 both decaying linearly to 0, entropy
    coefficient 0.01, value coefficient 0.5.  Differences: 1e6 steps instead of 1e7 frames
    (the zoo counts frames of a 4-frame skip, so 2.5e6 agent steps; our budget is the same
    for the three SB3 agents, ~28 h of driving), and no frame stack (``frame_stack`` 1).

    Attributes:
        n_steps: steps per environment in one rollout (a rollout is ``n_steps * n_envs``).
        n_epochs: passes over each rollout.
        gae_lambda: GAE lambda.
        clip_range: PPO's policy ratio clip.
        ent_coef: entropy bonus coefficient.
        vf_coef: value loss coefficient.
        max_grad_norm: gradient norm clip.
        linear_decay: decay ``learning_rate`` and ``clip_range`` linearly to 0 over
            ``total_timesteps`` (the zoo's ``lin_`` schedules).
    """

    total_timesteps: int = 1_000_000
    n_envs: int = 8
    learning_rate: float = 2.5e-4
    batch_size: int = 256
    n_steps: int = 128
    n_epochs: int = 4
    gae_lambda: float = 0.95
    clip_range: float = 0.1
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    linear_decay: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_steps * self.n_envs < 2:
            raise AgentError("PPO needs n_steps * n_envs >= 2 (one rollout)")
        if self.batch_size > self.n_steps * self.n_envs:
            raise AgentError(
                f"batch_size {self.batch_size} is larger than a rollout of n_steps * n_envs = "
                f"{self.n_steps * self.n_envs} transitions"
            )

    def algorithm_kwargs(self) -> dict[str, Any]:
        kwargs = super().algorithm_kwargs()
        schedule = _linear_to_zero if self.linear_decay else float
        kwargs.update(
            learning_rate=schedule(self.learning_rate),
            clip_range=schedule(self.clip_range),
            n_steps=self.n_steps,
            n_epochs=self.n_epochs,
            gae_lambda=self.gae_lambda,
            ent_coef=self.ent_coef,
            vf_coef=self.vf_coef,
            max_grad_norm=self.max_grad_norm,
        )
        return kwargs


@dataclass(frozen=True)
class ReplayConfig(SB3Config):
    """Fields of the replay-buffer algorithms (DQN, SAC).

    A replay buffer of BEV frames is the memory cost of these agents: 48 KiB per frame (times
    ``frame_stack``: SB3 stores each stacked observation whole), so
    100,000 transitions hold 4.9 GB of observations with ``optimize_memory_usage`` (each frame
    stored once) and 9.8 GB without (the next observation stored apart).

    Attributes:
        buffer_size: transitions kept in the replay buffer (see the RAM cost above).
        learning_starts: environment steps of pure exploration before the first update.
        train_freq: environment steps (per environment) between two training phases.
        gradient_steps: gradient steps per training phase.
        optimize_memory_usage: store each frame once (halves the buffer's RAM).  SB3 then
            cannot tell a 500-step time limit from a real end (its issue #934), so a
            truncated episode is not bootstrapped: a small bias on the last steps before
            the limit, the price of half the memory.
    """

    buffer_size: int = 100_000
    learning_starts: int = 50_000
    train_freq: int = 4
    gradient_steps: int = 1
    optimize_memory_usage: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("buffer_size", "train_freq"):
            if getattr(self, name) < 1:
                raise AgentError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_starts < 0:
            raise AgentError(f"learning_starts must be >= 0, got {self.learning_starts}")

    @property
    def replay_bytes(self) -> int:
        """Approximate RAM of the buffer's observations [bytes]."""
        frame = FRAME_BYTES * (self.image_size / 128) ** 2 * self.frame_stack
        return int(self.buffer_size * frame * (1 if self.optimize_memory_usage else 2))

    def algorithm_kwargs(self) -> dict[str, Any]:
        kwargs = super().algorithm_kwargs()
        kwargs.update(
            buffer_size=self.buffer_size,
            learning_starts=self.learning_starts,
            train_freq=self.train_freq,
            gradient_steps=self.gradient_steps,
            optimize_memory_usage=self.optimize_memory_usage,
            # SB3 refuses timeout handling together with the memory optimization (#934)
            replay_buffer_kwargs={"handle_timeout_termination": not self.optimize_memory_usage},
        )
        return kwargs


@dataclass(frozen=True)
class DQNConfig(ReplayConfig):
    """DQN (Mnih et al. 2015, Nature 518), zoo ``dqn.yml`` ``atari`` entry.

    Kept from the zoo: learning rate 1e-4, batch 32, an update every 4 steps, epsilon from 1
    to 0.1 over the first 10% of training, target network copied every 10,000 steps.
    Differences: a replay buffer of 1e5 instead of 1e6 (1e6 BEV frames would be 49 GB;
    1e5 is 4.9 GB with ``optimize_memory_usage``), learning starts after 5e4 steps instead of
    1e5 (half the smaller buffer), and 1e6 steps instead of 1e7 frames, as for PPO.

    Attributes:
        target_update_interval: environment steps between two target network copies.
        exploration_fraction: share of ``total_timesteps`` over which epsilon decays.
        exploration_initial_eps: epsilon at the start.
        exploration_final_eps: epsilon after the decay.
        max_grad_norm: gradient norm clip.
    """

    learning_rate: float = 1e-4
    batch_size: int = 32
    target_update_interval: int = 10_000
    exploration_fraction: float = 0.1
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.1
    max_grad_norm: float = 10.0

    def algorithm_kwargs(self) -> dict[str, Any]:
        kwargs = super().algorithm_kwargs()
        kwargs.update(
            target_update_interval=self.target_update_interval,
            exploration_fraction=self.exploration_fraction,
            exploration_initial_eps=self.exploration_initial_eps,
            exploration_final_eps=self.exploration_final_eps,
            max_grad_norm=self.max_grad_norm,
        )
        return kwargs


@dataclass(frozen=True)
class SACConfig(ReplayConfig):
    """SAC (Haarnoja et al. 2018, arXiv:1812.05905) on the continuous ``(acc / 3, steer)``.

    The zoo has no pixel SAC entry; we start from its ``CarRacing-v0`` SAC entry (the closest
    driving task; there an MLP on autoencoder features): learning rate 7.3e-4, batch 256,
    tau 0.02, gamma 0.99, automatic entropy coefficient, 8 environment steps then 10
    gradient steps, learning starts after 1,000 steps.  Differences: a replay buffer of 1e5
    instead of 3e5 (3e5 BEV frames would be 14.7 GB even stored once), a 10,000-step
    random warm-up (the zoo's 1,000 fill only 1% of our buffer), no gSDE (``use_sde``;
    plain Gaussian exploration, as in SB3's defaults), and SB3's default networks: a
    Nature-CNN each for actor and critics and 256-256 heads.

    Attributes:
        tau: soft target update rate.
        ent_coef: entropy coefficient, or ``"auto"`` to learn it (``"auto_0.1"``: learned,
            starting at 0.1).
        critic_encoder: the actor reads the critic's CNN with the gradient stopped, so only
            the TD loss trains the encoder (SAC-AE / DrQ;
            :class:`baselines.sb3_pixel.CriticEncoderSACPolicy`); False: SB3's default, a
            CNN per network each trained by its own loss.
    """

    learning_rate: float = 7.3e-4
    batch_size: int = 256
    tau: float = 0.02
    ent_coef: float | str = "auto"
    learning_starts: int = 10_000
    train_freq: int = 8
    gradient_steps: int = 10
    critic_encoder: bool = False

    def policy(self) -> Any:
        if not self.critic_encoder:
            return super().policy()
        from baselines.sb3_pixel import CriticEncoderSACPolicy

        return CriticEncoderSACPolicy

    def algorithm_kwargs(self) -> dict[str, Any]:
        kwargs = super().algorithm_kwargs()
        kwargs.update(tau=self.tau, ent_coef=self.ent_coef)
        return kwargs


def _linear_to_zero(value: float) -> LinearSchedule:
    """``value`` at the start of training, 0 at its end (SB3's ``progress_remaining``)."""
    return LinearSchedule(start=value, end=0.0, end_fraction=1.0)


def _presets(paper: SB3Config, **changes: Mapping[str, Any]) -> dict[str, SB3Config]:
    """``paper`` and the presets that differ from it by the given fields."""
    out = {name: dataclasses.replace(paper, **fields) for name, fields in changes.items()}
    out["paper"] = paper
    return out


PPO_PRESETS = _presets(
    PPOConfig(),
    # Two rollouts of 2 envs x 64 steps, one epoch each: ~6 s on the 2-vCPU machine.
    debug={
        "total_timesteps": 256,
        "n_envs": 2,
        "n_steps": 64,
        "batch_size": 64,
        "n_epochs": 1,
        "features_dim": 64,
    },
    # The zoo's settings for 2e5 steps. Measured on the 2-vCPU machine: 75 steps/s with both
    # cores free (45 min), 30-38 steps/s while shared (load ~3.3; ~1.5-2 h).
    small={"total_timesteps": 200_000},
    # One CPU core, ~30 min: the zoo's settings on 64 px frames (the CNN costs a quarter),
    # 300,000 steps.  Measured while 4 jobs shared the 2-vCPU machine: ~200 steps/s.
    cpu={"total_timesteps": 300_000, "image_size": 64},
)
DQN_PRESETS = _presets(
    DQNConfig(),
    debug={
        "total_timesteps": 300,
        "buffer_size": 500,
        "learning_starts": 100,
        "batch_size": 16,
        "target_update_interval": 100,
        "features_dim": 64,
    },
    # An update every 8 steps instead of 4 (a batch-32 update costs ~0.2-0.4 s on a CPU).
    # Measured on the 2-vCPU machine: 46 steps/s with both cores free (55 min), 9-17 while
    # shared (load ~4.5; 2.5-4.5 h).  A 2.5 GB replay buffer.
    small={
        "total_timesteps": 150_000,
        "buffer_size": 50_000,
        "learning_starts": 10_000,
        "train_freq": 8,
        "target_update_interval": 5_000,
    },
    # One CPU core, well under an hour: 64 px frames, 100,000 steps with an update every 4
    # (the zoo's rate), target sync every 2,000, exploration over the first 20%.  A 1.2 GB
    # replay of 64 px frames.  ~80 steps/s while 4 jobs shared the 2-vCPU machine (~21 min).
    cpu={
        "total_timesteps": 100_000,
        "buffer_size": 100_000,
        "learning_starts": 5_000,
        "train_freq": 4,
        "target_update_interval": 2_000,
        "exploration_fraction": 0.2,
        "image_size": 64,
    },
)
SAC_PRESETS = _presets(
    SACConfig(),
    # 25 small updates: SAC's five CNN passes per update dominate a CPU.
    debug={
        "total_timesteps": 300,
        "buffer_size": 500,
        "learning_starts": 100,
        "batch_size": 8,
        "train_freq": 8,
        "gradient_steps": 1,
        "features_dim": 64,
    },
    # One batch-32 update per 8 steps: SAC's update (five CNN passes) costs ~0.5-1 s on a
    # CPU.  Measured on the 2-vCPU machine: 16 steps/s with both cores free (52 min), 4-7
    # while shared (load ~4; 2-3.5 h).  A 2.5 GB replay buffer.
    small={
        "total_timesteps": 50_000,
        "buffer_size": 50_000,
        "learning_starts": 5_000,
        "batch_size": 32,
        "train_freq": 8,
        "gradient_steps": 1,
    },
    # One CPU core, ~30-40 min: 64 px frames, 40,000 steps, one batch-64 update every 4
    # steps.  A 0.5 GB replay of 64 px frames.  ~20 steps/s while 4 jobs shared the 2 vCPUs.
    # DrQ's two pixel remedies (the actor on the critic's detached encoder, a 4 px random
    # shift): SB3's defaults ended Left Turn standing off the lane (Return -33.0, README
    # learn-check ablations), these ended it at 50.4; both are erratic between points, and
    # on Four Lane it sped to 6.5-9 m/s at most points: one frame shows no speed, so 4
    # stacked frames (a 2 GB replay).
    cpu={
        "total_timesteps": 40_000,
        "buffer_size": 40_000,
        "learning_starts": 2_000,
        "batch_size": 64,
        "train_freq": 4,
        "gradient_steps": 1,
        "image_size": 64,
        "critic_encoder": True,
        "augment_shift": 4,
        "frame_stack": 4,
    },
)
