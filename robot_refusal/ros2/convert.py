"""Conversions between ROS message fields and the project's arrays, with validation (no rclpy).

The functions take and return plain fields (numbers, strings, bytes, numpy arrays) so that they
are tested without rclpy; the nodes copy message fields in and out. Every rejection raises
:class:`InvalidMessageError` whose message is the logged reason.

Message definitions followed: sensor_msgs/Image (``height``, ``width``, ``encoding``,
``is_bigendian``, ``step`` = bytes per row, ``data``; encodings of
sensor_msgs/image_encodings.hpp), sensor_msgs/JointState (parallel ``name``/``position``
arrays, REP 103 units: rad, m for prismatic joints), geometry_msgs/Twist (m/s, rad/s) and
builtin_interfaces/Time (``sec``, ``nanosec``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robot_refusal.errors import RobotRefusalError, did_you_mean


class InvalidMessageError(RobotRefusalError, ValueError):
    """A message the bridge rejects; the text is the reason that is logged and published."""


def stamp_to_seconds(sec: int, nanosec: int) -> float:
    """builtin_interfaces/Time -> seconds (float)."""
    return float(sec) + float(nanosec) * 1e-9


def seconds_to_stamp(t: float) -> tuple[int, int]:
    """Seconds (>= 0) -> builtin_interfaces/Time ``(sec, nanosec)``."""
    sec = math.floor(t)
    nanosec = min(round((t - sec) * 1e9), 999_999_999)
    return int(sec), int(nanosec)


def image_from_fields(
    height: int,
    width: int,
    encoding: str,
    step: int,
    data: bytes | Sequence[int] | np.ndarray,
    expected: tuple[int, int],
) -> np.ndarray:
    """sensor_msgs/Image fields -> (H, W, 3) uint8 RGB array (a copy).

    Args:
        height, width: Image size (pixels).
        encoding: ``rgb8`` or ``bgr8`` (converted to RGB); anything else is rejected.
        step: Row length in bytes (>= 3 * width; padding at the row ends is dropped).
        data: ``step * height`` bytes.
        expected: (H, W) that the policy reads.

    Raises:
        InvalidMessageError: Wrong encoding, size, step or data length.
    """
    if encoding not in ("rgb8", "bgr8"):
        raise InvalidMessageError(
            f"image encoding {encoding!r} is not supported; send rgb8 or bgr8"
        )
    if (height, width) != tuple(expected):
        raise InvalidMessageError(
            f"image is {height}x{width}, the policy reads {expected[0]}x{expected[1]}; "
            "publish the policy's camera at that size"
        )
    if step < 3 * width:
        raise InvalidMessageError(f"image step {step} is below 3 * width = {3 * width}")
    buf = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data, np.uint8)
    if buf.size != step * height:
        raise InvalidMessageError(
            f"image data has {buf.size} bytes, step * height = {step * height}"
        )
    img = buf.reshape(height, step)[:, : 3 * width].reshape(height, width, 3)
    return np.ascontiguousarray(img[..., ::-1] if encoding == "bgr8" else img)


def image_to_fields(image: np.ndarray) -> tuple[int, int, str, int, bytes]:
    """(H, W, 3) uint8 RGB -> ``(height, width, "rgb8", step, data)`` of sensor_msgs/Image.

    Raises:
        InvalidMessageError: For another shape or dtype.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidMessageError(f"expected an (H, W, 3) uint8 image, got {image.shape}")
    h, w, _ = image.shape
    return h, w, "rgb8", 3 * w, np.ascontiguousarray(image).tobytes()


def joint_positions(
    names: Sequence[str], positions: Sequence[float], wanted: Sequence[str]
) -> np.ndarray:
    """Positions (len(wanted),) in the order of ``wanted`` from a JointState's arrays.

    Joints that are not wanted (another arm's, a merged gripper's) are ignored.

    Raises:
        InvalidMessageError: Mismatched array lengths, duplicate names, a wanted joint missing
            (the message names the unknown ones and the closest match) or NaN/inf positions.
    """
    if len(names) != len(positions):
        raise InvalidMessageError(
            f"joint state has {len(names)} names but {len(positions)} positions"
        )
    if len(set(names)) != len(names):
        raise InvalidMessageError(f"joint state repeats a joint name: {list(names)}")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in wanted if n not in index]
    if missing:
        unknown = [n for n in names if n not in wanted]
        hint = did_you_mean(missing[0], unknown) if unknown else ""
        raise InvalidMessageError(
            f"joint state lacks {missing} (it has unknown joints {unknown[:8]}); "
            f"set the joint_names parameters.{hint}"
        )
    q = np.array([positions[index[n]] for n in wanted], dtype=np.float64)
    if not np.all(np.isfinite(q)):
        bad = [n for n, v in zip(wanted, q, strict=True) if not math.isfinite(v)]
        raise InvalidMessageError(f"joint state has NaN or inf positions for {bad}")
    return q


def check_instruction(text: str, max_chars: int) -> str:
    """The instruction, stripped and lowercased, as the env's instructions are.

    Raises:
        InvalidMessageError: Empty, longer than ``max_chars`` or with control characters.
    """
    if len(text) > max_chars:
        raise InvalidMessageError(
            f"instruction has {len(text)} characters; the limit is {max_chars} "
            "(max_instruction_chars)"
        )
    clean = text.strip().lower()
    if not clean:
        raise InvalidMessageError("instruction is empty")
    if any(ord(c) < 32 for c in clean):
        raise InvalidMessageError("instruction contains control characters")
    return clean


@dataclass(frozen=True)
class PersonZone:
    """The person as keypoints: the keep-out zone is every point within ``radius`` (horizontal
    distance) of the polyline through the keypoints, below ``height``.

    A geometry_msgs/PoseArray on the person topic carries the keypoints (only positions are
    read; the simulator publishes the hand, then the shoulder). One keypoint is a vertical
    cylinder.

    Attributes:
        points: (N, 3) keypoints, m, in the command frame.
        stamp: Time of the message (s).
    """

    points: np.ndarray
    stamp: float


def person_from_positions(positions: Sequence[Sequence[float]], stamp: float) -> PersonZone:
    """PoseArray positions -> :class:`PersonZone`.

    Raises:
        InvalidMessageError: No keypoint, or NaN/inf coordinates.
    """
    pts = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] == 0:
        raise InvalidMessageError("person pose array is empty")
    if not np.all(np.isfinite(pts)):
        raise InvalidMessageError("person pose array has NaN or inf coordinates")
    return PersonZone(pts, stamp)
