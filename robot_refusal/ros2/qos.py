"""rclpy QoS profiles and parameter plumbing shared by the nodes (imports rclpy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from robot_refusal.errors import ConfigError
from robot_refusal.ros2.config import ParamSpec, ParamValue, validate


def qos(spec: Any) -> QoSProfile:
    """:class:`config.QosSpec` -> ``rclpy.qos.QoSProfile`` (KEEP_LAST)."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=spec.depth,
        reliability=ReliabilityPolicy.RELIABLE if spec.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=(
            DurabilityPolicy.TRANSIENT_LOCAL if spec.transient_local else DurabilityPolicy.VOLATILE
        ),
    )


def plain(value: Any) -> ParamValue:
    """A parameter value as bool/int/float/str or a list (arrays come back as array.array)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return list(value)


def declare(node: Node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare every parameter of ``specs`` on ``node`` and return the validated values.

    Later changes are validated with :func:`config.validate` (read-only ones are refused) and
    applied to the returned dict in place.

    Raises:
        ConfigError: If a value given at start (``--ros-args -p``, launch) is invalid.
    """
    for s in specs:
        node.declare_parameter(
            s.name,
            s.default,
            ParameterDescriptor(description=s.description, read_only=False),
        )
    values: dict[str, Any] = {s.name: plain(node.get_parameter(s.name).value) for s in specs}
    problems = validate(specs, values)
    if problems:
        raise ConfigError("invalid ROS parameters: " + "; ".join(problems))

    def on_set(params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: plain(p.value) for p in params}
        merged = {**values, **changes}
        problems = validate(specs, changes, changing=True) + [
            p for p in validate(specs, merged) if p.startswith("workspace_min ")
        ]
        if problems:
            node.get_logger().warning("parameter change refused: " + "; ".join(problems))
            return SetParametersResult(successful=False, reason="; ".join(problems))
        values.update({k: v for k, v in changes.items() if k in merged})
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    return values
