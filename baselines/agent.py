"""The agent protocol and registry, as imported before they moved to :mod:`carla_safe_envs.agents`.

The one implementation lives in :mod:`carla_safe_envs.agents` (the seam every model package
implements and none owns); this module re-exports all of its public names so that ``from
baselines.agent import make_agent`` keeps working.  New code imports from
:mod:`carla_safe_envs.agents`.
"""

from carla_safe_envs import agents as _agents
from carla_safe_envs.agents import *  # noqa: F403 (the re-export is the point)

__all__ = list(_agents.__all__)
