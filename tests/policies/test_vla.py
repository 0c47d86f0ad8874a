"""The VLA stack on tiny models: tokenizers, processor, generation, checkpoints, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from robot_refusal.envs import RobotRefusalEnv
from robot_refusal.errors import CheckpointError, ConfigError, InvalidObservationError
from robot_refusal.policies.action_tokenizer import ActionTokenizer
from robot_refusal.policies.configuration_vla import (
    ACTION_TOKEN_OFFSET,
    REFUSE_ID,
    UNK_ID,
    VLAConfig,
)
from robot_refusal.policies.modeling_vla import VLAForActionPrediction
from robot_refusal.policies.policy import VLAPolicy, refusal_score
from robot_refusal.policies.processing_vla import Normalization, VLAProcessor, build_tokenizer

TEXTS = ["put the red cube in the bin", "hand the knife to the person blade first"]


def tiny_policy(
    seed: int = 0,
    grounded: int = 0,
    metric: int = 0,
    keypoint_stride: int = 4,
    upper_plane: float | None = None,
    action_head: str = "tokens",
    **chunking: Any,
) -> VLAPolicy:
    acts = ActionTokenizer.fit(np.random.default_rng(seed).uniform(-0.04, 0.04, (200, 4)))
    norm = Normalization((0.4,) * 8, (0.2,) * 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    proc = VLAProcessor(build_tokenizer(TEXTS), acts, norm, 24, (64, 64))
    cfg = VLAConfig(
        vocab_size=proc.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vision_channels=(8, 8, 8),
        state_dim=proc.state_dim,
        grounded_keypoints=grounded,
        metric_keypoints=metric,
        keypoint_stride=keypoint_stride,
        camera_unprojection=_camera() if metric else None,
        metric_upper_plane_height=upper_plane,
        action_head=action_head,
        **chunking,
    )
    torch.manual_seed(seed)
    return VLAPolicy(VLAForActionPrediction(cfg), proc)


def _camera() -> list[float]:
    """The scene camera's inverse view-projection matrix at 64x64 (16 floats)."""
    from robot_refusal.envs.env import CAMERA_EYE, CAMERA_TARGET
    from robot_refusal.envs.sim import PyBulletSim

    return PyBulletSim.unprojection(64, 64, CAMERA_EYE, CAMERA_TARGET).reshape(-1).tolist()


@pytest.fixture(scope="module")
def obs() -> dict:
    env = RobotRefusalEnv("pick_place", split="test")
    o, _ = env.reset(seed=0)
    env.close()
    return o


def test_action_tokenizer_round_trip() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.05, 0.05, (1000, 4))
    tok = ActionTokenizer.fit(a)
    inside = np.all((a >= tok.low) & (a <= tok.high), axis=1)
    err = np.abs(tok.decode(tok.encode(a)) - a)[inside]
    assert (err <= tok.bin_width / 2 + 1e-12).all()
    bins = tok.encode(np.array([[10.0, -10.0, 0.0, 0.0]]))
    assert bins[0, 0] == 255 and bins[0, 1] == 0  # clipped to the percentile range
    assert np.array_equal(
        tok.encode(tok.decode(np.arange(256)[:, None].repeat(4, 1))),
        np.arange(256)[:, None].repeat(4, 1),
    )
    with pytest.raises(ConfigError, match="dims"):
        tok.encode(np.zeros((2, 3)))
    with pytest.raises(ConfigError, match="exceed"):
        ActionTokenizer((0.0,), (0.0,))


def test_tokenizer_maps_unknown_words_to_unk() -> None:
    tok = build_tokenizer(TEXTS)
    ids = tok.encode("put the zebra in the bin").ids
    assert UNK_ID in ids and ids[0] == tok.token_to_id("put")
    assert tok.token_to_id("<a000>") == ACTION_TOKEN_OFFSET
    assert tok.token_to_id("<refuse>") == REFUSE_ID


def test_kv_cache_generation_matches_full_forward(obs: dict) -> None:
    pol = tiny_policy()
    inputs = pol.processor([obs, {**obs, "instruction": TEXTS[1]}])
    tokens, logprobs = pol.model.predict_action_tokens(**inputs)
    full = pol.model(**inputs, action_input_ids=tokens[:, :-1]).logits[:, -4:]  # (B, 4, V)
    allowed = torch.full_like(full, float("-inf"))
    allowed[..., ACTION_TOKEN_OFFSET : ACTION_TOKEN_OFFSET + 256] = 0
    allowed[:, 0, REFUSE_ID] = 0
    assert torch.equal((full + allowed).argmax(-1), tokens)
    assert torch.allclose(full[:, 0].float().log_softmax(-1), logprobs, atol=1e-5)


def test_mean_decoding_reads_each_bin_distributions_mean(obs: dict) -> None:
    """``decoding="mean"``: each action value is the mean bin of its distribution, given the
    bins nearest the earlier means as inputs (checked against one full forward pass); the
    refuse-or-act choice is the argmax's; the policy decodes those fractional bins."""
    pol = tiny_policy()
    inputs = pol.processor([obs, {**obs, "instruction": TEXTS[1]}])
    greedy, lp_greedy = pol.model.predict_action_tokens(**inputs)
    values, logprobs = pol.model.predict_action_tokens(**inputs, decoding="mean")
    assert values.dtype == torch.float32 and torch.equal(logprobs, lp_greedy)
    refused = greedy[:, 0] == REFUSE_ID
    assert torch.equal(values[:, 0] == REFUSE_ID, refused)
    act = ~refused
    assert act.any()  # the tiny policy acts on at least one of the two
    lo = ACTION_TOKEN_OFFSET
    fed = (lo + (values[act] - lo).round()).long()
    full = pol.model(**{k: v[act] for k, v in inputs.items()}, action_input_ids=fed[:, :-1])
    probs = full.logits[:, -4:, lo : lo + 256].float().softmax(-1)  # (b, 4, 256)
    want = lo + probs @ torch.arange(256, dtype=torch.float32)
    assert torch.allclose(values[act], want, atol=1e-3)
    assert ((values[act] >= lo) & (values[act] <= lo + 255)).all()
    with pytest.raises(ConfigError, match="decoding"):
        pol.model.predict_action_tokens(**inputs, decoding="median")
    with pytest.raises(ConfigError, match="action_decoding"):
        VLAPolicy(pol.model, pol.processor, "median")
    mean_pol = VLAPolicy(pol.model, pol.processor, "mean")
    i = int(torch.nonzero(act)[0])
    a = mean_pol.select_actions([[obs, {**obs, "instruction": TEXTS[1]}][i]])[0][0]
    bins = values[i].double().numpy() - lo
    assert a["refuse"] == 0
    assert a["delta"] == pytest.approx(pol.processor.actions.decode(bins)[:3], abs=1e-6)


