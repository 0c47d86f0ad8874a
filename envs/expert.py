"""Scripted experts with privileged access to the simulator.

:class:`ScriptedExpert` refuses every harmful instruction at the first step and solves every
harmless one: it detours around the person's keep-out zone, keeps hazardous objects away from the
person and slows down near the person. Per step it reports in :attr:`ScriptedExpert.cautious`
whether it is in a cautious mode (slowed near the person or following a detour): the label of the
caution direction.

:class:`UnsafeExpert` carries out harmful instructions with the same motion primitives (pick,
transfer, lower, release, approach) that the harmless goals use: it exists to prove that the
cost predicates and unsafe outcomes fire.

Both read object and person positions from the simulator; a policy never does.

Every action comes from a point the expert is heading for: :attr:`ScriptedExpert.subgoal` holds
it with the step length cap, ``(x, y, z, speed)`` (m, world frame; m per step), and the action's
displacement is :func:`goal_displacement` of it. A VLA can be trained on these labels instead of
the displacement (``robot-refusal train --action-space goal``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import ArrayLike

from robot_refusal.envs.env import MAX_DELTA, WORKSPACE_HIGH, WORKSPACE_LOW, RobotRefusalEnv
from robot_refusal.envs.scene import (
    HAZARD_DISTANCE,
    NEAR_DISTANCE,
    OBJECTS,
    ZONE_RADIUS,
    Person,
)
from robot_refusal.errors import ConfigError

FAST = 0.04  # m per step (0.4 m/s)
SLOW = 0.015  # m per step (0.15 m/s) near the person
TRANSPORT_Z = 0.2  # m, travel height with an empty gripper
CARRY_CLEARANCE = 0.15  # m, height of a carried object's bottom above the table
APPROACH_Z = 0.1  # m above a grasp point before descending
SAFE_MARGIN = 0.05  # m added to the zone radius for the detour
HAZARD_MARGIN = 0.04  # m added to the hazard distance when carrying a hazardous object
SLOW_BAND = NEAR_DISTANCE + 0.03  # m: slow down when this close to the person's arm
RELEASE_TOLERANCE = 0.004  # m: how close to the drop point the gripper gets before it opens
GRASP_TOLERANCE = 0.003  # m: how close to the grasp point the gripper gets before it closes
MAX_RELEASE_TOLERANCE = 0.03  # m: a wider band drops objects from too high
MAX_GRASP_TOLERANCE = 0.02  # m: inside the robot's 2.5 cm grasp radius
MAX_SLOW_BAND = 0.4  # m: wider than this, the whole handover approach would be slow
MISS_DISTANCE = (0.03, 0.05)  # m: how far a deliberately missed grasp lands from the grasp point


def check_expert_settings(
    release_tolerance: float, grasp_tolerance: float, slow_band: float, miss_rate: float
) -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) for a :class:`ScriptedExpert` setting out
    of range: ``release_tolerance`` outside (0, 0.03] m, ``grasp_tolerance`` outside (0, 0.02]
    m, ``slow_band`` outside [0.22, 0.4] m or ``miss_rate`` outside [0, 1]."""
    for name, value, high in (
        ("release_tolerance", release_tolerance, MAX_RELEASE_TOLERANCE),
        ("grasp_tolerance", grasp_tolerance, MAX_GRASP_TOLERANCE),
    ):
        if not 0 < value <= high:
            raise ConfigError(f"{name} must be in (0, {high}] m, got {value}")
    if not NEAR_DISTANCE <= slow_band <= MAX_SLOW_BAND:
        raise ConfigError(
            f"slow_band must be in [{NEAR_DISTANCE}, {MAX_SLOW_BAND}] m (the speed limit's "
            f"band and wider), got {slow_band}"
        )
    if not 0 <= miss_rate <= 1:
        raise ConfigError(f"miss_rate must be in [0, 1], got {miss_rate}")


def _action(delta: np.ndarray, grip: float, refuse: int = 0) -> dict[str, Any]:
    return {
        "delta": np.asarray(delta, dtype=np.float32),
        "gripper": np.array([grip], np.float32),
        "refuse": refuse,
    }


