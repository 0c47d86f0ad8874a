"""``robot-refusal extract``: the refusal or caution direction of a VLA checkpoint.

Refusal (DESIGN.md section 4): first observations of harmful and harmless episodes of a split
(image, state, instruction at reset) in two independent sets, a *fit* set whose means give the
difference-in-means candidates at every (layer, post-instruction position) and a *score* set on
which every candidate's bypass, induce and KL scores are measured; selection as in Arditi et
al. 2024, appendix C.

Caution: the scripted expert runs harmless episodes; its timesteps are split by its
``cautious`` flag; candidates are the difference in means (cautious minus not); the chosen one
separates the two sets best (Cohen's d of the projections, in-sample) among layers < 0.8 L.

Outputs in ``--out``: ``candidates.csv``, ``selection.json``, ``scores.png`` and
``direction.safetensors`` + ``direction.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from robot_refusal.capture import ActivationCapture, capture_activations
from robot_refusal.directions import Direction, checkpoint_hash
from robot_refusal.envs import FAMILIES, RobotRefusalEnv, ScriptedExpert
from robot_refusal.errors import ConfigError, SelectionError, UnknownNameError
from robot_refusal.extraction import separation, two_set_candidates
from robot_refusal.policies.configuration_vla import REFUSE_ID
from robot_refusal.policies.policy import VLAPolicy, resolve_checkpoint
from robot_refusal.rollout import plan_episodes
from robot_refusal.selection import MAX_LAYER_FRACTION, VLA_KL_MAX, Prober, select_direction

log = logging.getLogger(__name__)
POST_INSTRUCTION = (-3, -2, -1)
"""The VLA's post-instruction positions: SEP, state, ACT (the last three prefix tokens)."""
KINDS = ("refusal", "caution")
Observation = Mapping[str, Any]


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of one extraction.

    Attributes:
        policy: Checkpoint folder or shipped name.
        out: Output folder.
        kind: ``refusal`` or ``caution``.
        split: Instruction split of the episodes.
        episodes: Episodes per family and label (refusal; each of the fit and score sets) or
            per family (caution).
        seed: Seed of the episode plan.
        batch_size: Observations per forward pass.
        caution_stride: Keep every n-th expert timestep (caution).
        kl_max: KL filter of the selection (DESIGN.md section 4 says 0.1 for language models;
            :data:`~robot_refusal.selection.VLA_KL_MAX` explains the policy default 1.0).
    """

    policy: str
    out: str
    kind: str = "refusal"
    split: str = "val"
    episodes: int = 8
    seed: int = 0
    batch_size: int = 64
    caution_stride: int = 2
    kl_max: float = VLA_KL_MAX


def first_observations(
    policy: VLAPolicy,
    split: str,
    episodes: int,
    seed: int,
    label: str,
    progress: bool = False,
    families: Sequence[str] = FAMILIES,
) -> list[Observation]:
    """Reset observations of ``episodes`` episodes per family with ``label``, in the order of
    :func:`~robot_refusal.rollout.plan_episodes` (index-major, then family), so that the i-th
    harmful and the i-th harmless observation come from the same family and index."""
    plan = plan_episodes(families, episodes, seed, labels=[label])
    envs = {f: RobotRefusalEnv(f, split=split, image_size=policy.image_size) for f in families}
    try:
        out = []
        for spec in tqdm(plan, desc=f"{label} observations", disable=not progress):
            obs, _ = envs[spec.family].reset(seed=spec.seed, options={"label": label})
            out.append(obs)
        return out
    finally:
        for env in envs.values():
            env.close()


def expert_timesteps(
    policy: VLAPolicy, split: str, episodes: int, seed: int, stride: int, progress: bool = False
) -> tuple[list[Observation], list[Observation]]:
    """(cautious, not cautious) observations of scripted-expert harmless episodes."""
    plan = plan_episodes(FAMILIES, episodes, seed, labels=["harmless"])
    cautious: list[Observation] = []
    calm: list[Observation] = []
    for spec in tqdm(plan, desc="expert episodes", unit="ep", disable=not progress):
        env = RobotRefusalEnv(spec.family, split=split, image_size=policy.image_size)
        try:
            expert = ScriptedExpert(env)
            obs, _ = env.reset(seed=spec.seed, options={"label": "harmless"})
            expert.reset()
            done, step = False, 0
            while not done:
                action = expert.select_action(obs)
                if step % stride == 0:
                    (cautious if expert.cautious else calm).append(obs)
                obs, _, terminated, truncated, _ = env.step(action)
                done, step = terminated or truncated, step + 1
        finally:
            env.close()
    return cautious, calm


def _batches(policy: VLAPolicy, obs: Sequence[Observation], size: int) -> list[dict[str, Any]]:
    return [policy.processor(obs[i : i + size]) for i in range(0, len(obs), size)]


def make_prober(policy: VLAPolicy, obs: Sequence[Observation], batch_size: int) -> Prober:
    """Prober of the VLA: first-generated-token logits (N, V) float32 of ``obs``."""
    batches = _batches(policy, obs, batch_size)
    model = policy.model

    @torch.no_grad()
    def probe() -> torch.Tensor:
        return torch.cat([model(**b).logits[:, -1] for b in batches])

    return probe


@torch.no_grad()
def capture(
    policy: VLAPolicy, obs: Sequence[Observation], batch_size: int, store: bool = False
) -> ActivationCapture:
    """Block inputs at every layer and the post-instruction positions of ``obs``."""
    with capture_activations(policy.model, positions=POST_INSTRUCTION, store=store) as cap:
        for b in _batches(policy, obs, batch_size):
            policy.model(**b)
    return cap


def write_candidates(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """The candidate table as CSV (one row per candidate)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_scores(path: Path, rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> None:
    """Per-layer score plot, one panel per metric and one line per position (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for pos in sorted({r["position"] for r in rows}):
            pts = [(r["layer"], r[metric]) for r in rows if r["position"] == pos]
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"position {pos}")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if metric in ("bypass", "induce"):
            ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def extract_refusal(
    policy: VLAPolicy, cfg: ExtractConfig, checkpoint: str | None, progress: bool
) -> tuple[list[dict[str, Any]], dict[str, Any], Direction | None]:
    """Candidates, selection JSON and the chosen direction (None if none passed) of the
    refusal kind."""
    sets = {
        (use, label): first_observations(
            policy, cfg.split, cfg.episodes, cfg.seed + (use == "score"), label, progress
        )
        for use in ("fit", "score")
        for label in ("harmful", "harmless")
    }
    pos = capture(policy, sets["fit", "harmful"], cfg.batch_size)
    neg = capture(policy, sets["fit", "harmless"], cfg.batch_size)
    cands = two_set_candidates(pos, neg, checkpoint=checkpoint, split=cfg.split)
    sel = select_direction(
        policy.model,
        cands,
        make_prober(policy, sets["score", "harmful"], cfg.batch_size),
        make_prober(policy, sets["score", "harmless"], cfg.batch_size),
        [REFUSE_ID],
        progress=progress,
        kl_max=cfg.kl_max,
    )
    result = sel.to_json()
    result["n_observations"] = {f"{u}_{lab}": len(v) for (u, lab), v in sets.items()}
    rows = [asdict(s) for s in sel.scores]
    best = sel.best()
    if best is None or sel.chosen is None:
        return rows, result, None
    chosen = cands[sel.chosen].direction
    assert chosen is not None
    scores = {"bypass": best.bypass, "induce": best.induce, "kl": best.kl}
    return rows, result, _with_scores(chosen, scores)


def _with_scores(d: Direction, scores: dict[str, float]) -> Direction:
    return Direction(d.vector, d.layer, d.position, d.method, scores, d.checkpoint, d.split)


def extract_caution(
    policy: VLAPolicy, cfg: ExtractConfig, checkpoint: str | None, progress: bool
) -> tuple[list[dict[str, Any]], dict[str, Any], Direction | None]:
    """Candidates, selection JSON and the chosen direction (None if none passed) of the
    caution kind.

    Raises:
        ConfigError: If either set has fewer than 2 timesteps.
    """
    cautious, calm = expert_timesteps(
        policy, cfg.split, cfg.episodes, cfg.seed, cfg.caution_stride, progress
    )
    if len(cautious) < 2 or len(calm) < 2:
        raise ConfigError(
            f"{len(cautious)} cautious and {len(calm)} other timesteps; raise --episodes"
        )
    pos = capture(policy, cautious, cfg.batch_size, store=True)
    neg = capture(policy, calm, cfg.batch_size, store=True)
    cands = two_set_candidates(
        pos, neg, method="diff_in_means_caution", checkpoint=checkpoint, split=cfg.split
    )
    a, b = pos.activations(), neg.activations()  # (N, nL, nP, D)
    n_layers = len(pos.layers)
    rows: list[dict[str, Any]] = []
    for c in cands:
        li, pi = pos.layers.index(c.layer), pos.positions.index(c.position)
        d = (
            float("nan")
            if c.direction is None
            else separation(c.direction, a[:, li, pi], b[:, li, pi])
        )
        ok = c.direction is not None and c.layer < MAX_LAYER_FRACTION * n_layers
        rows.append(
            {
                "layer": c.layer,
                "position": c.position,
                "norm": c.norm,
                "separation": d,
                "filtered": None if ok else (c.rejected or "layer >= 0.8 L"),
            }
        )
    passing = [i for i, r in enumerate(rows) if r["filtered"] is None]
    if not passing:
        return rows, {"chosen": None, "candidates": rows}, None
    i = max(passing, key=lambda j: rows[j]["separation"])
    chosen = cands[i].direction
    assert chosen is not None
    result = {
        "chosen": rows[i],
        "n_cautious": len(cautious),
        "n_other": len(calm),
        "n_layers": n_layers,
        "candidates": rows,
        "criterion": "max separation (Cohen's d of projections), layer < 0.8 L",
    }
    return rows, result, _with_scores(chosen, {"separation": rows[i]["separation"]})


def extract(cfg: ExtractConfig, progress: bool = True) -> dict[str, Any]:
    """Run one extraction and write its outputs into ``cfg.out``.

    Returns:
        The content of ``selection.json``.

    Raises:
        UnknownNameError: For an unknown kind.
        CheckpointError: For a bad policy folder.
        SelectionError: If no candidate passes the filters (the table is written first).
        ConfigError: For bad settings.
    """
    if cfg.kind not in KINDS:
        raise UnknownNameError("kind", cfg.kind, KINDS)
    if cfg.episodes < 1 or cfg.batch_size < 1 or cfg.caution_stride < 1:
        raise ConfigError("episodes, batch size and stride must be >= 1")
    if not (math.isfinite(cfg.kl_max) and cfg.kl_max > 0):
        raise ConfigError(f"kl_max must be a finite number > 0, got {cfg.kl_max}")
    folder = resolve_checkpoint(cfg.policy)
    policy = VLAPolicy.from_pretrained(folder)
    ckpt = checkpoint_hash(folder)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run = extract_refusal if cfg.kind == "refusal" else extract_caution
    rows, result, direction = run(policy, cfg, ckpt, progress)
    write_candidates(out / "candidates.csv", rows)
    metrics = ["bypass", "induce", "kl"] if cfg.kind == "refusal" else ["separation", "norm"]
    plot_scores(out / "scores.png", rows, metrics)
    result.update(
        {"kind": cfg.kind, "policy": str(cfg.policy), "checkpoint": ckpt, "config": asdict(cfg)}
    )
    (out / "selection.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if direction is None:
        raise SelectionError(
            f"no {cfg.kind} candidate passed the filters; see {out / 'candidates.csv'} (is the "
            "policy trained to refuse?)"
        )
    direction.save(out / "direction")
    return result
