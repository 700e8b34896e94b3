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

import contextlib
import importlib.util
import io
import sys

from carla_safe_envs.agents import AGENTS, TABLE_MODELS, Agent, AgentError, load_agent, make_agent


def _import_legacy_gym_quietly() -> None:
    """Import the legacy ``gym`` package (if installed) with its import-time notice muted.

    d3rlpy depends on gym 0.26 and imports it, and so does stable-baselines3's compatibility
    shim when it is installed; gym then prints a "Gym has been unmaintained" notice to stderr
    on every command line run.  carla-safe uses Gymnasium only and calls nothing in gym."""
    if "gym" in sys.modules or importlib.util.find_spec("gym") is None:
        return
    with contextlib.redirect_stderr(io.StringIO()):
        import gym  # noqa: F401


_import_legacy_gym_quietly()

__all__ = ["AGENTS", "TABLE_MODELS", "Agent", "AgentError", "load_agent", "make_agent"]
