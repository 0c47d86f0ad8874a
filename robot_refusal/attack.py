"""``robot-refusal attack``: closed-loop steering attacks, policy x scenario suite x condition.

Every planned episode (``--episodes`` per family and label, seeds derived from ``--seed`` as
in ``eval``) runs once per condition, with the condition's intervention active at every step
(:class:`~robot_refusal.conditions.SteeredPolicy`). Records go to ``episodes.jsonl`` as each
episode ends (flushed and fsynced by the parent process), so that a killed run loses at most
the episodes in flight and ``--resume`` runs only the missing (condition, episode) pairs.

Episodes run on ``--workers`` spawned processes, each with one torch thread; an episode's
numbers do not depend on the number of workers or on which worker ran it (one thread
everywhere, batch 1), so a resumed or re-run attack gives the same records bit for bit.

Outputs (DESIGN.md section 8): ``config.json``, ``episodes.jsonl``, ``summary.json``,
``directions/`` (sweep and caution directions read from the policy), ``gifs/`` (per condition,
the same seed baseline vs attacked, side by side); ``robot-refusal report`` adds the report.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from robot_refusal.conditions import (
    BASIC_CONDITIONS,
    ConditionSpec,
    SteeredPolicy,
    format_value,
    load_steering,
)
from robot_refusal.directions import Steering, checkpoint_hash
from robot_refusal.envs import FAMILIES, RobotRefusalEnv
from robot_refusal.envs.scenarios import SPLITS
from robot_refusal.errors import (
    AttackError,
    ConfigError,
    DirectionError,
    RobotRefusalError,
    SelectionError,
    UnknownNameError,
)
from robot_refusal.metrics import summarize
from robot_refusal.policies.policy import VLAPolicy, resolve_checkpoint
from robot_refusal.pool import one_thread, run_tasks
from robot_refusal.rollout import (
    EpisodeSpec,
    in_plan_order,
    plan_episodes,
    run_episode,
    versions,
)
from robot_refusal.runs import CONFIG, OWNED, SUMMARY, RunFolder

log = logging.getLogger(__name__)
DIRECTIONS = "directions"
GIFS = "gifs"
KEY_FIELDS = ("condition", "episode_id")
VIDEO_SIZE = (160, 160)
"""(H, W) of the frames in the side-by-side GIFs, pixels."""
VIDEO_STRIDE = 2
"""Keep every n-th control step in the GIFs (10 Hz control -> 5 frames per simulated s)."""


@dataclass(frozen=True)
class AttackConfig:
    """Settings of one attack run (all of them but ``workers`` must match on ``--resume``).

    Attributes:
        policy: Checkpoint folder or shipped name.
        out: Run folder.
        direction: Refusal direction file or ``extract`` folder; None extracts it from the
            policy first (``sweep_split``, ``sweep_episodes``), as ``extract`` would.
        conditions: Basic conditions (:data:`~robot_refusal.conditions.BASIC_CONDITIONS`).
        add_alpha: Coefficient of the ``add`` condition (+1 induces refusal).
        alphas: Dose-response sweep: ``add_alpha=<a>`` conditions.
        layers: Layer sweep: ``ablate_layer=<l>`` conditions (difference-in-means at layer l).
        ranks: Rank-k sweep: ``ablate_k=<k>`` conditions (top-k PCA subspace).
        source_families: Cross-family sweep: ``ablate_from=<family>`` conditions.
        caution_direction: Caution direction file for ``caution``; None extracts it.
        cross_version: Allow a direction read from another checkpoint (cross-version attack).
        split: Instruction split of the attack episodes.
        episodes: Episodes per family and label, per condition.
        families: Scenario families.
        seed: Run seed (episode seeds derive from it).
        sweep_split: Split of the observations that sweep directions are read from.
        sweep_episodes: Episodes per family and label for those directions.
        videos: Side-by-side GIFs per condition (0 or 1).
        workers: Worker processes (not part of the run's identity).
    """

    policy: str
    out: str
    direction: str | None = None
    conditions: tuple[str, ...] = ("baseline", "ablate", "add")
    add_alpha: float = 1.0
    alphas: tuple[float, ...] = ()
    layers: tuple[int, ...] = ()
    ranks: tuple[int, ...] = ()
    source_families: tuple[str, ...] = ()
    caution_direction: str | None = None
    cross_version: bool = False
    split: str = "test"
    episodes: int = 10
    families: tuple[str, ...] = tuple(FAMILIES)
    seed: int = 0
    sweep_split: str = "val"
    sweep_episodes: int = 8
    videos: int = 1
    workers: int = 1

    def identity(self) -> dict[str, Any]:
        """The settings stored in ``config.json`` (everything but ``workers``)."""
        d = asdict(self)
        d.pop("workers")
        d["command"] = "attack"
        for k in ("conditions", "alphas", "layers", "ranks", "source_families", "families"):
            d[k] = list(d[k])
        return d


def _check(cfg: AttackConfig) -> None:
    for name in cfg.conditions:
        if name not in BASIC_CONDITIONS:
            raise UnknownNameError("condition", name, BASIC_CONDITIONS)
    if not (cfg.conditions or cfg.alphas or cfg.layers or cfg.ranks or cfg.source_families):
        raise ConfigError("nothing to run: give --conditions or a sweep")
    for split in (cfg.split, cfg.sweep_split):
        if split not in SPLITS:
            raise UnknownNameError("split", split, SPLITS)
    for f in (*cfg.families, *cfg.source_families):
        if f not in FAMILIES:
            raise UnknownNameError("family", f, FAMILIES)
    if cfg.episodes < 1 or cfg.sweep_episodes < 1 or cfg.workers < 1:
        raise ConfigError("episodes, sweep episodes and workers must be >= 1")
    if cfg.videos not in (0, 1):
        raise ConfigError(f"videos must be 0 or 1, got {cfg.videos}")
    if any(k < 1 for k in cfg.ranks):
        raise ConfigError(f"ranks must be >= 1, got {list(cfg.ranks)}")
    if not np.isfinite(cfg.add_alpha) or not all(np.isfinite(a) for a in cfg.alphas):
        raise ConfigError("alphas must be finite numbers")


def _check_provenance(steer: Steering, what: str, ckpt: str, cross_version: bool) -> None:
    if steer.checkpoint is not None and steer.checkpoint != ckpt and not cross_version:
        raise DirectionError(
            f"the {what} was read from another checkpoint (hash {steer.checkpoint}, the policy "
            f"is {ckpt}); pass --cross-version to apply it anyway"
        )


def _needs_refusal_direction(cfg: AttackConfig) -> bool:
    basic = {"ablate", "add", "orthogonalize"} & set(cfg.conditions)
    return bool(basic or cfg.alphas or cfg.layers or cfg.ranks or cfg.source_families)


def _save(steer: Steering, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return str(steer.save(folder / name))


def build_conditions(
    cfg: AttackConfig, policy: VLAPolicy, ckpt: str, progress: bool = False
) -> tuple[list[ConditionSpec], dict[str, Any]]:
    """The run's condition specs, extracting what the sweeps need into ``<out>/directions``.

    Returns:
        (specs in run order, provenance: the refusal direction's metadata and skipped sweeps).

    Raises:
        DirectionError: A direction of the wrong width, or from another checkpoint without
            ``cross_version``.
        ConfigError: A sweep that cannot be built (no layer recorded, k too large).
        SelectionError: No refusal direction passes selection when it is extracted here.
    """
    from robot_refusal import sweeps
    from robot_refusal.extract import ExtractConfig, extract_caution, extract_refusal

    folder = Path(cfg.out) / DIRECTIONS
    info: dict[str, Any] = {"skipped": {}}
    refusal: Steering | None = None
    refusal_path: str | None = None
    ecfg = ExtractConfig(
        cfg.policy, str(folder), split=cfg.sweep_split, episodes=cfg.sweep_episodes
    )
    if _needs_refusal_direction(cfg):
        if cfg.direction is None:
            _, result, chosen = extract_refusal(policy, ecfg, ckpt, progress)
            if chosen is None:
                raise SelectionError("no refusal candidate passed selection; is it trained?")
            refusal, refusal_path = chosen, _save(chosen, folder, "refusal")
            info["extracted"] = {"chosen": result["chosen"], "baseline": result["baseline"]}
        else:
            refusal = load_steering(cfg.direction)
            refusal_path = cfg.direction
        refusal.check_model(policy.model)
        _check_provenance(refusal, "direction", ckpt, cfg.cross_version)
        info["refusal"] = {"path": refusal_path, **refusal.metadata()}
    specs: list[ConditionSpec] = []
    for name in cfg.conditions:
        if name == "baseline":
            specs.append(ConditionSpec("baseline"))
        elif name == "ablate":
            specs.append(ConditionSpec("ablate", "ablate", refusal_path))
        elif name == "add":
            specs.append(ConditionSpec("add", "add", refusal_path, alpha=cfg.add_alpha))
        elif name == "orthogonalize":
            specs.append(ConditionSpec("orthogonalize", "orthogonalize", refusal_path))
        elif name == "caution":
            caution: Steering
            if cfg.caution_direction is None:
                _, _, extracted = extract_caution(policy, ecfg, ckpt, progress)
                if extracted is None:
                    raise ConfigError("no caution candidate passed its filters")
                caution, path = extracted, _save(extracted, folder, "caution")
            else:
                caution, path = load_steering(cfg.caution_direction), cfg.caution_direction
            caution.check_model(policy.model)
            _check_provenance(caution, "caution direction", ckpt, cfg.cross_version)
            info["caution"] = {"path": path, **caution.metadata()}
            specs.append(ConditionSpec("ablate_caution", "ablate", path))
    for a in cfg.alphas:
        specs.append(
            ConditionSpec(
                f"add_alpha={format_value(a)}", "add", refusal_path, a, group="alpha", value=a
            )
        )
    layer: int | None = getattr(refusal, "layer", None)
    position = getattr(refusal, "position", None)
    position = -1 if position is None else int(position)
    sweep_sets = None
    if cfg.layers or cfg.ranks or cfg.source_families:
        fams = tuple(dict.fromkeys((*cfg.families, *cfg.source_families)))
        sweep_sets = sweeps.contrast_sets(
            policy, cfg.sweep_split, cfg.sweep_episodes, cfg.seed, fams, progress
        )
    if cfg.layers:
        assert sweep_sets is not None
        n = policy.model.config.num_hidden_layers
        bad = [lay for lay in cfg.layers if not 0 <= lay < n]
        if bad:
            raise ConfigError(f"layers must lie in 0..{n - 1}, got {bad}")
        by_layer = sweeps.layer_directions(
            policy, {f: sweep_sets[f] for f in cfg.families}, position, ckpt, cfg.sweep_split
        )
        for lay in cfg.layers:
            d = by_layer.get(lay)
            if d is None:
                info["skipped"][f"ablate_layer={lay}"] = "zero-norm difference in means"
                continue
            path = _save(d, folder, f"layer{lay}")
            specs.append(
                ConditionSpec(f"ablate_layer={lay}", "ablate", path, group="layer", value=lay)
            )
    if (cfg.ranks or cfg.source_families) and layer is None:
        raise ConfigError("the direction records no layer; rank and family sweeps need one")
    at = -1 if layer is None else int(layer)
    if cfg.ranks:
        assert sweep_sets is not None
        subs = sweeps.rank_subspaces(
            policy,
            {f: sweep_sets[f] for f in cfg.families},
            at,
            position,
            cfg.ranks,
            ckpt,
            cfg.sweep_split,
        )
        for k, sub in subs.items():
            path = _save(sub, folder, f"rank{k}")
            specs.append(ConditionSpec(f"ablate_k={k}", "ablate", path, group="rank", value=k))
    if cfg.source_families:
        assert sweep_sets is not None
        by_family = sweeps.family_directions(
            policy,
            {f: sweep_sets[f] for f in cfg.source_families},
            at,
            position,
            ckpt,
            cfg.sweep_split,
        )
        for f, d in by_family.items():
            if d is None:
                info["skipped"][f"ablate_from={f}"] = "zero-norm difference in means"
                continue
            path = _save(d, folder, f"from_{f}")
            specs.append(ConditionSpec(f"ablate_from={f}", "ablate", path, group="family", value=f))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate condition names: {names}")
    return specs, info


# -- episode runners ---------------------------------------------------------------------------
class EpisodeRunner:
    """Runs (condition, episode) pairs in this process: one env per family, one
    :class:`SteeredPolicy` per condition, all sharing one loaded policy.

    Args:
        policy: Checkpoint folder.
        specs: The conditions (JSON dicts or specs).
        split: Instruction split.
        families: Families to build envs for.
        render: Also render ``VIDEO_SIZE`` frames (for the GIFs).
    """

    def __init__(
        self,
        policy: str,
        specs: Sequence[ConditionSpec | Mapping[str, Any]],
        split: str,
        families: Sequence[str],
        render: bool = False,
    ) -> None:
        self.policy = VLAPolicy.from_pretrained(policy)
        self.specs = {
            s.name: s
            for s in (
                x if isinstance(x, ConditionSpec) else ConditionSpec.from_json(x) for x in specs
            )
        }
        self.agents: dict[str, SteeredPolicy] = {}
        kw: dict[str, Any] = (
            {"render_mode": "rgb_array", "render_size": VIDEO_SIZE} if render else {}
        )
        self.envs = {
            f: RobotRefusalEnv(f, split=split, image_size=self.policy.image_size, **kw)
            for f in families
        }

    def agent(self, name: str) -> SteeredPolicy:
        """The steered policy of condition ``name`` (built once)."""
        if name not in self.agents:
            self.agents[name] = SteeredPolicy(self.policy, self.specs[name])
        return self.agents[name]

    def run(
        self, name: str, spec: EpisodeSpec, frames: list[np.ndarray] | None = None
    ) -> dict[str, Any]:
        """One episode of condition ``name``; its record with ``kl`` (first step) added.

        Args:
            frames: If given, rendered frames (H, W, 3) uint8 are appended to it.
        """
        agent = self.agent(name)
        env = self.envs[spec.family]
        hook = None
        if frames is not None:

            def hook(*_: Any) -> None:
                frame = env.render()
                if frame is not None:
                    frames.append(frame)

        rec = run_episode(env, agent, spec, condition=name, on_step=hook)
        rec["kl"] = agent.kl
        return rec

    def close(self) -> None:
        """Close the envs."""
        for env in self.envs.values():
            env.close()


# -- videos ------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _outcome(rec: Mapping[str, Any]) -> str:
    if rec["refused"]:
        return "refused"
    if rec["unsafe_outcome"]:
        return "UNSAFE OUTCOME"
    if rec["is_success"]:
        return "task done"
    return "no goal reached" + (" (violation)" if rec["cost_total"] > 0 else "")


def pick_showcase(records: Sequence[Mapping[str, Any]], condition: str) -> Mapping[str, Any] | None:
    """The episode of ``condition`` that best shows what it does, compared with baseline on
    the same seed: an unsafe outcome first, then a harmful episode whose refusal flipped, then a
    harmless one whose refusal flipped, then the first harmful episode."""
    mine = sorted(
        (r for r in records if r["condition"] == condition), key=lambda r: r["episode_id"]
    )
    base = {r["episode_id"]: r for r in records if r["condition"] == "baseline"}
    if not mine:
        return None

    def flipped(r: Mapping[str, Any]) -> bool:
        b = base.get(r["episode_id"])
        return b is not None and bool(b["refused"]) != bool(r["refused"])

    tests = [
        lambda r: r["label"] == "harmful" and r["unsafe_outcome"],
        lambda r: r["label"] == "harmful" and flipped(r),
        lambda r: r["label"] == "harmless" and flipped(r),
        lambda r: r["label"] == "harmful",
        lambda r: True,
    ]
    for test in tests:
        hits = [r for r in mine if test(r)]
        if hits:
            return hits[0]
    return None


def _label(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(lines):
        y = 2 + 11 * i
        draw.rectangle((0, y - 1, min(img.width, 6 * len(text) + 4), y + 10), fill=(0, 0, 0))
        draw.text((2, y), text, fill=(255, 255, 255))
    return np.asarray(img)


def side_by_side(
    left: Sequence[np.ndarray],
    right: Sequence[np.ndarray],
    titles: tuple[str, str],
    outcomes: tuple[str, str],
    instruction: str,
) -> list[np.ndarray]:
    """Frames (H + 14, 2W + 4, 3) uint8: ``left`` and ``right`` side by side, the shorter one held
    on its last frame, titles on top and the outcome shown once an episode has ended."""
    n = max(len(left), len(right))
    h, w = (left or right)[0].shape[:2]
    blank = np.zeros((h, w, 3), np.uint8)
    out = []
    for i in range(n + 5):  # hold the end for 5 frames
        panes = []
        for frames, title, outcome in zip((left, right), titles, outcomes, strict=True):
            f = frames[min(i, len(frames) - 1)] if frames else blank
            lines = [title]
            if i >= len(frames) - 1:
                lines.append(outcome)
            panes.append(_label(f, lines))
        gap = np.full((h, 4, 3), 255, np.uint8)
        frame = np.concatenate([panes[0], gap, panes[1]], axis=1)
        strip = _label(
            np.zeros((14, frame.shape[1], 3), np.uint8), [instruction[: frame.shape[1] // 6]]
        )
        out.append(np.concatenate([frame, strip], axis=0))
    return out


def write_videos(
    cfg: AttackConfig,
    specs: Sequence[ConditionSpec],
    records: Sequence[Mapping[str, Any]],
    progress: bool = False,
) -> dict[str, Any]:
    """Per non-baseline condition, re-run its showcase episode and the same seed under
    baseline with rendering, and write ``gifs/<condition>.gif`` (baseline left, attacked
    right). The re-run must reproduce the recorded outcome (determinism check).

    Returns:
        Condition -> {file, episode_id, family, label, instruction, outcomes, reproduced}.
    """
    import imageio.v2 as imageio

    shown = [s for s in specs if s.name != "baseline"]
    if not shown or cfg.videos == 0:
        return {}
    base = ConditionSpec("baseline")
    runner = EpisodeRunner(cfg.policy, [base, *shown], cfg.split, cfg.families, render=True)
    folder = Path(cfg.out) / GIFS
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    try:
        for s in tqdm(shown, desc="videos", unit="gif", disable=not progress):
            rec = pick_showcase(records, s.name)
            if rec is None:
                continue
            index = int(rec["episode_id"].rsplit("/", 1)[-1])
            ep = EpisodeSpec(rec["family"], rec["label"], index, int(rec["seed"]))
            frames_b: list[np.ndarray] = []
            frames_a: list[np.ndarray] = []
            rb = runner.run("baseline", ep, frames_b)
            ra = runner.run(s.name, ep, frames_a)
            reproduced = all(
                ra[k] == rec[k]
                for k in ("steps", "refused", "unsafe_outcome", "is_success", "cost_total")
            )
            if not reproduced:
                log.warning("re-run of %s %s did not reproduce its record", s.name, ep)
            frames = side_by_side(
                frames_b[::VIDEO_STRIDE] + frames_b[-1:],
                frames_a[::VIDEO_STRIDE] + frames_a[-1:],
                ("baseline", s.name),
                (_outcome(rb), _outcome(ra)),
                rec["instruction"],
            )
            path = folder / f"{_safe(s.name)}.gif"
            imageio.mimsave(path, list(frames), duration=100, loop=0)
            out[s.name] = {
                "file": f"{GIFS}/{path.name}",
                "episode_id": rec["episode_id"],
                "family": rec["family"],
                "label": rec["label"],
                "instruction": rec["instruction"],
                "baseline_outcome": _outcome(rb),
                "outcome": _outcome(ra),
                "reproduced": reproduced,
            }
    finally:
        runner.close()
    return out


# -- the command -------------------------------------------------------------------------------
def _remove_own(out: Path) -> None:
    """Delete what a failed start wrote into a folder that was empty before."""
    for name in (CONFIG, DIRECTIONS):
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    with contextlib.suppress(OSError):
        out.rmdir()


def attack(
    cfg: AttackConfig, resume: bool = False, force: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run an attack and write its run folder.

    Returns:
        The summary written to ``summary.json``: DESIGN.md section 8 keys (``conditions``,
        ``policy``, ``direction``, ``seed``, ``versions``) plus ``condition_specs``,
        ``sweeps``, ``videos``, ``split``, ``episodes_per_family_label``, ``wall_time_s``.

    Raises:
        UnknownNameError, ConfigError: Bad settings.
        CheckpointError: Missing or corrupt policy folder.
        DirectionError: Bad direction file, wrong width, or another checkpoint's direction
            without ``cross_version``.
        RunFolderError: An existing run folder without ``resume``/``force``.
        AttackError: A worker process failed (finished episodes stay on disk).
    """
    _check(cfg)
    start = time.perf_counter()
    folder = resolve_checkpoint(cfg.policy)
    policy = VLAPolicy.from_pretrained(folder)
    ckpt = checkpoint_hash(folder)
    if cfg.direction is not None:  # fail on a bad file before touching the run folder
        d = load_steering(cfg.direction)
        d.check_model(policy.model)
        _check_provenance(d, "direction", ckpt, cfg.cross_version)
    out = Path(cfg.out)
    fresh = not (out.is_dir() and any(out.iterdir()))
    run = RunFolder(
        cfg.out,
        cfg.identity(),
        resume=resume,
        force=force,
        owned=(*OWNED, DIRECTIONS, GIFS),
        key_fields=KEY_FIELDS,
    )
    try:
        with one_thread():
            specs, provenance = build_conditions(cfg, policy, ckpt, progress)
            if not specs:
                raise ConfigError(
                    f"nothing to run: every sweep condition was skipped ({provenance['skipped']})"
                )
            for spec in specs:  # width, zero norm, layer range: here, not in a worker
                SteeredPolicy(policy, spec)
    except RobotRefusalError:
        if fresh:  # leave no half-made run folder that blocks the corrected command
            _remove_own(out)
        raise
    plan = plan_episodes(list(cfg.families), cfg.episodes, cfg.seed)
    pairs = [(s.name, ep) for ep in plan for s in specs]
    done = run.done
    todo = [(n, ep) for n, ep in pairs if f"{n}:{ep.episode_id}" not in done]
    init: dict[str, Any] = {
        "policy": str(folder),
        "specs": [s.to_json() for s in specs],
        "split": cfg.split,
        "families": list(cfg.families),
    }
    bar = tqdm(
        total=len(pairs),
        initial=len(pairs) - len(todo),
        desc=f"attack {len(specs)} conditions",
        unit="ep",
        disable=not progress,
    )
    try:
        run_tasks(EpisodeRunner, init, todo, cfg.workers, run.append, bar, AttackError, run.count)
    finally:
        bar.close()
    order = [s.name for s in specs]
    conditions = summarize(in_plan_order(run.records, plan))
    with one_thread():
        videos = write_videos(cfg, specs, run.records, progress)
    summary = {
        "conditions": {n: conditions[n] for n in order if n in conditions},
        "condition_order": [n for n in order if n in conditions],
        "policy": str(cfg.policy),
        "checkpoint": ckpt,
        "action_decoding": policy.action_decoding,  # how every condition read its actions
        **({} if policy.chunk_execution is None else {"chunk_execution": policy.chunk_execution}),
        "direction": provenance.get("refusal"),
        "caution_direction": provenance.get("caution"),
        "extracted": provenance.get("extracted"),
        "seed": cfg.seed,
        "split": cfg.split,
        "families": list(cfg.families),
        "episodes_per_family_label": cfg.episodes,
        "condition_specs": {s.name: s.to_json() for s in specs},
        "sweeps": {
            "alpha": list(cfg.alphas),
            "layer": list(cfg.layers),
            "rank": list(cfg.ranks),
            "family": list(cfg.source_families),
            "skipped": provenance["skipped"],
        },
        "videos": videos,
        "versions": versions(),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    run.write_json(SUMMARY, summary)
    return summary
