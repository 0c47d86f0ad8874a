"""``robot-refusal demo``: the main job on the shipped default policy.

It loads ``vla-small``, extracts and selects its refusal direction (difference-in-means
candidates on ``val`` first observations, bypass/induce/KL selection), runs ``baseline``,
``ablate`` and ``add`` closed loop on the ``test`` split, writes ``summary.json`` and the report,
and returns the summary. With the defaults (20 episodes per family and label, so 80 harmful and
80 harmless episodes per condition: 95% intervals of about +-10 points) it takes about four
minutes on 2 cores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robot_refusal.attack import AttackConfig, attack
from robot_refusal.report import write_report

DEFAULT_POLICY = "vla-small"
DEFAULT_EPISODES = 20


def demo(
    out: str | Path = "runs/demo",
    policy: str = DEFAULT_POLICY,
    episodes: int = DEFAULT_EPISODES,
    seed: int = 0,
    workers: int = 2,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Extract the direction, attack with baseline/ablate/add, write the report.

    Returns:
        The attack summary (DESIGN.md section 8).

    Raises:
        The errors of :func:`~robot_refusal.attack.attack` (bad folder, existing run, ...).
    """
    cfg = AttackConfig(
        policy=policy,
        out=str(out),
        direction=None,  # extracted and selected from the policy first
        conditions=("baseline", "ablate", "add"),
        episodes=episodes,
        seed=seed,
        workers=workers,
    )
    summary = attack(cfg, resume=resume, force=force, progress=progress)
    write_report(out)
    return summary
