"""The agent registry: which models exist and which class implements each, by import string.

Part of the agent seam (:mod:`carla_safe_envs.agents` re-exports everything here; import from
there).  The registry maps the model names of the comparison table (``ppo sac dqn bc cql iql
dreamerv3 fosp vlsafe``, plus ``expert``) to :class:`AgentSpec` entries that name the
implementing class as ``"module:Class"``, so that listing models imports neither torch, an
RL library nor the packages that implement them (``baselines``, ``vlsafe``): a class is
imported when an agent of that model is made or loaded.  Gymnasium registers its
environments the same way (an entry point string per id).

A model of your own is one :func:`register` call with an :class:`AgentSpec` naming its class
(a :class:`~carla_safe_envs.agents.BaseAgent` subclass); see the README's "How the code is
laid out".
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from carla_safe_envs.agents import BaseAgent

Training = Literal["online", "offline", "none"]
ActionMode = Literal["discrete", "continuous"]


class AgentError(ValueError):
    """A model, preset, dataset or checkpoint that cannot be used; the message says why."""


@dataclass(frozen=True)
class AgentSpec:
    """One registry entry.

    Attributes:
        name: the model name used everywhere (CLI, result store, tables).
        target: ``"module:Class"`` of the implementation, imported on first use.
        training: ``online`` (trains in the env), ``offline`` (trains from a dataset file) or
            ``none`` (nothing to learn).
        action_mode: the environment action mode the model acts in.
        needs_safety: offline training needs the dataset's ``safety`` column (p(s) labels).
        dataset_optional: an online model that can also be trained from a dataset
            (DreamerV3's offline option).
        accepts_discrete_dataset: a continuous-mode offline model that also trains on a
            discrete-mode dataset, each action index read as its continuous (acc / 3, steer)
            value (IQL: d3rlpy has no discrete IQL).
        label: the row name of the seed's comparison table.
        summary: one line for ``--help`` and the README.
    """

    name: str
    target: str
    training: Training
    action_mode: ActionMode
    needs_safety: bool = False
    dataset_optional: bool = False
    accepts_discrete_dataset: bool = False
    label: str = ""
    summary: str = ""

    def load_class(self) -> type[BaseAgent]:
        """The implementing class (imported now); a missing package is an error that says
        what to install."""
        module, _, attr = self.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            if (exc.name or "").split(".")[0] in ("baselines", "vlsafe"):
                raise AgentError(
                    f"model {self.name!r} is not available in this version of carla-safe "
                    f"({exc.name} is missing)"
                ) from exc
            raise AgentError(
                f"model {self.name!r} needs {exc.name!r}, which is not installed: "
                "pip install 'carla-safe[rl]' (or `make install`)"
            ) from exc
        return cls


AGENTS: dict[str, AgentSpec] = {}


def register(spec: AgentSpec) -> AgentSpec:
    """Add ``spec`` to :data:`AGENTS` (an existing name is an error)."""
    if spec.name in AGENTS:
        raise AgentError(f"model {spec.name!r} is already registered ({AGENTS[spec.name].target})")
    AGENTS[spec.name] = spec
    return spec


def get_spec(name: str) -> AgentSpec:
    """The registry entry of ``name``; an unknown name lists the known ones."""
    try:
        return AGENTS[name]
    except KeyError:
        raise AgentError(f"unknown model {name!r}; choose one of: {', '.join(AGENTS)}") from None


# ------------------------------------------------------------------ the built-in models
_ENTRIES = (
    AgentSpec(
        "expert",
        "baselines.expert:ExpertAgent",
        "none",
        "discrete",
        label="Expert",
        summary="the privileged data-collecting driver (reads the simulator state)",
    ),
    AgentSpec(
        "ppo",
        "baselines.sb3:PPOAgent",
        "online",
        "discrete",
        label="PPO",
        summary="stable-baselines3 PPO, CnnPolicy on the BEV, trained in the env",
    ),
    AgentSpec(
        "sac",
        "baselines.sb3:SACAgent",
        "online",
        "continuous",
        label="SAC",
        summary="stable-baselines3 SAC on the continuous (acc, steer) mode",
    ),
    AgentSpec(
        "dqn",
        "baselines.sb3:DQNAgent",
        "online",
        "discrete",
        label="DQN",
        summary="stable-baselines3 DQN, CnnPolicy on the BEV, trained in the env",
    ),
    AgentSpec(
        "bc",
        "baselines.offline:BCAgent",
        "offline",
        "discrete",
        label="BC",
        summary="d3rlpy DiscreteBC on the expert dataset",
    ),
    AgentSpec(
        "cql",
        "baselines.offline:CQLAgent",
        "offline",
        "discrete",
        label="CQL",
        summary="d3rlpy DiscreteCQL on the expert dataset",
    ),
    AgentSpec(
        "iql",
        "baselines.offline:IQLAgent",
        "offline",
        "continuous",
        accepts_discrete_dataset=True,
        label="IQL",
        summary="d3rlpy IQL on the continuous-mode expert dataset",
    ),
    AgentSpec(
        "dreamerv3",
        "vlsafe.agents:DreamerV3Agent",
        "online",
        "discrete",
        dataset_optional=True,
        label="DreamerV3",
        summary="DreamerV3 on VL-SAFE's world model, reward only",
    ),
    AgentSpec(
        "fosp",
        "vlsafe.agents:FOSPAgent",
        "offline",
        "discrete",
        label="FSOP",
        summary="FOSP: expectile critics, reachability-gated weighting, Lagrangian cost",
    ),
    AgentSpec(
        "vlsafe",
        "vlsafe.agents:VLSafeAgent",
        "offline",
        "discrete",
        needs_safety=True,
        label="VL-SAFE",
        summary="VL-SAFE: safety-aware world model, p(s)-weighted actor",
    ),
)

#: OSRL's safe offline baselines (:mod:`baselines.osrl`): not in the paper's table, shown as
#: extra rows beside its nine models
OSRL_MODELS: tuple[str, ...] = ("bcsafe", "bcqlag", "cpq", "coptidice", "cdt")
_OSRL_LABELS = ("BC-Safe", "BCQ-Lag", "CPQ", "COptiDICE", "CDT")
_ENTRIES += tuple(
    AgentSpec(
        name,
        f"baselines.osrl:{cls}",
        "offline",
        "continuous",
        accepts_discrete_dataset=True,
        label=f"{label} (OSRL, not in paper)",
        summary=f"OSRL's {label} on the downsampled flattened BEV, per-task cost limit "
        "(not in the paper's table)",
    )
    for name, label, cls in zip(
        OSRL_MODELS,
        _OSRL_LABELS,
        ("BCSafeAgent", "BCQLagAgent", "CPQAgent", "COptiDICEAgent", "CDTAgent"),
        strict=True,
    )
)
for _spec in _ENTRIES:
    register(_spec)

#: The nine models of the seed's comparison table, in its row order.
TABLE_MODELS: tuple[str, ...] = (
    "ppo",
    "sac",
    "dqn",
    "bc",
    "cql",
    "iql",
    "dreamerv3",
    "fosp",
    "vlsafe",
)
