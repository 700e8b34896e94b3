"""Background traffic of the embedded simulator: lane following with IDM and MOBIL.

Vehicles live in lane coordinates (lane index, arc length ``s``, lateral offset ``d`` while a
lane change settles) on the shared :class:`~carla_safe_envs.maps.RoadMap`, in fixed-capacity
numpy arrays (slot order is stable, so snapshots are deterministic).  Each vehicle carries a
short plan of the next ``PLAN`` lanes; leaders are found along that plan for all vehicles at
once with one sorted search, so the step is a fixed number of numpy calls whatever the count
(~0.3 ms for 50 vehicles on a 2-core CI machine).

* Car following: the Intelligent Driver Model (Treiber et al., 2000) with the parameters
  below; the ego counts as a leader when it is in the corridor ahead of a vehicle.  Drivers
  re-decide their acceleration every ``DECISION_PERIOD`` steps (a 0.3 s reaction time); the
  motion itself is integrated every 0.1 s step.
* Lane changes (``autopilot`` only): MOBIL (Kesting et al., 2007) with politeness 0 — a
  vehicle moves to a same-direction neighbour lane when its IDM acceleration there is at least
  ``MOBIL_GAIN`` higher and the new follower need not brake harder than ``MOBIL_SAFE``; never
  into the ego's flank.  The lateral offset then settles at ``LATERAL_SPEED``.
* ``autopilot`` vehicles choose random successors at forks and are re-spawned out of the ego's
  view when they get further than ``spec.radius`` from it; ``flow`` vehicles enter at the
  spawn pose with random gaps, follow the straightest path and leave at its end; ``placed``
  vehicles start where a scripted scene puts them and go straight on.
* Giving way to the ego: a vehicle brakes for the ego's box stretched along its velocity
  (:func:`swept_box`) and, around a junction with a yield zone, waits at the zone's edge
  while the ego is inside (:mod:`carla_safe_envs.junction`).
"""

from __future__ import annotations

import math

import numpy as np

from carla_safe_envs.backends.base import (
    DT,
    LENGTH,
    STATE_DIM,
    VX,
    VY,
    WIDTH,
    YAW,
    TrafficSpec,
    X,
    Y,
    Z,
)
from carla_safe_envs.junction import gap_to_zone, in_zone
from carla_safe_envs.maps import RoadMap
from carla_safe_envs.route import straightest_successor

PLAN = 4  # lanes in each vehicle's look-ahead plan
LOOKAHEAD = 60.0  # leader search range [m]
_OWN_LANE = np.array([1.0] + [0.0] * (PLAN - 1))
_BEFORE = np.triu(np.ones((PLAN, PLAN)), k=1)  # plan_len @ _BEFORE: lengths of the lanes before
# IDM parameters (urban/highway mix, CARLA traffic-manager-like behaviour)
IDM_A = 1.5  # maximum acceleration [m/s^2]
IDM_B = 2.0  # comfortable deceleration [m/s^2]
IDM_S0 = 2.5  # standstill gap [m]
IDM_T = 1.0  # time headway of autopilot vehicles [s]
FLOW_T = (
    0.5  # time headway in junction flows: they keep their gaps as CARLA's traffic manager does [s]
)
MAX_DECEL = 8.0  # physical braking limit [m/s^2]
# MOBIL
MOBIL_GAIN = 0.3  # required acceleration advantage [m/s^2]
MOBIL_SAFE = 3.0  # maximum braking imposed on the new follower [m/s^2]
DECISION_PERIOD = 3  # drivers choose their acceleration every 3 steps (0.3 s reaction time)
MOBIL_PERIOD = 9  # every vehicle considers a lane change every 9 steps (a decision step)
assert MOBIL_PERIOD % DECISION_PERIOD == 0
LATERAL_SPEED = 1.2  # [m/s] a 3.5 m lane change takes ~3 s...
LATERAL_PER_FORWARD = 0.3  # ...and at least ~12 m of travel: lateral <= 0.3 x forward speed
SWEEP_TIME, SWEEP_MIN = 1.5, 4.0  # traffic yields to the ego's next 1.5 s of travel [s, m]
RESPAWN_PERIOD = 20  # far vehicles are re-spawned every 20 steps (2 s)
VIEW_CLEARANCE = 40.0  # re-spawns happen at least this far from the ego (outside the BEV) [m]


