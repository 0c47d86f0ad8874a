"""Image-in to command-out latency of the policy node over ROS 2 (loopback DDS), and the highest
rate it sustains.

A driver node in this process plays the robot: it publishes 64x64 rgb8 images and joint states
at a rate and the instruction; the policy node runs in a subprocess. Latency of one command =
the time this process receives the TwistStamped minus the header stamp of the image the policy
read (both on this host's clock; the node reports the image stamp in its status JSON).

    python benchmarks/ros2_latency.py --policy vla-small [--trigger timer|image] [--seconds 5]

Prints median and p99 at 10 Hz for both triggers, then, with ``--trigger image``, the rates
10, 20, 40, 80, 160 Hz: a rate is sustained when at least 90% of the images get a command and
p99 latency is below one period. Needs the ros2 extra. Pin it with ``taskset`` for one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ros2.harness import NodeProcess, Probe, private_domain, ros_env


def measure(policy: str, trigger: str, rate: float, seconds: float, tmp: Path) -> dict:
    """Run the policy node at ``rate`` Hz for ``seconds`` s; latencies (ms) and counts."""
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    with private_domain() as d:
        env = ros_env(d, tmp / "roslog")
        params = {"policy": policy, "rate_hz": float(rate), "trigger": trigger, "max_speed": 1.0}
        node = NodeProcess("robot_refusal.ros2.policy_node", params, env, tmp / f"p{rate}.log")
        probe = Probe(d)
        received: dict[float, float] = {}
        probe.node.create_subscription(
            __import__("geometry_msgs.msg", fromlist=["TwistStamped"]).TwistStamped,
            "/servo_node/delta_twist_cmds",
            lambda m: received.__setitem__(
                m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, time.time()
            ),
            10,
        )
        data = np.full((64, 64, 3), 120, np.uint8).tobytes()
        names = [f"panda_joint{i}" for i in range(1, 8)] + [
            "panda_finger_joint1",
            "panda_finger_joint2",
        ]
        q = [0.0, -0.25, 0.0, -2.2, 0.0, 1.95, 0.785, 0.04, 0.04]
        sent = 0

        def publish() -> None:
            nonlocal sent
            now = probe.node.get_clock().now().to_msg()
            img = Image(height=64, width=64, encoding="rgb8", step=192, data=data)
            img.header.stamp = now
            js = JointState(name=names, position=q)
            js.header.stamp = now
            probe.publish(JointState, "/joint_states", js)
            probe.publish(Image, "/camera/image_raw", img, sensor=True)
            sent += 1

        try:
            probe.publisher(String, "/robot_refusal/instruction")
            probe.publisher(Image, "/camera/image_raw", sensor=True)
            probe.publisher(JointState, "/joint_states")
            ok = probe.spin_until(lambda: probe.last_state() is not None, 60)
            assert ok, node.output()[-2000:]
            probe.publish(
                String, "/robot_refusal/instruction", String(data="put the red cube in the bin")
            )
            probe.spin(1.0, publish)
            probe.status.clear()
            sent, t_end, period = 0, time.monotonic() + seconds, 1.0 / rate
            nxt = time.monotonic()
            while time.monotonic() < t_end:
                if time.monotonic() >= nxt:
                    publish()
                    nxt += period
                probe.exec.spin_once(timeout_sec=max(0.0, min(0.002, nxt - time.monotonic())))
            probe.spin(0.3)
        finally:
            probe.close()
            node.stop()
    lat = [
        (received[s["command_stamp"]] - s["image_stamp"]) * 1e3
        for s in probe.status
        if s.get("command_stamp") in received and s["state"] == "acting"
    ]
    return {
        "rate": rate,
        "images": sent,
        "commands": len(lat),
        "median_ms": float(np.median(lat)) if lat else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"),
    }


def main() -> None:
    """Print the tables (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="vla-small")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rates", default="10,20,40,80,160")
    args = ap.parse_args()
    os.environ.pop("RMW_IMPLEMENTATION", None)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ros2_latency_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    print("| trigger | rate Hz | images | commands | median ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for trigger in ("timer", "image"):
        r = measure(args.policy, trigger, 10.0, args.seconds, tmp)
        cells = f"{r['images']} | {r['commands']} | {r['median_ms']:.1f} | {r['p99_ms']:.1f}"
        print(f"| {trigger} | 10 | {cells} |")
    best = None
    for rate in (float(x) for x in args.rates.split(",")):
        r = measure(args.policy, "image", rate, args.seconds, tmp)
        ok = r["commands"] >= 0.9 * r["images"] and r["p99_ms"] < 1e3 / rate
        print(
            f"| image | {rate:g} | {r['images']} | {r['commands']} | {r['median_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {'sustained' if ok else 'not sustained'}"
        )
        if ok:
            best = rate
    print(f"highest sustained rate: {best} Hz")


if __name__ == "__main__":
    main()
