"""Candidate directions from two sets of activations: difference-in-means per (layer,
position), the generic two-set extractor (refusal: harmful vs harmless; caution: cautious vs
not-cautious expert timesteps), and k-dimensional subspaces.

DESIGN.md section 4 ("difference-in-means", "subspace", "caution direction"), after Arditi et
al. 2024, section 2.3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from robot_refusal.capture import ActivationCapture
from robot_refusal.directions import NORM_EPS, Direction, Subspace, orthonormalize
from robot_refusal.errors import ConfigError, DirectionError


@dataclass(frozen=True)
class Candidate:
    """One candidate direction r_l(i).

    Attributes:
        layer: Block l whose input was read.
        position: Token position i (negative = from the end).
        norm: ||r_l(i)||.
        direction: The :class:`Direction`, or None when rejected.
        rejected: Why it was rejected (``"zero norm"``), else None.
    """

    layer: int
    position: int
    norm: float
    direction: Direction | None
    rejected: str | None = None


def diff_in_means(
    pos_mean: Tensor,
    neg_mean: Tensor,
    layers: Sequence[int],
    positions: Sequence[int],
    method: str = "diff_in_means",
    checkpoint: str | None = None,
    split: str | None = None,
) -> list[Candidate]:
    """r_l(i) = mean_pos x_l(i) - mean_neg x_l(i) for every (layer, position), float64.

    Args:
        pos_mean, neg_mean: (nL, nP, D) mean activations of the two sets.
        layers, positions: The layer and position of each row and column.
        method, checkpoint, split: Provenance stored in each :class:`Direction`.

    Returns:
        nL * nP candidates, layer-major; zero-norm ones rejected (no NaN is produced).

    Raises:
        ConfigError: If shapes disagree.

    Source: Arditi et al. 2024, section 2.3, eq. (1).
    """
    if pos_mean.shape != neg_mean.shape or pos_mean.shape[:2] != (len(layers), len(positions)):
        raise ConfigError(
            f"mean shapes {tuple(pos_mean.shape)} and {tuple(neg_mean.shape)} do not match "
            f"{len(layers)} layers x {len(positions)} positions"
        )
    diff = pos_mean.double() - neg_mean.double()  # (nL, nP, D)
    out = []
    for a, layer in enumerate(layers):
        for b, pos in enumerate(positions):
            v = diff[a, b]
            norm = float(v.norm())
            if not (math.isfinite(norm) and norm > NORM_EPS):
                out.append(
                    Candidate(
                        layer,
                        pos,
                        0.0 if not math.isfinite(norm) else norm,
                        None,
                        "zero norm" if math.isfinite(norm) else "not finite",
                    )
                )
                continue
            d = Direction(v.clone(), layer, pos, method, checkpoint=checkpoint, split=split)
            out.append(Candidate(layer, pos, norm, d))
    return out


def two_set_candidates(
    positive: ActivationCapture,
    negative: ActivationCapture,
    method: str = "diff_in_means",
    checkpoint: str | None = None,
    split: str | None = None,
) -> list[Candidate]:
    """Difference-in-means candidates between two captures (positive minus negative).

    Used for the refusal direction (harmful vs harmless first observations) and the caution
    direction (cautious vs not-cautious timesteps of expert rollouts).

    Raises:
        ConfigError: If the captures differ in layers or positions, or one is empty.
    """
    if positive.layers != negative.layers or positive.positions != negative.positions:
        raise ConfigError("the two captures must use the same layers and positions")
    return diff_in_means(
        positive.mean(),
        negative.mean(),
        positive.layers,
        positive.positions,
        method,
        checkpoint,
        split,
    )


def separation(direction: Direction, positive: Tensor, negative: Tensor) -> float:
    """Cohen's d of the projections on r̂: (mean_pos - mean_neg) / pooled std, float64.

    Args:
        direction: The direction.
        positive, negative: (N, D) activations of the two sets (N >= 2 each).

    Returns:
        The effect size (0.0 when both sets project to constants).
    """
    u = direction.unit()
    a, b = positive.double() @ u, negative.double() @ u
    if len(a) < 2 or len(b) < 2:
        raise ConfigError("separation needs at least 2 activations per set")
    pooled = ((a.var() * (len(a) - 1) + b.var() * (len(b) - 1)) / (len(a) + len(b) - 2)).sqrt()
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else 0.0


def pca_subspace(differences: Tensor, k: int, **provenance: object) -> Subspace:
    """Top-k principal directions of paired differences (N, D) (uncentred SVD, so the first
    is the difference-in-means direction of the pairs up to scale), signs chosen so that the
    mean difference projects positively.

    Raises:
        ConfigError: If k < 1 or k > min(N, D).
        DirectionError: If the differences are all zero.

    Source: DESIGN.md section 4 ("subspace").
    """
    x = differences.detach().double()
    if x.ndim != 2 or not 1 <= k <= min(x.shape):
        raise ConfigError(f"k must lie in 1..{min(x.shape)} for differences {tuple(x.shape)}")
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    if not float(s[0]) > NORM_EPS:
        raise DirectionError("the paired differences are all zero")
    basis = vh[:k]  # (k, D)
    signs = torch.sign(basis @ x.mean(0))
    basis = basis * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
    sub = orthonormalize(basis, method="pca_paired_differences")
    return Subspace(sub.basis, method=sub.method, extra={k: str(v) for k, v in provenance.items()})


def top_candidates_subspace(candidates: Sequence[Candidate], k: int) -> Subspace:
    """The first k non-rejected candidates (in the given order, e.g. best selection score
    first) orthonormalised (Gram-Schmidt; dependent ones skipped).

    Raises:
        ConfigError: If fewer than k independent candidates exist.
    """
    vecs = [c.direction.vector for c in candidates if c.direction is not None]
    if not vecs:
        raise ConfigError("no usable candidates")
    chosen: list[Tensor] = []
    for v in vecs:
        trial = orthonormalize(torch.stack([*chosen, v]))
        if trial.k > len(chosen):
            chosen.append(v)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        raise ConfigError(f"only {len(chosen)} independent candidates; asked for k={k}")
    sub = orthonormalize(torch.stack(chosen), method="top_candidates")
    return sub
