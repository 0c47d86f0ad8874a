"""Starting and stopping nodes without the ``ros2`` command line (imports rclpy)."""

from __future__ import annotations

import gc
import signal
import sys
import time
from collections.abc import Callable, Sequence

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from robot_refusal.errors import RobotRefusalError

GIL_SWITCH_INTERVAL = 0.0005
"""s: how long a thread may hold the GIL while another waits (CPython's default is 0.005).

The executor's dispatch thread releases and retakes the GIL at every call into rcl, and each
retake waits up to one switch interval while the policy thread runs Python. With the default
this "convoy" delayed the e-stop callback by 100-1100 ms in 4 of 18 runs of the e-stop test
(DDS delivery < 1 ms, no single GIL hold over 0.3 s, other processes unaffected); with 0.5 ms:
25 of 25 runs, the longest wait 12 ms. Same diagnosis: Beazley 2010, "Understanding the GIL"."""


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
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # A background job of a non-interactive shell inherits SIGINT ignored; a node must
        # still stop on Ctrl-C / SIGINT (as ros2 launch sends it), so take the default back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    ctx = Context()
    rclpy.init(args=list(sys.argv if argv is None else argv), context=ctx)
    nodes: list[Node] = []
    try:
        try:
            nodes = list(factory(ctx))
        except RobotRefusalError as e:
            print(f"robot-refusal: error: {e}", file=sys.stderr)
            return 2
        # torch, transformers and rclpy leave ~10^6 long-lived objects; a full (generation 2)
        # collection over them paused the node for 100-160 ms (measured), longer than the
        # e-stop's 100 ms budget. Freezing them moves them out of the collector's sight.
        gc.collect()
        gc.freeze()
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
