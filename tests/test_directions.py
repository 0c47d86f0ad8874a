"""Direction/Subspace files and algebra, candidates, subspaces, scores and selection."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from robot_refusal.capture import capture_activations
from robot_refusal.directions import Direction, Subspace, cosine_matrix, orthonormalize
from robot_refusal.errors import ConfigError, DirectionError
from robot_refusal.extraction import (
    diff_in_means,
    pca_subspace,
    separation,
    top_candidates_subspace,
    two_set_candidates,
)
from robot_refusal.selection import (
    CandidateScores,
    _filter_reason,
    kl_divergence,
    refusal_scores,
    select_direction,
)
from tests.tiny_models import tiny_decoder

torch.set_num_threads(1)


def _vec(seed: int, d: int = 8) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_direction_round_trip_and_metadata(tmp_path: Path) -> None:
    d = Direction(_vec(0), 3, -2, "diff_in_means", {"bypass": -1.5}, "abc123", "val", {"n": 4})
    path = d.save(tmp_path / "dir")
    assert path.name == "dir.safetensors" and (tmp_path / "dir.json").is_file()
    back = Direction.load(tmp_path / "dir")
    assert back == d and back.layer == 3 and back.scores == {"bypass": -1.5}
    assert Direction.load(tmp_path / "dir.json") == d
    s = orthonormalize(torch.stack([_vec(1), _vec(2), _vec(3)]))
    s.save(tmp_path / "sub")
    assert Subspace.load(tmp_path / "sub") == s and s.k == 3
    with pytest.raises(DirectionError, match="expected a 'direction'"):
        Direction.load(tmp_path / "sub")


def test_corrupt_missing_and_wrong_width(tmp_path: Path) -> None:
    d = Direction(_vec(0))
    d.save(tmp_path / "d")
    raw = (tmp_path / "d.safetensors").read_bytes()
    (tmp_path / "d.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DirectionError, match="corrupt"):
        Direction.load(tmp_path / "d")
    (tmp_path / "d.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(DirectionError, match="corrupt"):
        Direction.load(tmp_path / "d")
    with pytest.raises(DirectionError, match="does not exist"):
        Direction.load(tmp_path / "nothing")
    with pytest.raises(DirectionError, match="width 8 but the model's residual stream has 32"):
        d.check_model(tiny_decoder("llama"))
    with pytest.raises(DirectionError, match="not orthonormal"):
        Subspace(torch.ones(2, 8))


def test_algebra() -> None:
    a, b = Direction(_vec(0), layer=1), Direction(_vec(1), layer=1)
    assert torch.equal((a + b).vector, a.vector + b.vector) and (a + b).layer == 1
    assert torch.equal((a - b).vector, a.vector - b.vector)
    assert torch.equal((2 * a).vector, 2 * a.vector) and torch.equal((a * 0.5).vector, a.vector / 2)
    assert torch.equal((-a).vector, -a.vector)
    for bad in (lambda: a + 1, lambda: a * a, lambda: a / 2, lambda: a * "x"):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(DirectionError, match="widths"):
        a + Direction(_vec(0, 4))
    span = a.as_subspace() + b
    assert span.k == 2
    assert torch.allclose(span.basis @ span.basis.T, torch.eye(2, dtype=torch.float64))
    with pytest.raises(DirectionError, match="zero norm"):
        Direction(torch.zeros(8)).unit()


def test_diff_in_means_rejects_zero_norm_without_nan() -> None:
    pos = torch.zeros(2, 3, 8, dtype=torch.float64)
    neg = pos.clone()
    pos[1, 2] = _vec(0)
    cands = diff_in_means(pos, neg, layers=[0, 1], positions=[-3, -2, -1])
    assert len(cands) == 6
    zero = [c for c in cands if c.rejected]
    assert len(zero) == 5 and all(c.direction is None and c.norm == 0.0 for c in zero)
    (good,) = [c for c in cands if c.direction is not None]
    assert (good.layer, good.position) == (1, -1) and torch.equal(good.direction.vector, _vec(0))
    assert all(math.isfinite(c.norm) for c in cands)
    with pytest.raises(ConfigError, match="do not match"):
        diff_in_means(pos, neg[:1], [0, 1], [-3, -2, -1])


def test_two_set_candidates_on_a_model_equal_hidden_state_means() -> None:
    model = tiny_decoder("gpt2")
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randint(3, 64, (4, 5), generator=gen), torch.randint(3, 64, (6, 5), generator=gen)
    with torch.no_grad():
        with capture_activations(model, positions=[-2, -1], store=True) as ca:
            model(a)
        with capture_activations(model, positions=[-2, -1], store=True) as cb:
            model(b)
        ha = model(a, output_hidden_states=True).hidden_states
        hb = model(b, output_hidden_states=True).hidden_states
    cands = two_set_candidates(ca, cb, split="val")
    assert [(c.layer, c.position) for c in cands] == [(0, -2), (0, -1), (1, -2), (1, -1)]
    expect = ha[1][:, -1].mean(0) - hb[1][:, -1].mean(0)
    assert torch.allclose(cands[3].direction.vector, expect, atol=1e-12)
    assert cands[3].direction.split == "val"
    assert separation(cands[3].direction, ca.activations()[:, 1, 1], cb.activations()[:, 1, 1]) > 0


def test_subspace_methods_and_cosines() -> None:
    r = _vec(0)
    diffs = r[None] * torch.linspace(1, 2, 10, dtype=torch.float64)[:, None]
    diffs = diffs + 0.01 * torch.randn(10, 8, generator=torch.Generator().manual_seed(1))
    sub = pca_subspace(diffs, k=2)
    assert sub.k == 2 and float(sub.basis[0] @ r / r.norm()) > 0.999  # first = mean diff
    cands = diff_in_means(
        torch.stack([r, 2 * r, _vec(5)])[:, None],
        torch.zeros(3, 1, 8, dtype=torch.float64),
        [0, 1, 2],
        [-1],
    )
    top = top_candidates_subspace(cands, k=2)  # 2r is dependent on r and skipped
    assert top.k == 2 and abs(float(top.basis[1] @ r)) < 1e-10
    with pytest.raises(ConfigError, match="independent"):
        top_candidates_subspace(cands, k=3)
    m = cosine_matrix([Direction(r), Direction(-r), torch.zeros(8)], [Direction(2 * r)])
    assert torch.allclose(m[:, 0], torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    assert not m.isnan().any()


def test_refusal_score_and_kl_with_inf_logits() -> None:
    logits = torch.tensor([[0.0, 0.0, float("-inf"), 0.0], [float("-inf")] * 3 + [0.0]])
    s = refusal_scores(logits, [1])
    assert s.dtype == torch.float64
    assert s[0].item() == pytest.approx(math.log(1 / 3 + 1e-8) - math.log(2 / 3 + 1e-8))
    assert s[1].item() == pytest.approx(math.log(1e-8) - math.log(1 + 1e-8))
    base = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 0.0, float("-inf"), 0.0]])
    other = torch.tensor([[float("-inf"), 1.0, 2.0, 3.0], [float("-inf")] * 4])
    kl = kl_divergence(base, other)
    assert torch.isfinite(kl).all() and (kl >= 0).all() and kl[0] > 0.3
    assert kl_divergence(base, base).abs().max().item() < 1e-12
    p = torch.log_softmax(torch.tensor([[0.2, 1.0, -1.0]], dtype=torch.float64), -1)
    q = torch.log_softmax(torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64), -1)
    exact = (p.exp() * (p - q)).sum()
    assert kl_divergence(p, q).item() == pytest.approx(exact.item(), rel=1e-6)


def test_filter_rule() -> None:
    ok = CandidateScores(1, -1, 1.0, bypass=-2.0, induce=1.0, kl=0.05)
    assert _filter_reason(ok, 5) is None
    assert _filter_reason(CandidateScores(4, -1, 1.0, -2.0, 1.0, 0.05), 5) == "layer >= 0.8 L"
    assert _filter_reason(CandidateScores(1, -1, 1.0, -2.0, 1.0, 0.2), 5) == "kl > 0.1"
    assert _filter_reason(CandidateScores(1, -1, 1.0, -2.0, -0.1, 0.0), 5) == "induce < 0"
    assert _filter_reason(CandidateScores(1, -1, 1.0, math.nan, 1.0, 0.0), 5) == "nan"


def test_select_direction_records_every_candidate() -> None:
    model = tiny_decoder("llama")
    gen = torch.Generator().manual_seed(0)
    harmful, harmless = (torch.randint(3, 64, (4, 5), generator=gen) for _ in range(2))
    with torch.no_grad():
        with capture_activations(model, positions=[-1]) as ca:
            model(harmful)
        with capture_activations(model, positions=[-1]) as cb:
            model(harmless)
    cands = two_set_candidates(ca, cb)
    cands.append(diff_in_means(torch.zeros(1, 1, 32), torch.zeros(1, 1, 32), [0], [-1])[0])
    sel = select_direction(
        model,
        cands,
        lambda: model(harmful).logits[:, -1],
        lambda: model(harmless).logits[:, -1],
        refuse_ids=[5],
    )
    assert len(sel.scores) == 3 and sel.scores[2].filtered == "zero norm"
    assert all(math.isfinite(s.bypass) and s.kl >= 0 for s in sel.scores[:2])
    js = sel.to_json()
    assert len(js["candidates"]) == 3 and set(js["baseline"]) == {
        "harmful_refusal_score",
        "harmless_refusal_score",
    }
    passing = [s for s in sel.scores if s.filtered is None]
    if passing:
        assert sel.best() == min(passing, key=lambda s: s.bypass)
    else:
        assert sel.chosen is None and js["chosen"] is None
