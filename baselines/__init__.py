"""The library baselines of the comparison table, as implementations of the ``Agent`` protocol.

The protocol, the shared :class:`~carla_safe_envs.agents.BaseAgent` bookkeeping and the
registry keyed by the model names ``ppo sac dqn bc cql iql dreamerv3 fosp vlsafe`` (plus
``expert``) live in :mod:`carla_safe_envs.agents`; this package implements PPO, DQN and SAC
trained online with stable-baselines3 (:mod:`baselines.sb3`), BC, CQL and IQL trained offline
with d3rlpy (:mod:`baselines.offline`) and the expert driver (:mod:`baselines.expert`).
DreamerV3, FOSP and VL-SAFE are implemented by :mod:`vlsafe.agents`; this package never
imports ``vlsafe`` (the registry reaches it by import string).  ``make_agent`` and
``load_agent`` are re-exported here for convenience::

    from baselines import make_agent, load_agent
    agent = make_agent("bc", "CarlaLeftTurn-v0", preset="small", seed=0)
    agent.fit("left.h5")
    agent.save("runs/bc-left")
"""

from carla_safe_envs.agents import AGENTS, TABLE_MODELS, Agent, AgentError, load_agent, make_agent

__all__ = ["AGENTS", "TABLE_MODELS", "Agent", "AgentError", "load_agent", "make_agent"]
