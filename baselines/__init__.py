"""The baseline zoo behind one ``Agent`` protocol (not implemented yet).

This package will give every model of the comparison table the same interface (``fit``,
``act(obs) -> action``, ``save``, ``load``) through a name -> class registry keyed by the model
names ``ppo sac dqn bc cql iql dreamerv3 fosp vlsafe`` (plus ``expert``): PPO, DQN and SAC
trained online with stable-baselines3, BC, CQL and IQL trained offline with d3rlpy, and
DreamerV3 and FOSP built on VL-SAFE's world model from ``vlsafe``.
"""
