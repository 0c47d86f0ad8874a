"""The policy node: camera, joint states and instruction in; safe Cartesian or joint commands out.

Topics (defaults; every name is a parameter, see :data:`config.POLICY_PARAMS`):

==================================  ==============================  ============================
topic                               type                            QoS
==================================  ==============================  ============================
in ``/camera/image_raw``            sensor_msgs/Image (rgb8/bgr8)   SensorDataQoS
in ``/joint_states``                sensor_msgs/JointState          SensorDataQoS
in ``/robot_refusal/instruction``   std_msgs/String                 reliable, depth 10
in ``/robot_refusal/person``        geometry_msgs/PoseArray         SensorDataQoS
in ``/robot_refusal/estop``         std_msgs/Bool (true latches)    reliable, depth 10
out ``/servo_node/delta_twist_cmds``  geometry_msgs/TwistStamped    reliable, depth 1
out ``.../joint_trajectory``        trajectory_msgs/JointTrajectory reliable, depth 1
out ``/robot_refusal/gripper_command``  std_msgs/Float64 (>0 closes)  reliable, depth 1
out ``/robot_refusal/status``       std_msgs/String (JSON)          reliable, depth 10
==================================  ==============================  ============================

Services: ``/robot_refusal/stop`` and ``/robot_refusal/rearm`` (std_srvs/Trigger).

The twist follows MoveIt Servo's ``delta_twist_cmds`` with ``command_in_type: speed_units``
(linear m/s in ``frame_id``, angular zero, stamped now). In ``trajectory`` mode each step is one
JointTrajectoryPoint reached after one period (ros2_control joint_trajectory_controller, header
stamp zero = start now); zero motion holds the last measured positions. Subscriptions, the
watchdog and the services run in one callback group and the policy in another, so that a slow
or hung policy step cannot delay a stop. Status JSON: ``state``, ``reason``, ``refusal_score``,
``instruction``, ``intervention``, ``limits`` (limits that changed the last command),
``command`` (m/s), ``ee`` (m), ``image_stamp`` and ``command_stamp`` (s).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from contextlib import ExitStack
from typing import Any

import numpy as np
import torch
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseArray, TwistStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from robot_refusal.policies.policy import VLAPolicy
from robot_refusal.ros2.config import COMMAND_QOS, POLICY_PARAMS, SENSOR_QOS, STATUS_QOS
from robot_refusal.ros2.convert import (
    InvalidMessageError,
    PersonZone,
    check_instruction,
    image_from_fields,
    joint_positions,
    person_from_positions,
    seconds_to_stamp,
    stamp_to_seconds,
)
from robot_refusal.ros2.kinematics import PandaKinematics
from robot_refusal.ros2.qos import declare, qos
from robot_refusal.ros2.safety import Limits, limit_velocity
from robot_refusal.ros2.steering import RobotState, load_steered_policy, observation
from robot_refusal.ros2.supervisor import Supervisor, Verdict

NODE_NAME = "robot_refusal_policy"
log = logging.getLogger(__name__)


class PolicyNode(Node):
    """The policy behind the safety layer, as a ROS 2 node.

    Args:
        policy: A loaded policy to use instead of the ``policy`` parameter's checkpoint (tests,
            benchmarks); the intervention parameters are then ignored.
        **kwargs: Passed to ``rclpy.node.Node`` (``parameter_overrides``, ``context``...).

    Raises:
        ConfigError: Invalid parameters at start.
        CheckpointError, DirectionError: Bad policy or direction files.
    """

    def __init__(self, policy: VLAPolicy | None = None, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.p = declare(self, POLICY_PARAMS)
        p = self.p
        self._hooks: ExitStack | None = None
        if policy is None:
            policy, self._hooks = load_steered_policy(
                str(p["policy"]),
                str(p["intervention"]),
                str(p["direction"]),
                float(p["alpha"]),
                int(p["layer"]),
            )
        self.policy = policy
        torch.set_num_threads(int(p["torch_threads"]))
        self._warm_up()
        self.period = 1.0 / float(p["rate_hz"])
        self.sup = Supervisor(
            float(p["stale_timeout"]),
            float(p["person_timeout"]),
            2.0 * self.period,
        )
        self.kin = PandaKinematics()
        self.robot = RobotState(grasp_threshold=float(p["grasp_threshold"]))
        self.lock = threading.RLock()
        self.kin_lock = threading.Lock()
        self.image: np.ndarray | None = None
        self.image_stamp = 0.0
        self.person: PersonZone | None = None
        self.prev_v = np.zeros(3)
        self.score: float | None = None
        self.limits_hit: tuple[str, ...] = ()
        self.last_cmd_time = -math.inf
        self.last_cmd_moving = False
        self.last_status = ""
        self.steps = 0
        # The policy's episode state (a chunked checkpoint's stored chunks) belongs to one
        # (supervisor epoch, instruction epoch): a stop, a re-arm or a new instruction starts
        # a new episode. Only the policy step touches the policy, so resets never race a call.
        self._instruction_epoch = 0
        self._policy_key: tuple[int, int] | None = None
        self._build_io()

    def _warm_up(self, calls: int = 3) -> None:
        """Run the policy on a blank observation before any callback exists: torch's first
        calls allocate and pick kernels, which would otherwise slow the first real step. (The
        ~1 s e-stop stalls once blamed on this were a GIL convoy; see ``runtime.py``.)"""
        h, w = self.policy.image_size
        obs = {
            "image": np.zeros((h, w, 3), np.uint8),
            "state": RobotState().vector(),
            "instruction": "warm up",
        }
        for _ in range(calls):
            self.policy.select_action(obs)
        self.policy.reset()

    # -- wiring ------------------------------------------------------------------------------
    def _build_io(self) -> None:
        p, io = self.p, MutuallyExclusiveCallbackGroup()
        work = MutuallyExclusiveCallbackGroup()
        # the e-stop never waits behind sensor callbacks or the watchdog in the io group
        safety = MutuallyExclusiveCallbackGroup()
        image_group = work if p["trigger"] == "image" else io
        sensor, cmd, status = qos(SENSOR_QOS), qos(COMMAND_QOS), qos(STATUS_QOS)
        sub = self.create_subscription
        sub(Image, p["image_topic"], self._on_image, sensor, callback_group=image_group)
        sub(JointState, p["joint_states_topic"], self._on_joints, sensor, callback_group=io)
        sub(String, p["instruction_topic"], self._on_instruction, status, callback_group=io)
        sub(PoseArray, p["person_topic"], self._on_person, sensor, callback_group=io)
        sub(Bool, p["estop_topic"], self._on_estop, status, callback_group=safety)
        self.create_service(Trigger, p["stop_service"], self._on_stop, callback_group=safety)
        self.create_service(Trigger, p["rearm_service"], self._on_rearm, callback_group=io)
        self.twist_pub = self.create_publisher(TwistStamped, p["twist_topic"], cmd)
        self.traj_pub = self.create_publisher(JointTrajectory, p["trajectory_topic"], cmd)
        self.gripper_pub = self.create_publisher(Float64, p["gripper_topic"], cmd)
        self.status_pub = self.create_publisher(String, p["status_topic"], status)
        self.create_timer(1.0 / float(p["watchdog_hz"]), self._watchdog, callback_group=io)
        if p["trigger"] == "timer":
            self.create_timer(self.period, self._step, callback_group=work)
        self._last_step = -math.inf

    def destroy_node(self) -> None:
        """Remove the intervention hooks, release the kinematics client, destroy the node."""
        hooks, kin = getattr(self, "_hooks", None), getattr(self, "kin", None)
        if hooks is not None:  # also called on a node whose construction failed
            hooks.close()
        if kin is not None:
            kin.close()
        super().destroy_node()

    def _now(self) -> float:
        return time.monotonic()

    # -- inputs ------------------------------------------------------------------------------
    def _reject(self, kind: str, err: Exception) -> None:
        self.get_logger().warning(f"rejected {kind}: {err}")
        with self.lock:
            if kind == "instruction":
                self.sup.reject_instruction(str(err))
            else:
                self.sup.rejected(kind, str(err))
            self._stop_now()

    def _on_image(self, msg: Image) -> None:
        try:
            img = image_from_fields(
                msg.height, msg.width, msg.encoding, msg.step, msg.data, self.policy.image_size
            )
        except InvalidMessageError as e:
            self._reject("image", e)
            return
        with self.lock:
            self.image = img
            self.image_stamp = stamp_to_seconds(msg.header.stamp.sec, msg.header.stamp.nanosec)
            self.sup.received("image", self._now())
        if self.p["trigger"] == "image" and self._now() - self._last_step >= 0.8 * self.period:
            self._step()

    def _on_joints(self, msg: JointState) -> None:
        wanted = [*self.p["joint_names"], *self.p["finger_joint_names"]]
        try:
            q = joint_positions(msg.name, msg.position, wanted)
        except InvalidMessageError as e:
            self._reject("joints", e)
            return
        with self.kin_lock:
            ee = self.kin.forward(q[:7])
        with self.lock:
            t = self._now()
            self.robot.update(ee, q[:7], q[7:], t)
            self.sup.received("joints", t)

    def _on_instruction(self, msg: String) -> None:
        try:
            text = check_instruction(msg.data, int(self.p["max_instruction_chars"]))
        except InvalidMessageError as e:
            self._reject("instruction", e)
            return
        with self.lock:
            if self.sup.set_instruction(text):
                self.get_logger().info(f"instruction: {text!r}")
                self._instruction_epoch += 1  # the policy step resets the policy (its thread)
                self.score = None

    def _on_person(self, msg: PoseArray) -> None:
        try:
            stamp = stamp_to_seconds(msg.header.stamp.sec, msg.header.stamp.nanosec)
            pts = [(q.position.x, q.position.y, q.position.z) for q in msg.poses]
            person = person_from_positions(pts, stamp)
        except InvalidMessageError as e:
            self._reject("person", e)
            return
        with self.lock:
            self.person = person
            self.sup.received("person", self._now())

    def _on_estop(self, msg: Bool, info: Any) -> None:
        """E-stop topic; ``info`` (rclpy MessageInfo, ns stamps) dates the message's delivery."""
        if msg.data:
            now = time.time_ns()
            self._latch("e-stop topic")
            sent, got = info.get("source_timestamp", 0), info.get("received_timestamp", 0)
            if sent and got:
                self.get_logger().info(
                    f"e-stop delivery {1e-6 * (got - sent):.1f} ms, wait for the callback "
                    f"{1e-6 * (now - got):.1f} ms"
                )

    def _on_stop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        self._latch("stop service")
        resp.success, resp.message = True, "stopped; call the rearm service to resume"
        return resp

    def _on_rearm(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        with self.lock:
            resp.success, resp.message = self.sup.rearm()
        self.get_logger().warning(resp.message)
        return resp

    def _latch(self, source: str) -> None:
        with self.lock:
            self.sup.stop(source)
            self._stop_now()
        self.get_logger().warning(f"e-stop latched by {source}")

    # -- outputs -----------------------------------------------------------------------------
    def _stop_now(self) -> None:
        """Publish zero motion and the status at once (caller holds the lock)."""
        self.prev_v = np.zeros(3)
        self._publish_motion(np.zeros(3), None)
        self._publish_status(self.sup.check(self._now()))

    def _publish_motion(self, v: np.ndarray, gripper: float | None) -> float:
        now = self.get_clock().now().to_msg()
        stamp = stamp_to_seconds(now.sec, now.nanosec)
        moving = bool(np.any(v != 0.0))
        if self.p["output_mode"] == "twist":
            msg = TwistStamped()
            msg.header.stamp, msg.header.frame_id = now, str(self.p["frame_id"])
            msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(x) for x in v)
            self.twist_pub.publish(msg)
        elif self.robot.stamp is not None:
            target = self.robot.ee + v * self.period
            with self.kin_lock:
                q = self.kin.inverse(self.robot.arm, target) if moving else self.robot.arm
            traj = JointTrajectory()
            traj.joint_names = list(self.p["joint_names"])
            sec, nsec = seconds_to_stamp(self.period)
            traj.points = [
                JointTrajectoryPoint(
                    positions=[float(x) for x in q], time_from_start=Duration(sec=sec, nanosec=nsec)
                )
            ]
            self.traj_pub.publish(traj)
        if gripper is not None:
            self.gripper_pub.publish(Float64(data=float(gripper)))
            self.robot.gripper_closed = gripper > 0
        self.last_cmd_time, self.last_cmd_moving = self._now(), moving
        return stamp

    def _publish_status(self, v: Verdict, command_stamp: float | None = None) -> None:
        status = {
            "state": v.state,
            "reason": v.reason,
            "refusal_score": self.score,
            "instruction": self.sup.instruction,
            "intervention": self.p["intervention"],
            "limits": list(self.limits_hit),
            "command": [float(x) for x in self.prev_v],
            "ee": [float(x) for x in self.robot.ee],
            "image_stamp": self.image_stamp,
            "command_stamp": command_stamp,
            "steps": self.steps,
        }
        text = json.dumps(status)
        self.status_pub.publish(String(data=text))
        key = f"{v.state}|{v.reason}"
        if key != self.last_status:
            self.last_status = key
            self.get_logger().info(
                f"state {v.state}: {v.reason}" if v.reason else f"state {v.state}"
            )

    def _watchdog(self) -> None:
        with self.lock:
            v = self.sup.check(self._now())
            if v.motion:
                return
            if self.last_cmd_moving or self._now() - self.last_cmd_time >= self.period:
                self.prev_v = np.zeros(3)
                self._publish_motion(np.zeros(3), None)
                self._publish_status(v)

    # -- the policy step ---------------------------------------------------------------------
    def _step(self) -> None:
        self._last_step = self._now()
        with self.lock:
            v = self.sup.check(self._now(), retry_policy=True)
            if not v.motion or self.image is None or self.sup.instruction is None:
                self.prev_v = np.zeros(3)
                self._publish_motion(np.zeros(3), None)
                self._publish_status(v)
                return
            obs = observation(self.image, self.robot, self.sup.instruction)
            ee, person = self.robot.ee.copy(), self.person
            epoch = self.sup.policy_started(self._now())
            key = (epoch, self._instruction_epoch)
        if key != self._policy_key:  # stored chunks (open loop, ensemble) predate a stop
            self.policy.reset()
            self._policy_key = key
        try:
            action = self.policy.select_action(obs)
            score = self.policy.refusal_score
        except Exception as e:  # the policy must never take the node down
            self.get_logger().error(f"policy raised {type(e).__name__}: {e}")
            self._policy_key = None  # start afresh at the next step
            with self.lock:
                self.sup.policy_finished(f"{type(e).__name__}: {e}")
                self._stop_now()
            return
        with self.lock:
            self.sup.policy_finished()
            self.score, self.steps = score, self.steps + 1
            if int(action["refuse"]) == 1:
                self.sup.refuse()
                self._stop_now()
                return
            if (
                not self.sup.may_publish(epoch, self._now())
                or self._instruction_epoch != key[1]  # the instruction changed meanwhile
            ):
                self._policy_key = None
                self._stop_now()
                return
            limits = Limits.from_params(self.p)
            wanted = np.asarray(action["delta"], np.float64) / self.period
            out = limit_velocity(ee, wanted, self.prev_v, self.period, limits, person)
            self.prev_v, self.limits_hit = out.velocity, out.reasons
            stamp = self._publish_motion(out.velocity, float(np.asarray(action["gripper"])[0]))
            self._publish_status(self.sup.check(self._now()), stamp)


def main(argv: list[str] | None = None) -> int:
    """``python -m robot_refusal.ros2.policy_node --ros-args -p name:=value ...``."""
    from robot_refusal.ros2.runtime import run_nodes

    return run_nodes(lambda ctx: [PolicyNode(context=ctx)], argv)


if __name__ == "__main__":
    raise SystemExit(main())