def idm_acceleration(v, v0, gap, dv, headway=IDM_T, *, a_max=IDM_A, b=IDM_B, s0=IDM_S0):
    """IDM acceleration [m/s^2] for speed ``v``, desired ``v0``, bumper gap ``gap`` and
    approach rate ``dv`` (arrays or floats), limited to [-MAX_DECEL, a_max]."""
    s_star = s0 + np.maximum(v * headway + v * dv / (2.0 * math.sqrt(a_max * b)), 0.0)
    acc = a_max * (1.0 - (v / np.maximum(v0, 0.1)) ** 4 - (s_star / np.maximum(gap, 0.1)) ** 2)
    return np.minimum(np.maximum(acc, -MAX_DECEL), a_max)  # np.clip costs 2x more


def swept_box(ego: np.ndarray) -> np.ndarray:
    """The ego box stretched forward over where it will be in ``SWEEP_TIME`` (at least
    ``SWEEP_MIN`` metres): traffic yields to the ego's near-future path, like the bounding box
    that CARLA's traffic manager extends along a vehicle's velocity."""
    speed = math.hypot(ego[VX], ego[VY])
    ext = max(SWEEP_MIN, SWEEP_TIME * speed)
    out = ego.copy()
    out[X] += 0.5 * ext * math.cos(ego[YAW])
    out[Y] += 0.5 * ext * math.sin(ego[YAW])
    out[LENGTH] += ext
    return out


