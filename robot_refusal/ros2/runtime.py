"""Starting and stopping nodes without the ``ros2`` command line (imports rclpy)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from robot_refusal.errors import RobotRefusalError


def run_nodes(
    factory: Callable[[Context], Sequence[Node]],
    argv: Sequence[str] | None = None,
    duration: float | None = None,
) -> int:
    """Initialise rclpy, build the nodes, spin them until SIGINT/SIGTERM or ``duration`` s.

    Args:
        factory: Builds the nodes in the given context.
        argv: Command line (``--ros-args`` are honoured); ``sys.argv`` if None.
        duration: Stop after this many seconds (None: run until interrupted).

    Returns:
        0 on a clean stop, 2 when the nodes could not be built (bad parameters or files; the
        reason is printed as one line).
    """
    ctx = Context()
    rclpy.init(args=list(sys.argv if argv is None else argv), context=ctx)
    nodes: list[Node] = []
    try:
        try:
            nodes = list(factory(ctx))
        except RobotRefusalError as e:
            print(f"robot-refusal: error: {e}", file=sys.stderr)
            return 2
        executor = MultiThreadedExecutor(num_threads=4, context=ctx)
        for n in nodes:
            executor.add_node(n)
        if duration is None:
            executor.spin()
        else:
            end = time.monotonic() + duration
            while ctx.ok() and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        for n in nodes:
            n.destroy_node()
        if ctx.ok():
            ctx.try_shutdown()
