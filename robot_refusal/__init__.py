"""robot-refusal: an embodied robot-safety steering simulator.

A vision-language-action policy drives a simulated Franka Panda (``robot_refusal.envs``); the
toolkit extracts safety directions from its activations and measures, in closed-loop episodes,
what steering them does. See DESIGN.md for the architecture.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
