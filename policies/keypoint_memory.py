"""Keypoint memory: hold the static scene keypoints while the gripper is near them.

The first four keypoints of a checkpoint trained with keypoint labels are the target object's
grasp point, the destination, the person's hand and the gripper (``collect``'s
``annotation.keypoints_uv``). The first three mark things that do not move while the robot
works, except the target once it is grasped: the camera is fixed, the containers and the
person stand still. Yet the encoder's estimate of them is worst exactly when the gripper comes
near them in the image, where it is pulled toward the gripper (by a median quarter of the gap
within 3 px: ``diagnostics``' ``pull``) and where closed-loop errors cost the grasp.

:class:`KeypointMemory` keeps, per static keypoint, the last estimate made while the
predicted gripper keypoint was at least ``radius`` pixels from it, and feeds that held
estimate to the decoder while the gripper is nearer. The target keypoint follows the live
estimate while the grasp flag of the state is set (the object moves with the hand) and is
acquired afresh after a release. The memory reads only what the policy reads (its own
keypoint estimates and its proprioceptive grasp flag), so it runs on a real robot as in
simulation. :class:`~robot_refusal.policies.policy.VLAPolicy` runs one per episode when the
checkpoint's ``VLAConfig.keypoint_memory`` is positive; ``reset()`` starts each episode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robot_refusal.errors import ConfigError
from robot_refusal.policies.configuration_vla import check_keypoint_memory

TARGET, DESTINATION, HAND, GRIPPER = 0, 1, 2, 3
"""Rows of the labelled keypoints (``RobotRefusalEnv.keypoints_uv``)."""
STATIC = (TARGET, DESTINATION, HAND)
"""Keypoints of things that stand still (the target until it is grasped)."""
GRASPED = 7
"""Index of the grasp flag in the env state (``RobotRefusalEnv.STATE_NAMES``)."""


class KeypointMemory:
    """One episode's held estimates of the static keypoints.

    Args:
        radius_px: Image distance in pixels (> 0) between the predicted gripper keypoint and
            a held keypoint below which the held estimate is kept instead of the new one.
        image_size: (H, W) of the policy's images; converts pixels to the keypoints' [-1, 1]
            units (``2 / (side - 1)`` per pixel, the centres of the edge pixels at -1 and +1).

    Raises:
        ConfigError: ``radius_px`` not in (0, 32].
    """

    def __init__(self, radius_px: float, image_size: tuple[int, int]) -> None:
        check_keypoint_memory(radius_px)
        if radius_px == 0:
            raise ConfigError("a KeypointMemory needs a radius > 0 px (0 means no memory)")
        self.radius_px = float(radius_px)
        h, w = image_size
        self.px_per_unit = np.array([(w - 1) / 2, (h - 1) / 2])  # (2,) px per [-1, 1] unit
        self.held = np.full((len(STATIC), 2), np.nan)  # (3, 2) [-1, 1] units; NaN: none yet

    def reset(self) -> None:
        """Forget every held keypoint (a new episode, or after a stop)."""
        self.held[:] = np.nan

    def __call__(self, keypoints: Tensor, grasped: bool) -> Tensor:
        """The keypoints the decoder reads this step.

        Args:
            keypoints: (1, K, 2) the encoder's keypoints (K >= 4), [-1, 1] image units.
            grasped: The state's grasp flag (the gripper holds an object).

        Returns:
            (1, K, 2) the same keypoints with rows 0-2 replaced by their held estimates where
            the gripper keypoint is within ``radius_px`` of them; a new tensor.

        Raises:
            ConfigError: ``keypoints`` not (1, K >= 4, 2).
        """
        if keypoints.ndim != 3 or keypoints.shape[0] != 1 or keypoints.shape[1] <= GRIPPER:
            raise ConfigError(
                f"keypoint memory needs keypoints of shape (1, K >= 4, 2), got "
                f"{tuple(keypoints.shape)}"
            )
        live = keypoints[0].detach().double().cpu().numpy()  # (K, 2)
        out = keypoints.clone()
        for row in STATIC:
            if row == TARGET and grasped:  # the object moves with the gripper
                self.held[row] = np.nan
                continue
            gap_px = np.linalg.norm((live[GRIPPER] - self.held[row]) * self.px_per_unit)
            if np.isnan(gap_px) or gap_px >= self.radius_px:
                self.held[row] = live[row]
            else:
                out[0, row] = torch.as_tensor(self.held[row], dtype=keypoints.dtype)
        return out

    def transform(self, obs: Mapping[str, Any]) -> Callable[[Tensor], Tensor]:
        """This step's keypoint transform for ``VLAForActionPrediction.predict_action_tokens``
        (``keypoint_transform``), reading the grasp flag from ``obs["state"]`` (the env
        state, 8 entries; the processor has already checked it)."""
        grasped = bool(np.asarray(obs["state"], np.float64).reshape(-1)[GRASPED] > 0.5)
        return lambda keypoints: self(keypoints, grasped)


def keypoint_memory_for(config: Any, image_size: tuple[int, int]) -> KeypointMemory | None:
    """A fresh :class:`KeypointMemory` for a model whose ``config.keypoint_memory`` is
    positive (radius in px), else None; ``image_size`` (H, W) of its images."""
    radius = float(getattr(config, "keypoint_memory", 0.0))
    return KeypointMemory(radius, image_size) if radius > 0 else None
