"""Ablation hooks vs orthogonalized weights, activation addition, and the edited copy's I/O,
on tiny random Llama/Mistral/Qwen2/Gemma/GPT-2 decoders and the tiny VLA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from robot_refusal.adapters import get_adapter
from robot_refusal.directions import Direction, Subspace, orthonormalize
from robot_refusal.errors import ConfigError, DirectionError
from robot_refusal.interventions import (
    activation_addition,
    directional_ablation,
    orthogonalize_weights,
)
from robot_refusal.policies.modeling_vla import VLAForActionPrediction
from tests.policies.test_vla import tiny_policy
from tests.tiny_models import FAMILIES, VOCAB, D, tiny_decoder

torch.set_num_threads(1)


def _direction(seed: int = 1, d: int = D, dtype: torch.dtype = torch.float64) -> Direction:
    g = torch.Generator().manual_seed(seed)
    return Direction(torch.randn(d, generator=g, dtype=torch.float64) * 3.0)


def _ids(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (2, 6), generator=g)


def _generate(model: torch.nn.Module, ids: torch.Tensor, use_cache: bool) -> torch.Tensor:
    out = model.generate(  # type: ignore[operator]
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=4,
        do_sample=False,
        use_cache=use_cache,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return torch.stack(out.logits, 1)  # (B, new, V)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-8), (torch.float32, 1e-4)], ids=["f64", "f32"]
)
def test_ablation_equals_orthogonalization_through_generate(
    family: str, dtype: torch.dtype, tol: float
) -> None:
    model = tiny_decoder(family, dtype=dtype)
    steer = _direction()
    edited = orthogonalize_weights(model, steer)
    ids = _ids()
    for use_cache in (True, False):
        base = _generate(model, ids, use_cache)
        with directional_ablation(model, steer):
            hooked = _generate(model, ids, use_cache)
        ortho = _generate(edited, ids, use_cache)
        assert (hooked - ortho).abs().max().item() < tol
        assert (hooked - base).abs().max().item() > 1e-2  # the direction matters
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_rank_k_subspace_ablation_equals_orthogonalization() -> None:
    model = tiny_decoder("llama")
    g = torch.Generator().manual_seed(3)
    sub = orthonormalize(torch.randn(3, D, generator=g, dtype=torch.float64))
    assert isinstance(sub, Subspace) and sub.k == 3
    ids = _ids()
    with torch.no_grad(), directional_ablation(model, sub):
        hooked = model(ids).logits
    ortho = orthogonalize_weights(model, sub)(ids).logits
    assert (hooked - ortho).abs().max().item() < 1e-8
    # ablating twice equals ablating once
    with torch.no_grad(), directional_ablation(model, sub), directional_ablation(model, sub):
        twice = model(ids).logits
    assert (twice - hooked).abs().max().item() < 1e-10


@pytest.mark.parametrize("family", FAMILIES)
def test_orthogonalized_writers_have_no_component_and_tied_head_unchanged(family: str) -> None:
    model = tiny_decoder(family)
    steer = _direction()
    r = steer.unit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    edited = orthogonalize_weights(model, steer)
    adapter = get_adapter(edited)
    assert len(adapter.writers) == len(get_adapter(model).writers) >= 5
    for w in adapter.writers:
        weight = w.module.weight.double()
        along = r @ weight if w.kind == "linear" else weight @ r
        assert along.abs().max().item() < 1e-6, w.name
        bias = getattr(w.module, "bias", None)
        if bias is not None:
            assert abs(float(bias.detach().double() @ r)) < 1e-6, w.name
    head = edited.get_output_embeddings().weight
    assert torch.equal(head, model.get_output_embeddings().weight)  # unembedding unchanged
    assert get_adapter(model).tied == (family in ("gemma", "gpt2"))
    assert not adapter.tied and edited.config.tie_word_embeddings is False
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("family", ["gemma", "gpt2"])
def test_orthogonalized_tied_model_round_trips_save_pretrained(family: str, tmp_path: Path) -> None:
    model = tiny_decoder(family)
    steer = _direction()
    edited = orthogonalize_weights(model, steer)
    edited.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, use_safetensors=True, dtype=torch.float64
    ).eval()
    saved, mine = loaded.state_dict(), edited.state_dict()
    assert saved.keys() == mine.keys()
    assert all(torch.equal(saved[k], mine[k]) for k in mine)  # bit for bit, head untied
    ids = _ids()
    with torch.no_grad(), directional_ablation(model, steer):
        # 1e-5, not 1e-8: Gemma's non-persistent sqrt(d) scale buffer is rebuilt in float32
        assert (loaded(ids).logits - model(ids).logits).abs().max().item() < 1e-5
    assert torch.equal(loaded.get_output_embeddings().weight, model.get_output_embeddings().weight)


def _vla_inputs(dtype: torch.dtype) -> tuple[VLAForActionPrediction, dict[str, torch.Tensor]]:
    from robot_refusal.envs import RobotRefusalEnv

    pol = tiny_policy()
    env = RobotRefusalEnv("handover", split="val")
    obs = [
        env.reset(seed=s, options={"label": lab})[0] for s, lab in [(0, "harmful"), (1, "harmless")]
    ]
    env.close()
    inp = {k: v.to(dtype) if v.is_floating_point() else v for k, v in pol.processor(obs).items()}
    return pol.model.to(dtype), inp


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float64, 1e-8), (torch.float32, 1e-4)], ids=["f64", "f32"]
)
def test_vla_ablation_equals_orthogonalization(dtype: torch.dtype, tol: float) -> None:
    model, inp = _vla_inputs(dtype)
    steer = _direction(d=model.config.hidden_size)
    edited = orthogonalize_weights(model, steer)
    names = {w.name for w in get_adapter(edited).writers}
    assert {"vision_projector", "keypoint_projector.linear_2", "state_projector.linear_2"} <= names
    with torch.no_grad():
        base = model(**inp).logits
        with directional_ablation(model, steer):
            hooked = model(**inp).logits  # full forward: image, instruction, state tokens
            tok_h, lp_h = model.predict_action_tokens(**inp)  # KV cache, generated tokens
            full_h = model(**inp, action_input_ids=tok_h[:, :3]).logits  # without the cache
        ortho = edited(**inp).logits
        tok_o, lp_o = edited.predict_action_tokens(**inp)
        full_o = edited(**inp, action_input_ids=tok_o[:, :3]).logits
    assert (hooked - ortho).abs().max().item() < tol
    assert (hooked - base).abs().max().item() > 1e-3
    assert torch.equal(tok_h, tok_o)
    assert (lp_h - lp_o).abs().max().item() < max(tol, 1e-5)  # log-probs come back float32
    assert (full_h - full_o).abs().max().item() < tol


def test_vla_orthogonalized_copy_saves_and_loads(tmp_path: Path) -> None:
    model, inp = _vla_inputs(torch.float32)
    edited = orthogonalize_weights(model, _direction(d=model.config.hidden_size))
    edited.save_pretrained(tmp_path, safe_serialization=True)
    loaded = VLAForActionPrediction.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inp).logits, edited(**inp).logits)


def _block_inputs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(L, B, T, D) inputs of every block as the blocks see them (after other pre-hooks)."""
    from robot_refusal.capture import capture_activations

    t = ids.shape[1]
    with capture_activations(model, positions=range(-t, 0), store=True) as cap:
        model(ids)
    return torch.stack([torch.cat(chunks) for chunks in cap.raw])


