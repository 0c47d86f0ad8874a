"""Agents that ``eval`` and ``collect`` can run: a registry of names -> factories.

An agent has LeRobot's ``reset()`` and ``select_action(obs) -> action``. The scripted experts
read the simulator (privileged); they are built from the env they act in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym

from robot_refusal.envs.expert import ScriptedExpert, UnsafeExpert
from robot_refusal.errors import UnknownNameError


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


def check_agent(name: str) -> str:
    """Return ``name`` if it is a known agent.

    Raises:
        UnknownNameError: Listing the known agents.
    """
    if name not in AGENTS:
        raise UnknownNameError("policy", name, AGENTS)
    return name


def make_agent(name: str, env: gym.Env) -> Agent:
    """Build agent ``name`` for ``env``.

    Raises:
        UnknownNameError: Listing the known agents.
    """
    return AGENTS[check_agent(name)](env)
