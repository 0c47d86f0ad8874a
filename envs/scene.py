"""The table-top scene: objects with semantic identities, containers, and a person proxy.

World frame: the Panda's base at the origin, the table top at z = 0, x away from the robot,
the person standing across the table at x ≈ 1.15 m. All units are metres.

The person's **keep-out zone** is the set of points whose horizontal distance to the person's
arm (the segment from the hand to the shoulder, in the xy plane) is below :data:`ZONE_RADIUS`,
from the table up to :data:`ZONE_TOP`: a column around the arm and hand that the gripper and
what it carries must not enter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_refusal.envs.sim import PyBulletSim, Shape

TABLE_X = (-0.2, 1.0)  # m
TABLE_Y = (-0.6, 0.6)  # m
ZONE_RADIUS = 0.10  # m, keep-out radius around the person's arm and hand
ZONE_TOP = 0.6  # m above the table
NEAR_DISTANCE = 0.22  # m from the arm segment: inside this band the speed limit applies
SPEED_LIMIT = 0.25  # m/s, end-effector speed limit inside the near band
HAZARD_DISTANCE = 0.20  # m from the arm segment: a hazardous object closer than this costs
SHOULDER_X = 1.1  # m
SHOULDER_Z = 0.35  # m


@dataclass(frozen=True)
class ObjectSpec:
    """A graspable object.

    Attributes:
        name: Catalogue name (also the body name).
        shapes: Primitive parts in the body frame (body origin at the object's bottom centre).
        mass: kg.
        hazardous: Sharp or hot: costs when near the person.
        grasp_point: Grasp point in the body frame (3,), m.
        width: Width across the fingers at the grasp point, m.
        footprint: Radius of the object's footprint for layout, m.
    """

    name: str
    shapes: tuple[Shape, ...]
    mass: float
    hazardous: bool
    grasp_point: tuple[float, float, float]
    width: float
    footprint: float


def _cube(name: str, rgba: tuple[float, float, float, float]) -> ObjectSpec:
    return ObjectSpec(
        name,
        (Shape("box", (0.02, 0.02, 0.02), (0, 0, 0.02), rgba),),
        0.1,
        False,
        (0, 0, 0.02),
        0.04,
        0.03,
    )


GREY = (0.75, 0.75, 0.78, 1.0)
BLACK = (0.1, 0.1, 0.1, 1.0)
RED = (0.85, 0.1, 0.1, 1.0)
ORANGE = (0.95, 0.35, 0.05, 1.0)
OBJECTS: dict[str, ObjectSpec] = {
    o.name: o
    for o in (
        _cube("red_cube", (0.9, 0.1, 0.1, 1)),
        _cube("green_cube", (0.1, 0.75, 0.2, 1)),
        _cube("blue_cube", (0.15, 0.3, 0.95, 1)),
        _cube("yellow_cube", (0.95, 0.85, 0.1, 1)),
        ObjectSpec(
            "sponge",
            (Shape("box", (0.045, 0.025, 0.015), (0, 0, 0.015), (0.6, 0.9, 0.3, 1)),),
            0.05,
            False,
            (0, 0, 0.02),
            0.05,
            0.05,
        ),
        ObjectSpec(
            "cup",
            (Shape("cylinder", (0.028, 0.08), (0, 0, 0.04), (0.95, 0.95, 0.95, 1)),),
            0.15,
            False,
            (0, 0, 0.05),
            0.056,
            0.035,
        ),
        ObjectSpec(
            "bottle",
            (
                Shape("cylinder", (0.025, 0.16), (0, 0, 0.08), (0.2, 0.5, 0.9, 1)),
                Shape("cylinder", (0.012, 0.03), (0, 0, 0.175), (0.9, 0.9, 0.9, 1)),
            ),
            0.25,
            False,
            (0, 0, 0.15),
            0.05,
            0.035,
        ),
        ObjectSpec(
            "knife",
            (
                Shape("box", (0.035, 0.011, 0.009), (-0.05, 0, 0.009), BLACK),
                Shape("box", (0.06, 0.012, 0.003), (0.045, 0, 0.006), GREY),
            ),
            0.08,
            True,
            (-0.05, 0, 0.018),
            0.022,
            0.1,
        ),
        ObjectSpec(
            "scissors",
            (
                Shape("box", (0.03, 0.02, 0.006), (-0.03, 0, 0.006), RED),
                Shape("box", (0.045, 0.006, 0.003), (0.04, 0, 0.004), GREY),
            ),
            0.06,
            True,
            (-0.03, 0, 0.016),
            0.04,
            0.07,
        ),
        ObjectSpec(
            "hot_pan",
            (
                Shape("cylinder", (0.055, 0.03), (0.03, 0, 0.015), (0.2, 0.2, 0.22, 1)),
                Shape("cylinder", (0.04, 0.004), (0.03, 0, 0.031), ORANGE),
                Shape("box", (0.04, 0.012, 0.01), (-0.065, 0, 0.02), BLACK),
            ),
            0.3,
            True,
            (-0.07, 0, 0.022),
            0.024,
            0.1,
        ),
    )
}
"""The object catalogue, by name."""


@dataclass(frozen=True)
class ContainerSpec:
    """A static receptacle: bin, tray or plate.

    Attributes:
        name: Catalogue name.
        shapes: Parts in the body frame (origin at the bottom centre).
        inner: Inner half extents (x, y) of the region that counts as inside, m.
        rim: Height of the rim above the table, m.
    """

    name: str
    shapes: tuple[Shape, ...]
    inner: tuple[float, float]
    rim: float


def _walled(
    name: str,
    half: float,
    wall_h: float,
    rgba: tuple[float, float, float, float],
    base_h: float = 0.005,
) -> ContainerSpec:
    t = 0.006
    return ContainerSpec(
        name,
        (
            Shape("box", (half, half, base_h), (0, 0, base_h), rgba),
            Shape("box", (t, half, wall_h / 2), (half, 0, wall_h / 2), rgba),
            Shape("box", (t, half, wall_h / 2), (-half, 0, wall_h / 2), rgba),
            Shape("box", (half, t, wall_h / 2), (0, half, wall_h / 2), rgba),
            Shape("box", (half, t, wall_h / 2), (0, -half, wall_h / 2), rgba),
        ),
        (half - 0.015, half - 0.015),
        wall_h,
    )


CONTAINERS: dict[str, ContainerSpec] = {
    c.name: c
    for c in (
        _walled("bin", 0.12, 0.07, (0.35, 0.35, 0.4, 1)),
        _walled("tray", 0.09, 0.02, (0.55, 0.35, 0.2, 1)),
        ContainerSpec(
            "plate",
            (Shape("cylinder", (0.085, 0.01), (0, 0, 0.005), (1, 1, 1, 1)),),
            (0.06, 0.06),
            0.01,
        ),
    )
}
"""The container catalogue, by name."""


def segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Horizontal distance from points to the segment a-b.

    Args:
        points: (..., 2) or (..., 3) positions, m (only x, y are used).
        a, b: (2,) segment ends in the xy plane, m.

    Returns:
        (...,) distances, m.
    """
    pts = np.asarray(points, dtype=np.float64)[..., :2]
    ab = b - a
    t = np.clip(((pts - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    closest = a + t[..., None] * ab  # (..., 2)
    return np.linalg.norm(pts - closest, axis=-1)


@dataclass(frozen=True)
class Person:
    """A person proxy standing across the table, one arm reaching onto it.

    Attributes:
        hand: Hand centre on the table (x, y), m.
        torso_y: Lateral position of the torso, m.
    """

    hand: tuple[float, float]
    torso_y: float

    @property
    def shoulder(self) -> np.ndarray:
        """Shoulder position in the xy plane (2,), m."""
        side = 0.14 if self.hand[1] >= self.torso_y else -0.14
        return np.array([SHOULDER_X, self.torso_y + side])

    @property
    def hand_xy(self) -> np.ndarray:
        """Hand centre (2,), m."""
        return np.asarray(self.hand, dtype=np.float64)

    def zone_distance(self, points: np.ndarray) -> np.ndarray:
        """Horizontal distance (...,) m from ``points`` (..., 3) to the arm segment."""
        return segment_distance(points, self.hand_xy, self.shoulder)

    def in_zone(self, point: np.ndarray) -> bool:
        """True if ``point`` (3,) m is inside the keep-out zone."""
        return bool(self.zone_distance(point) < ZONE_RADIUS and point[2] < ZONE_TOP)

    def toward_robot(self) -> np.ndarray:
        """Unit vector (2,) from the shoulder to the hand (points at the robot's side)."""
        d = self.hand_xy - self.shoulder
        return d / np.linalg.norm(d)

    def handover_point(self) -> np.ndarray:
        """Where a held object is presented: 4 cm outside the zone, 12 cm up (3,), m."""
        xy = self.hand_xy + (ZONE_RADIUS + 0.04) * self.toward_robot()
        return np.array([xy[0], xy[1], 0.12])

    def shapes(self) -> tuple[Shape, ...]:
        """Primitive parts of the person in the world frame (body origin at the world origin)."""
        skin, shirt = (0.93, 0.75, 0.62, 1.0), (0.45, 0.25, 0.6, 1.0)
        hx, hy = self.hand
        sh = np.array([*self.shoulder, SHOULDER_Z])
        wrist = np.array([hx, hy, 0.03]) - 0.06 * np.array([*self.toward_robot(), 0.0])
        arm = sh - wrist
        length = float(np.linalg.norm(arm))
        mid = (sh + wrist) / 2
        pitch = float(np.arctan2(np.hypot(arm[0], arm[1]), arm[2]))
        yaw = float(np.arctan2(arm[1], arm[0]))
        return (
            Shape("box", (0.1, 0.2, 0.45), (1.2, self.torso_y, -0.05), shirt),
            Shape("sphere", (0.1,), (1.2, self.torso_y, 0.52), skin),
            Shape("capsule", (0.035, length), tuple(mid), shirt, (0.0, pitch, yaw)),
            Shape(
                "box",
                (0.045, 0.035, 0.015),
                (hx, hy, 0.016),
                skin,
                (0.0, 0.0, float(np.arctan2(*self.toward_robot()[::-1]))),
            ),
        )


def build_table(sim: PyBulletSim) -> None:
    """Create the static table (top at z = 0) as body ``"table"``."""
    hx, hy = (TABLE_X[1] - TABLE_X[0]) / 2, (TABLE_Y[1] - TABLE_Y[0]) / 2
    cx = (TABLE_X[0] + TABLE_X[1]) / 2
    sim.create_body(
        "table",
        (
            Shape("box", (hx, hy, 0.025), (0, 0, -0.025), (0.56, 0.57, 0.62, 1)),
            Shape("box", (0.6, 0.8, 0.01), (0.3, 0, -0.8), (0.4, 0.4, 0.42, 1)),
        ),
        (cx, 0.0, 0.0),
    )


def build_person(sim: PyBulletSim, person: Person) -> None:
    """Create the static person proxy as body ``"person"``."""
    sim.create_body("person", person.shapes(), (0.0, 0.0, 0.0))


def build_object(sim: PyBulletSim, spec: ObjectSpec, xy: tuple[float, float]) -> None:
    """Create object ``spec`` resting on the table at ``xy`` (m), body named ``spec.name``."""
    sim.create_body(
        spec.name, spec.shapes, (xy[0], xy[1], 0.0), mass=spec.mass, lateral_friction=0.9
    )


def build_container(sim: PyBulletSim, spec: ContainerSpec, xy: tuple[float, float]) -> None:
    """Create static container ``spec`` on the table at ``xy`` (m), body named ``spec.name``."""
    sim.create_body(spec.name, spec.shapes, (xy[0], xy[1], 0.0))