def test_activation_addition() -> None:
    model = tiny_decoder("llama").float()
    ids = _ids()
    steer = _direction()
    r = steer.vector.float()
    with torch.no_grad():
        base_logits = model(ids).logits
        base = _block_inputs(model, ids)
        with activation_addition(model, steer, layer=1, alpha=0.0):
            zero = model(ids).logits
        with activation_addition(model, steer, layer=1, alpha=2.0):
            out = _block_inputs(model, ids)
        with activation_addition(model, steer, layer=1, alpha=1.0, positions=[-1]):
            last = _block_inputs(model, ids)
        with directional_ablation(model, steer):
            ablated = _block_inputs(model, ids)
    assert torch.equal(zero, base_logits)  # alpha = 0 is the baseline
    assert torch.equal(out[0], base[0])  # block 0 untouched
    assert torch.allclose(out[1] - base[1], (2.0 * r).expand_as(base[1]), atol=1e-5)
    only = last[1] - base[1]
    assert only[:, :-1].abs().max().item() == 0.0
    assert torch.allclose(only[:, -1], r.expand(2, -1), atol=1e-5)
    # after ablation the projection on r-hat of every block input is ~0
    assert (ablated @ steer.unit().float()).abs().max().item() < 1e-5


def test_hooks_removed_on_exception_and_width_checked() -> None:
    model = tiny_decoder("qwen2")
    with pytest.raises(RuntimeError, match="boom"), directional_ablation(model, _direction()):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), activation_addition(model, _direction(), 0):
        raise RuntimeError("boom")
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    with pytest.raises(DirectionError, match=r"width 16 .* has 32"):
        directional_ablation(model, _direction(d=16)).__enter__()
    with pytest.raises(DirectionError, match="width"):
        orthogonalize_weights(model, _direction(d=16))
    with pytest.raises(ConfigError, match="layer"):
        activation_addition(model, _direction(), layer=2).__enter__()
