"""ROS 2 bridge: the policy node, the simulated robot node, bag recording and launch support.

This package is the only place in robot-refusal that imports ``rclpy``, and only its node
modules (:mod:`.policy_node`, :mod:`.robot_node`, :mod:`.recorder`, :mod:`.runtime`) do so.
The ROS-free core (:mod:`.config`, :mod:`.convert`, :mod:`.safety`, :mod:`.supervisor`,
:mod:`.kinematics`) imports without the ``ros2`` extra and is unit-tested without rclpy.
"""

from __future__ import annotations

import importlib

from robot_refusal.errors import RobotRefusalError

INSTALL_HINT = "pip install 'robot-refusal[ros2]'"


class Ros2NotInstalledError(RobotRefusalError, ImportError):
    """rclpy (or a message package) is missing: the ``ros2`` extra is not installed."""


def require_rclpy() -> None:
    """Import rclpy and the message packages the bridge uses, or raise with the install line.

    Raises:
        Ros2NotInstalledError: If any of them fails to import (also when rclpy's C extension
            cannot load, for example with ``RMW_IMPLEMENTATION`` set to an RMW other than
            ``rmw_fastrtps_cpp``).
    """
    for name in ("rclpy", "sensor_msgs.msg", "geometry_msgs.msg", "std_msgs.msg", "std_srvs.srv"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise Ros2NotInstalledError(
                f"the ROS 2 bridge needs {name.split('.')[0]} ({e}); install it with "
                f"{INSTALL_HINT}, and leave RMW_IMPLEMENTATION unset or rmw_fastrtps_cpp"
            ) from e
