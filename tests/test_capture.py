"""Activation capture equals transformers' hidden_states; positions are the template tokens."""

from __future__ import annotations

import pytest
import torch

from robot_refusal.capture import capture_activations
from robot_refusal.envs import RobotRefusalEnv
from robot_refusal.errors import ConfigError
from robot_refusal.extract import POST_INSTRUCTION
from robot_refusal.policies.configuration_vla import ACT_ID, SEP_ID
from tests.policies.test_vla import tiny_policy
from tests.tiny_models import FAMILIES, tiny_decoder

torch.set_num_threads(1)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_hidden_states(family: str) -> None:
    model = tiny_decoder(family)
    ids = torch.randint(3, 64, (5, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True).hidden_states
        with capture_activations(model, positions=range(-7, 0), store=True) as cap:
            model(ids[:2])  # two batches: running means over both
            model(ids[2:])
    assert cap.n == 5 and cap.sums.dtype == torch.float64
    for layer in range(2):
        assert torch.allclose(cap.mean()[layer], hs[layer].mean(0), atol=1e-12)
        assert torch.equal(cap.activations()[:, layer], hs[layer].float())
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_vla_capture_positions_are_post_instruction_tokens() -> None:
    pol = tiny_policy()
    env = RobotRefusalEnv("context", split="val")
    obs = [env.reset(seed=s)[0] for s in range(3)]
    env.close()
    inp = pol.processor(obs)
    model = pol.model
    with torch.no_grad():
        out = model(**inp, output_hidden_states=True)
        with capture_activations(model, positions=POST_INSTRUCTION) as cap:
            model(**inp)
        prefix, _, _, _ = model.embed_prefix(**inp)
    for layer in range(model.config.num_hidden_layers):
        expect = out.hidden_states[layer][:, -3:].double().mean(0)
        assert torch.allclose(cap.mean()[layer], expect, atol=1e-6)
    # position -3 is SEP, -1 is ACT (their embeddings), -2 the state projector's output
    embed = model.language_model.embed_tokens.weight
    assert torch.equal(prefix[:, -3], embed[SEP_ID].expand(3, -1))
    assert torch.equal(prefix[:, -1], embed[ACT_ID].expand(3, -1))
    assert torch.allclose(prefix[:, -2], model.state_projector(inp["state"]))
    vocab = pol.processor.tokenizer
    assert [vocab.id_to_token(i) for i in (SEP_ID, ACT_ID)] == ["[SEP]", "[ACT]"]
    assert prefix.shape[1] == model.config.prefix_length


def test_capture_errors_and_cleanup() -> None:
    model = tiny_decoder("llama")
    with pytest.raises(ConfigError, match="layers"), capture_activations(model, layers=[5]):
        pass
    with pytest.raises(ConfigError, match="do not fit"), capture_activations(model, positions=[-9]):
        model(torch.ones(1, 3, dtype=torch.long))
    assert all(not m._forward_pre_hooks for m in model.modules())
    with capture_activations(model) as cap:
        pass
    with pytest.raises(ConfigError, match="no activations"):
        cap.mean()
    with pytest.raises(ConfigError, match="not stored"):
        cap.activations()
