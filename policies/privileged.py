"""A perception diagnostic: the VLA run on the simulator's exact keypoints.

:class:`ExactKeypointPolicy` replaces the policy's first four predicted keypoints (the target
object, the destination, the person's hand and the gripper) by the simulator's at every step
(``RobotRefusalEnv.keypoints_uv``, the labels ``collect`` records), everywhere the decoder
reads them. Everything else (image tokens, state, instruction, action decoding) is the
policy's own. The gap between a checkpoint's success with its own keypoints and with these is
what perception costs it; what it still loses with them is lost by the decoder. A subset
(``eval --exact-keypoints target,hand``) replaces only the named keypoints and leaves the
others the policy's own, so the cost of perception can be split keypoint by keypoint. This
reads privileged simulator state that a real robot's VLA never sees: an evaluation tool only
(``robot-refusal eval --exact-keypoints``), never a policy to deploy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from robot_refusal.errors import ConfigError
from robot_refusal.policies.keypoint_memory import DESTINATION, GRIPPER, HAND, TARGET
from robot_refusal.policies.policy import VLAPolicy

KEYPOINT_ROWS = {"target": TARGET, "destination": DESTINATION, "hand": HAND, "gripper": GRIPPER}
"""Row of each labelled keypoint in ``RobotRefusalEnv.keypoints_uv`` (4, 2)."""
KEYPOINT_NAMES = tuple(sorted(KEYPOINT_ROWS, key=KEYPOINT_ROWS.__getitem__))
"""The keypoint names in row order."""


def exact_keypoint_names(spec: bool | str | Sequence[str] | None) -> tuple[str, ...]:
    """The keypoints a spec of the exact-keypoint diagnostic replaces, in row order.

    Args:
        spec: ``True`` or ``"all"``: all four; ``False``, ``None`` or ``()``: none; a
            comma-separated string or a sequence of names from :data:`KEYPOINT_NAMES`
            (``"target,hand"``, ``["destination"]``).

    Returns:
        The named keypoints, each once, in the order of :data:`KEYPOINT_NAMES`; ``()`` for
        none.

    Raises:
        ConfigError: An unknown or repeated name, or an empty string.
    """
    if spec is True or spec == "all":
        return KEYPOINT_NAMES
    if spec is None or spec is False or (not isinstance(spec, str) and not len(spec)):
        return ()
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    if any(not n for n in names):  # "", "target," or [""]
        raise ConfigError(
            f"exact_keypoints must name keypoints ({', '.join(KEYPOINT_NAMES)}) or 'all', "
            f"got {spec!r}"
        )
    unknown = [n for n in names if n not in KEYPOINT_NAMES]
    if unknown:
        raise ConfigError(
            f"exact_keypoints: unknown keypoint {unknown[0]!r}; known: {', '.join(KEYPOINT_NAMES)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"exact_keypoints names a keypoint twice: {spec!r}")
    return tuple(n for n in KEYPOINT_NAMES if n in names)


def check_exact_keypoints(model: Any) -> None:
    """Raise :class:`ConfigError` unless ``model`` has the four keypoints the simulator's
    labels replace (target, destination, hand, gripper)."""
    n = model.config.num_keypoints
    if n < 4:
        raise ConfigError(f"exact keypoints need a model with >= 4 keypoints, this one has {n}")


class ExactKeypointPolicy(VLAPolicy):
    """A :class:`VLAPolicy` whose leading keypoints (all four, or the named ones) come from the
    simulator.

    Args:
        model, processor: As :class:`VLAPolicy` (shared with the policy it diagnoses).
        env: The env the policy acts in; its ``unwrapped.keypoints_uv()`` (4, 2), read at every
            :meth:`select_action`, gives the keypoints in [-1, 1] image units.
        keypoints: Which of the four to replace (:func:`exact_keypoint_names`: names,
            ``"target,hand"`` or ``True`` for all four); the others stay the policy's own.

    Raises:
        ConfigError: The model has fewer than four keypoints, ``env`` has no
            ``keypoints_uv``, or ``keypoints`` names none or an unknown one.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        env: gym.Env,
        keypoints: bool | str | Sequence[str] = True,
    ) -> None:
        super().__init__(model, processor)
        check_exact_keypoints(model)
        if not callable(getattr(env.unwrapped, "keypoints_uv", None)):
            raise ConfigError(f"{type(env.unwrapped).__name__} has no keypoints_uv()")
        self.keypoints = exact_keypoint_names(keypoints)
        if not self.keypoints:
            raise ConfigError("ExactKeypointPolicy needs at least one keypoint to replace")
        self.rows = [KEYPOINT_ROWS[n] for n in self.keypoints]
        self.env = env

    def select_action(self, obs: Mapping[str, Any]) -> dict[str, Any]:
        """One env action for ``obs`` with the simulator's keypoints of the current state;
        sets :attr:`refusal_score`.

        Raises:
            InvalidObservationError: For a bad image, state or instruction.
        """
        keypoints_uv = self.env.unwrapped.keypoints_uv  # type: ignore[attr-defined]
        exact = np.asarray(keypoints_uv(), np.float32)  # (4, 2)
        override = np.full_like(exact, np.nan)  # a NaN row keeps the policy's own keypoint
        override[self.rows] = exact[self.rows]
        return self._select_one(obs, override[None])
