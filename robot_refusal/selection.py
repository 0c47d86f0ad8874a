"""Refusal score, KL score and the selection of one refusal direction among candidates.

DESIGN.md section 4, after Arditi et al. 2024, section 2.3 and appendix C:

- refusal score: log p(refuse) - log(1 - p(refuse)) at the first generated position, float64,
  eps 1e-8;
- bypass score: mean refusal score on harmful inputs under directional ablation;
- induce score: mean refusal score on harmless inputs under activation addition at the
  candidate's layer;
- KL score: mean KL(base || ablated) of the first generated token on harmless inputs;
- selection: drop layers >= 0.8 L, KL > 0.1, induce < 0 and NaN; pick the lowest bypass.

A *prober* is a zero-argument callable returning the first-generated-token logits (N, V) of a
fixed set of inputs; the selection runs it inside each intervention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robot_refusal.adapters import get_adapter
from robot_refusal.extraction import Candidate
from robot_refusal.interventions import activation_addition, directional_ablation

EPS = 1e-8
KL_MAX = 0.1
VLA_KL_MAX = 1.0
"""KL filter for policies whose first generated token is an action bin (``extract``'s default).

DESIGN.md's 0.1 nats is calibrated for a language model's next word. Our VLA's first token on a
harmless input is the x-displacement bin, trained against Gaussian soft targets of sigma = 2
bins; shifting such a distribution by delta bins costs delta**2 / (2 sigma**2) nats, so 0.1 nats
is a shift of 0.9 bin (0.3 mm per step) and 1.0 nat one of 2.8 bins (about 0.9 mm per step at
the shipped bin width of 0.31 mm). Recorded in ``selection.json`` as ``filters.kl_max``.
"""
MAX_LAYER_FRACTION = 0.8
Prober = Callable[[], Tensor]
"""() -> (N, V) first-generated-token logits of a fixed input set."""


def refusal_scores(logits: Tensor, refuse_ids: Sequence[int]) -> Tensor:
    """log p - log(1 - p) with p = sum of the refusal tokens' probabilities, (N,) float64.

    Args:
        logits: (N, V) first-position logits (or log-probabilities); -inf allowed.
        refuse_ids: Token ids that mean refusal (the VLA: ``[REFUSE_ID]``).

    Source: DESIGN.md section 4 ("refusal score"); Arditi et al. 2024, section 2.3.
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    p = logp[:, list(refuse_ids)].exp().sum(-1).clamp(0.0, 1.0)  # (N,)
    return torch.log(p + EPS) - torch.log(1.0 - p + EPS)


def kl_divergence(base_logits: Tensor, other_logits: Tensor) -> Tensor:
    """KL(base || other) per row, (N,) float64, finite and >= 0 even with -inf logits.

    Both distributions are mixed with eps/V of the uniform distribution (eps 1e-8) so that a
    token impossible under ``other`` but possible under ``base`` gives a large finite value;
    rows whose logits are all -inf count as uniform.

    Source: DESIGN.md section 4 ("KL score"); Arditi et al. 2024, appendix C.
    """

    def probs(logits: Tensor) -> Tensor:
        p = torch.softmax(logits.double(), dim=-1).nan_to_num(nan=0.0)  # all -inf rows -> NaN
        empty = p.sum(-1, keepdim=True) == 0
        p = torch.where(empty, torch.full_like(p, 1.0 / p.shape[-1]), p)
        return (1.0 - EPS) * p + EPS / p.shape[-1]

    p, q = probs(base_logits), probs(other_logits)
    return (p * (p.log() - q.log())).sum(-1).clamp_min(0.0)


@dataclass
class CandidateScores:
    """Scores of one candidate.

    Attributes:
        layer, position, norm: Of the candidate.
        bypass: Mean refusal score on harmful inputs under ablation.
        induce: Mean refusal score on harmless inputs under addition (alpha = +1).
        kl: Mean KL(base || ablated) on harmless inputs.
        filtered: Why selection dropped it, or None.
    """

    layer: int
    position: int
    norm: float
    bypass: float = math.nan
    induce: float = math.nan
    kl: float = math.nan
    filtered: str | None = None


@dataclass
class Selection:
    """The outcome of :func:`select_direction`.

    Attributes:
        chosen: Index into ``scores`` of the selected candidate, or None if none passed.
        scores: Every candidate's scores, in candidate order.
        baseline: Mean refusal score on harmful and harmless inputs without intervention.
        n_layers: L of the model.
    """

    chosen: int | None
    scores: list[CandidateScores]
    baseline: dict[str, float]
    n_layers: int
    kl_max: float = KL_MAX

    def best(self) -> CandidateScores | None:
        """The chosen candidate's scores."""
        return None if self.chosen is None else self.scores[self.chosen]

    def to_json(self) -> dict[str, Any]:
        """``selection.json``: chosen layer/position and its scores, then all candidates'."""
        best = self.best()
        return {
            "chosen": None if best is None else asdict(best),
            "baseline": self.baseline,
            "n_layers": self.n_layers,
            "filters": {
                "max_layer_fraction": MAX_LAYER_FRACTION,
                "kl_max": self.kl_max,
                "induce_min": 0.0,
            },
            "candidates": [asdict(s) for s in self.scores],
        }


def _filter_reason(s: CandidateScores, n_layers: int, kl_max: float = KL_MAX) -> str | None:
    if any(math.isnan(v) for v in (s.bypass, s.induce, s.kl)):
        return "nan"
    if s.layer >= MAX_LAYER_FRACTION * n_layers:
        return f"layer >= {MAX_LAYER_FRACTION} L"
    if s.kl > kl_max:
        return f"kl > {kl_max}"
    if s.induce < 0:
        return "induce < 0"
    return None


@torch.no_grad()
def score_candidate(
    model: nn.Module,
    cand: Candidate,
    harmful: Prober,
    harmless: Prober,
    harmless_base: Tensor,
    refuse_ids: Sequence[int],
) -> CandidateScores:
    """Bypass, induce and KL scores of one candidate (NaN for a rejected one)."""
    s = CandidateScores(cand.layer, cand.position, cand.norm)
    if cand.direction is None:
        s.filtered = cand.rejected or "rejected"
        return s
    adapter = get_adapter(model)
    with directional_ablation(model, cand.direction, adapter):
        s.bypass = float(refusal_scores(harmful(), refuse_ids).mean())
        s.kl = float(kl_divergence(harmless_base, harmless()).mean())
    with activation_addition(model, cand.direction, cand.layer, 1.0, adapter=adapter):
        s.induce = float(refusal_scores(harmless(), refuse_ids).mean())
    return s


@torch.no_grad()
def select_direction(
    model: nn.Module,
    candidates: Sequence[Candidate],
    harmful: Prober,
    harmless: Prober,
    refuse_ids: Sequence[int],
    progress: bool = False,
    kl_max: float = KL_MAX,
) -> Selection:
    """Score every candidate and pick the one with the lowest bypass score among those that
    pass the filters (layer < 0.8 L, KL <= 0.1, induce >= 0, no NaN).

    Args:
        model: The model (hooked in place, restored after each candidate).
        candidates: From :func:`~robot_refusal.extraction.diff_in_means`.
        harmful, harmless: Probers of the validation sets.
        refuse_ids: Refusal token ids.
        progress: Show a tqdm bar.
        kl_max: KL filter (DESIGN.md: 0.1); a different value is recorded in the JSON.

    Returns:
        A :class:`Selection` with all scores (``chosen`` None if none passed).

    Source: Arditi et al. 2024, appendix C (direction selection).
    """
    n_layers = get_adapter(model).n_layers
    base_harmless = harmless()
    baseline = {
        "harmful_refusal_score": float(refusal_scores(harmful(), refuse_ids).mean()),
        "harmless_refusal_score": float(refusal_scores(base_harmless, refuse_ids).mean()),
    }
    scores = []
    for cand in tqdm(candidates, desc="score candidates", unit="cand", disable=not progress):
        s = score_candidate(model, cand, harmful, harmless, base_harmless, refuse_ids)
        if s.filtered is None:
            s.filtered = _filter_reason(s, n_layers, kl_max)
        scores.append(s)
    passing = [i for i, s in enumerate(scores) if s.filtered is None]
    chosen = min(passing, key=lambda i: scores[i].bypass) if passing else None
    return Selection(chosen, scores, baseline, n_layers, kl_max)