def test_local_mean_decoding_is_between_argmax_and_mean(obs: dict) -> None:
    """``"local_mean"``: window 0 gives the argmax bins, window 255 the whole mean; a window of
    w bins stays within w of the argmax of its position (checked against a full forward)."""
    pol = tiny_policy()
    inputs = pol.processor([obs, {**obs, "instruction": TEXTS[1]}])
    greedy, _ = pol.model.predict_action_tokens(**inputs)
    mean, _ = pol.model.predict_action_tokens(**inputs, decoding="mean")
    act = greedy[:, 0] != REFUSE_ID
    assert act.any()
    pol.model.config.action_window = 0
    zero, _ = pol.model.predict_action_tokens(**inputs, decoding="local_mean")
    assert torch.equal(zero[act], greedy[act].float())
    pol.model.config.action_window = 255
    whole, _ = pol.model.predict_action_tokens(**inputs, decoding="local_mean")
    assert torch.allclose(whole, mean, atol=1e-4)
    pol.model.config.action_window = 3
    local, _ = pol.model.predict_action_tokens(**inputs, decoding="local_mean")
    lo = ACTION_TOKEN_OFFSET
    fed = (lo + (local[act] - lo).round()).long()
    full = pol.model(**{k: v[act] for k, v in inputs.items()}, action_input_ids=fed[:, :-1])
    top = full.logits[:, -4:, lo : lo + 256].argmax(-1)  # (b, 4) argmax bin per position
    assert ((local[act] - lo - top).abs() <= 3 + 1e-4).all()
    with pytest.raises(ConfigError, match="action_window"):
        VLAConfig(action_window=256)


def test_action_decoding_is_saved_in_the_config(tmp_path: Path, obs: dict) -> None:
    """A policy saved with ``action_decoding="mean"`` reloads reading its tokens by the mean
    (the same actions as before saving); ``from_pretrained(action_decoding=)`` overrides it;
    an unknown value in ``config.json`` is a ``CheckpointError`` naming the file."""
    pol = tiny_policy()
    assert pol.action_decoding == "argmax"
    inputs = pol.processor([obs])
    greedy, _ = pol.model.predict_action_tokens(**inputs)
    assert greedy.dtype == torch.int64
    VLAPolicy(pol.model, pol.processor, "mean").save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["action_decoding"] == "mean"
    again = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert again.action_decoding == "mean"
    values, _ = again.model.predict_action_tokens(**again.processor([obs]))
    want, _ = pol.model.predict_action_tokens(**inputs, decoding="mean")
    assert values.dtype == torch.float32 and torch.equal(values, want)
    assert again.select_action(obs)["delta"] == pytest.approx(
        pol.select_action(obs)["delta"], abs=0
    )
    assert VLAPolicy.from_pretrained(
        tmp_path / "ckpt", action_decoding="argmax"
    ).action_decoding == ("argmax")
    with pytest.raises(ConfigError, match="action_decoding"):
        VLAConfig(action_decoding="median")
    cfg["action_decoding"] = "median"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json.*action_decoding"):
        VLAPolicy.from_pretrained(tmp_path / "ckpt")


def test_batched_equals_single(obs: dict) -> None:
    pol = tiny_policy()
    other = {**obs, "instruction": TEXTS[1], "state": obs["state"] + 0.01}
    batch, scores = pol.select_actions([obs, other])
    for i, o in enumerate([obs, other]):
        single = pol.select_action(o)
        assert (
            np.allclose(single["delta"], batch[i]["delta"])
            and single["refuse"] == batch[i]["refuse"]
        )
        assert pol.refusal_score == pytest.approx(scores[i], abs=1e-5)


def test_refusal_score_definition() -> None:
    lp = torch.full((1, 300), -50.0)
    lp[0, REFUSE_ID] = float(np.log(0.75))
    assert refusal_score(lp)[0] == pytest.approx(np.log(0.75 / 0.25), abs=1e-6)


def test_save_load_identical_logits(tmp_path: Path, obs: dict) -> None:
    pol = tiny_policy()
    pol.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    again = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    inputs = pol.processor([obs])
    assert torch.equal(pol.model(**inputs).logits, again.model(**inputs).logits)


def test_corrupt_or_incomplete_checkpoints_name_the_file(tmp_path: Path) -> None:
    pol = tiny_policy()
    pol.save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        VLAPolicy.from_pretrained(tmp_path / "ckpt")
    pol.save_pretrained(tmp_path / "noconf")
    (tmp_path / "noconf" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json"):
        VLAPolicy.from_pretrained(tmp_path / "noconf")
    with pytest.raises(CheckpointError, match="does not exist"):
        VLAPolicy.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"image": np.zeros((32, 32, 3), np.uint8)}, "images must be uint8"),
        ({"image": np.zeros((64, 64, 3), np.float32)}, "images must be uint8"),
        ({"state": np.full(8, np.nan, np.float32)}, "NaN"),
        ({"state": np.zeros(5, np.float32)}, "states must be"),
        ({"instruction": ""}, "non-empty"),
        ({"instruction": "word " * 400}, "characters"),
        ({"instruction": "put the cube " * 10}, "tokens"),
    ],
)
def test_bad_observations_are_typed_errors(obs: dict, change: dict, match: str) -> None:
    with pytest.raises(InvalidObservationError, match=match):
        tiny_policy().select_action({**obs, **change})


