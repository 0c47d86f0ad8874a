"""Model adapters: writers found by real paths; refused architectures raise a typed error."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

from robot_refusal.adapters import FamilySpec, get_adapter, register_adapter
from robot_refusal.directions import Direction
from robot_refusal.errors import RobotRefusalError, UnsupportedModelError
from robot_refusal.interventions import directional_ablation, orthogonalize_weights
from tests.policies.test_vla import tiny_policy
from tests.tiny_models import tiny_decoder

SMALL = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.mark.parametrize(
    ("family", "writers"),
    [
        ("llama", ["model.embed_tokens", "model.layers.0.self_attn.o_proj"]),
        ("qwen2", ["model.embed_tokens", "model.layers.1.mlp.down_proj"]),
        ("gemma", ["model.embed_tokens", "model.layers.0.mlp.down_proj"]),
        ("gpt2", ["transformer.wte", "transformer.wpe", "transformer.h.1.attn.c_proj"]),
    ],
)
def test_adapter_finds_writers(family: str, writers: list[str]) -> None:
    a = get_adapter(tiny_decoder(family))
    names = [w.name for w in a.writers]
    assert set(writers) <= set(names)
    assert a.n_layers == 2 and a.d_model == 32
    embeddings = 2 if family == "gpt2" else 1  # GPT-2's position embedding writes too
    assert len(names) == len(set(names)) == embeddings + 2 * a.n_layers
    kinds = {w.name: w.kind for w in a.writers}
    if family == "gpt2":
        assert kinds["transformer.h.0.mlp.c_proj"] == "conv1d"
    assert a.tied == (family in ("gemma", "gpt2"))


def test_vla_adapter_lists_projectors() -> None:
    a = get_adapter(tiny_policy().model)
    assert [w.name for w in a.writers][:4] == [
        "language_model.embed_tokens",
        "vision_projector",
        "keypoint_projector.linear_2",
        "state_projector.linear_2",
    ]
    assert len(a.writers) == 4 + 2 * a.n_layers and not a.tied
    assert a.unembedding is not None and a.unembedding.weight.shape[1] == a.d_model


def test_post_sublayer_norms_are_refused() -> None:
    model = Gemma2ForCausalLM(Gemma2Config(head_dim=8, **SMALL))
    with pytest.raises(UnsupportedModelError, match="post-sublayer norms"):
        orthogonalize_weights(model, Direction(torch.ones(32)))
    with pytest.raises(RobotRefusalError), directional_ablation(model, Direction(torch.ones(32))):
        pass


def test_moe_and_unknown_architectures_are_refused() -> None:
    moe = MixtralForCausalLM(MixtralConfig(num_local_experts=2, **SMALL))
    with pytest.raises(UnsupportedModelError, match="MoE"):
        get_adapter(moe)
    opt = OPTForCausalLM(
        OPTConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            ffn_dim=64,
            num_attention_heads=4,
            word_embed_proj_dim=32,
        )
    )
    with pytest.raises(UnsupportedModelError, match=r"no adapter for OPTConfig.*LlamaConfig"):
        get_adapter(opt)


def test_registered_family_with_missing_module_lists_children() -> None:
    register_adapter(OPTConfig, FamilySpec("opt", "layers", "attn", "mlp", "x", "y", ("z",)))
    opt = OPTForCausalLM(
        OPTConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            ffn_dim=64,
            num_attention_heads=4,
            word_embed_proj_dim=32,
        )
    )
    try:
        with pytest.raises(UnsupportedModelError, match="no module 'layers'; it has decoder"):
            get_adapter(opt)
    finally:
        from robot_refusal.adapters import ADAPTERS

        del ADAPTERS[OPTConfig]
