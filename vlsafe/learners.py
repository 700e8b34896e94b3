"""The actor-critic update of each world-model agent, on top of :mod:`vlsafe.behavior` and
:mod:`vlsafe.objectives`.

A learner owns an actor, its critics and their optimisers; ``update(wm, post, data)`` takes
the world model, the posterior states of one training batch (B, T, ...) (the world model's
own update produced them, detached) and the same batch's dataset tensors (:class:`DataBatch`),
and returns its losses by name.  Imagination starts from every (or ``starts``) posterior
state of the batch.

- :class:`DreamerLearner` (DreamerV3, Hafner et al. 2023): a reward critic on imagined
  lambda-returns and a REINFORCE actor with percentile-normalised advantages and an entropy
  bonus.  Reward only: no cost, no safety.
- :class:`VLSafeLearner` (VL-SAFE): reward and cost critics on imagined lambda-returns; the
  actor is fitted to pi* = w pi_b / Z, w = p(s) exp(beta_r A^r) + (1 - p(s)) exp(-beta_c A^c),
  by weighted log-likelihood of behaviour actions on dataset and imagined states.
- :class:`FOSPLearner` (FOSP, Cao et al., ICLR 2025): IQL-style expectile critics Q/V for
  reward and cost, a reachability gate (feasible: the cost value is below a threshold) that
  picks reward-advantage (feasible) or cost-advantage (infeasible) weighting, and an
  augmented Lagrangian that prices cost in the feasible branch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from vlsafe.behavior import Actor, Critic, Optimizer, Rollout, State, flatten_states, imagine
from vlsafe.nets import encode_actions
from vlsafe.objectives import (
    Lagrangian,
    ReturnScale,
    expectile_weight,
    lambda_return,
    normalize_advantage,
    vlsafe_weights,
    weighted_mean,
    weighted_nll,
)

if TYPE_CHECKING:
    from carla_safe_envs.datasets import Sequences
    from vlsafe.configs import DreamerV3Config, FOSPConfig, VLSafeConfig


class DataBatch(NamedTuple):
    """One batch of dataset windows as tensors, dataset-aligned (DSRL): ``actions[t]`` was
    taken in ``obs[t]`` and ``rewards[t]``, ``costs[t]``, ``terminals[t]`` resulted."""

    actions: Tensor  # (B, T, A) encoded (one-hot / continuous)
    rewards: Tensor  # (B, T)
    costs: Tensor  # (B, T)
    terminals: Tensor  # (B, T) bool
    is_first: Tensor  # (B, T) bool
    safety: Tensor | None  # (B, T) p(s_t) labels, None without a safety column

    @classmethod
    def from_sequences(cls, seqs: Sequences, action_mode: str, device: Any) -> DataBatch:
        def tensor(x: np.ndarray, dtype: torch.dtype) -> Tensor:
            return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)

        return cls(
            actions=encode_actions(seqs.actions, action_mode, device=device),
            rewards=tensor(seqs.rewards, torch.float32),
            costs=tensor(seqs.costs, torch.float32),
            terminals=tensor(seqs.terminals, torch.bool),
            is_first=tensor(seqs.is_first, torch.bool),
            safety=None if seqs.safety is None else tensor(seqs.safety, torch.float32),
        )

    def transitions(self) -> tuple[Tensor, Tensor]:
        """``cont`` (B, T) float, 0 after a terminal step, and ``cut`` (B, T) bool, true where
        s_{t+1} is not in the window (its end, or a truncated episode followed by the next
        episode's first step): no one-step target exists there."""
        next_first = torch.cat([self.is_first[:, 1:], torch.ones_like(self.is_first[:, :1])], 1)
        return (~self.terminals).float(), next_first & ~self.terminals


def dataset_returns(
    reward: Tensor, value: Tensor, data: DataBatch, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """TD(lambda) returns (B, T) along dataset windows from the dataset's own rewards (or
    costs) ``reward`` (B, T) and values ``value`` (B, T) of the posterior states, and the
    mask (B, T) of steps where a target exists.  ``lam = 0``: r_t + gamma c_t V(s_{t+1})."""
    cont, cut = data.transitions()
    padded = torch.cat([value, torch.zeros_like(value[:, :1])], 1)  # (B, T + 1)
    returns = lambda_return(reward.T, cont.T, padded.T, gamma, lam, cut=cut.T).T
    return returns, ~cut


def _stats(prefix: str, x: Tensor, mask: Tensor | None = None) -> dict[str, float]:
    x = x.detach()
    x = x[mask] if mask is not None else x.flatten()
    if not x.numel():
        return {}
    return {f"{prefix}_mean": float(x.mean()), f"{prefix}_max": float(x.max())}


class Learner(nn.Module):
    """Common parts: the actor and its optimiser, imagination from a batch."""

    def __init__(self, feat_dim: int, action_mode: str, config: Any):
        super().__init__()
        self.ac = config.actor_critic
        self.horizon = config.world_model.horizon
        self.action_mode = action_mode
        self.feat_dim = feat_dim
        self.actor = Actor(feat_dim, action_mode, self.ac)
        self.actor_opt: Optimizer | None = None

    def make_optimizers(self) -> None:
        """Create the optimisers (after the module has moved to its device)."""
        ac = self.ac
        self.actor_opt = Optimizer(self.actor.parameters(), ac.actor_lr, ac.eps, ac.grad_clip)
        self.critic_opt = Optimizer(
            (p for name, p in self.named_parameters() if not name.startswith("actor.")),
            ac.critic_lr,
            ac.eps,
            ac.grad_clip,
        )

    def imagine(self, wm: Any, post: State) -> Rollout:
        start, _ = flatten_states(post, self.ac.starts)
        return imagine(wm, self.actor, start, self.horizon)

    def update(self, wm: Any, post: State, data: DataBatch) -> dict[str, float]:
        raise NotImplementedError


class DreamerLearner(Learner):
    """DreamerV3's actor-critic: reward critic on imagined lambda-returns bootstrapped from
    the slow critic, REINFORCE actor with advantages (R - V_slow) / S (S: percentile return
    scale) and an entropy bonus, both weighted by the continuation probability.  The actor
    never back-propagates through the dynamics (REINFORCE for both action modes, as in
    DreamerV3's current release).

    Trained from a dataset, the actor loss adds ``bc_scale`` (set by the agent from
    :attr:`~vlsafe.configs.DreamerV3Config.offline_bc`; 0 online) times the negative
    log-likelihood of the dataset's actions on their posterior states, TD3+BC's anchor
    (Fujimoto & Gu 2021): without it the imagined actor leaves the data's support."""

    def __init__(self, feat_dim: int, action_mode: str, config: DreamerV3Config):
        super().__init__(feat_dim, action_mode, config)
        ac = self.ac
        self.critic = Critic(feat_dim, ac)
        self.retnorm = ReturnScale(ac.retnorm_decay, ac.retnorm_low, ac.retnorm_high)
        self.bc_scale = 0.0

    def update(self, wm: Any, post: State, data: DataBatch) -> dict[str, float]:
        ac = self.ac
        traj = self.imagine(wm, post)
        value = self.critic.value(traj.feat, slow=True)  # (H + 1, N)
        ret = lambda_return(traj.reward, traj.cont, value, ac.gamma, ac.lam)  # (H, N)
        weight = traj.weight[:-1]
        critic_loss = self.critic.loss(traj.feat[:-1], ret, weight)
        scale = self.retnorm.update(ret)
        adv = (ret - value[:-1]) / scale
        dist = self.actor(traj.feat[:-1])
        logp, ent = dist.log_prob(traj.action[:-1]), dist.entropy()
        actor_loss = weighted_mean(-logp * adv - ac.entropy * ent, weight)
        bc: dict[str, float] = {}
        if self.bc_scale:
            dist_d = self.actor(wm.feat(post).detach())
            nll = -dist_d.log_prob(data.actions).mean()
            actor_loss = actor_loss + self.bc_scale * nll
            bc["actor_dataset_nll"] = float(nll.detach())
        critic_norm = self.critic_opt.step(critic_loss, "reward critic")
        actor_norm = self.actor_opt.step(actor_loss, "actor")
        self.critic.update_slow()
        return {
            "actor_loss": float(actor_loss.detach()),
            "actor_entropy": float(ent.detach().mean()),
            "actor_grad_norm": actor_norm,
            **bc,
            "critic_loss": float(critic_loss.detach()),
            "critic_grad_norm": critic_norm,
            "return_scale": float(scale),
            **_stats("imag_return", ret),
            **_stats("imag_reward", traj.reward),
        }


class WeightedActorLearner(Learner):
    """The weighted-likelihood actor shared by VL-SAFE and FOSP.

    Both fit pi* = w pi_b / Z with w from :func:`vlsafe_weights`: on dataset states pi_b is
    the dataset's behaviour policy (its recorded actions), on imagined states it is the
    current actor (its sampled actions), each term a self-normalised weighted NLL.  The
    weighting's fields are ``config.weighted_actor``
    (:class:`~vlsafe.configs.WeightedActorConfig`).
    """

    def __init__(self, feat_dim: int, action_mode: str, config: VLSafeConfig | FOSPConfig):
        super().__init__(feat_dim, action_mode, config)
        self.config = config

    def weighted_actor_step(
        self,
        feat_d: Tensor,
        data: DataBatch,
        valid: Tensor,
        w_d: Tensor,
        traj: Rollout,
        w_i: Tensor,
    ) -> dict[str, float]:
        """One actor step on the dataset term (weights ``w_d`` (B, T) where ``valid``) and the
        imagined term (``w_i`` (H, N)), scaled by ``config.weighted_actor``."""
        wa = self.config.weighted_actor
        dist_d = self.actor(feat_d)
        loss_d = weighted_nll(dist_d.log_prob(data.actions), w_d, valid)
        ent = weighted_mean(dist_d.entropy(), valid.float())
        loss = wa.dataset_actor_scale * loss_d
        metrics = {"actor_dataset_nll": float(loss_d.detach())}
        if wa.imag_actor_scale:
            dist_i = self.actor(traj.feat[:-1])
            loss_i = weighted_nll(dist_i.log_prob(traj.action[:-1]), w_i * traj.weight[:-1])
            loss = loss + wa.imag_actor_scale * loss_i
            ent = (ent + weighted_mean(dist_i.entropy(), traj.weight[:-1])) / 2
            metrics["actor_imag_nll"] = float(loss_i.detach())
        loss = loss - self.ac.entropy * ent
        metrics["actor_grad_norm"] = self.actor_opt.step(loss, "actor")
        metrics |= {"actor_loss": float(loss.detach()), "actor_entropy": float(ent.detach())}
        metrics |= _stats("weight_dataset", w_d, valid) | _stats("weight_imag", w_i)
        return metrics


class VLSafeLearner(WeightedActorLearner):
    """VL-SAFE phase 3 (see :class:`vlsafe.configs.VLSafeConfig` for every choice).

    Critics: V^r (discount ``gamma``) and V^c (``cost_gamma``) on imagined lambda-returns of
    the reward and cost heads, bootstrapped from their slow copies.  Advantages: on imagined
    states A = R^lambda - V_slow; on dataset states TD(``dataset_lambda``) returns along the
    window from the dataset's own rewards / costs minus V_slow.  p(s): the dataset's labels
    on dataset states (the safety head where a label is missing), the safety head on
    imagined ones.
    """

    def __init__(self, feat_dim: int, action_mode: str, config: VLSafeConfig):
        super().__init__(feat_dim, action_mode, config)
        self.critic_r = Critic(feat_dim, self.ac)
        self.critic_c = Critic(feat_dim, self.ac)

    def update(self, wm: Any, post: State, data: DataBatch) -> dict[str, float]:
        ac, cfg = self.ac, self.config
        traj = self.imagine(wm, post)
        weight = traj.weight[:-1]
        v_r = self.critic_r.value(traj.feat, slow=True)  # (H + 1, N)
        v_c = self.critic_c.value(traj.feat, slow=True)
        ret_r = lambda_return(traj.reward, traj.cont, v_r, ac.gamma, ac.lam)  # (H, N)
        ret_c = lambda_return(traj.cost, traj.cont, v_c, ac.cost_gamma, ac.lam)
        critic_loss = self.critic_r.loss(traj.feat[:-1], ret_r, weight) + self.critic_c.loss(
            traj.feat[:-1], ret_c, weight
        )
        critic_norm = self.critic_opt.step(critic_loss, "reward/cost critic")

        feat_d = wm.feat(post).detach()  # (B, T, F)
        vd_r = self.critic_r.value(feat_d, slow=True)  # (B, T)
        vd_c = self.critic_c.value(feat_d, slow=True)
        rd, valid = dataset_returns(data.rewards, vd_r, data, ac.gamma, cfg.dataset_lambda)
        cd, _ = dataset_returns(data.costs, vd_c, data, ac.cost_gamma, cfg.dataset_lambda)
        wa = cfg.weighted_actor
        norm = (wa.adv_norm, wa.adv_std_min)
        adv_r_d = normalize_advantage(rd - vd_r, *norm, mask=valid)
        adv_c_d = normalize_advantage(cd - vd_c, *norm, mask=valid)
        adv_r_i = normalize_advantage(ret_r - v_r[:-1], *norm)
        adv_c_i = normalize_advantage(ret_c - v_c[:-1], *norm)
        p_d = self.dataset_safety(wm, feat_d, data)
        p_i = traj.safety[:-1]
        betas = (wa.beta_r, wa.beta_c, wa.weight_clip)
        w_d = vlsafe_weights(p_d, adv_r_d, adv_c_d, *betas)
        w_i = vlsafe_weights(p_i, adv_r_i, adv_c_i, *betas)
        metrics = self.weighted_actor_step(feat_d, data, valid, w_d, traj, w_i)
        self.critic_r.update_slow()
        self.critic_c.update_slow()
        return {
            **metrics,
            "critic_loss": float(critic_loss.detach()),
            "critic_grad_norm": critic_norm,
            "safety_dataset_mean": float(p_d.mean()),
            "safety_imag_mean": float(p_i.mean()),
            **_stats("adv_r_dataset", (rd - vd_r).abs(), valid),
            **_stats("adv_c_dataset", (cd - vd_c).abs(), valid),
            **_stats("imag_return", ret_r),
            **_stats("imag_cost_return", ret_c),
        }

    @staticmethod
    def dataset_safety(wm: Any, feat_d: Tensor, data: DataBatch) -> Tensor:
        """p(s) (B, T) of the dataset states: the labels, or the safety head where missing."""
        if data.safety is not None and bool(torch.isfinite(data.safety).all()):
            return data.safety
        with torch.no_grad():
            head = wm.predict(feat_d)["safety"]
        if data.safety is None:
            return head
        return torch.where(torch.isfinite(data.safety), data.safety, head)


class FOSPLearner(WeightedActorLearner):
    """FOSP offline pre-training (see :class:`vlsafe.configs.FOSPConfig`).

    Critics (two-hot, with slow copies): Q^r(s, a), Q^c(s, a) on in-sample one-step targets
    r + gamma c V(s') from the dataset (IQL) and on imagined lambda-returns; V^r, V^c fitted
    to the slow Q of dataset (and imagined) actions with expectile weights -- an upper
    expectile ``reward_expectile`` for reward (max over in-support actions) and a lower one
    ``cost_expectile`` for cost (min over in-support actions: the feasibility value of
    reachability analysis).  Advantages A = Q(s, a) - V(s).

    Gate: a state is feasible when its per-step cost rate (1 - cost_gamma) V^c(s) is at most
    ``feasible_threshold``.  Feasible states weigh exp(beta_r (A^r - lambda A^c)) (reward,
    priced cost), infeasible ones exp(-beta_c A^c) (get back to safety):
    :func:`vlsafe_weights` with p = the gate.  lambda is the augmented Lagrangian multiplier
    of J_c <= ``cost_limit``, J_c the per-step cost rate of the actor's imagined rollouts.
    """

    def __init__(self, feat_dim: int, action_mode: str, config: FOSPConfig):
        super().__init__(feat_dim, action_mode, config)
        adim = self.actor.action_dim
        self.q_r, self.q_c = Critic(feat_dim + adim, self.ac), Critic(feat_dim + adim, self.ac)
        self.v_r, self.v_c = Critic(feat_dim, self.ac), Critic(feat_dim, self.ac)
        self.lagrangian = Lagrangian(
            config.cost_limit,
            multiplier_init=config.multiplier_init,
            penalty_init=config.penalty_init,
            penalty_growth=config.penalty_growth,
        )

    def _v_loss(self, v: Critic, q: Critic, feat: Tensor, action: Tensor, tau: float, mask):
        target = q.value(torch.cat([feat, action], -1), slow=True)
        diff = target - v.value(feat)
        return v.loss(feat, target, expectile_weight(diff, tau) * mask)

    def update(self, wm: Any, post: State, data: DataBatch) -> dict[str, float]:
        ac, cfg = self.ac, self.config
        feat_d = wm.feat(post).detach()  # (B, T, F)
        x_d = torch.cat([feat_d, data.actions], -1)  # (B, T, F + A)
        y_r, valid = dataset_returns(
            data.rewards, self.v_r.value(feat_d, slow=True), data, ac.gamma, 0.0
        )
        y_c, _ = dataset_returns(
            data.costs, self.v_c.value(feat_d, slow=True), data, ac.cost_gamma, 0.0
        )
        mask_d = valid.float()
        ones_d = torch.ones_like(mask_d)
        loss = self.q_r.loss(x_d, y_r, mask_d) + self.q_c.loss(x_d, y_c, mask_d)
        loss = loss + self._v_loss(
            self.v_r, self.q_r, feat_d, data.actions, cfg.reward_expectile, ones_d
        )
        loss = loss + self._v_loss(
            self.v_c, self.q_c, feat_d, data.actions, cfg.cost_expectile, ones_d
        )

        traj = self.imagine(wm, post)
        feat_i, act_i, weight = traj.feat[:-1], traj.action[:-1], traj.weight[:-1]
        x_i = torch.cat([feat_i, act_i], -1)
        ret_r = lambda_return(
            traj.reward, traj.cont, self.v_r.value(traj.feat, slow=True), ac.gamma, ac.lam
        )
        ret_c = lambda_return(
            traj.cost, traj.cont, self.v_c.value(traj.feat, slow=True), ac.cost_gamma, ac.lam
        )
        if cfg.imag_critic_scale:
            imag = self.q_r.loss(x_i, ret_r, weight) + self.q_c.loss(x_i, ret_c, weight)
            imag = imag + self._v_loss(
                self.v_r, self.q_r, feat_i, act_i, cfg.reward_expectile, weight
            )
            imag = imag + self._v_loss(
                self.v_c, self.q_c, feat_i, act_i, cfg.cost_expectile, weight
            )
            loss = loss + cfg.imag_critic_scale * imag
        critic_norm = self.critic_opt.step(loss, "Q/V critic")

        cost_rate = (1 - ac.cost_gamma) * ret_c[0].mean()  # J_c of the actor, per step
        multiplier, psi = self.lagrangian.update(cost_rate)
        wa = cfg.weighted_actor
        norm = (wa.adv_norm, wa.adv_std_min)
        betas = (wa.beta_r, wa.beta_c, wa.weight_clip)

        def weights(feat: Tensor, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
            v_c = self.v_c.value(feat)
            adv_r = self.q_r.value(x) - self.v_r.value(feat)
            adv_c = self.q_c.value(x) - v_c
            feasible = ((1 - ac.cost_gamma) * v_c <= cfg.feasible_threshold).float()
            adv_lag = normalize_advantage(adv_r - multiplier * adv_c, *norm, mask=mask)
            adv_c = normalize_advantage(adv_c, *norm, mask=mask)
            return vlsafe_weights(feasible, adv_lag, adv_c, *betas), feasible

        w_d, feasible_d = weights(feat_d, x_d, valid)
        w_i, feasible_i = weights(feat_i, x_i, None)
        metrics = self.weighted_actor_step(feat_d, data, valid, w_d, traj, w_i)
        for critic in (self.q_r, self.q_c, self.v_r, self.v_c):
            critic.update_slow()
        return {
            **metrics,
            "critic_loss": float(loss.detach()),
            "critic_grad_norm": critic_norm,
            "lagrange_multiplier": multiplier,
            "lagrange_penalty": psi,
            "lagrange_penalty_mu": float(self.lagrangian.penalty),
            "imag_cost_rate": float(cost_rate),
            "feasible_dataset": float(feasible_d.mean()),
            "feasible_imag": float(feasible_i.mean()),
            **_stats("imag_return", ret_r),
        }
