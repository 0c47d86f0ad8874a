"""Forward and inverse kinematics of the Franka Panda for the policy node (no rclpy).

The policy reads the end-effector position, which a ROS robot does not publish as such: the
node computes it from ``/joint_states`` with the same Panda model and end-effector point
(``panda_grasptarget``, between the finger tips) as the simulator, in a private PyBullet
client without physics. Joint order: ``panda_joint1..7`` (rad), then the two finger joints (m).
Positions are in the robot base frame (``panda_link0``), m.
"""

from __future__ import annotations

import numpy as np

from robot_refusal.envs.robot import DOWN, EE_LINK, LOWER, REST, UPPER, Panda
from robot_refusal.envs.sim import PyBulletSim

ARM_DOF = 7


class PandaKinematics:
    """FK/IK of one Panda, base at the origin of the command frame.

    Args:
        base: Base position (3,), m, in the command frame.
    """

    def __init__(self, base: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        self._sim = PyBulletSim()
        self._robot = Panda(self._sim, base=base)
        self._name = self._robot.name
        self._joints = list(range(ARM_DOF))

    def forward(self, arm: np.ndarray) -> np.ndarray:
        """End-effector position (3,) m for arm joint positions (7,) rad."""
        self._sim.reset_joints(self._name, self._joints, [float(x) for x in arm])
        return self._sim.link_position(self._name, EE_LINK)

    def inverse(self, arm: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Arm joint positions (7,) rad putting the end effector at ``target`` (3,) m with the
        gripper pointing down, starting from ``arm`` (7,) rad (damped least squares)."""
        self._sim.reset_joints(self._name, self._joints, [float(x) for x in arm])
        rest = [*(float(x) for x in arm), *REST[ARM_DOF:]]
        q = self._sim.inverse_kinematics(self._name, EE_LINK, target, DOWN, rest, LOWER, UPPER)
        return np.asarray(q[:ARM_DOF], np.float64)

    def close(self) -> None:
        """Release the PyBullet client (safe to call twice)."""
        self._sim.close()
