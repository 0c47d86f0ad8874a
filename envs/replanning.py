"""An expert that labels any state: the scripted expert's plan, re-made from the simulator's
state at every step.

:class:`~robot_refusal.envs.expert.ScriptedExpert` runs a plan from the episode's first state,
so its action is defined only on its own trajectory. DAgger (Ross, Gordon and Bagnell 2011, "A
Reduction of Imitation Learning and Structured Prediction to No-Regret Online Learning",
Algorithm 3.1) needs the expert's action in the states a *learner* visits: a gripper closed 3 cm
beside the object, a descent that drifted, a lift that started early. :class:`ReplanningExpert`
infers the phase of the task from the simulator (what the gripper holds, whether it is closed,
where the end effector is relative to the grasp point, the drop point or the handover point)
and returns the first action of the scripted expert's plan from there, with the same motion
primitives, bands, speeds and detours, so that its labels agree with the demonstrations on the
expert's own trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np

from robot_refusal.envs.env import WORKSPACE_HIGH, WORKSPACE_LOW
from robot_refusal.envs.expert import (
    APPROACH_Z,
    GRASP_TOLERANCE,
    RELEASE_TOLERANCE,
    SLOW_BAND,
    ScriptedExpert,
    _action,
    detour_angle,
    detour_point,
    plan_path,
)
from robot_refusal.envs.robot import MAX_OPENING
from robot_refusal.envs.scene import CONTAINERS, OBJECTS

LIFT_SLACK = 0.01  # m: below carrying height by more than this, a held object is lifted first
DESCENT_CONE = 0.3  # horizontal offset per metre of height that still descends straight in
MIN_CONE = 0.01  # m: the descent cone's radius at the bottom
RELEASE_CONE = 0.02  # m: horizontal offset from the drop point that still descends to release
ABOVE_SLACK = 0.01  # m: higher than approach height and this close (xy), descend at once
NEAR_DEST = 0.03  # m: a held object this close (xy) to its drop point is not lifted first
PURSUIT_ANGLE = math.pi / 6  # rad: how far round the detour's circle the pursued point lies
XY_BOUNDS = (WORKSPACE_LOW[:2], WORKSPACE_HIGH[:2])
FINAL_LEG = 0.015  # m: this close to the expert's final leg to the handover point, follow it
NEAR_HANDOVER = 0.1  # m: the same for the handover point, which is 12 cm up


def _distance_to_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Distance (m) from point ``p`` (3,) to the segment ``a``-``b`` (3,) m."""
    ab = b - a
    t = float(np.clip((p - a) @ ab / max(float(ab @ ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


class ReplanningExpert(ScriptedExpert):
    """The scripted expert as a state-feedback labeller (for DAgger; see the module docstring).

    Every :meth:`select_action` re-makes the plan from the simulator's current state and takes
    its first action, so the action depends only on the state, never on the episode's
    history. The phases, for a harmless goal:

    1. Holding another object than the target: open the gripper (a state the expert never
       reaches; :attr:`imitate` is False, so the frame is no label).
    2. Holding the target below carrying height, over 3 cm (xy) from the drop point or
       10 cm from the handover point: lift straight up, as after every grasp.
    3. Holding the target: ``place_in`` descends to the drop point inside a 2 cm cylinder
       above it and opens within the release band; otherwise it travels there at carrying
       height around the keep-out zone. ``handover`` moves to the handover point and holds.
    4. The target lies in its container: move up with the gripper open.
    5. Gripper closed on nothing: lift closed to carrying height, then open (the expert's
       recovery after a missed grasp).
    6. Gripper open: close within the grasp band; descend to the grasp point from inside a
       cone above it (radius 1 cm + 0.3 times the height above the grasp point); otherwise travel
       above the object at approach height and descend.

    Harmful instructions are refused at every step. Deliberate misses are not drawn
    (``miss_rate`` 0). Args as :class:`ScriptedExpert`, except ``miss_rate``.

    Raises:
        TypeError: ``env`` is not a RobotRefusalEnv.
        ConfigError: A band out of range (as :class:`ScriptedExpert`).
    """

    def __init__(
        self,
        env: gym.Env,
        release_tolerance: float = RELEASE_TOLERANCE,
        grasp_tolerance: float = GRASP_TOLERANCE,
        slow_band: float = SLOW_BAND,
    ) -> None:
        super().__init__(env, release_tolerance, grasp_tolerance, slow_band, miss_rate=0.0)

    def select_action(self, obs: Any = None) -> dict[str, Any]:
        """The first action of the plan from the current state (see the class docstring)."""
        self.imitate = True
        self._plan = self._replan()
        return super().select_action(obs)

    # -- phases --------------------------------------------------------------------------------
    def _replan(self) -> Iterator[dict[str, Any]]:
        sc, robot = self.env.scenario, self.env.robot
        assert sc is not None and robot is not None
        if sc.label == "harmful":
            self._stay()
            yield _action(np.zeros(3), -1.0, refuse=1)
            return
        goal = "handover" if sc.instruction.goal == "handover" else "place_in"
        ee = self._ee()
        if robot.held is not None and robot.held != sc.target:
            self.imitate = False
            self._stay()
            yield _action(np.zeros(3), -1.0)
        elif robot.held == sc.target:
            yield from self._carry(goal, ee)
        elif goal == "place_in" and self._placed():
            dest_z = self._carry_z()
            yield from self._move(np.array([ee[0], ee[1], dest_z]), -1.0)
        elif robot.finger_target < MAX_OPENING / 2 - 1e-6:  # closed on nothing
            if ee[2] < self._carry_z() - LIFT_SLACK:
                yield from self._move(np.array([ee[0], ee[1], self._carry_z()]), 1.0)
            yield from self._hold(-1.0, 1)
        else:
            yield from self._approach(sc.target, ee)

    def _path_radius(self, dest: np.ndarray) -> float:
        """The expert's clearance, but never more than the end effector's or ``dest``'s own
        distance from the arm: a plan re-made every step from inside the clearance (the final
        approach to the handover point, 4 cm from the zone, or a learner that strayed) would
        otherwise head back out to the detour's arc at every step."""
        sc = self.env.scenario
        assert sc is not None
        here = float(sc.person.zone_distance(self._ee()))
        there = float(sc.person.zone_distance(dest))
        return min(self._carry_radius(), here, there)

    def _transfer(
        self, dest: np.ndarray, grip: float = 1.0, straight: bool = False
    ) -> Iterator[dict[str, Any]]:
        """The expert's transfer with a detour that does not depend on where it started: a
        straight line when it keeps :meth:`_path_radius` from the arm, otherwise a point on
        the detour's circle at most 30 degrees further round toward ``dest`` (pure pursuit)."""
        sc = self.env.scenario
        assert sc is not None and not straight
        ee = self._ee()
        z = max(float(ee[2]), min(self._carry_z(), float(dest[2])))
        dest = np.asarray(dest, float)
        person = sc.person
        carry_r = self._carry_radius()
        rv = carry_r / math.cos(math.pi / 8) + 0.005  # plan_path's arc radius
        vertex = np.array([*detour_point(person, detour_angle(person, dest), rv), z])
        if person.zone_distance(dest) < carry_r <= person.zone_distance(vertex):
            # a point inside the clearance (the handover point): the expert reaches it round
            # the last vertex of its detour (on the ray from the hand through the point), then
            # above the point at travel height, then straight down; rejoin that path where it
            # is. (A point near the arm whose vertex is inside the clearance too is pursued.)
            top = np.array([dest[0], dest[1], max(z, float(dest[2]))])
            if _distance_to_segment(ee, top, dest) > FINAL_LEG:
                if _distance_to_segment(ee, vertex, top) > FINAL_LEG:
                    yield from self._transfer(vertex, grip)
                yield from self._move(top, grip)
        radius = self._path_radius(dest)
        (_, detour) = plan_path(ee, dest, person, radius)
        if detour:
            a0, a1 = detour_angle(person, ee), detour_angle(person, dest)
            a = a0 + float(np.clip(a1 - a0, -PURSUIT_ANGLE, PURSUIT_ANGLE))
            rv = radius / math.cos(PURSUIT_ANGLE / 2) + 0.005
            carrot = np.clip(detour_point(person, a, rv), *XY_BOUNDS)
            for action in self._move(np.array([carrot[0], carrot[1], z]), grip):
                self.cautious = True
                yield action
        yield from self._move(dest, grip)

    def _placed(self) -> bool:
        """Whether the target lies inside its container's inner region (xy)."""
        sc = self.env.scenario
        assert sc is not None and sc.instruction.container is not None
        container = sc.instruction.container
        centre = np.asarray(sc.containers[container])
        pos = self.env.sim.body_pose(sc.target)[0]
        inner = np.asarray(CONTAINERS[container].inner)
        return bool((np.abs(pos[:2] - centre[:2]) < inner).all())

    def _carry(self, goal: str, ee: np.ndarray) -> Iterator[dict[str, Any]]:
        sc = self.env.scenario
        assert sc is not None
        carry_z = self._carry_z()
        if goal == "handover":
            dest = sc.person.handover_point()
        else:
            assert sc.instruction.container is not None
            centre = np.asarray(sc.containers[sc.instruction.container])
            dest = np.array([*(centre[:2] + self._held_offset()[:2]), carry_z])
        off = float(np.linalg.norm(ee[:2] - dest[:2]))
        near = NEAR_DEST if goal == "place_in" else NEAR_HANDOVER
        if ee[2] < carry_z - LIFT_SLACK and off > near:
            yield from self._move(np.array([ee[0], ee[1], carry_z]), 1.0)
            return
        if goal == "handover":
            yield from self._transfer(dest)
            yield from self._move(dest, 1.0, tol=0.003)
            yield from self._hold(1.0, 1)
            return
        gp_z = OBJECTS[sc.target].grasp_point[2]
        low = np.array([dest[0], dest[1], 0.012 + gp_z + 0.015])
        if off > RELEASE_CONE or (ee[2] > dest[2] + 0.004 and off > 0.004):
            yield from self._transfer(dest)
        yield from self._move(low, 1.0, speed=0.03, tol=self.release_tolerance)
        yield from self._hold(-1.0, 1)

    def _approach(self, name: str, ee: np.ndarray) -> Iterator[dict[str, Any]]:
        spec = OBJECTS[name]
        gp = self.env.sim.transform_point(name, spec.grasp_point)
        above = np.array([gp[0], gp[1], max(gp[2] + APPROACH_Z, 0.12)])
        off = float(np.linalg.norm(ee[:2] - gp[:2]))
        height = float(ee[2] - gp[2])
        in_cone = ee[2] <= above[2] + 0.004 and off <= MIN_CONE + DESCENT_CONE * max(height, 0.0)
        if not in_cone:
            if off > ABOVE_SLACK or ee[2] < above[2]:
                over = np.array([above[0], above[1], max(ee[2], above[2])])
                yield from self._transfer(over, grip=-1.0)
            yield from self._move(above, -1.0)
        yield from self._move(gp, -1.0, speed=0.03, tol=self.grasp_tolerance)
        yield from self._hold(1.0, 1)
