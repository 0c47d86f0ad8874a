"""Steering vectors for attack sweeps, read from the attacked policy itself.

- layer sweep: the difference-in-means direction r_l at every layer l (at the refusal
  direction's position), each then ablated everywhere (Arditi et al. 2024, section 2.3 and
  appendix C: one candidate per layer);
- rank-k sweep: the top-k principal directions of paired harmful - harmless activation
  differences (same family and index) at the refusal direction's layer and position
  (:func:`~robot_refusal.extraction.pca_subspace`; k = 1 is the difference-in-means direction
  of the pairs);
- cross-family generalisation: the difference-in-means direction from one scenario family's
  episodes only, applied to every family.

All activations are first observations of the ``val`` split by default (the attack runs on
``test``), in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from robot_refusal.directions import Direction, Subspace
from robot_refusal.errors import ConfigError
from robot_refusal.extract import Observation, capture, first_observations
from robot_refusal.extraction import pca_subspace, two_set_candidates
from robot_refusal.policies.policy import VLAPolicy


def contrast_sets(
    policy: VLAPolicy,
    split: str,
    episodes: int,
    seed: int,
    families: Sequence[str],
    progress: bool = False,
) -> dict[str, tuple[list[Observation], list[Observation]]]:
    """Per family, (harmful, harmless) first observations, ``episodes`` of each, paired by
    index."""
    out = {}
    for f in families:
        harmful = first_observations(policy, split, episodes, seed, "harmful", progress, [f])
        harmless = first_observations(policy, split, episodes, seed, "harmless", progress, [f])
        out[f] = (harmful, harmless)
    return out


def _pooled(
    sets: Mapping[str, tuple[list[Observation], list[Observation]]],
) -> tuple[list[Observation], list[Observation]]:
    harmful = [o for f in sets for o in sets[f][0]]
    harmless = [o for f in sets for o in sets[f][1]]
    return harmful, harmless


def layer_directions(
    policy: VLAPolicy,
    sets: Mapping[str, tuple[list[Observation], list[Observation]]],
    position: int,
    checkpoint: str | None,
    split: str,
    batch_size: int = 64,
) -> dict[int, Direction | None]:
    """Layer l -> difference-in-means direction r_l at ``position`` over all families (None
    where r_l has zero norm, e.g. at layer 0 where the post-instruction tokens are fixed)."""
    harmful, harmless = _pooled(sets)
    pos = capture(policy, harmful, batch_size)
    neg = capture(policy, harmless, batch_size)
    cands = two_set_candidates(pos, neg, checkpoint=checkpoint, split=split)
    return {c.layer: c.direction for c in cands if c.position == position}


def family_directions(
    policy: VLAPolicy,
    sets: Mapping[str, tuple[list[Observation], list[Observation]]],
    layer: int,
    position: int,
    checkpoint: str | None,
    split: str,
    batch_size: int = 64,
) -> dict[str, Direction | None]:
    """Source family -> its own difference-in-means direction at (layer, position)."""
    out: dict[str, Direction | None] = {}
    for f, (harmful, harmless) in sets.items():
        pos = capture(policy, harmful, batch_size)
        neg = capture(policy, harmless, batch_size)
        cands = two_set_candidates(pos, neg, checkpoint=checkpoint, split=split)
        hit = [c for c in cands if c.layer == layer and c.position == position]
        d = hit[0].direction if hit else None
        if d is not None:
            extra = {"source_family": f}
            d = Direction(d.vector, d.layer, d.position, d.method, {}, checkpoint, split, extra)
        out[f] = d
    return out


def rank_subspaces(
    policy: VLAPolicy,
    sets: Mapping[str, tuple[list[Observation], list[Observation]]],
    layer: int,
    position: int,
    ks: Sequence[int],
    checkpoint: str | None,
    split: str,
    batch_size: int = 64,
) -> dict[int, Subspace]:
    """k -> top-k PCA subspace of paired (harmful - harmless) activations at (layer, position).

    Raises:
        ConfigError: If a k exceeds the number of pairs or the width.
    """
    harmful, harmless = _pooled(sets)
    pos = capture(policy, harmful, batch_size, store=True)
    neg = capture(policy, harmless, batch_size, store=True)
    if position not in pos.positions:
        raise ConfigError(f"position {position} is not a post-instruction position")
    li, pi = pos.layers.index(layer), pos.positions.index(position)
    diffs = pos.activations()[:, li, pi] - neg.activations()[:, li, pi]  # (N, D) float64
    limit = min(diffs.shape)
    bad = [k for k in ks if not 1 <= k <= limit]
    if bad:
        raise ConfigError(
            f"rank k must lie in 1..{limit} ({diffs.shape[0]} harmful/harmless pairs); got {bad}"
            "; raise --sweep-episodes"
        )
    out = {}
    for k in ks:
        sub = pca_subspace(diffs, k)
        out[k] = Subspace(
            sub.basis, layer, position, sub.method, {}, checkpoint, split, {"pairs": len(diffs)}
        )
    return out


__all__ = [
    "contrast_sets",
    "family_directions",
    "layer_directions",
    "rank_subspaces",
]
