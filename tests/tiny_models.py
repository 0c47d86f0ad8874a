"""Tiny random transformers decoders built from configs (no download), for the direction tests."""

from __future__ import annotations

import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gpt2")
D = 32
VOCAB = 64


def tiny_decoder(family: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> PreTrainedModel:
    """A 2-block, width-32 random decoder of ``family`` in eval mode (init std 0.2 so that a
    direction changes the logits visibly); Qwen2 gets random q/k/v biases, GPT-2 random biases
    everywhere, so that the bias edits are exercised."""
    torch.manual_seed(seed)
    kw = {
        "vocab_size": VOCAB,
        "hidden_size": D,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "initializer_range": 0.2,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    model: PreTrainedModel
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kw))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**kw))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kw))
    elif family == "gemma":
        model = GemmaForCausalLM(GemmaConfig(head_dim=8, **kw))
    elif family == "gpt2":
        cfg = GPT2Config(
            vocab_size=VOCAB,
            n_embd=D,
            n_layer=2,
            n_head=4,
            n_positions=64,
            initializer_range=0.2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.2)
    return model.to(dtype).eval()
