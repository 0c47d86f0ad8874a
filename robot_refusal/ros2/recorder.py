"""Recording topics to a rosbag2 bag (MCAP storage) with the ``rosbags`` library (imports rclpy).

ROS's own ``rosbag2`` has no PyPI wheel, so the recorder subscribes with ``raw=True`` (the
callback gets the CDR bytes as they came over DDS) and writes them unchanged with
``rosbags.rosbag2.Writer`` (bag format version 9, storage ``mcap``, the ``offered_qos_profiles``
of each topic recorded). ``ros2 bag info/play`` could not be run on these bags here (no
ros2cli wheel); the rosbags reader reads them back (tested).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from robot_refusal.errors import ConfigError
from robot_refusal.ros2.config import SENSOR_QOS, QosSpec
from robot_refusal.ros2.qos import qos

BAG_VERSION: Literal[9] = 9
SIM_TOPICS: dict[str, str] = {
    "/camera/image_raw": "sensor_msgs/msg/Image",
    "/joint_states": "sensor_msgs/msg/JointState",
    "/robot_refusal/instruction": "std_msgs/msg/String",
    "/robot_refusal/person": "geometry_msgs/msg/PoseArray",
    "/servo_node/delta_twist_cmds": "geometry_msgs/msg/TwistStamped",
    "/robot_refusal/gripper_command": "std_msgs/msg/Float64",
    "/robot_refusal/status": "std_msgs/msg/String",
    "/robot_refusal/sim_info": "std_msgs/msg/String",
    "/robot_refusal/estop": "std_msgs/msg/Bool",
}
"""Topics that ``robot-refusal ros2 sim --record`` records (name -> ROS 2 type)."""


def message_class(msgtype: str) -> Any:
    """``pkg/msg/Name`` -> the generated Python class.

    Raises:
        ConfigError: If the type is malformed or its package is not installed.
    """
    parts = msgtype.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise ConfigError(f"message type must look like pkg/msg/Name, got {msgtype!r}")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"message type {msgtype!r} is not installed ({e})") from e


def _bag_qos(spec: QosSpec) -> Qos:
    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST,
        spec.depth,
        QosReliability.RELIABLE if spec.reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if spec.transient_local else QosDurability.VOLATILE,
        zero,
        zero,
        QosLiveliness.AUTOMATIC,
        zero,
        False,
    )


class BagRecorder(Node):
    """Records ``topics`` into a new rosbag2 folder until :meth:`close`.

    Args:
        path: Bag folder to create (must not exist).
        topics: Topic name -> ROS 2 type (``pkg/msg/Name``); images are subscribed with
            SensorDataQoS, everything else RELIABLE depth 100.
        **kwargs: Passed to ``rclpy.node.Node``.

    Attributes:
        counts: Messages written per topic.

    Raises:
        ConfigError: If the folder exists or a type is unknown.
    """

    def __init__(self, path: str | Path, topics: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__("robot_refusal_recorder", **kwargs)
        path = Path(path)
        if path.exists():
            raise ConfigError(f"bag folder {path} exists; choose a new one")
        store = get_typestore(Stores.ROS2_KILTED)
        self.writer = Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.counts: dict[str, int] = dict.fromkeys(topics, 0)
        self._lock = threading.Lock()
        self._open = True
        group = MutuallyExclusiveCallbackGroup()
        for topic, msgtype in topics.items():
            cls = message_class(msgtype)
            spec = SENSOR_QOS if msgtype == "sensor_msgs/msg/Image" else QosSpec(True, False, 100)
            conn = self.writer.add_connection(
                topic, msgtype, typestore=store, offered_qos_profiles=[_bag_qos(spec)]
            )
            self.create_subscription(
                cls, topic, self._writer_for(topic, conn), qos(spec), callback_group=group, raw=True
            )

    def _writer_for(self, topic: str, conn: Any) -> Any:
        def write(data: bytes) -> None:
            with self._lock:
                if self._open:
                    self.writer.write(conn, self.get_clock().now().nanoseconds, data)
                    self.counts[topic] += 1

        return write

    def close(self) -> None:
        """Finish the bag (writes ``metadata.yaml``); safe to call twice."""
        with self._lock:
            if self._open:
                self._open = False
                self.writer.close()

    def destroy_node(self) -> None:
        """Close the bag, then destroy the node."""
        self.close()
        super().destroy_node()
