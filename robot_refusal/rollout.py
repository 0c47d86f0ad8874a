"""Closed-loop rollouts: a deterministic plan of episodes, one episode's loop, and ``eval``.

Episode seeds derive from the run seed, the family, the label and the index through
``numpy.random.SeedSequence``, so that a run is the same episodes, bit for bit, on every machine
run and after every ``--resume``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from robot_refusal.agents import (
    AGENTS,
    Agent,
    check_agent,
    image_size,
    load_policy,
    make_agent,
    needs_images,
)
from robot_refusal.envs import ENV_IDS, FAMILIES, RobotRefusalEnv
from robot_refusal.envs.scenarios import LABELS, SPLITS
from robot_refusal.envs.task import COST_NAMES
from robot_refusal.errors import ConfigError, UnknownNameError, WorkerError
from robot_refusal.metrics import summarize
from robot_refusal.pool import run_tasks
from robot_refusal.runs import SUMMARY, RunFolder

StepHook = Callable[[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any], Agent], None]
"""``(obs_before, info_before, action, info, agent)``: called after every step."""


@dataclass(frozen=True)
class EpisodeSpec:
    """One planned episode.

    Attributes:
        family: Scenario family.
        label: ``harmful`` or ``harmless``.
        index: Index within (family, label).
        seed: The env reset seed.
    """

    family: str
    label: str
    index: int
    seed: int

    @property
    def episode_id(self) -> str:
        """Stable id ``<family>/<label>/<index>``."""
        return f"{self.family}/{self.label}/{self.index:05d}"


def plan_episodes(
    families: Sequence[str], episodes: int, seed: int, labels: Sequence[str] = LABELS
) -> list[EpisodeSpec]:
    """``episodes`` episodes per family and label, interleaved, with derived seeds.

    Raises:
        UnknownNameError: For an unknown family or label.
        ConfigError: If ``episodes`` < 1, ``seed`` < 0 or ``families`` is empty.
    """
    if not isinstance(episodes, int) or episodes < 1:
        raise ConfigError(f"episodes must be an integer >= 1, got {episodes!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    families = list(dict.fromkeys(families))  # duplicates would repeat episode ids
    if not families:
        raise ConfigError(f"no families given; choose from {', '.join(FAMILIES)}")
    for f in families:
        if f not in FAMILIES:
            raise UnknownNameError("family", f, FAMILIES)
    for lab in labels:
        if lab not in LABELS:
            raise UnknownNameError("label", lab, LABELS)
    plan = []
    for i in range(episodes):
        for f in families:
            for lab in labels:
                ss = np.random.SeedSequence([seed, FAMILIES.index(f), LABELS.index(lab), i])
                plan.append(EpisodeSpec(f, lab, i, int(ss.generate_state(1)[0])))
    return plan


def run_episode(
    env: RobotRefusalEnv,
    agent: Agent,
    spec: EpisodeSpec,
    condition: str = "baseline",
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Run one episode to its end and return its record (a JSON-ready dict).

    Args:
        env: The family's env (its split is the record's split).
        agent: The policy.
        spec: Which episode.
        condition: Condition name stored in the record.
        on_step: Called after every step with ``(obs_before, info_before, action, info,
            agent)``; ``info_before`` is the info returned with ``obs_before``.

    Returns:
        The record: ids, instruction, outcome flags, summed costs, steps, path length.
    """
    obs, info = env.reset(seed=spec.seed, options={"label": spec.label})
    agent.reset()
    totals = dict.fromkeys(COST_NAMES, 0.0)
    cautious = 0
    first_score: float | None = None
    terminated = truncated = False
    while not (terminated or truncated):
        action = agent.select_action(obs)
        if first_score is None:
            first_score = getattr(agent, "refusal_score", None)
        cautious += int(bool(getattr(agent, "cautious", False)))
        prev, prev_info = obs, info
        obs, _, terminated, truncated, info = env.step(action)
        for k in COST_NAMES:
            totals[k] += float(info[f"cost_{k}"])
        if on_step is not None:
            on_step(prev, prev_info, action, info, agent)
    return {
        "episode_id": spec.episode_id,
        "condition": condition,
        "family": spec.family,
        "env_id": ENV_IDS[spec.family],
        "split": env.split,
        "label": info["label"],
        "category": info["category"],
        "task": info["task"],
        "instruction": info["instruction"],
        "target": info["target"],
        "seed": spec.seed,
        "steps": info["steps"],
        "is_success": bool(info["is_success"]),
        "refused": bool(info["refused"]),
        "unsafe_outcome": bool(info["unsafe_outcome"]),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "costs": totals,
        "cost_total": float(sum(totals.values())),
        "ee_path_length": float(info["ee_path_length"]),
        "cautious_steps": cautious if hasattr(agent, "cautious") else None,
        "refusal_score": first_score,
    }


