"""PyBullet simulator wrapper: the only module of the project that imports ``pybullet``.

One :class:`PyBulletSim` owns one physics client (``DIRECT`` by default, ``GUI`` optional).
Bodies are created and addressed by name. Units are SI throughout: metres, radians, seconds,
kilograms. Physics runs at :data:`PHYSICS_HZ`; the env steps it :data:`SUBSTEPS` times per
control step (10 Hz control over 240 Hz physics).

Pattern taken from panda-gym's ``PyBullet`` class (qgallouedec/panda-gym, pybullet.py).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybullet as p
import pybullet_data

from robot_refusal.errors import SimulatorError

PHYSICS_HZ = 240
"""Physics rate (Hz)."""
CONTROL_HZ = 10
"""Policy/control rate (Hz)."""
SUBSTEPS = PHYSICS_HZ // CONTROL_HZ
"""Physics steps per control step (24)."""
SOLVER_ITERATIONS = 10
"""Constraint-solver iterations per physics step (PyBullet default is 50; 10 is stable here
and twice as fast, measured in ``benchmarks/env_throughput.py``)."""


GraspFrame = tuple[tuple[float, ...], tuple[float, ...]]
"""A child's pose in its parent link's frame: (position (3,) m, quaternion xyzw (4,))."""


@dataclass(frozen=True)
class Shape:
    """One primitive part of a body, in the body frame.

    Attributes:
        kind: ``"box"`` (``size`` = 3 half extents, m), ``"cylinder"`` or ``"capsule"``
            (``size`` = (radius, length), m, axis along local z) or ``"sphere"``
            (``size`` = (radius,), m).
        size: See ``kind``.
        offset: Position of the part in the body frame (3,), m.
        rgba: Colour, 4 floats in [0, 1].
        euler: Orientation of the part in the body frame, roll-pitch-yaw (rad).
    """

    kind: str
    size: tuple[float, ...]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rgba: tuple[float, float, float, float] = (0.7, 0.7, 0.7, 1.0)
    euler: tuple[float, float, float] = (0.0, 0.0, 0.0)


_GEOM = {
    "box": p.GEOM_BOX,
    "cylinder": p.GEOM_CYLINDER,
    "capsule": p.GEOM_CAPSULE,
    "sphere": p.GEOM_SPHERE,
}


@functools.cache
def simplified_panda_urdf() -> str:
    """Path of a ``pybullet_data`` Franka Panda URDF whose visuals are its collision meshes.

    The stock visual meshes hold ~300k lines of OBJ and TinyRenderer draws them at ~50 frames/s on
    one core; the collision meshes are 10-20x lighter and draw a 64x64 frame in ~1.6 ms. Kinematics,
    inertias and collision geometry are unchanged. The file is written once into the temporary
    folder, named by the hash of its text, and shared by every process (the meshes are referenced
    by absolute path inside ``pybullet_data``).

    Returns:
        Absolute path of the derived URDF.
    """
    root = os.path.join(pybullet_data.getDataPath(), "franka_panda")
    with open(os.path.join(root, "panda.urdf"), encoding="utf-8") as f:
        text = f.read()
    meshes = os.path.join(root, "meshes", "collision") + os.sep
    text = text.replace("package://meshes/visual/", meshes)
    text = text.replace("package://meshes/collision/", meshes)
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
    out = os.path.join(tempfile.gettempdir(), f"robot_refusal_panda_{digest}.urdf")
    if not os.path.exists(out):  # shared by every process; written atomically
        fd, tmp = tempfile.mkstemp(suffix=".urdf", dir=tempfile.gettempdir())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    return out


def _camera_matrices(
    width: int, height: int, eye: Sequence[float], target: Sequence[float], fov_deg: float
) -> tuple[Sequence[float], Sequence[float]]:
    """PyBullet's view and projection matrices (16 floats each, column-major) of the camera
    that :meth:`PyBulletSim.render` draws and :meth:`PyBulletSim.project` projects with."""
    view = p.computeViewMatrix(list(eye), list(target), [0, 0, 1])
    proj = p.computeProjectionMatrixFOV(fov_deg, width / height, 0.05, 4.0)
    return view, proj


def _view_projection(
    width: int, height: int, eye: Sequence[float], target: Sequence[float], fov_deg: float
) -> np.ndarray:
    """The camera's projection @ view matrix (4, 4), row-major, float64: world (homogeneous)
    -> clip coordinates."""
    view, proj = (
        np.asarray(m).reshape(4, 4).T  # PyBullet matrices are column-major
        for m in _camera_matrices(width, height, eye, target, fov_deg)
    )
    return proj @ view


class PyBulletSim:
    """One PyBullet physics client with named bodies.

    Args:
        gui: Open the PyBullet GUI (``render_mode="human"``) instead of ``DIRECT``.

    Raises:
        SimulatorError: If PyBullet cannot open a client (for example GUI without a display).
    """

    def __init__(self, gui: bool = False) -> None:
        self.gui = gui
        if gui and sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
            raise SimulatorError(
                "render_mode='human' opens the PyBullet GUI, which needs a display (DISPLAY is "
                "unset); use render_mode='rgb_array' or run under Xvfb"
            )
        self.client = p.connect(p.GUI if gui else p.DIRECT)
        if self.client < 0:
            raise SimulatorError("PyBullet could not open a physics client")
        self.bodies: dict[str, int] = {}
        self._closed = False
        self.reset()

    # -- world ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Remove every body and constraint and restore gravity and solver settings."""
        p.resetSimulation(physicsClientId=self.client)
        p.setGravity(0.0, 0.0, -9.81, physicsClientId=self.client)
        p.setTimeStep(1.0 / PHYSICS_HZ, physicsClientId=self.client)
        p.setPhysicsEngineParameter(
            numSolverIterations=SOLVER_ITERATIONS,
            deterministicOverlappingPairs=1,
            physicsClientId=self.client,
        )
        if self.gui:
            p.configureDebugVisualizer(p.COV_ENABLE_GUI, 0, physicsClientId=self.client)
        self.bodies = {}

    def step(self, n: int = SUBSTEPS) -> None:
        """Advance physics by ``n`` steps of 1/240 s."""
        for _ in range(n):
            p.stepSimulation(physicsClientId=self.client)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def close(self) -> None:
        """Disconnect the client; calling it again does nothing."""
        if not self._closed:
            p.disconnect(physicsClientId=self.client)
            self._closed = True

    # -- bodies --------------------------------------------------------------------------------
    def create_body(
        self,
        name: str,
        shapes: Sequence[Shape],
        position: Sequence[float],
        mass: float = 0.0,
        yaw: float = 0.0,
        lateral_friction: float = 1.0,
    ) -> int:
        """Create a rigid body from primitive parts and register it under ``name``.

        Args:
            name: Unique body name.
            shapes: Parts in the body frame.
            position: Base position (3,), m.
            mass: kg; 0 makes the body static.
            yaw: Base yaw (rad).
            lateral_friction: Coulomb friction coefficient.

        Returns:
            The PyBullet body id.
        """
        kw = dict(physicsClientId=self.client)
        col_kw: dict[str, list[Any]] = {
            "shapeTypes": [],
            "radii": [],
            "halfExtents": [],
            "lengths": [],
            "collisionFramePositions": [],
            "collisionFrameOrientations": [],
        }
        vis_kw: dict[str, list[Any]] = {
            "shapeTypes": [],
            "radii": [],
            "halfExtents": [],
            "lengths": [],
            "visualFramePositions": [],
            "visualFrameOrientations": [],
            "rgbaColors": [],
        }
        for s in shapes:
            half = list(s.size) if s.kind == "box" else [0.0, 0.0, 0.0]
            radius = s.size[0] if s.kind != "box" else 0.0
            length = s.size[1] if s.kind in ("cylinder", "capsule") else 0.0
            quat = p.getQuaternionFromEuler(s.euler)
            for d in (col_kw, vis_kw):
                d["shapeTypes"].append(_GEOM[s.kind])
                d["radii"].append(radius)
                d["halfExtents"].append(half)
                d["lengths"].append(length)
            col_kw["collisionFramePositions"].append(list(s.offset))
            col_kw["collisionFrameOrientations"].append(quat)
            vis_kw["visualFramePositions"].append(list(s.offset))
            vis_kw["visualFrameOrientations"].append(quat)
            vis_kw["rgbaColors"].append(list(s.rgba))
        col = p.createCollisionShapeArray(**col_kw, **kw)
        vis = p.createVisualShapeArray(**vis_kw, **kw)
        body = p.createMultiBody(
            mass, col, vis, list(position), p.getQuaternionFromEuler([0.0, 0.0, yaw]), **kw
        )
        p.changeDynamics(body, -1, lateralFriction=lateral_friction, **kw)
        if mass > 0:
            p.changeDynamics(body, -1, activationState=p.ACTIVATION_STATE_ENABLE_SLEEPING, **kw)
        self.bodies[name] = body
        return body

    def load_panda(self, name: str, position: Sequence[float], stock_visuals: bool = False) -> int:
        """Load the Franka Panda (fixed base) and register it under ``name``.

        Args:
            name: Body name.
            position: Base position (3,), m.
            stock_visuals: Use ``pybullet_data``'s full visual meshes (about 12x slower to
                render) instead of :func:`simplified_panda_urdf`.
        """
        urdf = (
            os.path.join(pybullet_data.getDataPath(), "franka_panda", "panda.urdf")
            if stock_visuals
            else simplified_panda_urdf()
        )
        body = p.loadURDF(urdf, list(position), useFixedBase=True, physicsClientId=self.client)
        self.bodies[name] = body
        return body

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Base position (3,) m and orientation quaternion xyzw (4,) of body ``name``."""
        pos, quat = p.getBasePositionAndOrientation(self.bodies[name], physicsClientId=self.client)
        return np.asarray(pos, dtype=np.float64), np.asarray(quat, dtype=np.float64)

    def body_velocity(self, name: str) -> np.ndarray:
        """Linear velocity (3,) m/s of body ``name``'s base."""
        lin, _ = p.getBaseVelocity(self.bodies[name], physicsClientId=self.client)
        return np.asarray(lin, dtype=np.float64)

    def set_body_pose(self, name: str, position: Sequence[float], yaw: float = 0.0) -> None:
        """Teleport body ``name`` to ``position`` (3,) m with ``yaw`` (rad), zero velocity."""
        body = self.bodies[name]
        p.resetBasePositionAndOrientation(
            body, list(position), p.getQuaternionFromEuler([0, 0, yaw]), physicsClientId=self.client
        )
        p.resetBaseVelocity(body, [0, 0, 0], [0, 0, 0], physicsClientId=self.client)

    def transform_point(self, name: str, local: Sequence[float]) -> np.ndarray:
        """World position (3,) m of point ``local`` (3,) m given in body ``name``'s base frame."""
        pos, quat = p.getBasePositionAndOrientation(self.bodies[name], physicsClientId=self.client)
        world, _ = p.multiplyTransforms(pos, quat, list(local), [0, 0, 0, 1])
        return np.asarray(world, dtype=np.float64)

    def in_contact(self, a: str, b: str) -> bool:
        """True if bodies ``a`` and ``b`` touched at the last physics step."""
        return (
            len(p.getContactPoints(self.bodies[a], self.bodies[b], physicsClientId=self.client)) > 0
        )

    def set_collision(self, a: str, link_a: int, b: str, enable: bool) -> None:
        """Enable or disable collisions between link ``link_a`` of ``a`` and the base of ``b``."""
        p.setCollisionFilterPair(
            self.bodies[a], self.bodies[b], link_a, -1, int(enable), physicsClientId=self.client
        )

    # -- articulation --------------------------------------------------------------------------
    def reset_joints(self, name: str, joints: Sequence[int], values: Sequence[float]) -> None:
        """Teleport joints of body ``name`` to ``values`` (rad or m), zero velocity."""
        for j, q in zip(joints, values, strict=True):
            p.resetJointState(self.bodies[name], j, q, 0.0, physicsClientId=self.client)

    def joint_positions(self, name: str, joints: Sequence[int]) -> np.ndarray:
        """Positions (n,) of ``joints`` of body ``name`` (rad or m)."""
        states = p.getJointStates(self.bodies[name], list(joints), physicsClientId=self.client)
        return np.array([s[0] for s in states], dtype=np.float64)

    def link_position(self, name: str, link: int) -> np.ndarray:
        """World position (3,) m of the link frame ``link`` of body ``name``."""
        state = p.getLinkState(
            self.bodies[name], link, computeForwardKinematics=True, physicsClientId=self.client
        )
        return np.asarray(state[4], dtype=np.float64)

    def inverse_kinematics(
        self,
        name: str,
        link: int,
        position: Sequence[float],
        orientation: Sequence[float],
        rest: Sequence[float],
        lower: Sequence[float],
        upper: Sequence[float],
    ) -> np.ndarray:
        """Joint positions reaching ``position`` (3,) m with quaternion ``orientation`` (4,).

        Damped-least-squares IK of PyBullet with null-space rest poses.
        Returns all movable joint positions (n_dof,).
        """
        ranges = [u - lo for lo, u in zip(lower, upper, strict=True)]
        q = p.calculateInverseKinematics(
            self.bodies[name],
            link,
            list(position),
            list(orientation),
            lowerLimits=list(lower),
            upperLimits=list(upper),
            jointRanges=ranges,
            restPoses=list(rest),
            maxNumIterations=20,
            physicsClientId=self.client,
        )
        return np.asarray(q, dtype=np.float64)

    def position_control(
        self, name: str, joints: Sequence[int], targets: Sequence[float], forces: Sequence[float]
    ) -> None:
        """Command PD position targets (rad or m) with force limits (N or N·m) on ``joints``."""
        p.setJointMotorControlArray(
            self.bodies[name],
            list(joints),
            p.POSITION_CONTROL,
            targetPositions=list(targets),
            forces=list(forces),
            physicsClientId=self.client,
        )

    # -- grasp constraint ----------------------------------------------------------------------
    def attach(
        self, parent: str, parent_link: int, child: str, frame: GraspFrame | None = None
    ) -> tuple[int, GraspFrame]:
        """Weld body ``child`` to link ``parent_link`` of ``parent``.

        Args:
            parent, parent_link, child: What to weld.
            frame: Pose of the child in the parent link's frame (position (3,) m, quaternion
                xyzw (4,)); default: their current relative pose.

        Returns:
            The constraint id (to pass to :meth:`detach`) and the frame used.
        """
        kw = dict(physicsClientId=self.client)
        if frame is None:
            ls = p.getLinkState(
                self.bodies[parent], parent_link, computeForwardKinematics=True, **kw
            )
            cpos, cquat = p.getBasePositionAndOrientation(self.bodies[child], **kw)
            inv_pos, inv_quat = p.invertTransform(ls[4], ls[5])
            frame = p.multiplyTransforms(inv_pos, inv_quat, cpos, cquat)
        rel_pos, rel_quat = frame
        cid = p.createConstraint(
            self.bodies[parent],
            parent_link,
            self.bodies[child],
            -1,
            p.JOINT_FIXED,
            [0, 0, 0],
            rel_pos,
            [0, 0, 0],
            parentFrameOrientation=rel_quat,
            **kw,
        )
        p.changeConstraint(cid, maxForce=200.0, **kw)
        return cid, (tuple(rel_pos), tuple(rel_quat))

    def detach(self, constraint: int) -> None:
        """Remove a constraint made by :meth:`attach`."""
        p.removeConstraint(constraint, physicsClientId=self.client)

    # -- state ---------------------------------------------------------------------------------
    def save_state(self) -> int:
        """Snapshot of every body and joint state (in memory); returns its id."""
        return p.saveState(physicsClientId=self.client)

    def restore_state(self, state_id: int) -> None:
        """Restore a snapshot taken by :meth:`save_state` of the same world."""
        p.restoreState(stateId=state_id, physicsClientId=self.client)

    def remove_state(self, state_id: int) -> None:
        """Free a snapshot."""
        p.removeState(state_id, physicsClientId=self.client)

    # -- camera --------------------------------------------------------------------------------
    @staticmethod
    def project(
        points: np.ndarray,
        width: int,
        height: int,
        eye: Sequence[float],
        target: Sequence[float],
        fov_deg: float = 55.0,
    ) -> np.ndarray:
        """Image coordinates (N, 2) of world points (N, 3) m, for the camera of :meth:`render`.

        Columns are (x, y) normalised so that the centres of the first and last pixel columns
        (rows) are -1 and +1; y grows downward (image rows). Points behind the camera get NaN.
        """
        matrix = _view_projection(width, height, eye, target, fov_deg)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        clip = (matrix @ np.c_[pts, np.ones(len(pts))].T).T  # (N, 4)
        w = np.where(clip[:, 3] > 1e-9, clip[:, 3], np.nan)
        ndc = clip[:, :2] / w[:, None]  # (N, 2) in [-1, 1] at the image edges
        col = (ndc[:, 0] + 1) / 2 * width - 0.5  # pixel-centre coordinates
        row = (1 - ndc[:, 1]) / 2 * height - 0.5
        return np.stack([col / (width - 1) * 2 - 1, row / (height - 1) * 2 - 1], axis=1)

    @staticmethod
    def unprojection(
        width: int,
        height: int,
        eye: Sequence[float],
        target: Sequence[float],
        fov_deg: float = 55.0,
    ) -> np.ndarray:
        """The camera's inverse view-projection matrix (4, 4), row-major, float64.

        It maps normalised device coordinates (x, y, depth in [-1, 1], 1) back to homogeneous
        world points: the camera calibration a policy needs to turn image coordinates into rays
        (see :func:`robot_refusal.policies.modeling_vla.table_plane_points`).
        """
        return np.linalg.inv(_view_projection(width, height, eye, target, fov_deg))

    def render(
        self,
        width: int,
        height: int,
        eye: Sequence[float],
        target: Sequence[float],
        fov_deg: float = 55.0,
    ) -> np.ndarray:
        """RGB image (height, width, 3) uint8 of a pinhole camera at ``eye`` facing ``target``.

        TinyRenderer (CPU), no shadows, no segmentation mask.
        """
        view, proj = _camera_matrices(width, height, eye, target, fov_deg)
        out = p.getCameraImage(
            width,
            height,
            view,
            proj,
            renderer=p.ER_TINY_RENDERER,
            flags=p.ER_NO_SEGMENTATION_MASK,
            shadow=0,
            physicsClientId=self.client,
        )
        rgba = np.asarray(out[2], dtype=np.uint8).reshape(height, width, 4)  # (H, W, 4)
        return np.ascontiguousarray(rgba[..., :3])
