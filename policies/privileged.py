"""A perception diagnostic: the VLA run on the simulator's exact keypoints.

:class:`ExactKeypointPolicy` replaces the policy's first four predicted keypoints (the target
object, the destination, the person's hand and the gripper) by the simulator's at every step
(``RobotRefusalEnv.keypoints_uv``, the labels ``collect`` records), everywhere the decoder
reads them. Everything else (image tokens, state, instruction, action decoding) is the
policy's own. The gap between a checkpoint's success with its own keypoints and with these is
what perception costs it; what it still loses with them is lost by the decoder. This reads
privileged simulator state that a real robot's VLA never sees: an evaluation tool only
(``robot-refusal eval --exact-keypoints``), never a policy to deploy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from robot_refusal.errors import ConfigError
from robot_refusal.policies.policy import VLAPolicy


def check_exact_keypoints(model: Any) -> None:
    """Raise :class:`ConfigError` unless ``model`` has the four keypoints the simulator's
    labels replace (target, destination, hand, gripper)."""
    n = model.config.num_keypoints
    if n < 4:
        raise ConfigError(f"exact keypoints need a model with >= 4 keypoints, this one has {n}")


class ExactKeypointPolicy(VLAPolicy):
    """A :class:`VLAPolicy` whose leading keypoints come from the simulator.

    Args:
        model, processor: As :class:`VLAPolicy` (shared with the policy it diagnoses).
        env: The env the policy acts in; its ``unwrapped.keypoints_uv()`` (4, 2), read at every
            :meth:`select_action`, gives the keypoints in [-1, 1] image units.

    Raises:
        ConfigError: The model has fewer than four keypoints, or ``env`` has no
            ``keypoints_uv``.
    """

    def __init__(self, model: Any, processor: Any, env: gym.Env) -> None:
        super().__init__(model, processor)
        check_exact_keypoints(model)
        if not callable(getattr(env.unwrapped, "keypoints_uv", None)):
            raise ConfigError(f"{type(env.unwrapped).__name__} has no keypoints_uv()")
        self.env = env

    def select_action(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """One env action for ``obs`` with the simulator's keypoints of the current state;
        sets :attr:`refusal_score`.

        Raises:
            InvalidObservationError: For a bad image, state or instruction.
        """
        keypoints_uv = self.env.unwrapped.keypoints_uv  # type: ignore[attr-defined]
        exact = np.asarray(keypoints_uv(), np.float32)  # (4, 2)
        return self._select_one(obs, exact[None])
