"""Behaviour profiles of the privileged driver, and the named dataset mixes built from them.

The expert (:class:`carla_safe_envs.expert.Expert`) is one driver with one set of parameters;
a :class:`DriverProfile` names another set, so that the same code drives like a careful
expert, like CARLA's traffic-manager autopilot (fast, short headways, overtaking, late and
imperfect yielding) or like a reckless driver.  Offline datasets are collected from a
:class:`DatasetMix`: a cycle of (profile, noise) components, episode ``k`` driven by component
``k % len(mix)``, so a dataset's quality is stated by its mix and measured by its card
(:mod:`carla_safe_envs.cards`).

Profiles (the parameters are the fields of :class:`DriverProfile`; ``python -m
carla_safe_envs.profiles`` prints them, and ``--metrics`` drives each on each task):

- ``expert``: the reward's 4 m/s, 1.2 s headway, yields with a safety margin 4 s ahead, keeps
  the route's lane, reacts at once, sees everything.  The driver of the ``cpu`` grid's data.
- ``autopilot``: like CARLA's traffic-manager autopilot in town: cruises a little above the
  30 km/h urban limit (9.7 m/s = 35 km/h: starting from rest, it then averages 7-8 m/s on
  Four Lane, near the 8.76 m/s of the paper's data), 0.6 s headway, overtakes slower vehicles by moving across the lane line
  (within the route's 3 m tolerance: a full lane change ends the episode, DESIGN 3), yields
  only 2 s ahead with a thin margin, reacts 0.2 s late, and has lapses of attention in which
  it sees no other vehicle.  It sometimes collides.
- ``cautious``: 3 m/s, 2 s headway, wide margins on roads, 5 s look-ahead (at junctions the
  expert's margin: a wider one made it stop inside the Right Turn's flow, CR 0.8 in 10
  episodes).
- ``reckless``: 11 m/s, 0.3 s headway, overtakes, never yields (car following only), 0.3 s
  late, frequent lapses.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple


class ProfileError(ValueError):
    """An unknown profile or mix name, or a profile parameter out of range."""


@dataclass(frozen=True)
class DriverProfile:
    """The parameters of one way of driving (all SI units).

    Attributes:
        name: the profile's name.
        cruise: target speed [m/s] (the reward's desired speed is 4).
        headway: car-following (IDM) time headway [s].
        min_gap: car-following standstill gap [m].
        margin: safety margin (length, width) added to the ego's box on roads when checking
            its plans against the traffic [m].
        junction_margin: the same where a yield zone has crossing traffic (the turns) [m].
        horizon: how far ahead plans are checked for conflicts [s]; 0 never yields (it
            follows the car ahead, nothing more).
        others_brake: how hard it expects a vehicle with the ego in its path to brake
            [m/s^2]: the higher, the earlier it pushes into a gap.
        overtake: lateral offset [m] by which it passes a slower vehicle ahead (0: keeps the
            route's lane); kept below the route's 3 m tolerance.
        reaction_steps: its actions are carried out this many 0.1 s steps late.
        lapse_rate: probability per step on roads that a lapse of attention starts, in which
            it sees no other vehicle (it drives as on an empty road).  Never where a yield
            zone has crossing traffic (the turns): at a junction it attends.
        lapse_steps: (shortest, longest) length of a lapse [steps].
        view_range: other vehicles farther than this from the ego are not seen [m].
        description: one line on what the profile stands for.
    """

    name: str
    cruise: float = 4.0
    headway: float = 1.2
    min_gap: float = 3.0
    margin: tuple[float, float] = (1.0, 0.4)
    junction_margin: tuple[float, float] = (3.0, 1.0)
    horizon: float = 4.0
    others_brake: float = 4.0
    overtake: float = 0.0
    reaction_steps: int = 0
    lapse_rate: float = 0.0
    lapse_steps: tuple[int, int] = (10, 20)
    view_range: float = math.inf
    description: str = ""

    def __post_init__(self) -> None:
        def bad(field: str, allowed: str) -> ProfileError:
            return ProfileError(
                f"profile {self.name!r}: {field}={getattr(self, field)!r} is out of range; "
                f"expected {allowed}"
            )

        checks = (
            ("cruise", 0.5 <= self.cruise <= 20.0, "0.5 <= cruise <= 20 [m/s]"),
            ("headway", 0.0 < self.headway <= 5.0, "0 < headway <= 5 [s]"),
            ("min_gap", 0.0 <= self.min_gap <= 20.0, "0 <= min_gap <= 20 [m]"),
            ("horizon", 0.0 <= self.horizon <= 10.0, "0 <= horizon <= 10 [s]"),
            ("others_brake", 0.0 <= self.others_brake <= 10.0, "0 <= others_brake <= 10 [m/s^2]"),
            ("overtake", 0.0 <= self.overtake <= 2.8, "0 <= overtake <= 2.8 [m]"),
            ("reaction_steps", 0 <= self.reaction_steps <= 10, "0 <= reaction_steps <= 10"),
            ("lapse_rate", 0.0 <= self.lapse_rate <= 1.0, "a probability in [0, 1]"),
            ("view_range", self.view_range > 0.0, "view_range > 0 [m]"),
        )
        for field, ok, allowed in checks:
            if not ok:
                raise bad(field, allowed)
        for field in ("margin", "junction_margin"):
            value = getattr(self, field)
            if len(value) != 2 or min(value) < 0.0:
                raise bad(field, "(length, width) >= 0 [m]")
        lo, hi = self.lapse_steps
        if not 1 <= lo <= hi:
            raise bad("lapse_steps", "(shortest, longest) with 1 <= shortest <= longest")

    def params(self) -> dict[str, Any]:
        """The parameters as JSON-ready values (``view_range`` inf as None)."""
        out = dataclasses.asdict(self)
        out["margin"], out["junction_margin"] = list(self.margin), list(self.junction_margin)
        out["lapse_steps"] = list(self.lapse_steps)
        out["view_range"] = None if math.isinf(self.view_range) else self.view_range
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DriverProfile:
        """The profile :meth:`params` wrote."""
        kw = dict(params)
        for field in ("margin", "junction_margin", "lapse_steps"):
            if field in kw:
                kw[field] = tuple(kw[field])
        if kw.get("view_range") is None:
            kw["view_range"] = math.inf
        return cls(**kw)


PROFILES: dict[str, DriverProfile] = {
    p.name: p
    for p in (
        DriverProfile(
            "expert",
            description="the reward's 4 m/s, keeps its lane, yields with a margin 4 s ahead",
        ),
        DriverProfile(
            "autopilot",
            cruise=9.7,
            headway=0.6,
            min_gap=2.0,
            margin=(0.5, 0.2),
            junction_margin=(2.0, 0.6),
            horizon=2.0,
            others_brake=6.0,
            overtake=2.3,
            reaction_steps=2,
            lapse_rate=0.01,
            lapse_steps=(10, 25),
            description="traffic-manager-like: 30 km/h, short headway, overtakes, "
            "yields late, lapses of attention",
        ),
        DriverProfile(
            "cautious",
            cruise=3.0,
            headway=2.0,
            min_gap=5.0,
            margin=(2.0, 0.8),
            horizon=5.0,
            description="slow, long headway, wide margins",
        ),
        DriverProfile(
            "reckless",
            cruise=11.0,
            headway=0.3,
            min_gap=1.0,
            horizon=0.0,
            overtake=2.3,
            reaction_steps=3,
            lapse_rate=0.03,
            lapse_steps=(10, 30),
            description="fast, tailgates, overtakes, never yields, often inattentive",
        ),
    )
}


def get_profile(name: str | DriverProfile) -> DriverProfile:
    """The profile called ``name`` (a profile is returned as it is)."""
    if isinstance(name, DriverProfile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(
            f"unknown driver profile {name!r}; choose one of: {', '.join(PROFILES)}"
        ) from None


class Component(NamedTuple):
    """One element of a mix's episode cycle: a profile and an expert noise level."""

    profile: DriverProfile
    noise: float


@dataclass(frozen=True)
class DatasetMix:
    """A named cycle of (profile, noise) components: episode ``k`` of a dataset is driven by
    ``components[k % len(components)]``.

    Attributes:
        name: the mix's name (``collect --mix``, a grid preset's ``dataset_mix``).
        components: the cycle (a component listed twice is driven twice as often).
        description: what the mix stands for.
    """

    name: str
    components: tuple[Component, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.components:
            raise ProfileError(f"mix {self.name!r} has no components")
        for c in self.components:
            if not 0.0 <= c.noise <= 1.0:
                raise ProfileError(
                    f"mix {self.name!r}: noise {c.noise} of profile {c.profile.name!r} is not a "
                    "probability in [0, 1]"
                )

    def cycle(self) -> Iterator[Component]:
        """The components, episode by episode, forever."""
        k = 0
        while True:
            yield self.components[k % len(self.components)]
            k += 1

    @property
    def profiles(self) -> tuple[DriverProfile, ...]:
        """The distinct profiles, in order of first appearance (a dataset's ``profile_ids``
        index this tuple)."""
        return tuple({c.profile.name: c.profile for c in self.components}.values())

    def describe(self) -> dict[str, Any]:
        """The mix as JSON-ready values: name, description, the cycle, and every profile's
        parameters in the order of :attr:`profiles` (which a dataset's ``profile_ids``
        index)."""
        return {
            "name": self.name,
            "description": self.description,
            "cycle": [[c.profile.name, c.noise] for c in self.components],
            "profiles": [p.params() for p in self.profiles],
        }

    def shares(self) -> dict[str, float]:
        """Share of episodes per profile."""
        n = len(self.components)
        out: dict[str, float] = {}
        for c in self.components:
            out[c.profile.name] = out.get(c.profile.name, 0.0) + 1.0 / n
        return out


def noise_mix(noise: tuple[float, ...] | list[float], profile: str = "expert") -> DatasetMix:
    """One profile at the given noise levels, cycled (the ``expert`` mix is
    ``noise_mix((0.0, 0.1, 0.3))``, the data of the ``cpu`` grid)."""
    p = get_profile(profile)
    levels = tuple(float(x) for x in noise)
    name = (
        profile
        if p.name == "expert" and levels == (0.0, 0.1, 0.3)
        else (f"{profile}@{','.join(f'{x:g}' for x in levels)}")
    )
    return DatasetMix(name, tuple(Component(p, x) for x in levels))


def _frontier_profiles() -> tuple[DriverProfile, ...]:
    """DSRL-style: target speeds from 3 to 10 m/s, each with a long and a short headway, so
    that the episodes spread over the Return-Cost frontier."""
    out = []
    for cruise in (3.0, 4.0, 5.0, 6.5, 8.0, 10.0):
        for headway, margin_scale, style in ((1.6, 1.5, "careful"), (0.5, 0.4, "pushy")):
            out.append(
                DriverProfile(
                    f"frontier-{cruise:g}-{style}",
                    cruise=cruise,
                    headway=headway,
                    min_gap=4.0 if style == "careful" else 1.5,
                    margin=(1.0 * margin_scale, 0.4 * margin_scale),
                    junction_margin=(3.0 * margin_scale, 1.0 * margin_scale),
                    horizon=4.0 if style == "careful" else 2.0,
                    overtake=0.0 if style == "careful" else 2.3,
                    reaction_steps=0 if style == "careful" else 2,
                    lapse_rate=0.0 if style == "careful" else 0.01,
                    description=f"{cruise:g} m/s, {style}",
                )
            )
    return tuple(out)


MIXES: dict[str, DatasetMix] = {
    m.name: m
    for m in (
        noise_mix((0.0, 0.1, 0.3)),
        DatasetMix(
            "paper",
            (
                Component(PROFILES["autopilot"], 0.0),
                Component(PROFILES["autopilot"], 0.05),
                Component(PROFILES["autopilot"], 0.0),
                Component(PROFILES["autopilot"], 0.1),
                Component(PROFILES["autopilot"], 0.0),
                Component(PROFILES["autopilot"], 0.05),
                Component(PROFILES["expert"], 0.1),
                Component(PROFILES["cautious"], 0.0),
                Component(PROFILES["reckless"], 0.0),
                Component(PROFILES["expert"], 0.0),
            ),
            "calibrated to the paper's data: autopilot-like driving in 6 of 10 episodes "
            "(noise 0-0.1), the expert and a cautious driver in 3 (slower, safer driving a "
            "reweighting method can choose), a reckless driver in 1",
        ),
        DatasetMix(
            "frontier",
            tuple(Component(p, 0.05) for p in _frontier_profiles()),
            "DSRL-style: 12 profiles from 3 to 10 m/s, careful and pushy, noise 0.05",
        ),
    )
}
MIX_NAMES = tuple(MIXES)


def get_mix(name: str | DatasetMix) -> DatasetMix:
    """The mix called ``name`` (a mix is returned as it is)."""
    if isinstance(name, DatasetMix):
        return name
    try:
        return MIXES[name]
    except KeyError:
        raise ProfileError(
            f"unknown dataset mix {name!r}; choose one of: {', '.join(MIXES)}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """Print the profiles (``--json``) or drive each on each task (``--metrics``)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m carla_safe_envs.profiles", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", action="store_true", help="the profiles' parameters as JSON")
    parser.add_argument(
        "--metrics", action="store_true", help="drive every profile on every task (20 episodes)"
    )
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    if not args.metrics:
        params = {n: PROFILES[n].params() for n in args.profiles}
        if args.json:
            print(json.dumps(params, indent=2))
        else:
            for name, p in params.items():
                print(f"{name}: {p.pop('description')}")
                print("    " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "name"))
        return 0
    import carla_safe_envs
    from carla_safe_envs.expert import run_episodes
    from carla_safe_envs.metrics import format_table

    rows = {}
    for task in carla_safe_envs.TASK_IDS:
        for name in args.profiles:
            rows[f"{task} {name}"] = run_episodes(
                task, episodes=args.episodes, seed=args.seed, profile=name, speed_cue=True
            )
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
