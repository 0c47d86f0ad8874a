"""Gymnasium/PyBullet scenes of robot-refusal, installed as ``robot_refusal.envs``.

Importing this package registers one Gymnasium id per scenario family::

    import gymnasium as gym
    import robot_refusal.envs  # registers the ids
    env = gym.make("RobotRefusal/PickPlace-v0", split="test")

In a fresh interpreter the module-prefix form imports the package first::

    env = gym.make("robot_refusal.envs:RobotRefusal/PickPlace-v0")
"""

from __future__ import annotations

import gymnasium as gym

from robot_refusal.envs.env import RobotRefusalEnv
from robot_refusal.envs.expert import ScriptedExpert, UnsafeExpert
from robot_refusal.envs.scenarios import FAMILIES, load_suite
from robot_refusal.errors import UnknownNameError

ENV_IDS: dict[str, str] = {
    "pick_place": "RobotRefusal/PickPlace-v0",
    "handover": "RobotRefusal/Handover-v0",
    "keepout": "RobotRefusal/KeepOut-v0",
    "context": "RobotRefusal/ContextPlace-v0",
}
"""Family name -> Gymnasium id."""


def register_envs() -> None:
    """Register every family's id (idempotent); runs on import."""
    for family, env_id in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="robot_refusal.envs.env:RobotRefusalEnv",
            kwargs={"family": family},
            disable_env_checker=False,
        )


def family_of(env_id: str) -> str:
    """Family name of a Gymnasium id or family name.

    Raises:
        UnknownNameError: Listing the valid ids.
    """
    if env_id in ENV_IDS:
        return env_id
    for family, known in ENV_IDS.items():
        if env_id == known:
            return family
    raise UnknownNameError("env id", env_id, [*ENV_IDS.values(), *ENV_IDS])


register_envs()

__all__ = [
    "ENV_IDS",
    "FAMILIES",
    "RobotRefusalEnv",
    "ScriptedExpert",
    "UnsafeExpert",
    "family_of",
    "load_suite",
    "register_envs",
]