def versions() -> dict[str, str]:
    """Versions of Python and the packages that decide an episode's outcome."""
    out = {"python": platform.python_version()}
    for pkg in ("robot-refusal", "numpy", "gymnasium", "pybullet", "torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def in_plan_order(
    records: Sequence[dict[str, Any]], plan: Sequence[EpisodeSpec]
) -> list[dict[str, Any]]:
    """``records`` sorted by their episode's place in ``plan`` (then by ``condition``), so
    that summaries (float sums) do not depend on the order in which workers finished them."""
    place = {spec.episode_id: i for i, spec in enumerate(plan)}
    return sorted(
        records, key=lambda r: (place.get(r["episode_id"], len(place)), r.get("condition", ""))
    )


class EvalRunner:
    """Runs ``eval`` episodes in this process: one env and one agent per family.

    Args:
        policy: Agent name (see :mod:`robot_refusal.agents`).
        split: Instruction split.
        families: Families to build envs for.
        keypoint_window: A checkpoint's keypoint readout override (None: its own).
        action_decoding: A checkpoint's action-token reading (None: its own).
        exact_keypoints: Feed a checkpoint the simulator's exact keypoints (a diagnostic):
            True for all four, or the names of those to replace.
        chunk_execution: How a chunked checkpoint runs its chunks (None: its own).
        keypoint_memory: A checkpoint's keypoint memory radius in px (None: its own).

    Raises:
        UnknownNameError, ConfigError, CheckpointError: From the env and agent factories.
    """

    def __init__(
        self,
        policy: str,
        split: str,
        families: Sequence[str],
        keypoint_window: int | None = None,
        action_decoding: str | None = None,
        exact_keypoints: bool | Sequence[str] = False,
        chunk_execution: str | None = None,
        keypoint_memory: float | None = None,
    ) -> None:
        self.envs: dict[str, RobotRefusalEnv] = {}
        self.agents: dict[str, Agent] = {}
        try:
            for f in families:
                self.envs[f] = RobotRefusalEnv(
                    f, split=split, image_obs=needs_images(policy), image_size=image_size(policy)
                )
                self.agents[f] = make_agent(
                    policy,
                    self.envs[f],
                    keypoint_window,
                    action_decoding,
                    exact_keypoints,
                    chunk_execution,
                    keypoint_memory,
                )
        except BaseException:
            self.close()
            raise

    def run(self, spec: EpisodeSpec) -> dict[str, Any]:
        """One episode; its record (see :func:`run_episode`)."""
        return run_episode(self.envs[spec.family], self.agents[spec.family], spec)

    def close(self) -> None:
        """Close the envs."""
        for env in self.envs.values():
            env.close()


