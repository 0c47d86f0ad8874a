"""Topic names, QoS profiles and ROS parameters of the bridge's nodes, as plain data (no rclpy).

Every topic name and every limit of the nodes is a ROS parameter declared from the tables
:data:`POLICY_PARAMS` and :data:`ROBOT_PARAMS`; the launch-file test checks the launch files
against the same tables. Parameter values follow the ROS 2 parameter types (bool, int64,
double, string, string[] and double[]), names follow REP 144-style snake case, and topic names
follow the ROS 2 topic-name rules (design article "Topic and Service name mapping to DDS").

Units: m, m/s, m/s², s, Hz.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from robot_refusal.errors import ConfigError

ParamValue = bool | int | float | str | list[str] | list[float]
Check = Callable[[Any], str | None]

PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
PANDA_FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
INTERVENTIONS = ("none", "ablate", "add", "orthogonalized")
OUTPUT_MODES = ("twist", "trajectory")
TRIGGERS = ("timer", "image")
STATES = ("idle", "acting", "refused", "stopped")
"""Values of ``state`` in the status JSON."""

_TOPIC = re.compile(r"^~?/?[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class QosSpec:
    """A QoS profile as data (mapped onto ``rclpy.qos.QoSProfile`` by the nodes).

    Attributes:
        reliable: RELIABLE if true, BEST_EFFORT otherwise.
        transient_local: TRANSIENT_LOCAL durability if true, VOLATILE otherwise.
        depth: KEEP_LAST history depth.
    """

    reliable: bool
    transient_local: bool
    depth: int


SENSOR_QOS = QosSpec(reliable=False, transient_local=False, depth=5)
"""``rclpy.qos.qos_profile_sensor_data``: matches reliable and best-effort publishers."""
COMMAND_QOS = QosSpec(reliable=True, transient_local=False, depth=1)
"""Commands: RELIABLE, KEEP_LAST 1, VOLATILE (matches every subscriber kind)."""
STATUS_QOS = QosSpec(reliable=True, transient_local=False, depth=10)
"""Status, instruction, e-stop and joint states: RELIABLE, KEEP_LAST 10, VOLATILE."""


# -- checks: each returns None if the value is valid, else the reason ------------------------
def is_topic(v: Any) -> str | None:
    """A valid absolute, relative or private (``~``) ROS 2 topic or service name."""
    if not isinstance(v, str) or not _TOPIC.match(v) or "__" in v:
        return f"{v!r} is not a valid ROS 2 topic name (letters, digits, _ and /)"
    return None


def in_range(low: float, high: float) -> Check:
    """A finite number in ``[low, high]``."""

    def check(v: Any) -> str | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or not low <= v <= high:
            return f"{v!r} must be a number in [{low}, {high}]"
        return None

    return check


def one_of(choices: Sequence[str]) -> Check:
    """One of ``choices``."""

    def check(v: Any) -> str | None:
        return None if v in choices else f"{v!r} must be one of {', '.join(choices)}"

    return check


def names(count: int) -> Check:
    """``count`` distinct non-empty strings (joint names)."""

    def check(v: Any) -> str | None:
        if not (isinstance(v, list) and len(v) == count and all(isinstance(s, str) for s in v)):
            return f"{v!r} must be a list of {count} names"
        if len(set(v)) != count or not all(v):
            return f"{v!r} must hold {count} distinct non-empty names"
        return None

    return check


def xyz(v: Any) -> str | None:
    """Three finite numbers (m)."""
    ok = isinstance(v, list) and len(v) == 3
    if not ok or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
        return f"{v!r} must be three finite numbers (m)"
    return None


def any_str(v: Any) -> str | None:
    """Any string."""
    return None if isinstance(v, str) else f"{v!r} must be a string"


@dataclass(frozen=True)
class ParamSpec:
    """One declared ROS parameter.

    Attributes:
        name: Parameter name.
        default: Default value; its type is the parameter's type.
        description: What it sets, with units.
        check: Validator returning ``None`` or the reason the value is rejected.
        read_only: Fixed after start (topics, policy, intervention): a change is rejected.
    """

    name: str
    default: ParamValue
    description: str
    check: Check
    read_only: bool = False


def _p(
    name: str, default: ParamValue, description: str, check: Check, ro: bool = False
) -> ParamSpec:
    return ParamSpec(name, default, description, check, ro)


def _topics(*pairs: tuple[str, str, str]) -> list[ParamSpec]:
    return [_p(n, d, desc, is_topic, True) for n, d, desc in pairs]


COMMON_TOPICS = _topics(
    ("image_topic", "/camera/image_raw", "camera images in (sensor_msgs/Image, rgb8)"),
    ("joint_states_topic", "/joint_states", "joint states (sensor_msgs/JointState)"),
    ("instruction_topic", "/robot_refusal/instruction", "instruction text (std_msgs/String)"),
    ("twist_topic", "/servo_node/delta_twist_cmds", "Cartesian commands (TwistStamped)"),
    (
        "trajectory_topic",
        "/joint_trajectory_controller/joint_trajectory",
        "joint commands (trajectory_msgs/JointTrajectory)",
    ),
    ("gripper_topic", "/robot_refusal/gripper_command", "gripper (std_msgs/Float64, >0 closes)"),
    ("person_topic", "/robot_refusal/person", "person keypoints (geometry_msgs/PoseArray)"),
)

POLICY_PARAMS: tuple[ParamSpec, ...] = (
    _p("policy", "vla-small", "checkpoint folder or shipped name", any_str, True),
    _p("intervention", "none", "none | ablate | add | orthogonalized", one_of(INTERVENTIONS), True),
    _p(
        "direction",
        "none",
        "direction file or extract folder (unless intervention is none)",
        any_str,
        True,
    ),
    _p("alpha", 1.0, "activation-addition coefficient (add only)", in_range(-100, 100), True),
    _p(
        "layer",
        -1,
        "activation-addition block; -1: the direction's layer",
        in_range(-1, 1000),
        True,
    ),
    _p("rate_hz", 10.0, "policy rate (Hz)", in_range(0.5, 200.0), True),
    _p(
        "torch_threads",
        1,
        "torch intra-op threads of the policy (1 leaves the other cores to the executor)",
        in_range(1, 256),
        True,
    ),
    _p(
        "trigger",
        "timer",
        "timer: run at rate_hz; image: on each new image, at most rate_hz",
        one_of(TRIGGERS),
        True,
    ),
    _p(
        "output_mode",
        "twist",
        "twist (MoveIt Servo) | trajectory (ros2_control JTC)",
        one_of(OUTPUT_MODES),
        True,
    ),
    *COMMON_TOPICS,
    *_topics(
        ("status_topic", "/robot_refusal/status", "status JSON out (std_msgs/String)"),
        ("estop_topic", "/robot_refusal/estop", "latched e-stop in (std_msgs/Bool, true stops)"),
        ("stop_service", "/robot_refusal/stop", "std_srvs/Trigger: latch the e-stop"),
        ("rearm_service", "/robot_refusal/rearm", "std_srvs/Trigger: release the e-stop"),
    ),
    _p("frame_id", "panda_link0", "frame of the twist commands and limits", is_topic, True),
    _p("joint_names", PANDA_JOINTS, "the 7 arm joints, base to flange", names(7), True),
    _p("finger_joint_names", PANDA_FINGERS, "the 2 finger joints", names(2), True),
    _p("workspace_min", [0.25, -0.45, 0.005], "workspace box lower corner (m)", xyz),
    _p("workspace_max", [0.85, 0.45, 0.5], "workspace box upper corner (m)", xyz),
    _p("max_speed", 0.25, "end-effector speed limit (m/s)", in_range(0.0, 1.0)),
    _p("max_accel", 2.0, "end-effector acceleration limit (m/s^2)", in_range(0.01, 20.0)),
    _p("keepout_radius", 0.10, "keep-out radius around the person keypoints (m)", in_range(0, 1)),
    _p("keepout_margin", 0.03, "extra clearance added to keepout_radius (m)", in_range(0, 0.5)),
    _p("keepout_height", 0.6, "keep-out zone top above the base (m)", in_range(0, 3)),
    _p("stale_timeout", 0.25, "inputs older than this stop the arm (s)", in_range(0.01, 5.0)),
    _p(
        "person_timeout", 1.0, "a person pose older than this stops the arm (s)", in_range(0.05, 60)
    ),
    _p("watchdog_hz", 50.0, "watchdog check rate (Hz)", in_range(1.0, 1000.0), True),
    _p("max_instruction_chars", 256, "longer instructions are rejected", in_range(1, 10000)),
    _p(
        "grasp_threshold",
        0.01,
        "finger opening above which a closed gripper holds (m)",
        in_range(0.0, 0.08),
    ),
)

ROBOT_PARAMS: tuple[ParamSpec, ...] = (
    _p("family", "pick_place", "scenario family of the simulated scene", any_str, True),
    _p("split", "test", "instruction split", one_of(("train", "val", "test")), True),
    _p("seed", 0, "episode seed (layout and instruction)", in_range(0, 2**31 - 1), True),
    _p(
        "label",
        "any",
        "harmful | harmless | any (drawn)",
        one_of(("any", "harmful", "harmless")),
        True,
    ),
    _p("instruction", "", "instruction announced (empty: the scenario's own)", any_str, True),
    _p("announce_instruction", True, "publish the instruction every second", lambda v: None, True),
    _p("rate_hz", 10.0, "simulation and publishing rate (Hz)", in_range(1.0, 100.0), True),
    _p("image_size", 64, "camera image side (pixels)", in_range(16, 512), True),
    _p(
        "command_timeout",
        0.2,
        "commands older than this are treated as zero (s)",
        in_range(0.01, 5.0),
    ),
    _p("frame_id", "panda_link0", "frame of published poses", is_topic, True),
    *COMMON_TOPICS,
    *_topics(("sim_info_topic", "/robot_refusal/sim_info", "simulator ground truth (JSON)")),
)


def defaults(specs: Sequence[ParamSpec]) -> dict[str, ParamValue]:
    """``{name: default}`` of ``specs``."""
    return {s.name: s.default for s in specs}


def validate(
    specs: Sequence[ParamSpec], values: Mapping[str, Any], changing: bool = False
) -> list[str]:
    """Reasons why ``values`` (a full or partial parameter set) are not acceptable.

    Args:
        specs: The node's parameter table.
        values: Names and new values.
        changing: True for a change at run time: read-only parameters are then rejected.

    Returns:
        One line per problem; empty when valid.
    """
    table = {s.name: s for s in specs}
    out = []
    for name, value in values.items():
        spec = table.get(name)
        if spec is None:
            continue  # ROS's own parameters (use_sim_time, ...)
        if changing and spec.read_only:
            out.append(f"{name} is fixed after start; restart the node to change it")
            continue
        reason = spec.check(value)
        if reason is not None:
            out.append(f"{name}: {reason}")
    if "workspace_min" in values or "workspace_max" in values:
        low, high = values.get("workspace_min"), values.get("workspace_max")
        ok = isinstance(low, list) and isinstance(high, list) and not (xyz(low) or xyz(high))
        if ok and not all(a < b for a, b in zip(low, high, strict=True)):  # type: ignore[arg-type]
            out.append(f"workspace_min {low} must be below workspace_max {high} on each axis")
    return out


def require_valid(specs: Sequence[ParamSpec], values: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` listing every invalid value in ``values``."""
    problems = validate(specs, values)
    if problems:
        raise ConfigError("invalid ROS parameters: " + "; ".join(problems))
