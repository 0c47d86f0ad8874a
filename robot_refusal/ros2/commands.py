"""``robot-refusal ros2 sim`` and ``robot-refusal ros2 policy``: the nodes of the launch files,
started without the ``ros2`` command line (rclpy is imported only when a command runs)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from robot_refusal.errors import ConfigError
from robot_refusal.ros2 import require_rclpy
from robot_refusal.ros2.config import POLICY_PARAMS, ROBOT_PARAMS, ParamSpec, require_valid

log = logging.getLogger(__name__)


def parse_param(text: str) -> tuple[str, Any]:
    """``name:=value`` (value as JSON if it parses, else a string) -> (name, value).

    Raises:
        ConfigError: Without ``:=``.
    """
    if ":=" not in text:
        raise ConfigError(f"--param takes name:=value, got {text!r}")
    name, raw = text.split(":=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name.strip(), value


def overrides(specs: Sequence[ParamSpec], values: Mapping[str, Any]) -> list[Any]:
    """Validated ``rclpy.parameter.Parameter`` overrides for the names of ``specs`` in
    ``values`` (ints become floats where the parameter is a double).

    Raises:
        ConfigError: Unknown names or invalid values.
    """
    from rclpy.parameter import Parameter

    table = {s.name: s for s in specs}
    unknown = sorted(set(values) - set(table))
    if unknown:
        raise ConfigError(f"unknown parameters {unknown}; valid: {sorted(table)}")
    fixed: dict[str, Any] = {}
    for name, v in values.items():
        d = table[name].default
        if isinstance(d, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(d, list) and d and isinstance(d[0], float) and isinstance(v, list):
            v = [float(x) for x in v]
        fixed[name] = v
    require_valid(specs, fixed)
    return [Parameter(k, value=v) for k, v in fixed.items()]


def _policy_values(args: argparse.Namespace) -> dict[str, Any]:
    vals: dict[str, Any] = {
        "policy": args.policy,
        "intervention": args.intervention,
        "direction": args.direction,
        "alpha": args.alpha,
        "rate_hz": args.rate,
        "output_mode": args.output_mode,
    }
    extra = dict(parse_param(t) for t in args.param)
    return {**vals, **{k: v for k, v in extra.items() if k in {s.name for s in POLICY_PARAMS}}}


def cmd_policy(args: argparse.Namespace) -> int:
    """Run the policy node (hardware: the robot's drivers publish the inputs)."""
    require_rclpy()
    from robot_refusal.ros2.policy_node import PolicyNode
    from robot_refusal.ros2.runtime import run_nodes

    params = overrides(POLICY_PARAMS, _policy_values(args))
    return run_nodes(
        lambda ctx: [PolicyNode(context=ctx, parameter_overrides=params)],
        ["robot-refusal"],
        args.duration,
    )


def cmd_sim(args: argparse.Namespace) -> int:
    """Run the robot node and the policy node (and optionally the bag recorder) in one process."""
    require_rclpy()
    from robot_refusal.ros2.policy_node import PolicyNode
    from robot_refusal.ros2.recorder import SIM_TOPICS, BagRecorder
    from robot_refusal.ros2.robot_node import RobotNode
    from robot_refusal.ros2.runtime import run_nodes

    pol = overrides(POLICY_PARAMS, _policy_values(args))
    rob_vals = {
        "family": args.family,
        "split": args.split,
        "seed": args.seed,
        "label": args.label,
        "instruction": args.instruction,
    }
    rob = overrides(ROBOT_PARAMS, rob_vals)

    def build(ctx: Any) -> list[Any]:
        nodes: list[Any] = [
            RobotNode(context=ctx, parameter_overrides=rob),
            PolicyNode(context=ctx, parameter_overrides=pol),
        ]
        if args.record:
            nodes.append(BagRecorder(args.record, SIM_TOPICS, context=ctx))
        return nodes

    code = run_nodes(build, ["robot-refusal"], args.duration)
    if args.record and code == 0:
        print(f"bag written to {args.record}")
    return code


def add_parsers(sub: Any) -> None:
    """Add ``ros2 sim`` and ``ros2 policy`` to the CLI's subparsers."""
    ros = sub.add_parser("ros2", help="run the ROS 2 nodes (needs the ros2 extra)")
    rsub = ros.add_subparsers(dest="ros2_command", required=True, parser_class=type(ros))
    for name, func, text in (
        ("sim", cmd_sim, "simulated robot node + policy node over ROS 2 (as launch/sim)"),
        ("policy", cmd_policy, "policy node only, for a real robot (as launch/hardware)"),
    ):
        p = rsub.add_parser(name, help=text, description=text)
        p.add_argument("--policy", default="vla-small", help="checkpoint folder or shipped name")
        p.add_argument(
            "--intervention", default="none", choices=["none", "ablate", "add", "orthogonalized"]
        )
        p.add_argument("--direction", default="none", help="direction file or extract folder")
        p.add_argument("--alpha", type=float, default=1.0, help="addition coefficient (add)")
        p.add_argument("--rate", type=float, default=10.0, help="policy rate (Hz)")
        p.add_argument("--output-mode", default="twist", choices=["twist", "trajectory"])
        p.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="NAME:=VALUE",
            help="any other policy-node parameter (repeatable), e.g. max_speed:=0.2",
        )
        p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
        if name == "sim":
            p.add_argument("--family", default="pick_place", help="scenario family")
            p.add_argument("--split", default="test", choices=["train", "val", "test"])
            p.add_argument("--seed", type=int, default=0, help="episode seed")
            p.add_argument("--label", default="any", choices=["any", "harmful", "harmless"])
            p.add_argument("--instruction", default="", help="exact instruction of the split")
            p.add_argument("--record", default=None, help="write a rosbag2 (MCAP) folder here")
        p.set_defaults(func=func)