def evaluate(
    policy: str,
    out: str | Path,
    split: str = "test",
    episodes: int = 10,
    families: Sequence[str] = FAMILIES,
    seed: int = 0,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    keypoint_window: int | None = None,
    workers: int = 1,
    action_decoding: str | None = None,
    exact_keypoints: bool | str | Sequence[str] = False,
    chunk_execution: str | None = None,
    keypoint_memory: float | None = None,
) -> dict[str, Any]:
    """Closed-loop ``baseline`` episodes of ``policy`` over ``families``; writes the run folder.

    Episodes run in this process (``workers`` 1) or on ``workers`` spawned processes
    (:func:`robot_refusal.pool.run_tasks`), torch on one thread either way, so the records are
    the same, bit for bit, for any ``workers``; ``episodes.jsonl`` holds them in the order
    they finished.

    Args:
        policy: Agent name (see :mod:`robot_refusal.agents`).
        out: Run folder for ``episodes.jsonl``, ``summary.json``, ``config.json``.
        split: Instruction split.
        episodes: Episodes per family and label.
        families: Families to run.
        seed: Run seed.
        resume: Skip the episodes already in ``out``.
        force: Overwrite ``out``.
        progress: Show a progress bar.
        keypoint_window: For a checkpoint, an override of its keypoint readout
            (``VLAConfig.keypoint_window``), recorded in ``config.json`` and the summary;
            None keeps the checkpoint's.
        workers: Processes that run episodes; not part of the run's settings, so a
            ``--resume`` may use another number.
        action_decoding: For a checkpoint, how its action tokens are read (``"argmax"``,
            ``"mean"``; see :class:`~robot_refusal.policies.policy.VLAPolicy`), recorded in
            ``config.json``; None keeps the checkpoint's. The summary records the reading
            the checkpoint ran with, either way.
        exact_keypoints: For a checkpoint, replace its first four predicted keypoints by the
            simulator's at every step (privileged; what perception costs, see
            :mod:`robot_refusal.policies.privileged`): ``True`` for all four, or the names of
            those to replace (``"target,hand"`` or a sequence; the others stay the policy's
            own). Recorded in ``config.json`` and the summary: ``true`` for all four, else the
            list of names in row order.
        chunk_execution: For a chunked checkpoint, how it runs its action chunks
            (``"ensemble[:COEFF]"``, ``"open-loop[:STEPS]"``, ``"newest"``; see
            :class:`~robot_refusal.policies.policy.VLAPolicy`), recorded in ``config.json``;
            None keeps the checkpoint's. The summary records the execution it ran with.
        keypoint_memory: For a checkpoint, the radius in pixels of its keypoint memory
            (``VLAConfig.keypoint_memory``; 0: none), recorded in ``config.json``; None keeps
            the checkpoint's. The summary records a positive radius it ran with.

    Returns:
        The summary written to ``summary.json`` (DESIGN.md section 8).

    Raises:
        UnknownNameError: Unknown policy, split or family.
        ConfigError: ``keypoint_window``, ``action_decoding``, ``exact_keypoints``,
            ``chunk_execution`` or ``keypoint_memory`` for a scripted agent, or out of range /
            unknown; ``workers`` < 1.
        RunFolderError: See :class:`robot_refusal.runs.RunFolder`.
        WorkerError: A worker process failed or died (the finished episodes stay saved).
    """
    # before the run folder is touched
    check_agent(
        policy, keypoint_window, action_decoding, exact_keypoints, chunk_execution, keypoint_memory
    )
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    exact: bool | list[str] = False  # as recorded: True (all four) or the names replaced
    if exact_keypoints:
        from robot_refusal.policies.privileged import KEYPOINT_NAMES, exact_keypoint_names

        names = exact_keypoint_names(exact_keypoints)
        exact = True if names == KEYPOINT_NAMES else list(names)
    if split not in SPLITS:
        raise UnknownNameError("split", split, SPLITS)
    families = list(dict.fromkeys(families))
    plan = plan_episodes(families, episodes, seed)
    decoding: dict[str, Any] = {}  # a checkpoint's run-time settings, its own or overridden
    if policy not in AGENTS:
        loaded = load_policy(
            policy, keypoint_window, action_decoding, chunk_execution, keypoint_memory
        )
        decoding["action_decoding"] = loaded.action_decoding
        if loaded.chunk_execution is not None:
            decoding["chunk_execution"] = loaded.chunk_execution
        if loaded.keypoint_memory is not None:
            decoding["keypoint_memory"] = loaded.keypoint_memory.radius_px
    config = {
        "command": "eval",
        "policy": policy,
        "split": split,
        "episodes": episodes,
        "families": list(families),
        "seed": seed,
    }
    if keypoint_window is not None:  # left out otherwise, so older run folders resume
        config["keypoint_window"] = keypoint_window
    if action_decoding is not None:
        config["action_decoding"] = action_decoding
    if exact:
        config["exact_keypoints"] = exact
    if chunk_execution is not None:  # as the policy names it: "ensemble" is "ensemble:0.01"
        config["chunk_execution"] = decoding["chunk_execution"]
    if keypoint_memory is not None:
        config["keypoint_memory"] = float(keypoint_memory)
    run = RunFolder(out, config, resume=resume, force=force)
    done = run.done
    todo = [s for s in plan if s.episode_id not in done]
    init: dict[str, Any] = {
        "policy": policy,
        "split": split,
        "families": families,
        "keypoint_window": keypoint_window,
        "action_decoding": action_decoding,
        "exact_keypoints": exact,
        "chunk_execution": chunk_execution,
        "keypoint_memory": keypoint_memory,
    }
    start = time.perf_counter()
    with tqdm(
        desc=f"eval {policy}",
        unit="ep",
        disable=not progress,
        initial=len(plan) - len(todo),
        total=len(plan),
    ) as bar:
        tasks = [(spec,) for spec in todo]
        run_tasks(EvalRunner, init, tasks, workers, run.append, bar, WorkerError, run.count)
    summary = {
        "conditions": summarize(in_plan_order(run.records, plan)),
        "policy": policy,
        **({} if keypoint_window is None else {"keypoint_window": keypoint_window}),
        **decoding,
        **({"exact_keypoints": exact} if exact else {}),
        "direction": None,
        "seed": seed,
        "split": split,
        "episodes_per_family_label": episodes,
        "versions": versions(),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    run.write_json(SUMMARY, summary)
    return summary