def ego_extent(ego: np.ndarray, yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half extents of the ego box along and across headings ``yaw`` [m]."""
    c, s = np.abs(np.cos(ego[YAW] - yaw)), np.abs(np.sin(ego[YAW] - yaw))
    return c * ego[LENGTH] / 2 + s * ego[WIDTH] / 2, s * ego[LENGTH] / 2 + c * ego[WIDTH] / 2


class Traffic:
    """All background vehicles of one episode."""

    def __init__(self, road: RoadMap, spec: TrafficSpec, rng: np.random.Generator, ego: np.ndarray):
        self.road, self.spec, self.rng = road, spec, rng
        cap = {"autopilot": spec.count, "flow": 32, "placed": len(spec.placed)}.get(spec.kind, 0)
        self.headway = np.full(cap, FLOW_T if spec.kind == "flow" else IDM_T)
        self.alive = np.zeros(cap, dtype=bool)
        self.lane = np.zeros(cap, dtype=np.int64)
        self.plan = np.zeros((cap, PLAN), dtype=np.int64)
        self.s = np.zeros(cap)
        self.v = np.zeros(cap)
        self.v0 = np.zeros(cap)
        self.d = np.zeros(cap)  # lateral offset from the lane centre, + right [m]
        self.d_rate = np.zeros(cap)  # its rate of change [m/s]
        self.acc = np.zeros(cap)  # the drivers' last decided acceleration [m/s^2]
        self.length = np.zeros(cap)
        self.width = np.zeros(cap)
        self.steps = 0
        self._flow_path: list[int] = []
        self._flow_next_gap = 0.0
        self._pool = None
        if spec.kind == "autopilot":
            if spec.lanes:
                lanes = np.asarray(spec.lanes)
                self._pool = np.concatenate(
                    [np.arange(road.lane_start[i], road.lane_start[i + 1]) for i in lanes]
                )
                self._pool_pts = road.pts[self._pool].astype(np.float64)
            self._spawn_autopilot(ego, np.arange(cap), min_dist=10.0)
        elif spec.kind == "flow":
            self._init_flow()
        elif spec.kind == "placed":
            for i, pose in enumerate(spec.placed):
                lp = road.locate(pose.x, pose.y, pose.z, pose.yaw, radius=4.0)
                if lp is None:
                    raise ValueError(
                        f"placed vehicle {pose} is not on a {road.town} lane heading its way"
                    )
                self._new_vehicle(i, lp.lane, lp.s, pose.speed, pose.speed)
                self.d[i] = lp.lateral
        self._update_states()

    # -------------------------------------------------------------- spawning
    def _new_vehicle(self, i: int, lane: int, s: float, speed: float, v0: float) -> None:
        self.alive[i], self.lane[i], self.s[i] = True, lane, s
        self.v[i], self.v0[i], self.d[i], self.acc[i] = speed, v0, 0.0, 0.0
        self.length[i] = self.rng.uniform(4.0, 5.2)
        self.width[i] = self.rng.uniform(1.8, 2.2)
        if self.spec.kind == "flow":
            self.plan[i] = self._flow_plan(lane)
        else:
            self.plan[i, 0] = lane
            for k in range(1, PLAN):
                self.plan[i, k] = self._random_successor(self.plan[i, k - 1])

    def _random_successor(self, lane: int) -> int:
        """Autopilot vehicles pick a random successor at forks; placed ones go straight on."""
        if self.spec.kind == "placed":
            return straightest_successor(self.road, int(lane))
        succ = self.road.successors(int(lane))
        return int(succ[self.rng.integers(len(succ))]) if len(succ) else int(lane)

    def _spawn_autopilot(self, ego: np.ndarray, slots: np.ndarray, min_dist: float) -> None:
        """Place vehicles in ``slots`` on free lane points ``min_dist``..radius from the ego:
        on the spec's lanes first and, once those are full, on any lane around the ego."""
        if len(slots) == 0:
            return
        road = self.road
        pools = [lambda: road.candidates(ego[X], ego[Y], self.spec.radius)]  # built only if needed
        if self._pool is not None:
            pools.insert(0, lambda: self._pool)
        taken = self._xyz[self.alive, :2] if self.alive.any() else np.empty((0, 2))
        todo = list(slots)
        for make_pool in pools:
            if not todo:
                break
            pool = self._within(make_pool(), ego, min_dist)
            while todo and len(pool):
                tries = pool[self.rng.integers(len(pool), size=16)]
                q = road.pts[tries, :2].astype(np.float64)
                d2 = ((q[:, None, :] - taken[None, :, :]) ** 2).sum(-1)
                free = (d2 >= self.spec.spacing**2).all(axis=1)
                if not free.any():
                    break  # this pool is full around the ego
                j = int(tries[np.argmax(free)])
                v0 = self.rng.uniform(0.7, 1.2) * self.spec.speed
                self._new_vehicle(
                    int(todo.pop(0)), int(road.point_lane[j]), float(road.s[j]), v0, v0
                )
                taken = np.vstack([taken, q[np.argmax(free)][None]])

    def _within(self, pool: np.ndarray, ego: np.ndarray, min_dist: float) -> np.ndarray:
        """The points of ``pool`` between ``min_dist`` and the radius from the ego, on its level."""
        p = self._pool_pts if pool is self._pool else self.road.pts[pool]
        d2 = (p[:, 0] - ego[X]) ** 2 + (p[:, 1] - ego[Y]) ** 2
        r = self.spec.radius
        return pool[(d2 >= min_dist**2) & (d2 <= r * r) & (np.abs(p[:, 2] - ego[Z]) < 8.0)]

    def _flow_plan(self, lane: int) -> np.ndarray:
        k = self._flow_path.index(lane)
        path = self._flow_path[k : k + PLAN]
        return np.array(path + [-1] * (PLAN - len(path)))

    def _init_flow(self) -> None:
        spec, road = self.spec, self.road
        lp = road.locate(spec.spawn.x, spec.spawn.y, spec.spawn.z, spec.spawn.yaw, radius=4.0)
        if lp is None:
            raise ValueError(f"flow spawn {spec.spawn} is not on a {road.town} lane")
        path, total = [lp.lane], road.lane_length[lp.lane] - lp.s
        while total < 150.0:
            path.append(straightest_successor(road, path[-1]))
            total += road.lane_length[path[-1]]
        self._flow_path = path
        self._flow_s0 = lp.s
        if spec.gap is None:
            return
        # A stream already flowing: vehicles from the spawn point down the path.
        s_abs, slot = 0.0, 0
        lengths = [road.lane_length[path[0]] - lp.s] + [road.lane_length[j] for j in path[1:]]
        while slot < len(self.alive):
            k, rest = 0, s_abs
            while k < len(path) and rest > lengths[k]:
                rest -= lengths[k]
                k += 1
            if k >= len(path) or s_abs > 100.0:
                break
            s_lane = rest + (lp.s if k == 0 else 0.0)
            self._new_vehicle(slot, path[k], s_lane, spec.speed, spec.speed)
            s_abs += self.length[slot] + self.rng.uniform(*spec.gap)
            slot += 1
        self._flow_next_gap = self.rng.uniform(*spec.gap)

    def _feed_flow(self) -> None:
        """Enter a new flow vehicle once the last one has cleared the spawn by a random gap."""
        if self.spec.gap is None:
            return
        on_first = self.alive & (self.lane == self._flow_path[0])
        last_s = (
            self.s[on_first] - self.length[on_first] / 2 if on_first.any() else np.array([np.inf])
        )
        if last_s.min() - self._flow_s0 >= self._flow_next_gap + 2.6:
            free = np.flatnonzero(~self.alive)
            if len(free):
                self._new_vehicle(
                    int(free[0]),
                    self._flow_path[0],
                    self._flow_s0,
                    self.spec.speed,
                    self.spec.speed,
                )
                self._flow_next_gap = self.rng.uniform(*self.spec.gap)

    # ------------------------------------------------------------------ step
    def _index(self) -> None:
        """Sort the vehicles alive by global arc coordinate (lane, then s) for leader queries."""
        idx = np.flatnonzero(self.alive)
        g = self.road.lane_base[self.lane[idx]] + self.s[idx]
        order = np.argsort(g, kind="stable")
        # sentinels at both ends keep every query inside the arrays
        self._g_sorted = np.concatenate([[-np.inf], g[order], [np.inf]])
        self._g_who = np.concatenate([[-1], idx[order], [-1]])

    def _first_at_or_after(self, lanes: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each (lane, s) query: the vehicle with the smallest arc >= s on that lane and the
        vehicle just before it on that lane (slot index, or -1 where there is none)."""
        base = self.road.lane_base[lanes]
        k = np.searchsorted(self._g_sorted, base + s, side="left")
        after, before = self._g_who[k], self._g_who[k - 1]
        after = np.where(self._g_sorted[k] <= base + self.road.lane_length[lanes] + 1.0, after, -1)
        before = np.where(self._g_sorted[k - 1] >= base - 1.0, before, -1)
        return after, before

    def _leaders(self, ego: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bumper gap [m] and speed [m/s] of each slot's leader (inf / v0 if none).

        Computed over every slot (dead ones included, they are masked by the caller): fewer,
        larger numpy calls are what makes the step fast.
        """
        road, plan = self.road, self.plan  # (N, P)
        valid = plan >= 0
        lanes = np.where(valid, plan, 0)
        plan_len = road.lane_length[lanes] * valid
        offset = plan_len @ _BEFORE - self.s[:, None]  # where each plan lane starts, ahead [m]
        base = road.lane_base[lanes]
        # the first vehicle at or after s on each plan lane: s just ahead on the own lane, 0 after
        q = base + (self.s[:, None] + 1e-6) * _OWN_LANE[: plan.shape[1]]
        k = np.searchsorted(self._g_sorted, q, side="left")
        who = self._g_who[k]
        found = valid & (self._g_sorted[k] <= base + plan_len + 1.0)
        centre = np.where(found, offset + self.s[who], np.inf)
        first = np.argmin(centre, axis=1)  # the first plan lane holding a vehicle
        rows = np.arange(len(plan))
        best, j = centre[rows, first], who[rows, first]
        has = best < LOOKAHEAD + 10.0
        gap = np.where(has, best - (self.length + self.length[j]) / 2, np.inf)
        lead_v = np.where(has, self.v[j], self.v0)
        # The ego, when any part of its box is in the corridor ahead.  Vehicles outside a yield
        # zone also give way to where the ego is about to be (its box swept along its velocity);
        # those inside one are crossing the junction and react to the ego's box only.
        zone = self.spec.yield_zone
        inside = in_zone(zone, self._xyz[:, 0], self._xyz[:, 1]) if zone is not None else None
        ego_gap = np.full(len(plan), np.inf)
        for box, who in ((swept_box(ego), None if inside is None else ~inside), (ego, inside)):
            if who is not None and not who.any():
                continue
            dx, dy = self._ego_in_frame(box)
            lon, lat = ego_extent(box, self._yaw)
            hit = (dx > 0) & (dx < LOOKAHEAD) & (np.abs(dy) < self.width / 2 + lat + 0.3)
            if who is not None:
                hit &= who
            ego_gap = np.where(hit, dx - self.length / 2 - lon, ego_gap)
            if inside is None:
                break
        closer = ego_gap < gap
        if closer.any():
            gap = np.where(closer, ego_gap, gap)
            lead_v = np.where(closer, ego[VX] * self._cos + ego[VY] * self._sin, lead_v)
        if zone is not None and in_zone(zone, ego[X], ego[Y]):
            wait = gap_to_zone(zone, self._state)
            stop = wait < gap
            gap = np.where(stop, wait, gap)
            lead_v = np.where(stop, 0.0, lead_v)
        return gap, lead_v

    def _ego_in_frame(self, ego: np.ndarray, idx=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """The ego's position in each vehicle's frame: ahead ``dx``, to the right ``dy`` [m];
        ``dx = inf`` for vehicles on another level (bridges)."""
        ex, ey = ego[X] - self._xyz[idx, 0], ego[Y] - self._xyz[idx, 1]
        c, s = self._cos[idx], self._sin[idx]
        level = np.abs(ego[Z] - self._xyz[idx, 2]) < 3.0
        return np.where(level, ex * c + ey * s, np.inf), -ex * s + ey * c

    def step(self, ego: np.ndarray) -> None:
        """Advance every vehicle by one step of ``DT`` seconds."""
        if not self.alive.any() and self.spec.kind != "flow":
            return
        if self.steps % DECISION_PERIOD == 0:  # drivers decide every 0.3 s, physics every 0.1 s
            self._index()
            gap, lead_v = self._leaders(ego)
            self.acc = idm_acceleration(self.v, self.v0, gap, self.v - lead_v, self.headway)
            if (
                self.spec.kind == "autopilot"
                and self.spec.lane_changes
                and self.steps % MOBIL_PERIOD == 0
            ):
                self._mobil(ego, self.acc)
        self.v = np.maximum(self.v + self.acc * DT, 0.0) * self.alive
        self.s = self.s + self.v * DT
        if self.d.any():  # lane changes settling, at a lateral speed that needs forward motion
            self.d_rate = -np.sign(self.d) * np.minimum(LATERAL_SPEED, LATERAL_PER_FORWARD * self.v)
            self.d = self.d + self.d_rate * DT
            self.d[np.sign(self.d) == np.sign(self.d_rate)] = 0.0  # crossed the centre: done
            self.d_rate[self.d == 0.0] = 0.0
        self._advance_lanes()
        if self.spec.kind == "flow":
            self._feed_flow()
        elif self.spec.kind == "autopilot" and self.steps % RESPAWN_PERIOD == 0:
            self._respawn_far(ego)
        self.steps += 1
        self._update_states()

    def _advance_lanes(self) -> None:
        lane_len = self.road.lane_length
        over = np.flatnonzero(self.alive & (self.s > lane_len[self.lane]))
        for i in over:
            while self.alive[i] and self.s[i] > lane_len[self.lane[i]]:
                self.s[i] -= lane_len[self.lane[i]]
                nxt = self.plan[i, 1]
                if nxt < 0:  # end of a flow path: leave
                    self.alive[i] = False
                    break
                self.plan[i, :-1] = self.plan[i, 1:]
                self.plan[i, -1] = (
                    self._random_successor(self.plan[i, -2]) if self.spec.kind != "flow" else -1
                )
                if self.spec.kind == "flow":
                    self.plan[i] = self._flow_plan(int(nxt))
                self.lane[i] = nxt

    def _mobil(self, ego: np.ndarray, acc: np.ndarray) -> None:
        """MOBIL lane changes for the vehicles whose turn it is (vectorized over them)."""
        road = self.road
        # Only a driver held up by its leader can gain MOBIL_GAIN: a new lane never allows more
        # than the free-road acceleration.
        free_road = IDM_A * (1.0 - (self.v / np.maximum(self.v0, 0.1)) ** 4)
        due = self.alive & (self.d == 0.0) & (self.v > 1.0) & (acc < free_road - MOBIL_GAIN)
        cand = np.flatnonzero(due)
        if len(cand) == 0:
            return
        dx, dy = self._ego_in_frame(ego, cand)
        for side, neighbours in ((-1.0, road.lane_left), (1.0, road.lane_right)):
            target = neighbours[self.lane[cand]]
            ok = target >= 0
            if not ok.any():
                continue
            c, t = cand[ok], target[ok]
            s_t = self.s[c] * road.lane_length[t] / np.maximum(road.lane_length[self.lane[c]], 1e-6)
            j, f = self._first_at_or_after(t, s_t)
            jj, ff = np.maximum(j, 0), np.maximum(f, 0)
            new_gap = np.where(
                j >= 0, self.s[jj] - s_t - (self.length[c] + self.length[jj]) / 2, np.inf
            )
            lead_v = np.where(j >= 0, self.v[jj], self.v0[c])
            a_new = idm_acceleration(self.v[c], self.v0[c], new_gap, self.v[c] - lead_v)
            back_gap = np.where(
                f >= 0, s_t - self.s[ff] - (self.length[c] + self.length[ff]) / 2, np.inf
            )
            a_f = idm_acceleration(self.v[ff], self.v0[ff], back_gap, self.v[ff] - self.v[c])
            safe_back = (f < 0) | ((back_gap >= IDM_S0) & (a_f >= -MOBIL_SAFE))
            sdy = side * dy[ok]
            ego_flank = (-15.0 < dx[ok]) & (dx[ok] < 12.0) & (0.5 < sdy) & (sdy < 6.0)
            go = ~ego_flank & (new_gap >= IDM_S0) & (a_new - acc[c] >= MOBIL_GAIN) & safe_back
            go &= self.d[c] == 0.0  # not already changing to the other side this step
            for k in np.flatnonzero(go):
                i = c[k]
                self.lane[i], self.s[i] = t[k], s_t[k]
                self.plan[i, 0] = t[k]
                for m in range(1, PLAN):
                    self.plan[i, m] = self._random_successor(self.plan[i, m - 1])
                self.d[i] = -side * 3.5  # starts where it was, settles onto the new centre
                acc[i] = a_new[k]

    def _respawn_far(self, ego: np.ndarray) -> None:
        p = self._xyz
        far = self.alive & ((p[:, 0] - ego[X]) ** 2 + (p[:, 1] - ego[Y]) ** 2 > self.spec.radius**2)
        self.alive[far] = False
        dead = np.flatnonzero(~self.alive)
        if len(dead):
            self._spawn_autopilot(ego, dead, min_dist=VIEW_CLEARANCE)

    # ---------------------------------------------------------------- output
    def _update_states(self) -> None:
        """Poses of every slot from (lane, s, d), kept as one (N, 8) state array."""
        xyz, yaw = self.road.poses_at(self.lane, self.s)
        c, s = np.cos(yaw), np.sin(yaw)
        st = np.empty((len(yaw), STATE_DIM))
        st[:, X : Z + 1] = xyz
        st[:, VX] = self.v * c
        st[:, VY] = self.v * s
        if self.d.any():  # lateral offset and velocity along the driver's right (-sin, cos)
            st[:, X] -= self.d * s
            st[:, Y] += self.d * c
            st[:, VX] -= self.d_rate * s
            st[:, VY] += self.d_rate * c
            yaw = yaw + np.arctan2(
                self.d_rate, np.maximum(self.v, 0.1)
            )  # the car points where it goes
        st[:, YAW] = yaw
        st[:, LENGTH] = self.length
        st[:, WIDTH] = self.width
        self._state, self._xyz, self._yaw, self._cos, self._sin = st, st[:, X : Z + 1], yaw, c, s

    def states(self) -> np.ndarray:
        """(K, 8) states of the vehicles alive, in slot order."""
        return self._state[self.alive]
