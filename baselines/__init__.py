"""The models of the comparison table behind one ``Agent`` protocol.

:mod:`baselines.agent` holds the protocol, the shared :class:`~baselines.agent.BaseAgent`
bookkeeping and the registry keyed by the model names ``ppo sac dqn bc cql iql dreamerv3 fosp
vlsafe`` (plus ``expert``): PPO, DQN and SAC trained online with stable-baselines3
(:mod:`baselines.sb3`), BC, CQL and IQL trained offline with d3rlpy (:mod:`baselines.offline`),
and DreamerV3, FOSP and VL-SAFE on VL-SAFE's world model (:mod:`vlsafe.agents`)::

    from baselines import make_agent, load_agent
    agent = make_agent("bc", "CarlaLeftTurn-v0", preset="small", seed=0)
    agent.fit("left.h5")
    agent.save("runs/bc-left")
"""

from baselines.agent import AGENTS, TABLE_MODELS, Agent, AgentError, load_agent, make_agent

__all__ = ["AGENTS", "TABLE_MODELS", "Agent", "AgentError", "load_agent", "make_agent"]