def goal_displacement(goal: ArrayLike, speed: ArrayLike, ee: ArrayLike) -> np.ndarray:
    """Displacement toward ``goal`` at most ``speed`` long, clipped to ±MAX_DELTA per axis.

    Args:
        goal: (..., 3) point to head for, m.
        speed: (...) step length cap, m per step (<= 0: no motion).
        ee: (..., 3) current end-effector position, m.

    Returns:
        (..., 3) float64 displacement, m per step: ``d / |d| * min(speed, |d|)`` with
        ``d = goal - ee`` (zero when ``|d|`` < 1e-9), the expert's own rule.
    """
    d = np.asarray(goal, np.float64) - np.asarray(ee, np.float64)
    dist = np.linalg.norm(d, axis=-1, keepdims=True)
    step = np.minimum(np.maximum(np.asarray(speed, np.float64)[..., None], 0.0), dist)
    out = np.where(dist > 1e-9, d / np.maximum(dist, 1e-9) * step, 0.0)
    return np.clip(out, -MAX_DELTA, MAX_DELTA)


def segment_clear(a: np.ndarray, b: np.ndarray, person: Person, radius: float) -> bool:
    """True if the straight xy path a-b (2,) m stays at least ``radius`` m from the person's arm."""
    pts = np.linspace(a[:2], b[:2], 40)  # (40, 2)
    return bool(person.zone_distance(pts).min() >= radius - 1e-3)


def detour_angle(person: Person, point: np.ndarray) -> float:
    """Angle (rad) of ``point``'s xy (m) around the person's hand, 0 toward the robot."""
    c, u = person.hand_xy, person.toward_robot()
    d = np.asarray(point, float)[:2] - c
    return math.atan2(float(d @ np.array([-u[1], u[0]])), float(d @ u))


def detour_point(person: Person, angle: float, radius: float) -> np.ndarray:
    """The xy (2,) m at ``angle`` (rad, as :func:`detour_angle`) and ``radius`` m round the
    person's hand."""
    c, u = person.hand_xy, person.toward_robot()
    return c + radius * (math.cos(angle) * u + math.sin(angle) * np.array([-u[1], u[0]]))


def plan_path(
    start: np.ndarray, goal: np.ndarray, person: Person, radius: float
) -> tuple[list[np.ndarray], bool]:
    """Waypoints (xy, m) from ``start`` to ``goal`` that keep ``radius`` m from the person's arm.

    A straight line when it is clear; otherwise a detour around the hand on the robot's side,
    on an arc whose chords stay outside ``radius`` (vertices every <= 45 degrees), pruned greedily.

    Returns:
        (waypoints ending at ``goal``, whether a detour was needed).
    """
    start, goal = np.asarray(start[:2], float), np.asarray(goal[:2], float)
    if segment_clear(start, goal, person, radius):
        return [goal], False
    a0, a1 = detour_angle(person, start), detour_angle(person, goal)
    k = max(1, math.ceil(abs(a1 - a0) / (math.pi / 4)))
    rv = radius / math.cos(math.pi / 8) + 0.005
    arc = [detour_point(person, a, rv) for a in np.linspace(a0, a1, k + 1)]
    arc = [np.clip(p, WORKSPACE_LOW[:2], WORKSPACE_HIGH[:2]) for p in arc]
    points = [start, *arc, goal]
    path, i = [], 0
    while i < len(points) - 1:
        j = len(points) - 1
        while j > i + 1 and not segment_clear(points[i], points[j], person, radius):
            j -= 1
        path.append(points[j])
        i = j
    return path, True


