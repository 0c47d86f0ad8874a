"""Franka Panda with end-effector delta control through inverse kinematics.

The gripper points straight down with a fixed yaw; the fingers close along the world y axis.
A grasp is a fixed constraint between the hand and the object, made when the gripper closes
with the object's grasp point between the fingers (as suction or grasp-assist in Ravens and
robosuite); the fingers close onto the object's width so that the picture shows a real grasp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robot_refusal.envs.sim import GraspFrame, PyBulletSim

ARM_JOINTS = (0, 1, 2, 3, 4, 5, 6)
FINGER_JOINTS = (9, 10)
HAND_LINK = 8
EE_LINK = 11  # panda_grasptarget: the point between the finger tips
ARM_FORCES = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)  # N·m, the URDF effort limits
LOWER = (-2.9671, -1.8326, -2.9671, -3.1416, -2.9671, -0.0873, -2.9671, 0.0, 0.0)
UPPER = (2.9671, 1.8326, 2.9671, 0.0, 2.9671, 3.8223, 2.9671, 0.04, 0.04)
REST = (0.0, -0.25, 0.0, -2.2, 0.0, 1.95, 0.785, 0.04, 0.04)
DOWN = (1.0, 0.0, 0.0, 0.0)  # xyzw quaternion: gripper pointing down, fingers along world y
MAX_OPENING = 0.08  # m, both fingers
GRASP_RADIUS = 0.025  # m: an object's grasp point this close to the EE point can be grasped


@dataclass(frozen=True)
class GraspState:
    """Controller state outside the physics snapshot.

    Attributes:
        held: Name of the held object or None.
        finger_target: Finger joint target (m).
        joint_targets: Arm joint position targets (7,), rad.
        frame: The held object's pose in the hand frame, or None.
    """

    held: str | None
    finger_target: float
    joint_targets: np.ndarray
    frame: GraspFrame | None


class Panda:
    """The Panda arm in one :class:`PyBulletSim`, addressed by ``name``.

    Args:
        sim: The simulator.
        name: Body name.
        base: Base position (3,), m.
    """

    def __init__(
        self, sim: PyBulletSim, name: str = "panda", base: Sequence[float] = (0.0, 0.0, 0.0)
    ) -> None:
        self.sim, self.name = sim, name
        sim.load_panda(name, base)
        self.held: str | None = None
        self._constraint: int | None = None
        self.grasp_frame: GraspFrame | None = None
        self.finger_target = MAX_OPENING / 2
        self.joint_targets = np.asarray(REST[:7], dtype=np.float64)
        self.sim.reset_joints(name, [*ARM_JOINTS, *FINGER_JOINTS], REST)

    def home(self, ee_position: Sequence[float]) -> None:
        """Teleport the arm so that the EE is at ``ee_position`` (3,) m, gripper open."""
        q = self.sim.inverse_kinematics(self.name, EE_LINK, ee_position, DOWN, REST, LOWER, UPPER)
        for _ in range(3):  # refine: IK from the new configuration
            self.sim.reset_joints(self.name, ARM_JOINTS, q[:7])
            q = self.sim.inverse_kinematics(
                self.name, EE_LINK, ee_position, DOWN, REST, LOWER, UPPER
            )
        self.sim.reset_joints(
            self.name, [*ARM_JOINTS, *FINGER_JOINTS], [*q[:7], MAX_OPENING / 2, MAX_OPENING / 2]
        )
        self.finger_target = MAX_OPENING / 2
        self.command_ee(ee_position)
        self.sim.position_control(self.name, FINGER_JOINTS, [MAX_OPENING / 2] * 2, [40.0, 40.0])

    def ee_position(self) -> np.ndarray:
        """Position (3,) m of the point between the finger tips."""
        return self.sim.link_position(self.name, EE_LINK)

    def gripper_opening(self) -> float:
        """Distance between the fingers (m), 0 closed .. 0.08 open."""
        return float(self.sim.joint_positions(self.name, FINGER_JOINTS).sum())

    def command_ee(self, target: Sequence[float]) -> None:
        """Set PD joint targets that put the EE at ``target`` (3,) m, gripper down."""
        q = self.sim.inverse_kinematics(self.name, EE_LINK, target, DOWN, REST, LOWER, UPPER)
        self.sim.position_control(self.name, ARM_JOINTS, q[:7], ARM_FORCES)
        self.joint_targets = q[:7].copy()

    def close_gripper(self, candidates: dict[str, tuple[np.ndarray, float]]) -> None:
        """Close the fingers; grasp the first candidate whose grasp point is within reach.

        Args:
            candidates: Object name -> (grasp point (3,) m, object width across the fingers m).
        """
        if self.held is None:
            ee = self.ee_position()
            for name, (point, width) in candidates.items():
                if np.linalg.norm(point - ee) < GRASP_RADIUS:
                    self.held = name
                    self._constraint, self.grasp_frame = self.sim.attach(self.name, HAND_LINK, name)
                    self._set_hand_collision(name, False)
                    self.finger_target = max(width / 2 - 0.002, 0.0)
                    break
            else:
                self.finger_target = 0.0
        self.sim.position_control(self.name, FINGER_JOINTS, [self.finger_target] * 2, [40.0] * 2)

    def open_gripper(self) -> None:
        """Open the fingers and release a held object."""
        if self.held is not None and self._constraint is not None:
            self.sim.detach(self._constraint)
            self._set_hand_collision(self.held, True)
        self.held, self._constraint, self.grasp_frame = None, None, None
        self.finger_target = MAX_OPENING / 2
        self.sim.position_control(self.name, FINGER_JOINTS, [self.finger_target] * 2, [40.0] * 2)

    def grasp_state(self) -> GraspState:
        """The controller state that a physics snapshot does not hold."""
        return GraspState(
            self.held, self.finger_target, self.joint_targets.copy(), self.grasp_frame
        )

    def restore_grasp(self, state: GraspState) -> None:
        """Re-create the grasp constraint and motor targets after a simulator state restore."""
        if self._constraint is not None:
            self.sim.detach(self._constraint)
            if self.held is not None:
                self._set_hand_collision(self.held, True)
        self.held, self._constraint = state.held, None
        self.finger_target, self.grasp_frame = state.finger_target, state.frame
        self.joint_targets = state.joint_targets.copy()
        if state.held is not None:
            self._constraint, _ = self.sim.attach(self.name, HAND_LINK, state.held, state.frame)
            self._set_hand_collision(state.held, False)
        self.sim.position_control(self.name, ARM_JOINTS, self.joint_targets, ARM_FORCES)
        self.sim.position_control(self.name, FINGER_JOINTS, [self.finger_target] * 2, [40.0] * 2)

    def _set_hand_collision(self, obj: str, enable: bool) -> None:
        for link in (HAND_LINK, *FINGER_JOINTS):
            self.sim.set_collision(self.name, link, obj, enable)
