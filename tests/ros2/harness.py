"""Helpers of the ROS tests: a private ROS_DOMAIN_ID per test, node subprocesses, a probe node.

Every test takes a domain by binding 127.0.0.1:(32768 + d) for d in 1..100 and holds the socket
for its duration (the domain_coordinator trick), so concurrent test processes never share DDS
traffic; DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) and
RMW_IMPLEMENTATION is unset (the wheels ship only rmw_fastrtps_cpp).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def clean_shm() -> None:
    """Remove Fast DDS shared-memory ports and segments whose owner died (a test kills nodes
    on purpose). A new participant that gets the same port as a killed one stalled for about
    1 s at a time (watchdog and e-stop callbacks late by 0.2-1.0 s, seen in 1 run in 3 on a
    machine holding 600 such zombies). Needs psutil (the ``ros2`` extra); a no-op without it."""
    tool = Path(sys.prefix) / "tools" / "fastdds" / "fastdds.py"
    if tool.is_file():
        subprocess.run(
            [sys.executable, str(tool), "shm", "clean"],
            capture_output=True,
            timeout=30,
            check=False,
        )


@contextmanager
def private_domain() -> Iterator[int]:
    """A ROS domain id in 1..100 that no other process on this host holds; Fast DDS
    shared-memory zombies are cleaned before and after."""
    clean_shm()
    try:
        with _domain() as d:
            yield d
    finally:
        clean_shm()


@contextmanager
def _domain() -> Iterator[int]:
    ids = list(range(1, 101))
    random.Random(os.getpid() ^ time.time_ns()).shuffle(ids)
    for d in ids:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 32768 + d))
        except OSError:
            s.close()
            continue
        try:
            yield d
        finally:
            s.close()
        return
    raise RuntimeError("no free ROS domain id in 1..100")


def ros_env(domain: int, log_dir: Path) -> dict[str, str]:
    """Environment of a node subprocess on ``domain``, one thread, loopback only."""
    env = {k: v for k, v in os.environ.items() if k != "RMW_IMPLEMENTATION"}
    env.update(
        ROS_DOMAIN_ID=str(domain),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOG_DIR=str(log_dir),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


class NodeProcess:
    """A node started with ``python -m MODULE --ros-args -p k:=v ...``; output to a log file."""

    def __init__(self, module: str, params: dict[str, Any], env: dict[str, str], log: Path):
        args = [sys.executable, "-m", module, "--ros-args"]
        for k, v in params.items():
            args += ["-p", f"{k}:={_ros_value(v)}"]
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(args, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def output(self) -> str:
        """Everything it printed so far."""
        self._out.flush()
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        self.proc.kill()
        self.proc.wait(5)

    def stop(self) -> int | None:
        """SIGINT, then SIGKILL after 5 s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        return self.proc.returncode


def _ros_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_ros_value(x) for x in v) + "]"
    return str(v)


class Probe:
    """An in-process rclpy node on the test's domain that records and publishes.

    Attributes:
        twists: (receive time, (3,) linear m/s) of every command.
        twist_clock: (header stamp, wall-clock receive time) in s of every command, same order:
            tells a late publish in the node from a late delivery.
        status: Parsed status JSON messages with their receive time under ``_t``.
        sim: Parsed sim_info JSON messages.
    """

    def __init__(self, domain: int) -> None:
        import rclpy
        from geometry_msgs.msg import TwistStamped
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String

        from robot_refusal.ros2.config import COMMAND_QOS, STATUS_QOS
        from robot_refusal.ros2.qos import qos

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node("test_probe", context=self.ctx)
        self.exec = SingleThreadedExecutor(context=self.ctx)
        self.exec.add_node(self.node)
        self.twists: list[tuple[float, np.ndarray]] = []
        self.twist_clock: list[tuple[float, float]] = []
        self.status: list[dict[str, Any]] = []
        self.sim: list[dict[str, Any]] = []
        n = self.node
        n.create_subscription(
            TwistStamped, "/servo_node/delta_twist_cmds", self._twist, qos(COMMAND_QOS)
        )
        n.create_subscription(String, "/robot_refusal/status", self._status, qos(STATUS_QOS))
        n.create_subscription(String, "/robot_refusal/sim_info", self._sim, qos(STATUS_QOS))
        self._pubs: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}

    def _twist(self, msg: Any) -> None:
        v = np.array([msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z])
        self.twists.append((time.monotonic(), v))
        sent = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
        self.twist_clock.append((sent, time.time()))

    def _status(self, msg: Any) -> None:
        self.status.append({**json.loads(msg.data), "_t": time.monotonic()})

    def _sim(self, msg: Any) -> None:
        self.sim.append({**json.loads(msg.data), "_t": time.monotonic()})

    def publisher(self, msgtype: Any, topic: str, sensor: bool = False) -> Any:
        """A (cached) publisher, RELIABLE depth 10 or SensorDataQoS."""
        from robot_refusal.ros2.config import SENSOR_QOS, STATUS_QOS
        from robot_refusal.ros2.qos import qos

        if topic not in self._pubs:
            spec = SENSOR_QOS if sensor else STATUS_QOS
            self._pubs[topic] = self.node.create_publisher(msgtype, topic, qos(spec))
        return self._pubs[topic]

    def publish(self, msgtype: Any, topic: str, msg: Any, sensor: bool = False) -> None:
        """Publish ``msg`` on ``topic``."""
        self.publisher(msgtype, topic, sensor).publish(msg)

    def spin(self, seconds: float, every: Callable[[], None] | None = None) -> None:
        """Process callbacks for ``seconds``, calling ``every`` about every 0.1 s."""
        end = time.monotonic() + seconds
        nxt = time.monotonic()
        while time.monotonic() < end:
            if every is not None and time.monotonic() >= nxt:
                every()
                nxt += 0.1
            self.exec.spin_once(timeout_sec=0.01)

    def spin_until(
        self, pred: Callable[[], bool], timeout: float, every: Callable[[], None] | None = None
    ) -> bool:
        """Spin until ``pred()`` or ``timeout`` s; returns ``pred()``."""
        end = time.monotonic() + timeout
        nxt = time.monotonic()
        while time.monotonic() < end:
            if pred():
                return True
            if every is not None and time.monotonic() >= nxt:
                every()
                nxt += 0.1
            self.exec.spin_once(timeout_sec=0.01)
        return pred()

    def call_trigger(self, name: str, timeout: float = 5.0) -> Any:
        """Call a std_srvs/Trigger service; returns the response."""
        from std_srvs.srv import Trigger

        cli = self.trigger_client(name, timeout)
        fut = cli.call_async(Trigger.Request())
        self.spin_until(fut.done, timeout)
        assert fut.done(), f"service {name} did not answer"
        return fut.result()

    def trigger_client(self, name: str, timeout: float = 5.0) -> Any:
        """A (cached) std_srvs/Trigger client whose service is available."""
        from std_srvs.srv import Trigger

        if name not in self._clients:
            self._clients[name] = self.node.create_client(Trigger, name)
        cli = self._clients[name]
        assert cli.wait_for_service(timeout_sec=timeout), f"service {name} not found"
        return cli

    def last_state(self) -> str | None:
        """The ``state`` of the latest status, or None."""
        return self.status[-1]["state"] if self.status else None

    def close(self) -> None:
        """Destroy the node and shut the context down."""
        self.exec.shutdown()
        self.node.destroy_node()
        self.ctx.try_shutdown()
