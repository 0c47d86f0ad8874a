"""The safety layer: hard limits on every Cartesian command, whatever the policy outputs (no rclpy).

Applied in this order to a commanded end-effector velocity v (3,) m/s held for one control
period dt (s):

1. speed: ``|v| <= max_speed`` (scaled down);
2. acceleration: ``|v - v_prev| <= max_accel * dt`` (v moved toward v_prev);
3. workspace box: the point reached after dt stays inside ``[workspace_min, workspace_max]``
   (an end effector already outside may only move back toward the box);
4. person keep-out zone: no point of the path over a horizon of 2 dt (the watchdog's reaction
   time) enters the zone; an inward command first loses its inward component (sliding along
   the zone) and is otherwise shortened, down to zero. From inside the zone only motion that
   leaves it is allowed.

Zero motion is always allowed: stops and the keep-out override the acceleration limit (a
category-1-style stop). The zone follows :meth:`robot_refusal.envs.scene.Person.zone_distance`:
horizontal distance to the person's keypoint polyline, below a height.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robot_refusal.envs.scene import segment_distance
from robot_refusal.ros2.convert import PersonZone

PATH_SAMPLES = 21
"""Points checked along a commanded path (every 5% of it)."""


@dataclass(frozen=True)
class Limits:
    """The safety limits (ROS parameters of the policy node, same names).

    Attributes:
        workspace_min, workspace_max: Box corners (3,), m, in the command frame.
        max_speed: End-effector speed limit, m/s.
        max_accel: End-effector acceleration limit, m/s².
        keepout_radius: Horizontal radius around the person keypoints, m.
        keepout_margin: Clearance added to the radius, m.
        keepout_height: Top of the zone, m (motion above it is not restricted).
    """

    workspace_min: np.ndarray
    workspace_max: np.ndarray
    max_speed: float = 0.25
    max_accel: float = 2.0
    keepout_radius: float = 0.10
    keepout_margin: float = 0.03
    keepout_height: float = 0.6

    @classmethod
    def from_params(cls, values: Mapping[str, Any]) -> Limits:
        """Build from validated ROS parameter values (see :data:`config.POLICY_PARAMS`)."""
        return cls(
            np.asarray(values["workspace_min"], np.float64),
            np.asarray(values["workspace_max"], np.float64),
            float(values["max_speed"]),
            float(values["max_accel"]),
            float(values["keepout_radius"]),
            float(values["keepout_margin"]),
            float(values["keepout_height"]),
        )


@dataclass(frozen=True)
class Limited:
    """A command after the safety layer.

    Attributes:
        velocity: (3,) m/s, safe to hold for one period.
        reasons: The limits that changed the command (``speed``, ``accel``, ``workspace``,
            ``keepout``), empty if none did.
    """

    velocity: np.ndarray
    reasons: tuple[str, ...]


def zone_distance(points: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Horizontal distance (...,) m from ``points`` (..., 3) to the polyline of ``keypoints``
    (N, 3); a single keypoint gives the distance to a vertical line through it."""
    pts = np.asarray(points, np.float64)
    kp = np.asarray(keypoints, np.float64)[:, :2]
    if len(kp) == 1:
        return np.linalg.norm(pts[..., :2] - kp[0], axis=-1)
    dists = [segment_distance(pts, kp[i], kp[i + 1]) for i in range(len(kp) - 1)]
    return np.min(np.stack(dists), axis=0)


def in_zone(points: np.ndarray, person: PersonZone, limits: Limits) -> np.ndarray:
    """Boolean (...,): inside the keep-out zone (radius plus margin, below the height)."""
    pts = np.asarray(points, np.float64)
    r = limits.keepout_radius + limits.keepout_margin
    return (zone_distance(pts, person.points) < r) & (pts[..., 2] < limits.keepout_height)


def _scale_to(v: np.ndarray, cap: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v * (cap / n) if n > cap else v


def _box(ee: np.ndarray, v: np.ndarray, dt: float, limits: Limits) -> np.ndarray:
    low = np.minimum(limits.workspace_min, ee)  # outside: never further out
    high = np.maximum(limits.workspace_max, ee)
    target = np.clip(ee + v * dt, low, high)
    return (target - ee) / dt


def _path_clear(
    ee: np.ndarray, v: np.ndarray, horizon: float, person: PersonZone, lim: Limits
) -> bool:
    s = np.linspace(0.0, 1.0, PATH_SAMPLES)[1:, None]
    return not bool(in_zone(ee + s * v * horizon, person, lim).any())


def _keepout(
    ee: np.ndarray, v: np.ndarray, dt: float, person: PersonZone, lim: Limits
) -> np.ndarray:
    horizon = 2.0 * dt
    if bool(in_zone(ee, person, lim)):
        d0 = float(zone_distance(ee, person.points))
        d1 = float(zone_distance(ee + v * horizon, person.points))
        leaving = d1 > d0 or v[2] > 1e-9  # away from the keypoints, or up
        return v if leaving else np.zeros(3)
    if _path_clear(ee, v, horizon, person, lim):
        return v
    # slide: drop the component toward the zone (horizontal gradient of the distance)
    eps = 1e-4
    d = float(zone_distance(ee, person.points))
    grad = np.array(
        [
            (float(zone_distance(ee + eps * e, person.points)) - d) / eps
            for e in (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
        ]
        + [0.0]
    )
    n = grad / max(float(np.linalg.norm(grad)), 1e-12)
    slide = v - min(float(v @ n), 0.0) * n
    if _path_clear(ee, slide, horizon, person, lim):
        return slide
    for frac in np.linspace(1.0, 0.0, PATH_SAMPLES)[1:]:
        if _path_clear(ee, slide * frac, horizon, person, lim):
            return slide * frac
    return np.zeros(3)


def limit_velocity(
    ee: np.ndarray,
    velocity: np.ndarray,
    prev_velocity: np.ndarray,
    dt: float,
    limits: Limits,
    person: PersonZone | None = None,
) -> Limited:
    """Apply speed, acceleration, workspace and keep-out limits to one command.

    Args:
        ee: End-effector position (3,), m.
        velocity: Commanded velocity (3,), m/s (the policy's displacement divided by dt).
        prev_velocity: The previous safe command (3,), m/s.
        dt: Control period, s (> 0).
        limits: The limits.
        person: The current person keypoints, or None when no person pose is known.

    Returns:
        The safe command and the limits that changed it. NaN/inf in ``velocity`` gives zero.
    """
    v = np.asarray(velocity, np.float64)
    if not np.all(np.isfinite(v)):
        return Limited(np.zeros(3), ("nonfinite",))
    ee = np.asarray(ee, np.float64)
    reasons: list[str] = []
    out = _scale_to(v, limits.max_speed)
    if not np.allclose(out, v):
        reasons.append("speed")
    prev = np.asarray(prev_velocity, np.float64)
    step = _scale_to(out - prev, limits.max_accel * dt)
    if not np.allclose(prev + step, out):
        out = prev + step
        reasons.append("accel")
    boxed = _box(ee, out, dt, limits)
    if not np.allclose(boxed, out):
        out = boxed
        reasons.append("workspace")
    if person is not None:
        kept = _keepout(ee, out, dt, person, limits)
        if not np.allclose(kept, out):
            out = kept
            reasons.append("keepout")
    return Limited(out, tuple(reasons))