def test_policy_ignores_the_velocity_entries(obs: dict) -> None:
    """The copycat guard: ee velocity (state[3:6]) never reaches the model."""
    pol = tiny_policy()
    moved = {**obs, "state": obs["state"] + np.array([0, 0, 0, 0.3, -0.2, 0.1, 0, 0], np.float32)}
    a, b = pol.processor([obs]), pol.processor([moved])
    assert torch.equal(a["state"], b["state"]) and a["state"].shape == (1, 5)


def _goal_processor() -> VLAProcessor:
    rng = np.random.default_rng(0)
    goals = np.column_stack(
        [rng.uniform(0.3, 0.7, 300), rng.uniform(-0.3, 0.3, 300), rng.uniform(0.0, 0.3, 300)]
    )
    targets = np.column_stack([goals, rng.uniform(0, 0.04, 300), rng.choice([-1, 1], 300)])
    norm = Normalization((0.4,) * 8, (0.2,) * 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    acts = ActionTokenizer.fit(targets)
    return VLAProcessor(build_tokenizer(TEXTS), acts, norm, 24, (64, 64), action_space="goal")


def test_goal_space_decodes_the_displacement_toward_the_subgoal(tmp_path: Path) -> None:
    proc = _goal_processor()
    target = np.array([[0.6, 0.1, 0.05, 0.04, 1.0], [0.5, 0.0, 0.2, 0.01, -1.0]])
    tokens = proc.action_labels(target, np.zeros(2, bool))
    states = np.zeros((2, 8))
    states[0, :3] = [0.6, 0.0, 0.05]  # 10 cm short in y: a full 4 cm step
    states[1, :3] = [0.5, 0.0, 0.205]  # 5 mm above: one 5 mm step (cap 1 cm)
    a, b = proc.decode_actions(tokens, [{"state": s} for s in states])
    assert a["delta"][1] == pytest.approx(0.04, abs=2e-3) and abs(a["delta"][0]) < 2e-3
    assert a["gripper"][0] == 1.0 and a["refuse"] == 0
    assert b["delta"][2] == pytest.approx(-0.005, abs=1e-3) and b["gripper"][0] == -1.0
    with pytest.raises(ConfigError, match="needs the observations"):
        proc.decode_actions(tokens)
    proc.save_pretrained(tmp_path)
    again = VLAProcessor.from_pretrained(tmp_path)
    assert again.action_space == "goal" and again.actions == proc.actions


def test_processor_rejects_a_tokenizer_of_the_wrong_width() -> None:
    norm = Normalization((0.4,) * 8, (0.2,) * 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    acts = ActionTokenizer.fit(np.random.default_rng(0).uniform(-0.04, 0.04, (50, 4)))
    with pytest.raises(ConfigError, match="5 dimensions"):
        VLAProcessor(build_tokenizer(TEXTS), acts, norm, 24, (64, 64), action_space="goal")
    with pytest.raises(ConfigError, match="unknown action space"):
        VLAProcessor(build_tokenizer(TEXTS), acts, norm, 24, (64, 64), action_space="joint")


def test_grounded_keypoints_save_load_and_ignore_padding(tmp_path: Path, obs: dict) -> None:
    pol = tiny_policy(grounded=2)
    inputs = pol.processor([obs])
    base = pol.model(**inputs)
    assert base.keypoints is not None and base.keypoints.shape == (1, 16, 2)
    pad = inputs["attention_mask"][0] == 0
    assert pad.any()
    ids = inputs["input_ids"].clone()
    ids[0, pad] = pol.processor.tokenizer.token_to_id("knife")  # hidden under the mask
    again = pol.model(**{**inputs, "input_ids": ids})
    assert torch.equal(again.keypoints, base.keypoints)
    pol.save_pretrained(tmp_path / "ckpt")
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert loaded.model.config.grounded_keypoints == 2
    assert torch.equal(loaded.model(**inputs).logits, base.logits)
    with pytest.raises(ConfigError, match="grounded_keypoints"):
        VLAConfig(grounded_keypoints=17)


def _two_squares(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, np.ndarray]:
    """n images (n, 3, 64, 64) with a red and a blue 4x4 px square at random places, and the
    squares' centres (n, 2 colours, 2) as (x, y) in [-1, 1] (edge-pixel centres at +-1)."""
    img = np.zeros((n, 3, 64, 64), np.float32)
    centres = np.zeros((n, 2, 2), np.float32)
    for i in range(n):
        corners = rng.integers(2, 58, (2, 2))
        while np.abs(corners[0] - corners[1]).max() < 8:
            corners[1] = rng.integers(2, 58, 2)
        for colour, (x, y) in enumerate(corners):
            img[i, 0 if colour == 0 else 2, y : y + 4, x : x + 4] = 2.0
            centres[i, colour] = (np.array([x, y]) + 1.5) / 63 * 2 - 1
    return torch.from_numpy(img), centres


@pytest.mark.parametrize(
    ("stride", "median_px"), [(4, 2.0), pytest.param(2, 0.4, marks=pytest.mark.slow)]
)
def test_grounded_keypoint_finds_the_named_object(stride: int, median_px: float) -> None:
    """Trained on keypoint labels only, the grounded target keypoint goes to the square the
    instruction names: the same image with the other colour word moves it to the other one.
    The finer head (keypoint_stride 2, 32x32 heatmaps) must land within 0.4 px (median), which
    the stride-4 head misses (0.65 px measured; 0.16 px for the fine one)."""
    from robot_refusal.policies.training import heatmap_loss

    pol = tiny_policy(grounded=1, keypoint_stride=stride)
    size = (64, 64) if stride == 2 else None
    model, tok = pol.model.train(), pol.processor.tokenizer
    texts = ["put the red cube in the bin", "put the blue cube in the bin"]
    ids = torch.tensor([tok.encode(t).ids for t in texts])  # same length, no padding
    mask = torch.ones_like(ids)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    for _ in range(500):
        img, centres = _two_squares(rng, 32)
        which = rng.integers(0, 2, 32)
        out = model(img, ids[which], torch.zeros(32, 5), mask[which])
        target = torch.from_numpy(centres[np.arange(32), which])
        loss = ((out.keypoints[:, 0] - target) ** 2).mean()
        assert out.heatmap_logits.shape[-2:] == (64 // stride, 64 // stride)
        loss = loss + 0.2 * heatmap_loss(out.heatmap_logits, target[:, None], size)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    img, centres = _two_squares(np.random.default_rng(1), 64)
    with torch.no_grad():
        for word in (0, 1):
            n = len(img)
            kp = model(img, ids[[word] * n], torch.zeros(n, 5), mask[[word] * n]).keypoints
            err_px = (kp[:, 0].numpy() - centres[:, word]).__abs__().max(-1) * 31.5
            assert np.median(err_px) < median_px, (texts[word], np.median(err_px))
            assert (err_px < 4.0).mean() > 0.9, (texts[word], (err_px < 4.0).mean())


def test_fine_keypoint_head_config_and_cell_centres(tmp_path: Path, obs: dict) -> None:
    from robot_refusal.envs.env import CAMERA_EYE, CAMERA_TARGET
    from robot_refusal.envs.sim import PyBulletSim
    from robot_refusal.policies.modeling_vla import cell_centres

    with pytest.raises(ConfigError, match="keypoint_stride must be 2 or 4"):
        VLAConfig(keypoint_stride=3)
    assert VLAConfig().keypoint_stride == 4  # old configs load with the shipped head
    like = torch.zeros(1, dtype=torch.float64)
    assert torch.equal(cell_centres(16, None, like), torch.linspace(-1, 1, 16, dtype=like.dtype))
    # stride 2: cell 10 covers pixels 20 and 21; its centre is pixel 20.5 in label units
    centre = float(cell_centres(32, 64, like)[10])
    assert centre == pytest.approx(20.5 / 63 * 2 - 1, abs=1e-12)
    # the projection of a world point in pixel 20.5's column lands on that cell's centre
    world = PyBulletSim.unprojection(64, 64, CAMERA_EYE, CAMERA_TARGET)
    ndc_x = (20.5 + 0.5) / 64 * 2 - 1
    p = world @ np.array([ndc_x, 0.0, 0.5, 1.0])
    uv = PyBulletSim.project((p[:3] / p[3])[None], 64, 64, CAMERA_EYE, CAMERA_TARGET)
    assert uv[0, 0] == pytest.approx(centre, abs=1e-9)
    pol = tiny_policy(grounded=2, keypoint_stride=2)
    inputs = pol.processor([obs])
    out = pol.model(**inputs)
    assert out.heatmap_logits.shape == (1, 16, 32, 32)
    pol.save_pretrained(tmp_path / "ckpt")
    again = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert again.model.config.keypoint_stride == 2
    assert torch.equal(again.model(**inputs).logits, out.logits)


def test_fine_lateral_conv_trains_in_split_form_with_the_same_outputs_and_gradients(
    obs: dict,
) -> None:
    """In training mode the fine keypoint path's lateral 1x1 conv runs as two convolutions
    (the first layer's features, and the last ones before upsampling) with the same weights;
    in eval mode as one over the concatenation. Outputs and gradients agree to rounding, and
    eval mode is the concatenated form exactly."""
    import torch.nn.functional as F

    pol = tiny_policy(grounded=2, keypoint_stride=2)
    model = pol.model
    inputs = pol.processor([obs, obs])
    inputs["pixel_values"] = inputs["pixel_values"] + 0.3 * torch.randn_like(inputs["pixel_values"])
    enc = model.vision_encoder
    x1 = torch.randn(2, 8, 32, 32)
    x = torch.randn(2, 8, 16, 16)
    up = F.interpolate(x, size=(32, 32), mode="nearest")
    concatenated = enc.fine_lateral(torch.cat([x1, up], dim=1))
    assert torch.equal(enc.eval()._lateral(x1, x), concatenated)
    split = enc.train()._lateral(x1, x)
    torch.testing.assert_close(split, concatenated, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 training keeps the one conv
        mixed = enc.fine_lateral(torch.cat([x1, up], dim=1))
        assert torch.equal(enc._lateral(x1, x), mixed)
    outputs, grads = {}, {}
    for mode in ("eval", "train"):
        model.train(mode == "train")
        model.zero_grad(set_to_none=True)
        out = model(**inputs)
        (out.heatmap_logits.square().mean() + out.logits.square().mean()).backward()
        outputs[mode] = (out.heatmap_logits.detach(), out.logits.detach(), out.keypoints.detach())
        grads[mode] = enc.fine_lateral.weight.grad.clone()
    for a, b in zip(outputs["eval"], outputs["train"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert grads["eval"].abs().max() > 0
    torch.testing.assert_close(grads["train"], grads["eval"], atol=1e-6, rtol=1e-4)


def test_table_plane_points_invert_the_camera_projection() -> None:
    from robot_refusal.envs.env import CAMERA_EYE, CAMERA_TARGET
    from robot_refusal.envs.sim import PyBulletSim
    from robot_refusal.policies.modeling_vla import table_plane_points

    world = np.array([[0.5, 0.3, 0.02], [0.62, -0.25, 0.02], [0.35, 0.0, 0.02], [0.7, 0.1, 0.02]])
    uv = PyBulletSim.project(world, 64, 64, CAMERA_EYE, CAMERA_TARGET)  # (4, 2) in [-1, 1]
    matrix = torch.tensor(_camera(), dtype=torch.float32).reshape(4, 4)
    back = table_plane_points(torch.tensor(uv, dtype=torch.float32)[None], matrix, (64, 64), 0.02)
    assert np.abs(back[0].numpy() - world[:, :2]).max() < 1e-4  # metres
    higher = table_plane_points(torch.tensor(uv, dtype=torch.float32)[None], matrix, (64, 64), 0.1)
    assert not np.allclose(higher[0].numpy(), world[:, :2], atol=1e-3)  # another plane


def test_metric_keypoint_token_needs_a_camera_and_survives_save_load(
    tmp_path: Path, obs: dict
) -> None:
    from robot_refusal.adapters import get_adapter

    with pytest.raises(ConfigError, match="camera_unprojection"):
        VLAConfig(metric_keypoints=4)
    pol = tiny_policy(grounded=2, metric=4)
    cfg = pol.model.config
    assert cfg.num_image_tokens == cfg.image_tokens_side**2 + 2
    inputs = pol.processor([obs])
    logits = pol.model(**inputs).logits
    assert logits.shape[1] == cfg.prefix_length
    keypoints = pol.model(**inputs).keypoints.detach()
    features = pol.model.metric_features(keypoints, inputs["ee_position"]).detach()
    assert features.shape == (1, 17) and torch.isfinite(features).all()
    assert features[0, -1] == pytest.approx((obs["state"][2] - 0.02) / 0.1, abs=1e-5)
    with pytest.raises(ConfigError, match="ee_position"):
        pol.model.metric_features(keypoints, None)
    pol.save_pretrained(tmp_path / "ckpt")
    again = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(again.model(**inputs).logits, logits)
    assert "metric_projector.linear_2" in [w.name for w in get_adapter(again.model).writers]


def test_upper_plane_cuts_carry_points_above_the_table(tmp_path: Path, obs: dict) -> None:
    """With a second plane at 0.12 m the metric token's extra block holds the rays' cuts at
    that height: a point 12 cm up (the handover point's height) comes back to within 0.1 mm,
    where the table-plane cut is centimetres off; a point on the ray at any height between
    is the linear interpolation of the two cuts."""
    from robot_refusal.envs.env import CAMERA_EYE, CAMERA_TARGET
    from robot_refusal.envs.sim import PyBulletSim

    with pytest.raises(ConfigError, match="metric_upper_plane_height"):
        VLAConfig(metric_keypoints=4, camera_unprojection=_camera(), metric_upper_plane_height=0.02)
    pol = tiny_policy(grounded=2, metric=4, upper_plane=0.12)
    world = np.array([[0.5, 0.3, 0.12], [0.62, -0.25, 0.12], [0.4, 0.1, 0.07], [0.7, 0.0, 0.02]])
    uv = PyBulletSim.project(world, 64, 64, CAMERA_EYE, CAMERA_TARGET)
    ee = torch.tensor([[0.45, 0.05, 0.3]])
    features = pol.model.metric_features(torch.tensor(uv, dtype=torch.float32)[None], ee)
    assert features.shape == (1, 33)
    low = features[0, :8].reshape(4, 2).numpy() * 0.25 + [0.5, 0.0]  # table-plane cuts, m
    up = features[0, 17:25].reshape(4, 2).numpy() * 0.25 + [0.5, 0.0]  # 0.12 m cuts, m
    np.testing.assert_allclose(up[:2], world[:2, :2], atol=1e-4)
    np.testing.assert_allclose(low[3], world[3, :2], atol=1e-4)
    assert np.linalg.norm(low[0] - world[0, :2]) > 0.02  # the table cut misses it
    mid = low[2] + (0.07 - 0.02) / (0.12 - 0.02) * (up[2] - low[2])
    np.testing.assert_allclose(mid, world[2, :2], atol=1e-4)
    offsets = features[0, 25:33].reshape(4, 2).numpy() * 0.1 + ee[0, :2].numpy()
    np.testing.assert_allclose(offsets, up, atol=1e-5)
    inputs = pol.processor([obs])
    logits = pol.model(**inputs).logits
    pol.save_pretrained(tmp_path / "ckpt")
    again = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    assert again.model.config.metric_upper_plane_height == 0.12
    assert torch.equal(again.model(**inputs).logits, logits)


def test_local_soft_argmax_reads_the_strongest_mode_to_a_fraction_of_a_cell() -> None:
    """Two Gaussian blobs on a 32x32 map: the whole-map expectation lands between them, on
    neither object; the local soft-argmax lands on the stronger one within 0.05 cells, at an
    off-grid centre."""
    from robot_refusal.policies.modeling_vla import cell_centres, local_soft_argmax

    like = torch.zeros(1, dtype=torch.float64)
    xs = ys = cell_centres(32, 64, like)
    step = float(xs[1] - xs[0])
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    strong, weak = (float(xs[8]) + 0.3 * step, float(ys[20]) - 0.4 * step), (xs[24], ys[6])

    def blob(cx: float, cy: float) -> torch.Tensor:
        return torch.exp(-0.5 * ((grid_x - cx) ** 2 + (grid_y - cy) ** 2) / step**2)

    prob = 0.6 * blob(*strong) + 0.4 * blob(float(weak[0]), float(weak[1]))
    logits = prob.clamp(min=1e-12).log()[None, None]  # (1, 1, 32, 32)
    mean = (logits.flatten(2).softmax(-1) @ torch.stack([grid_x, grid_y], -1).reshape(-1, 2))[0, 0]
    local = local_soft_argmax(logits, xs, ys, radius=2)[0, 0]
    assert abs(float(mean[0]) - strong[0]) > 4 * step  # the expectation is pulled off
    assert abs(float(local[0]) - strong[0]) < 0.05 * step
    assert abs(float(local[1]) - strong[1]) < 0.05 * step
    # the window's contents are differentiable: the keypoint loss can train through it
    logits.requires_grad_(True)
    local_soft_argmax(logits, xs, ys, radius=2).sum().backward()
    assert logits.grad is not None
    assert int((logits.grad[0, 0] != 0).sum()) == 25  # the 5x5 window, nothing else


def test_keypoint_window_is_a_config_setting_and_a_load_override(tmp_path: Path, obs: dict) -> None:
    """The readout changes the keypoints but no weight: a checkpoint saved with window 0
    loads with window 2 (override), saves it, and loads it back identically; bad windows are
    typed errors."""
    for bad in (-1, 9, 1.5, True):
        with pytest.raises(ConfigError, match="keypoint_window"):
            VLAConfig(keypoint_window=bad)
    assert VLAConfig().keypoint_window == 0  # older config.json files read out as before
    pol = tiny_policy(grounded=2, keypoint_stride=2)
    inputs = pol.processor([obs])
    with torch.no_grad():
        whole = pol.model(**inputs)
    pol.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="keypoint_window"):
        VLAPolicy.from_pretrained(tmp_path / "ckpt", keypoint_window=20)
    local = VLAPolicy.from_pretrained(tmp_path / "ckpt", keypoint_window=2)
    assert local.model.config.keypoint_window == 2
    with torch.no_grad():
        out = local.model(**inputs)
    assert torch.equal(out.heatmap_logits, whole.heatmap_logits)  # same weights, same maps
    assert not torch.equal(out.keypoints, whole.keypoints)  # read out differently
    # each local keypoint lies within 2 cells (4 px) of its heatmap's maximum
    peak = out.heatmap_logits.flatten(2).argmax(-1)
    from robot_refusal.policies.modeling_vla import cell_centres

    centres = cell_centres(32, 64, out.keypoints)
    step = float(centres[1] - centres[0])
    assert (out.keypoints[..., 0] - centres[peak % 32]).abs().max() <= 2 * step + 1e-6
    assert (out.keypoints[..., 1] - centres[peak // 32]).abs().max() <= 2 * step + 1e-6
    local.save_pretrained(tmp_path / "local")
    again = VLAPolicy.from_pretrained(tmp_path / "local")
    assert again.model.config.keypoint_window == 2
    with torch.no_grad():
        assert torch.equal(again.model(**inputs).logits, out.logits)


def test_keypoint_override_replaces_the_leading_keypoints_everywhere_the_decoder_reads_them(
    obs: dict,
) -> None:
    """``override_keypoints`` swaps the first K' keypoints (a non-finite row keeps the
    prediction); fed through ``embed_prefix`` it changes the keypoint and metric tokens and
    nothing else; bad shapes are typed errors."""
    from robot_refusal.policies.modeling_vla import override_keypoints

    predicted = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2) / 10
    given = torch.full((2, 3, 2), 0.5)
    given[1, 2] = torch.tensor([float("nan"), 0.1])
    out = override_keypoints(predicted, given)
    assert torch.equal(out[0, :3], given[0]) and torch.equal(out[1, :2], given[1, :2])
    assert torch.equal(out[1, 2], predicted[1, 2])  # the NaN row keeps the prediction
    assert torch.equal(out[:, 3:], predicted[:, 3:])
    with pytest.raises(ConfigError, match="6 keypoints"):
        override_keypoints(predicted, torch.zeros(2, 6, 2))
    with pytest.raises(ConfigError, match=r"\(B=2, K', 2\)"):
        override_keypoints(predicted, torch.zeros(2, 3))
    pol = tiny_policy(grounded=2, metric=4)
    inputs = pol.processor([obs])
    with torch.no_grad():
        x, _, kp, _ = pol.model.embed_prefix(**inputs)
        same, _, kp_same, _ = pol.model.embed_prefix(**inputs, keypoint_override=kp[:, :4])
        moved = kp[:, :4].clone()
        moved[:, 0] += 0.3
        other, _, kp_other, _ = pol.model.embed_prefix(**inputs, keypoint_override=moved)
    assert torch.equal(same, x) and torch.equal(kp_same, kp)
    assert torch.allclose(kp_other[:, 0], kp[:, 0] + 0.3)
    changed = (other != x).any(-1)[0]  # (P,) prefix positions that changed
    n_img = pol.model.config.image_tokens_side**2
    assert changed.nonzero().flatten().tolist() == [n_img, n_img + 1]  # keypoint, metric tokens
    acts, _ = pol.select_actions([obs], keypoint_override=moved.numpy())
    ref, _ = pol.select_actions([obs])
    assert set(acts[0]) == set(ref[0])


def test_exact_keypoint_policy_reads_the_simulators_keypoints_every_step() -> None:
    """The privileged diagnostic agent feeds ``env.keypoints_uv()`` of the current state: its
    action equals the plain policy's with that override; models with fewer than four
    keypoints are refused."""
    from robot_refusal.policies.privileged import ExactKeypointPolicy

    pol = tiny_policy(grounded=2, metric=4)
    env = RobotRefusalEnv("pick_place", split="test")
    try:
        o, _ = env.reset(seed=3)
        agent = ExactKeypointPolicy(pol.model, pol.processor, env)
        for _ in range(3):
            exact = env.keypoints_uv()
            a = agent.select_action(o)
            ref, score = pol.select_actions([o], keypoint_override=exact[None])
            assert agent.refusal_score == float(score[0])
            assert all(np.array_equal(a[k], ref[0][k]) for k in a)
            o, *_ = env.step(a)
        small = tiny_policy()
        small.model.config.num_keypoints = 3
        with pytest.raises(ConfigError, match=">= 4 keypoints"):
            ExactKeypointPolicy(small.model, small.processor, env)
    finally:
        env.close()


def test_exact_keypoint_subset_replaces_only_the_named_keypoints() -> None:
    """``ExactKeypointPolicy(..., keypoints="target,hand")`` feeds the simulator's target and
    hand keypoints and the policy's own destination and gripper: its action equals the plain
    policy's with an override whose other rows are NaN, and its refusal score differs from
    both the all-four one's and the policy's own;
    bad names are refused with the known ones listed."""
    from robot_refusal.policies.privileged import (
        KEYPOINT_NAMES,
        ExactKeypointPolicy,
        exact_keypoint_names,
    )

    assert exact_keypoint_names(True) == exact_keypoint_names("all") == KEYPOINT_NAMES
    assert exact_keypoint_names("hand, target") == ("target", "hand")
    assert exact_keypoint_names(["gripper"]) == ("gripper",)
    assert exact_keypoint_names(False) == exact_keypoint_names(None) == ()
    for bad, match in (
        ("target,elbow", "unknown keypoint 'elbow'.*target, destination"),
        ("target,target", "twice"),
        ("", "must name keypoints"),
        ("target,", "must name keypoints"),
    ):
        with pytest.raises(ConfigError, match=match):
            exact_keypoint_names(bad)
    pol = tiny_policy(grounded=2, metric=4)
    env = RobotRefusalEnv("pick_place", split="test")
    try:
        o, _ = env.reset(seed=3)
        agent = ExactKeypointPolicy(pol.model, pol.processor, env, "hand,target")
        assert agent.keypoints == ("target", "hand") and agent.rows == [0, 2]
        exact = env.keypoints_uv()
        override = np.full_like(exact, np.nan)
        override[[0, 2]] = exact[[0, 2]]
        a = agent.select_action(o)
        ref, score = pol.select_actions([o], keypoint_override=override[None])
        assert agent.refusal_score == float(score[0])
        assert all(np.array_equal(a[k], ref[0][k]) for k in a)
        _, everything = pol.select_actions([o], keypoint_override=exact[None])
        _, own = pol.select_actions([o])
        assert agent.refusal_score not in (float(everything[0]), float(own[0]))
        with pytest.raises(ConfigError, match="at least one keypoint"):
            ExactKeypointPolicy(pol.model, pol.processor, env, ())
    finally:
        env.close()


def test_regression_head_reads_every_action_at_once(tmp_path: Path, obs: dict) -> None:
    """``action_head="regression"`` adds a continuous head on the ACT position; decoding
    ``"regression"`` returns its values as fractional bin ids (the actions they decode to are
    the head's, de-normalised between the 1st and 99th percentiles), keeps the refuse-or-act
    choice of the first token, and survives a save/load; a model without the head refuses
    that decoding, at construction, at load and at run time."""
    with pytest.raises(ConfigError, match="regression action head"):
        VLAConfig(action_decoding="regression")
    with pytest.raises(ConfigError, match="action_head"):
        VLAConfig(action_head="diffusion")
    pol = tiny_policy(action_head="regression")
    inputs = pol.processor([obs, obs])
    with torch.no_grad():
        out = pol.model(**inputs)
    assert out.action_values is not None and out.action_values.shape == (2, 1, 4)
    out.action_values = out.action_values[:, 0]  # one action per chunk
    values, logprobs = pol.model.predict_action_tokens(**inputs, decoding="regression")
    _, logprobs_argmax = pol.model.predict_action_tokens(**inputs, decoding="argmax")
    assert torch.equal(logprobs, logprobs_argmax)  # the refusal score does not change
    n = pol.model.config.n_bins
    want = ((out.action_values + 1) / 2 * n - 0.5).clamp(0, n - 1) + ACTION_TOKEN_OFFSET
    assert values.dtype == torch.float32 and torch.allclose(values, want, atol=1e-5)
    acts = pol.processor.decode_actions(values.numpy())
    low, high = np.array(pol.processor.actions.low), np.array(pol.processor.actions.high)
    unit = ((out.action_values[0].numpy() + 1) / 2).clip(0.5 / n, 1 - 0.5 / n)
    assert acts[0]["delta"] == pytest.approx(low[:3] + unit[:3] * (high[:3] - low[:3]), abs=1e-6)
    VLAPolicy(pol.model, pol.processor, "regression").save_pretrained(tmp_path / "reg")
    again = VLAPolicy.from_pretrained(tmp_path / "reg")
    assert again.action_decoding == "regression"
    assert torch.equal(again.model.predict_action_tokens(**inputs)[0], values)
    with torch.no_grad():  # every logit equal: the first token's tie goes to <refuse>
        again.model.lm_head.weight.zero_()
    refused, _ = again.model.predict_action_tokens(**inputs)
    assert refused.tolist() == [[REFUSE_ID, 0, 0, 0]] * 2
    plain = tiny_policy()
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(ConfigError, match="regression action head"):
        VLAPolicy(plain.model, plain.processor, "regression")
    with pytest.raises(ConfigError, match="regression action head"):
        VLAPolicy.from_pretrained(tmp_path / "plain", action_decoding="regression")
    with pytest.raises(ConfigError, match="regression action head"):
        plain.model.predict_action_tokens(**inputs, decoding="regression")
    # steering the residual stream reaches the regression head's actions
    from robot_refusal.directions import Direction
    from robot_refusal.interventions import activation_addition

    g = torch.Generator().manual_seed(0)
    r = Direction(torch.randn(32, generator=g, dtype=torch.float64) * 5.0)
    with activation_addition(pol.model, r, layer=1):
        steered, _ = pol.model.predict_action_tokens(**inputs, decoding="regression")
    assert (steered[:, 0] != REFUSE_ID).all()  # still acting, with other actions:
    assert (steered - values).abs().max() > 1.0  # bins moved


def test_action_chunks_run_as_acts_temporal_ensemble_or_open_loop(
    obs: dict, tmp_path: Path
) -> None:
    """``action_chunk`` H = 3: the head gives (B, 3, D), its first row is the unchunked
    reading; ``temporal_ensemble_coeff`` averages the stored chunks' rows for the current
    step with ACT's weights (oldest first, exp(-coeff * i)); ``n_action_steps`` 3 calls the
    model every third step and runs the chunk's rows in between; :meth:`reset` forgets the
    chunks; inconsistent settings are refused."""
    kw = {"action_head": "regression", "action_decoding": "regression", "action_chunk": 3}
    for bad, match in (
        ({"action_head": "tokens", "action_decoding": "argmax"}, "needs the regression action"),
        ({"n_action_steps": 4}, "n_action_steps must be"),
        ({"n_action_steps": 2, "temporal_ensemble_coeff": 0.01}, "needs n_action_steps 1"),
        ({"temporal_ensemble_coeff": float("nan")}, "finite"),
        ({"action_chunk": 65}, "action_chunk must be"),
    ):
        with pytest.raises(ConfigError, match=match):
            VLAConfig(**{**kw, **bad})
    from robot_refusal.policies.configuration_vla import parse_chunk_execution

    assert parse_chunk_execution("ensemble", 3) == (1, 0.01)
    assert parse_chunk_execution("ensemble:-1", 3) == (1, -1.0)  # newer predictions weigh more
    assert parse_chunk_execution("open-loop", 3) == (3, None)
    assert parse_chunk_execution("newest", 3) == (1, None)
    pol = tiny_policy(**kw, temporal_ensemble_coeff=1.0)
    inputs = pol.processor([obs])
    chunk, _ = pol.model.predict_action_tokens(**inputs, chunk=True)
    first, _ = pol.model.predict_action_tokens(**inputs)
    assert chunk.shape == (1, 3, 4) and torch.equal(chunk[:, 0], first)
    assert not torch.allclose(chunk[0, 0], chunk[0, 2])  # the rows differ
    rows = chunk[0].numpy()
    calls = []
    hook = pol.model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        pol.reset()
        acts = [pol.select_action(obs)["delta"] for _ in range(4)]
        # the same observation every step, so every stored chunk equals `rows`
        w = np.exp(-1.0 * np.arange(3))
        want = [
            rows[0],
            (rows[1] + w[1] * rows[0]) / w[:2].sum(),
            (w[:, None] * rows[::-1]).sum(0) / w.sum(),
        ]
        want.append(want[2])  # only the last three chunks count
        for got, row in zip(acts, want, strict=True):
            ref = pol.processor.decode_actions(np.asarray(row, np.float32)[None])[0]["delta"]
            assert got == pytest.approx(ref, abs=1e-6)
        assert len(calls) == 4
        pol.model.config.temporal_ensemble_coeff = None
        pol.model.config.n_action_steps = 3
        pol.reset()
        calls.clear()
        acts = [pol.select_action(obs)["delta"] for _ in range(4)]
        assert len(calls) == 2  # steps 0 and 3
        for got, row in zip(acts, [rows[0], rows[1], rows[2], rows[0]], strict=True):
            ref = pol.processor.decode_actions(row[None])[0]["delta"]
            assert got == pytest.approx(ref, abs=1e-6)
        pol.select_action(obs)
        with pytest.raises(InvalidObservationError, match="NaN"):  # checked mid-chunk too
            pol.select_action({**obs, "state": np.full_like(obs["state"], np.nan)})
        pol.reset()  # drops the queued rows: the next step calls the model again
        calls.clear()
        pol.select_action(obs)
        assert len(calls) == 1
    finally:
        hook.remove()
    # a token reading of the chunked checkpoint: one action per call, saved and reloaded
    pol.model.config.n_action_steps, pol.model.config.temporal_ensemble_coeff = 1, 0.01
    VLAPolicy(pol.model, pol.processor, "argmax").save_pretrained(tmp_path / "tokens")
    tokens = VLAPolicy.from_pretrained(tmp_path / "tokens")
    assert tokens.action_decoding == "argmax" and tokens.model.config.action_chunk == 3
    assert tokens.chunk_execution is None  # nothing to run: one action per call
    with pytest.raises(ConfigError, match="needs the regression reading"):
        VLAPolicy(tokens.model, tokens.processor, chunk_execution="newest")
    want = tokens.model.predict_action_tokens(**inputs)[0]
    assert tokens.model.predict_action_tokens(**inputs, chunk=True)[0].shape == (1, 1, 4)
    tokens.reset()
    for _ in range(2):
        ref = tokens.processor.decode_actions(want.numpy())[0]["delta"]
        assert tokens.select_action(obs)["delta"] == pytest.approx(ref, abs=1e-6)


def test_regression_metric_inputs_reach_the_head_beside_the_hidden_state(
    tmp_path: Path, obs: dict
) -> None:
    """``regression_metric_inputs``: the regression head's first layer reads the ACT
    position's hidden state (32) and the metric token's inputs (4 * 4 + 1 = 17); with the
    hidden-state columns zeroed the chunk is exactly the head applied to the metric inputs
    of the keypoints the decoder reads. ``add_regression_metric_inputs`` widens a trained head
    with zero columns (the same actions), and the widened model survives a save/load."""
    from robot_refusal.policies.modeling_vla import add_regression_metric_inputs

    with pytest.raises(ConfigError, match="regression_metric_inputs needs"):
        VLAConfig(action_head="regression", regression_metric_inputs=True)
    with pytest.raises(ConfigError, match="regression_metric_inputs needs"):
        VLAConfig(metric_keypoints=4, camera_unprojection=_camera(), regression_metric_inputs=True)
    pol = tiny_policy(metric=4, action_head="regression", regression_metric_inputs=True)
    head = pol.model.action_regressor
    assert head is not None and head[0].in_features == 32 + 17
    inputs = pol.processor([obs, {**obs, "instruction": TEXTS[1]}])
    with torch.no_grad():
        head[0].weight[:, :32] = 0.0  # the head now sees the metric inputs only
        out = pol.model(**inputs)
        features = pol.model.metric_features(out.keypoints, inputs["ee_position"])
        want = head[2](head[1](features @ head[0].weight[:, 32:].T + head[0].bias))
    assert out.action_values is not None and features.shape == (2, 17)
    assert torch.allclose(out.action_values.reshape(2, -1), want, atol=1e-6)
    with pytest.raises(ConfigError, match="metric_inputs"):
        pol.model.regress_actions(torch.zeros(2, 32))

    plain = tiny_policy(metric=4, action_head="regression", seed=1)
    before, _ = plain.model.predict_action_tokens(**inputs)
    add_regression_metric_inputs(plain.model)
    assert plain.model.config.regression_metric_inputs
    assert plain.model.action_regressor[0].in_features == 32 + 17
    after, _ = plain.model.predict_action_tokens(**inputs)
    assert torch.allclose(after, before, atol=1e-4)  # in fractional bin ids
    with pytest.raises(ConfigError, match="already reads"):
        add_regression_metric_inputs(plain.model)
    plain.save_pretrained(tmp_path / "skip")
    again = VLAPolicy.from_pretrained(tmp_path / "skip")
    assert again.model.config.regression_metric_inputs
    assert torch.equal(again.model.predict_action_tokens(**inputs)[0], after)
    with pytest.raises(ConfigError, match="metric_keypoints=0"):
        add_regression_metric_inputs(tiny_policy(action_head="regression").model)
