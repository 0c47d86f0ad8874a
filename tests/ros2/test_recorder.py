"""Bags written by the recorder read back with the rosbags library, every message present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="needs the ros2 extra: pip install 'robot-refusal[ros2]'")

from tests.ros2.harness import Probe, private_domain

pytestmark = [pytest.mark.ros, pytest.mark.timeout(60)]


def test_recorded_bag_reads_back_with_rosbags(tmp_path: Path) -> None:
    from geometry_msgs.msg import TwistStamped
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from robot_refusal.ros2.recorder import BagRecorder

    topics = {
        "/joint_states": "sensor_msgs/msg/JointState",
        "/servo_node/delta_twist_cmds": "geometry_msgs/msg/TwistStamped",
        "/robot_refusal/status": "std_msgs/msg/String",
    }
    bag = tmp_path / "bag"
    with private_domain() as d:
        probe = Probe(d)
        rec = BagRecorder(bag, topics, context=probe.ctx)
        probe.exec.add_node(rec)
        n = 40
        try:
            sent = 0

            def send() -> None:
                nonlocal sent
                js = JointState(name=["a", "b"], position=[float(sent), -1.5])
                tw = TwistStamped()
                tw.twist.linear.x = 0.01 * sent
                probe.publish(JointState, "/joint_states", js)
                probe.publish(TwistStamped, "/servo_node/delta_twist_cmds", tw)
                probe.publish(String, "/robot_refusal/status", String(data=f'{{"i": {sent}}}'))
                sent += 1

            for t, typ in zip(topics, (JointState, TwistStamped, String), strict=True):
                probe.publisher(typ, t)
            assert probe.spin_until(
                lambda: (
                    all(rec.count_publishers(t) > 0 for t in topics)
                    and all(probe.node.count_subscribers(t) >= 1 for t in topics)
                ),
                10,
            )
            while sent < n:
                send()
                probe.spin(0.01)
            assert probe.spin_until(lambda: all(c == n for c in rec.counts.values()), 10)
        finally:
            rec.destroy_node()
            probe.close()
    assert (bag / "metadata.yaml").is_file() and list(bag.glob("*.mcap"))
    store = get_typestore(Stores.ROS2_KILTED)
    got: dict[str, list] = {t: [] for t in topics}
    with Reader(bag) as reader:
        assert {c.topic for c in reader.connections} == set(topics)
        assert reader.message_count == 3 * n
        for conn, _ts, raw in reader.messages():
            got[conn.topic].append(store.deserialize_cdr(raw, conn.msgtype))
    assert [m.position[0] for m in got["/joint_states"]] == list(range(n))
    assert np.allclose(
        [m.twist.linear.x for m in got["/servo_node/delta_twist_cmds"]], 0.01 * np.arange(n)
    )
    assert [m.data for m in got["/robot_refusal/status"]] == [f'{{"i": {i}}}' for i in range(n)]