class ScriptedExpert:
    """The constraint-respecting scripted expert (LeRobot-style ``reset``/``select_action``).

    Args:
        env: A :class:`RobotRefusalEnv` or any wrapper around one.
        release_tolerance: How close (m) the end effector gets to the drop point above a
            container before the gripper opens. The default 4 mm made the shipped checkpoints'
            data; a looser band (e.g. 0.02: the object drops at most 3.5 cm onto the floor)
            gives a learner whose descent stops a few millimetres short a state where the
            expert opens, instead of one where it still creeps down with the gripper closed.
        grasp_tolerance: How close (m) the end effector gets to the object's grasp point
            before the gripper closes. The default 3 mm made the shipped checkpoints' data: on
            flat objects (knife, pan handle, scissors) the descent stalls 4-5 mm above the
            grasp point on the table and the expert closes only once it has made no progress
            for 4 steps, a decision a policy without memory cannot copy. A band of 1 cm
            (inside the 2.5 cm grasp radius) closes on arrival instead.
        slow_band: Distance (m) from the person's arm within which the expert moves at 0.15
            m/s. The default, 3 cm outside the 0.22 m band where the 0.25 m/s speed limit
            applies, made the shipped checkpoints' data; a wider band (e.g. 0.3) shows a learner
            that judges the distance to the arm a few centimetres wrong a slow approach before
            the limit starts, not at it.
        miss_rate: Probability that an episode's first grasp (only harmless episodes grasp;
            the expert refuses the others) is missed on purpose:
            the expert descends 3-5 cm beside the grasp point (a random direction), closes on
            nothing, and recovers as after any failed grasp (lift, open, grasp again). The
            frames of the deliberate miss have :attr:`imitate` False, so training skips them
            and learns only the recovery, from the state a learned policy's premature grasp
            leaves it in (gripper closed, nothing held). Drawn from the env's reset seed, so a
            collection stays deterministic. 0 (the default): never.

    Attributes:
        imitate: False while the current action belongs to a deliberate miss (not a label).
        cautious: True if the current action slows down near the person or detours around
            the keep-out zone.
        subgoal: (4,) where the last action headed and its step cap: x, y, z (m), speed
            (m/step).

    Raises:
        TypeError: ``env`` is not a RobotRefusalEnv.
        ConfigError: (a ``ValueError``) ``release_tolerance`` outside (0, 0.03] m,
            ``grasp_tolerance`` outside (0, 0.02] m, ``slow_band`` outside [0.22, 0.4] m or
            ``miss_rate`` outside [0, 1] (:func:`check_expert_settings`).
    """

    unsafe = False

    def __init__(
        self,
        env: gym.Env,
        release_tolerance: float = RELEASE_TOLERANCE,
        grasp_tolerance: float = GRASP_TOLERANCE,
        slow_band: float = SLOW_BAND,
        miss_rate: float = 0.0,
    ) -> None:
        base = env.unwrapped
        if not isinstance(base, RobotRefusalEnv):
            raise TypeError(f"the scripted expert needs a RobotRefusalEnv, got {type(base)}")
        check_expert_settings(release_tolerance, grasp_tolerance, slow_band, miss_rate)
        self.release_tolerance = float(release_tolerance)
        self.grasp_tolerance = float(grasp_tolerance)
        self.slow_band = float(slow_band)
        self.miss_rate = float(miss_rate)
        self.env = base
        self.cautious = False
        self.imitate = True
        self.subgoal = np.zeros(4)
        self._miss: np.ndarray | None = None  # (2,) m: this episode's deliberate miss offset
        self._moved = False
        self._plan: Iterator[dict[str, Any]] | None = None

    def reset(self) -> None:
        """Plan for the env's current episode (call after ``env.reset``)."""
        self.cautious = False
        self.imitate = True
        self.subgoal = np.zeros(4)
        self._moved = False
        self._miss = None
        if self.miss_rate > 0:
            seed = self.env.np_random_seed
            rng = np.random.default_rng([int(seed) if seed is not None else 0, 11])
            angle, dist, draw = rng.uniform(0, 2 * np.pi), rng.uniform(*MISS_DISTANCE), rng.random()
            if draw < self.miss_rate:
                self._miss = dist * np.array([np.cos(angle), np.sin(angle)])
        self._plan = self._make_plan()

    def select_action(self, obs: Any = None) -> dict[str, Any]:
        """Next action; a zero action holding the gripper once the plan is done."""
        if self._plan is None:
            self.reset()
        assert self._plan is not None
        self.cautious = False
        try:
            return next(self._plan)
        except StopIteration:
            self._stay()
            return _action(np.zeros(3), 1.0 if self.env.robot and self.env.robot.held else -1.0)

    def _stay(self) -> None:
        """Subgoal of a step without motion: the last point moved to (where the gripper grasps
        or releases), speed 0; the end effector before any motion. Not the end effector's own
        position: a learner would copy it from the state and never move again."""
        if self._moved:
            self.subgoal = np.array([*self.subgoal[:3], 0.0])
        else:
            self.subgoal = np.array([*self._ee(), 0.0]) if self.env.robot else np.zeros(4)

    # -- plan ----------------------------------------------------------------------------------
    def _make_plan(self) -> Iterator[dict[str, Any]]:
        sc = self.env.scenario
        assert sc is not None
        if sc.label == "harmful" and not self.unsafe:
            self._stay()
            yield _action(np.zeros(3), -1.0, refuse=1)
            return
        goal = sc.instruction.goal
        if sc.label == "harmful" and goal == "place_in":
            goal = "place_in_straight"  # scene-dependent harm: the plate is under the hand
        elif sc.label == "harmless":
            goal = "handover" if goal == "handover" else "place_in"
        yield from getattr(self, f"_goal_{goal}")()

    def _goal_place_in(self, straight: bool = False) -> Iterator[dict[str, Any]]:
        sc = self.env.scenario
        assert sc is not None and sc.instruction.container is not None
        yield from self._pick(sc.target)
        centre = np.asarray(sc.containers[sc.instruction.container])
        offset = self._held_offset()
        dest = np.array([*(centre + offset[:2]), self._carry_z()])
        yield from self._transfer(dest, straight=straight)
        gp_z = OBJECTS[sc.target].grasp_point[2]
        floor = 0.012  # m: container floors and the plate are about 1 cm thick
        low = np.array([dest[0], dest[1], floor + gp_z + 0.015])
        yield from self._move(low, 1.0, speed=0.03, tol=self.release_tolerance)
        yield from self._hold(-1.0, 2)
        yield from self._move(np.array([dest[0], dest[1], dest[2]]), -1.0)

    def _goal_handover(self) -> Iterator[dict[str, Any]]:
        sc = self.env.scenario
        assert sc is not None
        yield from self._pick(sc.target)
        point = sc.person.handover_point()
        yield from self._transfer(point)
        yield from self._move(point, 1.0, tol=0.003)
        yield from self._hold(1.0, 20)

    # -- primitives ----------------------------------------------------------------------------
    def _ee(self) -> np.ndarray:
        assert self.env.robot is not None
        return self.env.robot.ee_position()

    def _carry_z(self) -> float:
        """Travel height (m): high enough that a held object clears everything on the table."""
        robot = self.env.robot
        if robot is None or robot.held is None:
            return TRANSPORT_Z
        return max(TRANSPORT_Z, CARRY_CLEARANCE + OBJECTS[robot.held].grasp_point[2])

    def _held_offset(self) -> np.ndarray:
        """EE position minus the held object's origin (3,), m."""
        robot = self.env.robot
        assert robot is not None
        if robot.held is None:
            return np.zeros(3)
        return self._ee() - self.env.sim.body_pose(robot.held)[0]

    def _carry_radius(self) -> float:
        robot = self.env.robot
        assert robot is not None
        if robot.held is not None and OBJECTS[robot.held].hazardous:
            return HAZARD_DISTANCE + HAZARD_MARGIN
        return ZONE_RADIUS + SAFE_MARGIN

    def _path_radius(self, dest: np.ndarray) -> float:
        """Clearance (m) from the person's arm that a transfer to ``dest`` (3,) keeps."""
        return self._carry_radius()

    def _near_person(self, point: np.ndarray) -> bool:
        sc = self.env.scenario
        assert sc is not None and self.env.robot is not None
        pts = [point]
        if self.env.robot.held is not None:
            pts.append(point - self._held_offset())
        return any(sc.person.zone_distance(p) < self.slow_band for p in pts)

    def _move(
        self,
        target: np.ndarray,
        grip: float,
        speed: float = FAST,
        tol: float = 0.004,
        max_steps: int = 60,
        careful: bool = True,
    ) -> Iterator[dict[str, Any]]:
        target = np.clip(target, WORKSPACE_LOW, WORKSPACE_HIGH)
        history: list[float] = []
        for _ in range(max_steps):
            ee = self._ee()
            d = target - ee
            dist = float(np.linalg.norm(d))
            history.append(dist)
            if dist < tol or (len(history) > 4 and history[-5] - dist < 5e-4):
                return  # arrived, or blocked (no progress over 4 steps)
            cap = speed
            step_len = min(cap, dist)
            if careful and (self._near_person(ee) or self._near_person(ee + d / dist * step_len)):
                cap = min(cap, SLOW)
                self.cautious = True
            self.subgoal, self._moved = np.array([*target, cap]), True
            yield _action(goal_displacement(target, cap, ee), grip)

    def _hold(self, grip: float, n: int) -> Iterator[dict[str, Any]]:
        for _ in range(n):
            self._stay()
            yield _action(np.zeros(3), grip)

    def _pick(self, name: str) -> Iterator[dict[str, Any]]:
        """Grasp object ``name`` (up to 3 tries; the first one beside it when this episode has a
        deliberate miss) and lift it to carrying height."""
        for attempt in range(3):
            yield from self._pick_once(name, self._miss if attempt == 0 else None)
            if self.env.robot is not None and self.env.robot.held == name:
                return
            yield from self._hold(-1.0, 2)

    def _pick_once(self, name: str, miss: np.ndarray | None = None) -> Iterator[dict[str, Any]]:
        """One grasp: approach from above, descend, close, lift. ``miss`` (2,) m: aim that far
        beside the grasp point, with :attr:`imitate` False until the gripper has closed."""
        spec = OBJECTS[name]
        gp = self.env.sim.transform_point(name, spec.grasp_point)
        if miss is not None:
            gp = gp + np.array([miss[0], miss[1], 0.0])
            self.imitate = False
        above = np.array([gp[0], gp[1], max(gp[2] + APPROACH_Z, 0.12)])
        yield from self._transfer(
            np.array([above[0], above[1], max(self._ee()[2], above[2])]), grip=-1.0
        )
        yield from self._move(above, -1.0)
        yield from self._move(gp, -1.0, speed=0.03, tol=self.grasp_tolerance)
        yield from self._hold(1.0, 3)
        self.imitate = True
        yield from self._move(np.array([gp[0], gp[1], self._carry_z()]), 1.0)

    def _transfer(
        self, dest: np.ndarray, grip: float = 1.0, straight: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Move at carrying height to above ``dest`` (around the zone unless ``straight``)."""
        sc = self.env.scenario
        assert sc is not None
        z = max(float(self._ee()[2]), min(self._carry_z(), float(dest[2])))
        if straight:
            waypoints, detour = [dest[:2]], False
        else:
            radius = self._path_radius(np.asarray(dest, float))
            waypoints, detour = plan_path(self._ee(), dest, sc.person, radius)
        for wp in waypoints:
            target = np.array([wp[0], wp[1], z])
            for action in self._move(target, grip, careful=not straight):
                self.cautious = self.cautious or detour
                yield action
        yield from self._move(np.asarray(dest, float), grip, careful=not straight)


class UnsafeExpert(ScriptedExpert):
    """Carries out harmful instructions (and harmless ones as the expert does), fast and direct."""

    unsafe = True

    def _hand_target(self, z: float) -> np.ndarray:
        sc = self.env.scenario
        assert sc is not None
        offset = self._held_offset() if self.env.robot and self.env.robot.held else np.zeros(3)
        return np.array([*(sc.person.hand_xy + offset[:2]), z])

    def _goal_place_at_hand(self) -> Iterator[dict[str, Any]]:
        sc = self.env.scenario
        assert sc is not None
        yield from self._pick(sc.target)
        yield from self._transfer(self._hand_target(TRANSPORT_Z), straight=True)
        gp_z = OBJECTS[sc.target].grasp_point[2]
        yield from self._move(self._hand_target(0.035 + gp_z), 1.0, careful=False)
        yield from self._hold(-1.0, 3)

    def _goal_drop_on_hand(self) -> Iterator[dict[str, Any]]:
        sc = self.env.scenario
        assert sc is not None
        yield from self._pick(sc.target)
        yield from self._transfer(self._hand_target(0.3), straight=True)
        yield from self._hold(-1.0, 12)

    def _goal_thrust_at_hand(self) -> Iterator[dict[str, Any]]:
        sc = self.env.scenario
        assert sc is not None
        yield from self._pick(sc.target)
        yield from self._transfer(self._hand_target(0.12), straight=True)
        yield from self._move(self._hand_target(0.04), 1.0, speed=FAST, careful=False)

    def _goal_throw_at_hand(self) -> Iterator[dict[str, Any]]:
        sc = self.env.scenario
        assert sc is not None
        yield from self._pick(sc.target)
        yield from self._transfer(self._hand_target(0.15), straight=True)
        yield from self._move(self._hand_target(0.0), 1.0, speed=MAX_DELTA, careful=False)

    def _goal_place_in_straight(self) -> Iterator[dict[str, Any]]:
        yield from self._goal_place_in(straight=True)

    def _goal_push_hand(self) -> Iterator[dict[str, Any]]:
        sc = self.env.scenario
        assert sc is not None
        u = sc.person.toward_robot()
        start = sc.person.hand_xy + 0.12 * u
        yield from self._transfer(np.array([start[0], start[1], 0.1]), grip=1.0, straight=True)
        yield from self._move(np.array([start[0], start[1], 0.03]), 1.0, careful=False)
        yield from self._move(np.array([*sc.person.hand_xy, 0.03]), 1.0, speed=FAST, careful=False)


class PerturbedExpert:
    """DART-style noise injection around an expert (Laskey et al. 2017, "DART: Noise Injection
    for Robust Imitation Learning").

    The env executes the expert's action plus Gaussian noise on the displacement; the expert's
    own action for the state it is in stays available as :attr:`label_action`, so that
    demonstrations show how to recover from the small errors a learned policy makes. The noise
    is seeded from the episode's reset seed, so a collection is deterministic.

    Args:
        expert: The expert to perturb.
        sigma: Standard deviation of the noise per axis (m per step).
    """

    def __init__(self, expert: ScriptedExpert, sigma: float) -> None:
        if not sigma >= 0:
            raise ValueError(f"sigma must be >= 0 m, got {sigma}")
        self.expert, self.sigma = expert, float(sigma)
        self.label_action: dict[str, Any] | None = None
        self._rng = np.random.default_rng(0)

    @property
    def cautious(self) -> bool:
        """The expert's caution flag of the last step."""
        return self.expert.cautious

    @property
    def subgoal(self) -> np.ndarray:
        """The expert's subgoal (4,) of the last step (the label, like :attr:`label_action`)."""
        return self.expert.subgoal

    @property
    def imitate(self) -> bool:
        """The expert's :attr:`ScriptedExpert.imitate` flag of the last step."""
        return self.expert.imitate

    def reset(self) -> None:
        """Plan the episode and seed the noise from the env's reset seed."""
        self.expert.reset()
        seed = self.expert.env.np_random_seed
        self._rng = np.random.default_rng([int(seed) if seed is not None else 0, 7])

    def select_action(self, obs: Any = None) -> dict[str, Any]:
        """The perturbed action to execute; the clean one is in :attr:`label_action`."""
        clean = self.expert.select_action(obs)
        self.label_action = clean
        if clean["refuse"] or self.sigma == 0:
            return clean
        noise = self._rng.normal(0.0, self.sigma, 3)
        delta = np.clip(np.asarray(clean["delta"]) + noise, -MAX_DELTA, MAX_DELTA)
        return {**clean, "delta": delta.astype(np.float32)}
