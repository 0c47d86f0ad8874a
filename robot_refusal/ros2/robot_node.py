"""The robot node: the PyBullet scene of :class:`RobotRefusalEnv` as a ROS 2 robot.

At ``rate_hz`` (default 10 Hz, the env's control rate) it executes the latest command for one
control step (24 physics steps) and publishes:

================================  ================================  ===========================
topic (parameter default)         type                              content
================================  ================================  ===========================
``/joint_states``                 sensor_msgs/JointState            panda_joint1..7 (rad) and
                                                                    the two finger joints (m)
``/camera/image_raw``             sensor_msgs/Image (rgb8)          the env's scene camera
``/robot_refusal/person``         geometry_msgs/PoseArray           hand, shoulder (m)
``/robot_refusal/instruction``    std_msgs/String                   every 1 s if announced
``/robot_refusal/sim_info``       std_msgs/String (JSON)            ground truth: ee, zone
                                                                    distance, costs, outcome
================================  ================================  ===========================

Commands in: TwistStamped on the twist topic (linear m/s), JointTrajectory on the trajectory
topic (the first point's arm positions), Float64 on the gripper topic (> 0 closes). A command
older than ``command_timeout`` counts as zero; zero motion holds the arm where it is. The
executed displacement goes through ``RobotRefusalEnv.step`` (its own ±5 cm and workspace
clipping), so the costs and outcome in ``sim_info`` are the env's own. When the episode ends
(success, unsafe outcome or the step limit), physics stops and publishing continues.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
from geometry_msgs.msg import Pose, PoseArray, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, String
from trajectory_msgs.msg import JointTrajectory

from robot_refusal.envs.env import CAMERA_EYE, CAMERA_TARGET, RobotRefusalEnv
from robot_refusal.envs.robot import ARM_JOINTS, FINGER_JOINTS
from robot_refusal.envs.scene import SHOULDER_Z
from robot_refusal.ros2.config import (
    COMMAND_QOS,
    PANDA_FINGERS,
    PANDA_JOINTS,
    ROBOT_PARAMS,
    SENSOR_QOS,
    STATUS_QOS,
)
from robot_refusal.ros2.convert import image_to_fields
from robot_refusal.ros2.kinematics import PandaKinematics
from robot_refusal.ros2.qos import declare, qos

NODE_NAME = "robot_refusal_sim"


class RobotNode(Node):
    """The simulated Panda scene behind ROS topics.

    Args:
        **kwargs: Passed to ``rclpy.node.Node``.

    Raises:
        ConfigError, UnknownNameError: Invalid parameters (family, label, instruction).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        p = self.p = declare(self, ROBOT_PARAMS)
        size = int(p["image_size"])
        self.env = RobotRefusalEnv(str(p["family"]), str(p["split"]), image_obs=False)
        options: dict[str, Any] = {}
        if p["label"] != "any":
            options["label"] = p["label"]
        if p["instruction"]:
            options["instruction"] = p["instruction"]
        self.env.reset(seed=int(p["seed"]), options=options)
        self.size = size
        self.dt = 1.0 / float(p["rate_hz"])
        self.kin = PandaKinematics()
        self.twist = np.zeros(3)
        self.twist_time = -math.inf
        self.joint_target: np.ndarray | None = None
        self.joint_time = -math.inf
        self.gripper = -1.0
        self.done = False
        self.info: dict[str, Any] = {}
        self.last_announce = -math.inf
        group = MutuallyExclusiveCallbackGroup()
        cmd, sensor, rel = qos(COMMAND_QOS), qos(SENSOR_QOS), qos(STATUS_QOS)
        sub = self.create_subscription
        sub(TwistStamped, p["twist_topic"], self._on_twist, cmd, callback_group=group)
        sub(JointTrajectory, p["trajectory_topic"], self._on_traj, cmd, callback_group=group)
        sub(Float64, p["gripper_topic"], self._on_gripper, cmd, callback_group=group)
        self.joint_pub = self.create_publisher(JointState, p["joint_states_topic"], rel)
        self.image_pub = self.create_publisher(Image, p["image_topic"], sensor)
        self.person_pub = self.create_publisher(PoseArray, p["person_topic"], rel)
        self.instr_pub = self.create_publisher(String, p["instruction_topic"], rel)
        self.info_pub = self.create_publisher(String, p["sim_info_topic"], rel)
        self.create_timer(self.dt, self._tick, callback_group=group)
        self._publish()

    @property
    def instruction(self) -> str:
        """The instruction announced (the scenario's own text)."""
        assert self.env.scenario is not None
        return self.env.scenario.instruction.text

    def _on_twist(self, msg: TwistStamped) -> None:
        v = np.array([msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z])
        self.twist = v if np.all(np.isfinite(v)) else np.zeros(3)
        self.twist_time = time.monotonic()

    def _on_traj(self, msg: JointTrajectory) -> None:
        if not msg.points:
            self.joint_target = None
            return
        index = {n: i for i, n in enumerate(msg.joint_names)}
        if not all(n in index for n in PANDA_JOINTS):
            self.get_logger().warning(f"trajectory without the Panda joints: {msg.joint_names}")
            return
        q = np.array([msg.points[0].positions[index[n]] for n in PANDA_JOINTS])
        if np.all(np.isfinite(q)):
            self.joint_target, self.joint_time = q, time.monotonic()

    def _on_gripper(self, msg: Float64) -> None:
        if math.isfinite(msg.data):
            self.gripper = float(msg.data)

    def _command_delta(self) -> np.ndarray:
        """The displacement (3,) m to execute this step (zero for stale commands)."""
        now, timeout = time.monotonic(), float(self.p["command_timeout"])
        robot = self.env.robot
        assert robot is not None
        if now - self.twist_time <= timeout:
            return self.twist * self.dt
        if self.joint_target is not None and now - self.joint_time <= timeout:
            return self.kin.forward(self.joint_target) - robot.ee_position()
        return np.zeros(3)

    def _tick(self) -> None:
        if not self.done:
            delta = self._command_delta()
            action = {"delta": delta, "gripper": [self.gripper], "refuse": 0}
            _, _, terminated, truncated, info = self.env.step(action)
            self.info = info
            self.done = bool(terminated or truncated)
        self._publish()

    def _publish(self) -> None:
        env, robot, sc = self.env, self.env.robot, self.env.scenario
        assert robot is not None and sc is not None
        stamp = self.get_clock().now().to_msg()
        q = env.sim.joint_positions(robot.name, [*ARM_JOINTS, *FINGER_JOINTS])
        js = JointState(name=[*PANDA_JOINTS, *PANDA_FINGERS], position=[float(x) for x in q])
        js.header.stamp = stamp
        self.joint_pub.publish(js)
        h, w, enc, step, data = image_to_fields(
            env.sim.render(self.size, self.size, CAMERA_EYE, CAMERA_TARGET)
        )
        img = Image(height=h, width=w, encoding=enc, step=step, data=data)
        img.header.stamp, img.header.frame_id = stamp, "scene_camera"
        self.image_pub.publish(img)
        person = PoseArray()
        person.header.stamp, person.header.frame_id = stamp, str(self.p["frame_id"])
        for x, y, z in ((*sc.person.hand_xy, 0.03), (*sc.person.shoulder, SHOULDER_Z)):
            pose = Pose()
            pose.position.x, pose.position.y, pose.position.z = float(x), float(y), float(z)
            pose.orientation.w = 1.0
            person.poses.append(pose)
        self.person_pub.publish(person)
        now = time.monotonic()
        if self.p["announce_instruction"] and now - self.last_announce >= 1.0:
            self.instr_pub.publish(String(data=self.instruction))
            self.last_announce = now
        self.info_pub.publish(String(data=json.dumps(self._sim_info())))

    def _sim_info(self) -> dict[str, Any]:
        env, sc, robot = self.env, self.env.scenario, self.env.robot
        assert sc is not None and robot is not None
        ee = robot.ee_position()
        target = env.sim.body_pose(sc.target)[0]
        return {
            "ee": [float(x) for x in ee],
            "zone_distance": float(sc.person.zone_distance(ee)),
            "in_zone": sc.person.in_zone(ee),
            "target": [float(x) for x in target],
            "instruction": sc.instruction.text,
            "label": sc.label,
            "held": robot.held,
            "done": self.done,
            "cost": float(self.info.get("cost", 0.0)),
            "is_success": bool(self.info.get("is_success", False)),
            "unsafe_outcome": bool(self.info.get("unsafe_outcome", False)),
            "steps": int(self.info.get("steps", 0)),
        }

    def destroy_node(self) -> None:
        """Close the env and the kinematics client, then destroy the node."""
        for part in (getattr(self, "env", None), getattr(self, "kin", None)):
            if part is not None:  # also called on a node whose construction failed
                part.close()
        super().destroy_node()


def main(argv: list[str] | None = None) -> int:
    """``python -m robot_refusal.ros2.robot_node --ros-args -p name:=value ...``."""
    from robot_refusal.ros2.runtime import run_nodes

    return run_nodes(lambda ctx: [RobotNode(context=ctx)], argv)


if __name__ == "__main__":
    raise SystemExit(main())
