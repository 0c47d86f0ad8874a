"""DAgger data: a learner acts, the expert labels (Ross, Gordon and Bagnell 2011, "A Reduction
of Imitation Learning and Structured Prediction to No-Regret Online Learning", Algorithm 3.1).

Behaviour cloning trains on the states the expert visits; a learned policy drifts off them and
its errors compound. DAgger rolls the *learner* out, asks the expert what it would do in each
state the learner reaches, and trains on the union of the demonstrations and these labels.
``robot-refusal collect --learner CKPT`` records such episodes with :class:`DAggerAgent`
(labels from :class:`~robot_refusal.envs.replanning.ReplanningExpert`, which can label any
state); ``robot-refusal train --extra-data DIR --init CKPT`` trains on the aggregate, starting
from the learner.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robot_refusal.agents import Agent
from robot_refusal.envs.replanning import ReplanningExpert
from robot_refusal.errors import ConfigError


def check_beta(beta: float) -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) unless ``beta`` is in [0, 1]."""
    if not 0 <= beta <= 1:
        raise ConfigError(f"beta (the share of expert steps) must be in [0, 1], got {beta}")


class DAggerAgent:
    """Executes the learner's action, or the expert's with probability ``beta`` per step (the
    DAgger mixture policy pi_i = beta_i pi* + (1 - beta_i) pi_hat_i), and keeps the expert's
    action for the state in :attr:`label_action`, which the recorder stores as the label.

    The learner is called at every step, even when the expert acts, so that a learner with
    state (a history) sees every observation. The draw is seeded from the episode's reset
    seed, so a collection is deterministic.

    Args:
        expert: The labeller.
        learner: The policy being trained (a ``VLAPolicy`` or any :class:`Agent`).
        beta: Probability in [0, 1] that the expert's action is executed at a step; 0 (the
            usual choice after the first iteration) runs the learner alone.

    Attributes:
        label_action: The expert's action dict of the last step.
        executed_expert: Steps of the current episode on which the expert's action ran.

    Raises:
        ConfigError: ``beta`` outside [0, 1].
    """

    def __init__(self, expert: ReplanningExpert, learner: Agent, beta: float = 0.0) -> None:
        check_beta(beta)
        self.expert, self.learner, self.beta = expert, learner, float(beta)
        self.label_action: dict[str, Any] | None = None
        self.executed_expert = 0
        self._rng = np.random.default_rng(0)

    @property
    def cautious(self) -> bool:
        """The expert's caution flag for the last state (the caution direction's label)."""
        return self.expert.cautious

    @property
    def imitate(self) -> bool:
        """False when the expert's action for the last state is no label (see
        :class:`~robot_refusal.envs.replanning.ReplanningExpert`)."""
        return self.expert.imitate

    @property
    def subgoal(self) -> np.ndarray:
        """The expert's subgoal (4,) for the last state: x, y, z (m), speed (m/step)."""
        return self.expert.subgoal

    def reset(self) -> None:
        """Start an episode (after ``env.reset``): reset both, seed the mixture draw."""
        self.expert.reset()
        self.learner.reset()
        self.label_action = None
        self.executed_expert = 0
        seed = self.expert.env.np_random_seed
        self._rng = np.random.default_rng([int(seed) if seed is not None else 0, 13])

    def select_action(self, obs: dict[str, Any]) -> dict[str, Any]:
        """The action to execute for ``obs``; the expert's label is in :attr:`label_action`."""
        label = self.expert.select_action(obs)
        self.label_action = label
        action = self.learner.select_action(obs)
        if self.beta > 0 and self._rng.random() < self.beta:
            self.executed_expert += 1
            return label
        return action
