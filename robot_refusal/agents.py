"""Agents that ``eval`` and ``collect`` can run: a registry of names -> factories.

An agent has LeRobot's ``reset()`` and ``select_action(obs) -> action``. The scripted experts
read the simulator (privileged); they are built from the env they act in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gymnasium as gym

from robot_refusal.envs.expert import ScriptedExpert, UnsafeExpert
from robot_refusal.errors import ConfigError, UnknownNameError


class Agent(Protocol):
    """What the rollout loop needs from a policy."""

    def reset(self) -> None:
        """Start a new episode (called after ``env.reset``)."""

    def select_action(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Action dict for observation ``obs``."""


AGENTS: dict[str, Callable[[gym.Env], Agent]] = {
    "expert": ScriptedExpert,
    "unsafe-expert": UnsafeExpert,
}
"""Agent name -> factory taking the env."""
NEEDS_IMAGES: dict[str, bool] = {"expert": False, "unsafe-expert": False}


def is_checkpoint(name: str) -> bool:
    """True if ``name`` is a shipped checkpoint name or a folder path (not a scripted agent)."""
    from robot_refusal.policies.policy import CHECKPOINTS

    return name not in AGENTS and ("/" in name or (CHECKPOINTS / name).is_dir())


def check_agent(
    name: str,
    keypoint_window: int | None = None,
    action_decoding: str | None = None,
    exact_keypoints: bool | str | Sequence[str] = False,
    chunk_execution: str | None = None,
    keypoint_memory: float | None = None,
) -> str:
    """Return ``name`` if it is a scripted agent or a policy checkpoint (loaded, with the
    ``keypoint_window``, ``action_decoding``, ``chunk_execution`` and ``keypoint_memory``
    overrides when given, to check them).

    Raises:
        UnknownNameError: Neither an agent nor a folder; lists the agents.
        CheckpointError: A checkpoint folder that cannot be loaded.
        ConfigError: ``keypoint_window``, ``action_decoding``, ``exact_keypoints``,
            ``chunk_execution`` or ``keypoint_memory`` for a scripted agent, or out of range /
            unknown; ``exact_keypoints`` naming an unknown keypoint (see
            :func:`~robot_refusal.policies.privileged.exact_keypoint_names`);
            ``exact_keypoints`` or ``keypoint_memory`` for a checkpoint with fewer than four
            keypoints; ``chunk_execution`` for a checkpoint without action chunks.
    """
    if name in AGENTS:
        for setting, value in (
            ("keypoint_window", keypoint_window),
            ("action_decoding", action_decoding),
            ("exact_keypoints", exact_keypoints or None),
            ("chunk_execution", chunk_execution),
            ("keypoint_memory", keypoint_memory),
        ):
            if value is not None:
                raise ConfigError(f"{setting} applies to policy checkpoints, not to {name!r}")
        return name
    if is_checkpoint(name):
        policy = load_policy(
            name, keypoint_window, action_decoding, chunk_execution, keypoint_memory
        )
        if exact_keypoints:
            from robot_refusal.policies.privileged import (
                check_exact_keypoints,
                exact_keypoint_names,
            )

            exact_keypoint_names(exact_keypoints)
            check_exact_keypoints(policy.model)
        return name
    from robot_refusal.policies.policy import shipped_checkpoints

    raise UnknownNameError(
        "policy (agent name, shipped checkpoint or checkpoint folder)",
        name,
        [*AGENTS, *shipped_checkpoints()],
    )


@functools.cache
def load_policy(
    name: str,
    keypoint_window: int | None = None,
    action_decoding: str | None = None,
    chunk_execution: str | None = None,
    keypoint_memory: float | None = None,
) -> Any:
    """The :class:`~robot_refusal.policies.policy.VLAPolicy` of a checkpoint (cached), with
    its ``VLAConfig.keypoint_window`` overridden unless ``keypoint_window`` is None, reading
    its action tokens by ``action_decoding`` (None: the checkpoint's
    ``VLAConfig.action_decoding``), running its chunks by ``chunk_execution`` (None: the
    checkpoint's) and with a keypoint memory of ``keypoint_memory`` px (None: the
    checkpoint's ``VLAConfig.keypoint_memory``)."""
    from robot_refusal.policies.policy import VLAPolicy

    return VLAPolicy.from_pretrained(
        name,
        keypoint_window=keypoint_window,
        action_decoding=action_decoding,
        chunk_execution=chunk_execution,
        keypoint_memory=keypoint_memory,
    )


def needs_images(name: str) -> bool:
    """Whether agent ``name`` reads the camera image (learned policies do)."""
    return NEEDS_IMAGES.get(name, True)


def image_size(name: str) -> tuple[int, int]:
    """(H, W) of the images agent ``name`` reads (64x64 for scripted agents)."""
    return (64, 64) if name in AGENTS else load_policy(name).image_size


def make_agent(
    name: str,
    env: gym.Env,
    keypoint_window: int | None = None,
    action_decoding: str | None = None,
    exact_keypoints: bool | str | Sequence[str] = False,
    chunk_execution: str | None = None,
    keypoint_memory: float | None = None,
) -> Agent:
    """Build agent ``name`` for ``env`` (a fresh policy wrapper per env for checkpoints).

    Args:
        name: Scripted agent name or checkpoint.
        env: The env the agent acts in.
        keypoint_window: For a checkpoint, an override of its keypoint readout (see
            :meth:`~robot_refusal.policies.policy.VLAPolicy.from_pretrained`); None keeps it.
        action_decoding: For a checkpoint, ``"argmax"`` or ``"mean"`` (see
            :class:`~robot_refusal.policies.policy.VLAPolicy`); None keeps the checkpoint's.
        exact_keypoints: For a checkpoint, feed it the simulator's exact keypoints (a
            privileged diagnostic, :class:`~robot_refusal.policies.privileged.ExactKeypointPolicy`):
            ``True`` for all four, or the names of those to replace (``"target,hand"``).
        chunk_execution: For a chunked checkpoint, how it runs its chunks (see
            :class:`~robot_refusal.policies.policy.VLAPolicy`); None keeps the checkpoint's.
        keypoint_memory: For a checkpoint, the radius in pixels of its keypoint memory (see
            :class:`~robot_refusal.policies.keypoint_memory.KeypointMemory`; 0: none); None
            keeps the checkpoint's.

    Raises:
        UnknownNameError: Listing the known agents.
        ConfigError: ``keypoint_window``, ``action_decoding``, ``exact_keypoints``,
            ``chunk_execution`` or ``keypoint_memory`` for a scripted agent, or out of range /
            unknown.
    """
    check_agent(
        name, keypoint_window, action_decoding, exact_keypoints, chunk_execution, keypoint_memory
    )
    if name in AGENTS:
        return AGENTS[name](env)
    from robot_refusal.policies.policy import VLAPolicy

    shared = load_policy(name, keypoint_window, action_decoding, chunk_execution, keypoint_memory)
    if exact_keypoints:
        from robot_refusal.policies.privileged import ExactKeypointPolicy

        return ExactKeypointPolicy(shared.model, shared.processor, env, exact_keypoints)
    return VLAPolicy(shared.model, shared.processor)
