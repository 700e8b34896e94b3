"""The VL-SAFE agent (not implemented yet).

This package will hold the three phases of VL-SAFE: a CLIP safety labeler (one implementation
of a ``SafetyLabeler`` protocol, scored against a privileged ground-truth labeler) that turns
every stored BEV frame into a safety probability p(s); a DreamerV3-style safety-aware world
model (RSSM with reward, cost, continuation and safety heads) shared with the DreamerV3 and FOSP
baselines; and the reward / cost critics with the p(s)-weighted actor trained on imagined
rollouts from the offline dataset. It depends on torch and ``carla_safe_envs``, never on
``baselines`` or ``benchmarks``.
"""
