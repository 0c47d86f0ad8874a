"""The policy node's ROS-free parts: loading the steered policy and estimating the policy state.

No rclpy here; tested without it.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_refusal.directions import Direction
from robot_refusal.errors import ConfigError
from robot_refusal.interventions import (
    activation_addition,
    directional_ablation,
    orthogonalize_weights,
)
from robot_refusal.policies.policy import VLAPolicy
from robot_refusal.ros2.config import INTERVENTIONS


def load_direction(path: str) -> Direction:
    """A direction file (``x``, ``x.safetensors`` or ``x.json``) or an ``extract`` output folder
    (which holds ``direction.safetensors``).

    Raises:
        DirectionError: Missing, corrupt or not a direction.
    """
    p = Path(path)
    return Direction.load(p / "direction" if p.is_dir() else p)


def load_steered_policy(
    policy: str, intervention: str, direction: str = "", alpha: float = 1.0, layer: int = -1
) -> tuple[VLAPolicy, ExitStack]:
    """Load a policy with its intervention in place.

    Args:
        policy: Checkpoint folder or shipped name.
        intervention: ``none``, ``ablate`` (directional ablation), ``add`` (activation addition
            of ``alpha * r`` at ``layer``) or ``orthogonalized`` (a weight-edited copy).
        direction: Direction file or folder (needed unless ``none``; ``""`` or ``"none"``: no file).
        alpha: Addition coefficient (``add``; +1 induces refusal, -1 suppresses it).
        layer: Addition block; -1 takes the direction's own layer.

    Returns:
        The policy and an ExitStack holding the hooks; close it to remove them.

    Raises:
        ConfigError: Unknown intervention, missing direction or layer.
        CheckpointError, DirectionError: Bad checkpoint or direction files.
    """
    if intervention not in INTERVENTIONS:
        raise ConfigError(f"intervention must be one of {INTERVENTIONS}, got {intervention!r}")
    pol = VLAPolicy.from_pretrained(policy)
    stack = ExitStack()
    if intervention == "none":
        return pol, stack
    if direction in ("", "none"):
        raise ConfigError(f"intervention {intervention!r} needs a direction file (direction:=...)")
    r = load_direction(direction)
    if intervention == "ablate":
        stack.enter_context(directional_ablation(pol.model, r))
    elif intervention == "add":
        at = layer if layer >= 0 else r.layer
        if at is None:
            raise ConfigError("the direction records no layer; set the layer parameter")
        stack.enter_context(activation_addition(pol.model, r, layer=int(at), alpha=alpha))
    else:
        pol.model = orthogonalize_weights(pol.model, r).eval()
    return pol, stack


@dataclass
class RobotState:
    """The policy's ``state`` (8,) rebuilt from joint states (see ``RobotRefusalEnv``).

    Attributes:
        ee: End-effector position (3,), m.
        velocity: Its velocity (3,), m/s, by finite difference of successive joint states.
        opening: Gripper opening (m): the sum of the two finger positions.
        arm: Arm joint positions (7,), rad.
        stamp: Time of the joint state (s).
        gripper_closed: The last gripper command closed the gripper.
        grasp_threshold: Opening (m) above which a closed gripper is holding something.
    """

    ee: np.ndarray = field(default_factory=lambda: np.zeros(3))
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))
    opening: float = 0.08
    arm: np.ndarray = field(default_factory=lambda: np.zeros(7))
    stamp: float | None = None
    gripper_closed: bool = False
    grasp_threshold: float = 0.01

    def update(self, ee: np.ndarray, arm: np.ndarray, fingers: np.ndarray, t: float) -> None:
        """A new joint state at time t (s) with FK position ``ee`` (3,) m."""
        if self.stamp is not None and t - self.stamp > 1e-4:
            self.velocity = (ee - self.ee) / (t - self.stamp)
        self.ee, self.arm, self.opening, self.stamp = ee, arm, float(np.sum(fingers)), t

    @property
    def grasped(self) -> bool:
        """Grasp detected: closed by command but held open by an object."""
        return self.gripper_closed and self.opening > self.grasp_threshold

    def vector(self) -> np.ndarray:
        """The (8,) float32 state: ee (m), velocity (m/s), opening (m), grasped flag."""
        return np.array(
            [*self.ee, *self.velocity, self.opening, float(self.grasped)], dtype=np.float32
        )


def observation(image: np.ndarray, state: RobotState, instruction: str) -> dict[str, Any]:
    """The policy observation {image (H, W, 3) uint8, state (8,) float32, instruction}."""
    return {"image": image, "state": state.vector(), "instruction": instruction}
