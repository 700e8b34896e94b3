"""VL-SAFE: the three phases of the method, and the world-model agents built on it.

Phase 1, safety labels: a CLIP safety labeler (one implementation of a ``SafetyLabeler``
protocol, scored against a privileged ground-truth labeler) turns every stored BEV frame into a
safety probability p(s) (:mod:`vlsafe.labels`, :mod:`vlsafe.label_report`).  Phase 2: a
DreamerV3-style safety-aware world model (RSSM with reward, cost, continuation and safety
heads), shared with the DreamerV3 and FOSP baselines.  Phase 3: reward / cost critics and the
p(s)-weighted actor trained on imagined rollouts from the offline dataset.  The package
depends on torch and ``carla_safe_envs`` only: :mod:`vlsafe.agents` implements the
:mod:`carla_safe_envs.agents` protocol, whose registry names it by import string; it never
imports ``baselines``.
"""
