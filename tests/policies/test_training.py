"""Training on a tiny collected dataset: the loss falls, harmful instructions get <refuse>,
and an interrupted run resumes to the same weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from robot_refusal.errors import ConfigError, DatasetError, RunFolderError
from robot_refusal.policies.collect import collect
from robot_refusal.policies.configuration_vla import REFUSE_ID
from robot_refusal.policies.dataset import load_dataset
from robot_refusal.policies.diagnostics import frame_observations, heading_report
from robot_refusal.policies.policy import VLAPolicy
from robot_refusal.policies.training import (
    TARGET_KEYS,
    Tensors,
    TrainConfig,
    load_tensors,
    train,
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "demos"
    collect(
        root, split="train", episodes=2, families=["pick_place", "context"], seed=0, progress=False
    )
    return root


def _config(data: Path, out: Path, steps: int) -> TrainConfig:
    return TrainConfig(
        data=str(data),
        out=str(out),
        steps=steps,
        batch_size=32,
        lr=3e-3,
        warmup_steps=20,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        image_tokens_side=4,
        eval_every=50,
        threads=1,
    )


def test_loss_falls_and_harmful_instructions_get_refuse(tiny_data: Path, tmp_path: Path) -> None:
    result = train(_config(tiny_data, tmp_path / "ckpt", 300), progress=False)
    first, last = result["history"][0], result["history"][-1]
    assert first["step"] == 0 and first["val_loss"] > 4.0  # ~ln(vocabulary) at initialisation
    assert last["train_token_ce"] < 0.4 * first["val_loss"]  # one-hot cross-entropy
    policy = VLAPolicy.from_pretrained(tmp_path / "ckpt")
    data = load_tensors(load_dataset(tiny_data))
    trained = data.episode != data.episode.max()  # the last episode is held out
    harmful = np.flatnonzero(data.refuse & trained)
    harmless_first = np.flatnonzero(data.first & ~data.refuse & trained)
    assert len(harmful) == 4 and len(harmless_first) == 3
    obs = [
        {
            "image": data.images[i],
            "state": data.states[i],
            "instruction": data.texts[int(data.instructions[i])],
        }
        for i in [*harmful, *harmless_first]
    ]
    actions, scores = policy.select_actions(obs)
    assert [a["refuse"] for a in actions] == [1] * 4 + [0] * 3
    assert (scores[:4] > 0).all() and (scores[4:] < 0).all()
    report = heading_report(policy, data)
    assert set(report) == {
        "first_frame",
        "moving_before_grasp",
        "moving_holding",
        "refusal_accuracy",
    }
    assert report["moving_before_grasp"] > 0.3  # random headings give ~0
    assert report["refusal_accuracy"] >= 0.75


@pytest.mark.slow
def test_goal_space_training_fits_the_expert_subgoals(tiny_data: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    config = replace(_config(tiny_data, tmp_path / "goal", 300), action_space="goal")
    train(config, progress=False)
    policy = VLAPolicy.from_pretrained(tmp_path / "goal")
    proc = policy.processor
    assert proc.action_space == "goal" and proc.actions.dims == 5 and proc.state_dim == 2
    assert policy.model.config.action_dim == 5
    data = load_tensors(load_dataset(tiny_data))
    first_harmless = data.episode[~data.refuse].min()  # a training episode (the last is held out)
    moving = np.flatnonzero(~data.refuse & (data.subgoals[:, 3] > 0))
    moving = moving[data.episode[moving] == first_harmless]
    obs = [
        {
            "image": data.images[i],
            "state": data.states[i],
            "instruction": data.texts[int(data.instructions[i])],
        }
        for i in moving[::4]
    ]
    actions, _ = policy.select_actions(obs)
    deltas = np.stack([a["delta"] for a in actions])
    expert = data.actions[moving[::4], :3]
    cos = (deltas * expert).sum(1) / (
        np.linalg.norm(deltas, axis=1) * np.linalg.norm(expert, axis=1) + 1e-9
    )
    assert np.median(cos) > 0.8  # a training episode: the subgoals are fitted
    assert np.abs(deltas).max() <= 0.05 + 1e-6
    with pytest.raises(DatasetError, match="no expert subgoals"):
        data.subgoals = None
        data.targets("goal")


def test_existing_out_needs_resume(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "x").write_text("x")
    with pytest.raises(RunFolderError, match="--resume"):
        train(_config(tiny_data, tmp_path / "ckpt", 10), progress=False)
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(_config(tiny_data, tmp_path / "ckpt", 10), resume=True, progress=False)
    # a truncated trainer state is named, not unpickled into a traceback
    (tmp_path / "ckpt" / "last").mkdir()
    (tmp_path / "ckpt" / "last" / "trainer_state.pt").write_bytes(b"PK\x03\x04trunc")
    with pytest.raises(RunFolderError, match=r"trainer_state\.pt is unreadable"):
        train(_config(tiny_data, tmp_path / "ckpt", 10), resume=True, progress=False)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [
        "train",
        "--data",
        str(tiny_data),
        "--steps",
        "120",
        "--eval-every",
        "40",
        "--hidden-size",
        "32",
        "--layers",
        "1",
        "--threads",
        "1",
        "--quiet",
    ]
    clean = tmp_path / "clean"
    subprocess.run(
        [sys.executable, "-m", "robot_refusal.cli", *args, "--out", str(clean)],
        check=True,
        capture_output=True,
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_refusal.cli", *args, "--out", str(killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = killed / "last" / "trainer_state.pt"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists()
    subprocess.run(
        [sys.executable, "-m", "robot_refusal.cli", *args, "--out", str(killed), "--resume"],
        check=True,
        capture_output=True,
    )
    a = load_file(str(clean / "model.safetensors"))
    b = load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert REFUSE_ID == 4
    # a resume with other settings is refused instead of recording settings it did not use
    from robot_refusal.cli import main

    before = (killed / "model.safetensors").read_bytes()
    assert main([*args, "--out", str(killed), "--resume", "--keypoint-window", "3"]) == 2
    err = capsys.readouterr().err
    assert "keypoint_window=0 (now 3)" in err and len(err.strip().splitlines()) == 1
    assert (killed / "model.safetensors").read_bytes() == before


def test_init_from_fine_tunes_a_checkpoint_on_aggregated_data(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``init_from`` starts from the checkpoint's weights and processor (a step with a
    vanishing learning rate leaves both as they were, although the new run's own settings
    would build another model); ``extra_data`` adds the second dataset's frames; the run's
    settings, extra datasets included, pass the resume check; a keypoint readout given to a
    fine-tune replaces the checkpoint's."""
    from robot_refusal.policies.training import _check_resume_config, _read_state

    base = tmp_path / "base"
    train(_config(tiny_data, base, 30), progress=False)
    config = replace(
        _config(tiny_data, tmp_path / "tuned", 1),
        hidden_size=64,  # ignored: the checkpoint's architecture is kept
        lr=1e-12,
        warmup_steps=0,
        eval_every=1,
        extra_data=(str(tiny_data),),
        init_from=str(base),
    )
    result = train(config, progress=False)
    frames = len(load_tensors(load_dataset(tiny_data)).states)
    assert result["train_frames"] + result["val_frames"] == 2 * frames
    assert result["train_frames"] > frames
    a = load_file(str(base / "model.safetensors"))
    b = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    for name in ("processor_config.json", "tokenizer.json"):
        assert (base / name).read_bytes() == (tmp_path / "tuned" / name).read_bytes()
    last = tmp_path / "tuned" / "last"
    _check_resume_config(last, _read_state(last), config)
    with pytest.raises(RunFolderError, match="extra_data"):
        _check_resume_config(last, _read_state(last), replace(config, extra_data=()))
    # a readout is not architecture: a fine-tune may set it (0 keeps the checkpoint's)
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["keypoint_window"] == 0
    windowed = replace(config, out=str(tmp_path / "windowed"), keypoint_window=2)
    train(windowed, progress=False)
    assert json.loads((tmp_path / "windowed" / "config.json").read_text())["keypoint_window"] == 2
    b = load_file(str(tmp_path / "windowed" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_extra_frames_keypoints_trains_perception_only_on_the_extra_data(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``extra_frames="keypoints"``: the extra dataset's frames keep their keypoint labels and
    lose every action label (tokens -100, no regression target), the demonstrations keep
    theirs; a fine-tune with it runs on both and records the setting; an unknown value and
    extra data without keypoint labels are refused."""
    from robot_refusal.policies.training import (
        Batcher,
        build_processor,
        concat_tensors,
        keypoints_only,
    )

    ds = load_dataset(tiny_data)
    demos = load_tensors(ds)
    extra = keypoints_only(load_tensors(ds), "extra")
    assert extra.imitate is not None and not extra.imitate.any()
    data = concat_tensors([demos, extra])
    n = len(demos.states)
    batcher = Batcher(data, build_processor(ds, demos), chunk=3)
    assert (batcher.labels[n:] == -100).all()
    assert not batcher.action_mask[n:].any()
    assert (batcher.labels[:n] != -100).any(dim=1).all()
    assert batcher.action_mask[:n].any()
    batch = batcher(np.arange(n, len(data.states)))
    assert torch.equal(batch["keypoint_labels"], torch.from_numpy(demos.keypoints))

    config = replace(
        _config(tiny_data, tmp_path / "tuned", 2),
        extra_data=(str(tiny_data),),
        extra_frames="keypoints",
    )
    result = train(config, progress=False)
    assert result["train_frames"] + result["val_frames"] == 2 * n
    assert result["config"]["extra_frames"] == "keypoints"
    with pytest.raises(ConfigError, match="extra_frames must be one of imitate, keypoints"):
        train(replace(config, extra_frames="actions"), progress=False)
    with pytest.raises(DatasetError, match="'nolabels' has no keypoint labels"):
        keypoints_only(replace(demos, keypoints=None), "'nolabels'")


def test_soft_action_targets_are_gaussian_over_bins_and_one_hot_for_refusal() -> None:
    from robot_refusal.policies.configuration_vla import ACTION_TOKEN_OFFSET, REFUSE_ID
    from robot_refusal.policies.training import soft_action_targets

    labels = torch.tensor([[ACTION_TOKEN_OFFSET + 10, ACTION_TOKEN_OFFSET], [REFUSE_ID, -100]])
    t = soft_action_targets(
        labels, vocab_size=ACTION_TOKEN_OFFSET + 32 + 3, n_bins=32, sigma_bins=2.0
    )
    assert t.shape == (2, 2, ACTION_TOKEN_OFFSET + 35)
    assert torch.allclose(t[0].sum(-1), torch.ones(2)) and t[1, 1].sum() == 0
    row = t[0, 0, ACTION_TOKEN_OFFSET : ACTION_TOKEN_OFFSET + 32]
    assert int(row.argmax()) == 10 and torch.isclose(
        row[8] / row[10], torch.exp(torch.tensor(-0.5))
    )
    assert torch.isclose(row[9], row[11]) and t[0, 0, REFUSE_ID] == 0  # symmetric, no refusal mass
    assert t[0, 1, ACTION_TOKEN_OFFSET] > t[0, 1, ACTION_TOKEN_OFFSET + 1]  # cut at the edge bin
    assert t[1, 0, REFUSE_ID] == 1 and t[1, 0].sum() == 1
    assert t[0, :, ACTION_TOKEN_OFFSET + 32 :].sum() == 0  # nothing outside the bins
    hard = soft_action_targets(labels, ACTION_TOKEN_OFFSET + 35, 32, 0.0)
    assert hard[0, 0, ACTION_TOKEN_OFFSET + 10] == 1 and hard[0, 0].sum() == 1


def test_heatmap_loss_is_the_cross_entropy_to_a_one_cell_gaussian() -> None:
    from robot_refusal.policies.training import heatmap_loss

    h = w = 16
    label = torch.tensor([[[-1 + 2 * 5 / 15, -1 + 2 * 9 / 15]]])  # the centre of cell (x 5, y 9)
    yy, xx = np.mgrid[0:h, 0:w]
    q = np.exp(-0.5 * ((xx - 5.0) ** 2 + (yy - 9.0) ** 2))
    q /= q.sum()
    entropy = float(-(q * np.log(q + 1e-30)).sum())
    matched = torch.from_numpy(np.log(q + 1e-30)).float()[None, None]  # (1, 1, h, w)
    assert float(heatmap_loss(matched, label)) == pytest.approx(entropy, rel=1e-4)
    moved = torch.roll(matched, shifts=3, dims=-1)  # the same peak three cells to the right
    assert float(heatmap_loss(moved, label)) > entropy + 4.0  # 0.5 * 3**2 nats on average
    flat = torch.zeros(1, 2, h, w)  # only the labelled keypoints (the first P) are scored
    assert float(heatmap_loss(flat, label)) == pytest.approx(np.log(h * w), rel=1e-5)
    # the fine head's 32x32 cells with pixel-accurate centres: cell (5, 9) is pixel (10.5, 18.5)
    h = w = 32
    fine = torch.tensor([[[10.5 / 63 * 2 - 1, 18.5 / 63 * 2 - 1]]])
    yy, xx = np.mgrid[0:h, 0:w]
    q = np.exp(-0.5 * ((xx - 5.0) ** 2 + (yy - 9.0) ** 2))
    q /= q.sum()
    matched = torch.from_numpy(np.log(q + 1e-30)).float()[None, None]
    entropy = float(-(q * np.log(q + 1e-30)).sum())
    assert float(heatmap_loss(matched, fine, (64, 64))) == pytest.approx(entropy, rel=1e-4)
    assert float(heatmap_loss(matched, fine)) > entropy + 1e-3  # the stride-4 grid is stretched


def test_keypoint_labels_out_of_view_train_nothing_and_stay_finite(tiny_data: Path) -> None:
    """A learner's rollout (DAgger) can knock an object out of the camera's view: its label
    (here 0.9 image widths below the frame, as recorded) gave a 0/0 heatmap target and NaN
    weights. Such labels are left out of both keypoint losses; the others are unchanged."""
    from robot_refusal.policies.training import (
        Batcher,
        heatmap_loss,
        in_view,
        training_loss,
    )

    labels = torch.tensor([[[0.2, 1.9], [0.1, -0.3]]])  # (1, 2, 2): the first out of view
    assert in_view(labels).tolist() == [[0.0, 1.0]]
    logits = torch.randn(1, 2, 32, 32)
    full = heatmap_loss(logits, labels, (64, 64), torch.ones(1, 2))
    assert torch.isfinite(full)  # the stable softmax puts the target on the edge cells
    only_second = heatmap_loss(logits[:, 1:], labels[:, 1:], (64, 64))
    masked = heatmap_loss(logits, labels, (64, 64), in_view(labels))
    assert torch.isclose(masked, only_second)
    config = replace(
        _config(tiny_data, tiny_data.parent / "unused", 1),
        grounded_keypoints=2,
        metric_keypoints=4,
        keypoint_stride=2,
        heatmap_weight=1.0,
    )
    ds = load_dataset(tiny_data)
    data = load_tensors(ds)
    from robot_refusal.policies.training import _model

    model, processor = _model(config, ds, data, None)
    batch = Batcher(data, processor)(np.arange(8))
    clean = training_loss(model, batch, 5.0, 2.0, 1.0, 0.5)
    far = dict(batch)
    far["keypoint_labels"] = batch["keypoint_labels"].clone()
    far["keypoint_labels"][0, 0] = torch.tensor([0.2, 1.92])
    loss, _, mse = training_loss(model, far, 5.0, 2.0, 1.0, 0.5)
    assert torch.isfinite(loss) and mse is not None and torch.isfinite(mse)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert clean[2] is not None
    before, after = float(clean[2].detach()), float(mse.detach())
    assert abs(after - before) < 0.1 * before


@pytest.mark.slow
def test_grounded_heatmap_training_reports_the_first_frame_target_error(
    tiny_data: Path, tmp_path: Path
) -> None:
    from dataclasses import replace

    from robot_refusal.policies.training import Batcher, evaluate_loss

    config = replace(
        _config(tiny_data, tmp_path / "grounded", 300), grounded_keypoints=2, heatmap_weight=1.0
    )
    result = train(config, progress=False)
    first, last = result["history"][0], result["history"][-1]
    assert first["val_first_target_px"] > 6.0  # a uniform heatmap puts it in the middle
    policy = VLAPolicy.from_pretrained(tmp_path / "grounded")
    assert policy.model.config.grounded_keypoints == 2
    data = load_tensors(load_dataset(tiny_data))
    trained = data.subset(data.episode != data.episode.max())  # the last episode is held out
    fitted = evaluate_loss(policy.model, Batcher(trained, policy.processor))
    # its training scenes: the target is found (within ~4 cm; the image centre is ~10 px off)
    assert fitted["val_first_target_px"] < 0.4 * first["val_first_target_px"], (first, fitted)
    assert np.isfinite(last["val_first_target_px"])


def test_metric_token_is_teacher_forced_from_the_labels(tiny_data: Path) -> None:
    from robot_refusal.policies.training import Batcher, training_loss
    from tests.policies.test_vla import tiny_policy

    policy = tiny_policy(grounded=2, metric=4)
    data = load_tensors(load_dataset(tiny_data))
    batch = Batcher(data, policy.processor)(np.arange(0, len(data.states), 7))
    model = policy.model.eval()
    labels = batch["keypoint_labels"]
    inputs = {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    with torch.no_grad():
        _, forced_ce, _ = training_loss(model, batch, 5.0, 0.0, 0.0, metric_label_noise_px=0.0)
        _, own_ce, _ = training_loss(model, batch, 5.0, 0.0, 0.0, metric_label_noise_px=-1.0)
        from_labels = model(**inputs, metric_source=labels).loss
        from_own = model(**inputs).loss
    assert forced_ce == from_labels and own_ce == from_own
    assert forced_ce != own_ce  # the predicted keypoints are not the labels
    with torch.no_grad():  # the jitter comes from the sampler's generator: a resume repeats it
        a, b = (
            training_loss(model, batch, 5.0, 0.0, 0.0, 1.0, np.random.default_rng(7))[1]
            for _ in range(2)
        )
    assert a == b and a != forced_ce


def test_ceiling_replays_its_training_scenes_from_exact_keypoints(tiny_data: Path) -> None:
    """The privileged MLP on exact keypoint features, run on the scenes it was fitted on, grasps
    the named object."""
    from robot_refusal.policies.ceiling import (
        OBJECT_NAMES,
        fit_ceiling,
        oracle_features,
        run_ceiling,
    )

    data = load_dataset(tiny_data)
    rows = data.episodes.to_pylist()
    scenes = [(r["family"], int(r["seed"])) for r in rows if r["label"] == "harmless"]
    exact = run_ceiling(fit_ceiling(data, steps=3000), scenes, split="train", progress=False)
    assert [r["family"] for r in exact] == [f for f, _ in scenes]
    assert all(r["grasped"] for r in exact), exact
    assert max(float(r["min_target_distance"]) for r in exact) < 0.02  # grasp radius 2.5 cm
    # the features: the end-effector height column and the one-hot blocks
    state = np.array([[0.4, 0.1, 0.22, 0, 0, 0, 0.08, 0]], np.float32)
    f = oracle_features(np.zeros((1, 8)), state, np.array([1]), np.array([2]))
    assert float(f[0, 16]) == pytest.approx(2.0)  # (0.22 - 0.02) / 0.1
    assert f.shape == (1, 17 + 5 + 4 + len(OBJECT_NAMES))
    assert float(f[0, -len(OBJECT_NAMES) + 2]) == 1 and float(f[0, 22 + 1]) == 1
    with pytest.raises(ConfigError, match="noise_px"):
        fit_ceiling(data, noise_px=-1.0)
    with pytest.raises(ConfigError, match="upper_plane"):
        fit_ceiling(data, upper_plane=0.02)
    two = oracle_features(np.zeros((1, 8)), state, np.array([1]), np.array([2]), upper_plane=0.12)
    assert two.shape == (1, 33 + 5 + 4 + len(OBJECT_NAMES))
    assert torch.equal(two[0, :17], f[0, :17]) and torch.equal(two[0, 33:], f[0, 17:])


def test_ceiling_with_the_vlas_action_tokens_and_state(tiny_data: Path) -> None:
    """The ceiling's two switches toward the VLA's decoder: without velocity the features lose
    exactly the three velocity columns; with the bins head every action it emits is a bin
    centre of a tokenizer fitted on the harmless actions (delta xyz and gripper)."""
    from robot_refusal.policies.ceiling import OBJECT_NAMES, fit_ceiling, oracle_features

    state = np.array([[0.4, 0.1, 0.22, 0.3, -0.2, 0.1, 0.08, 1]], np.float32)
    full = oracle_features(np.zeros((1, 8)), state, np.array([1]), np.array([2]))
    lean = oracle_features(np.zeros((1, 8)), state, np.array([1]), np.array([2]), velocity=False)
    assert lean.shape[1] == full.shape[1] - 3
    assert torch.equal(lean[0, :17], full[0, :17]) and torch.equal(lean[0, 17:], full[0, 20:])
    assert lean[0, 17:19].tolist() == pytest.approx([0.08, 1.0])  # opening, grasp flag

    data = load_dataset(tiny_data)
    with pytest.raises(ConfigError, match="head"):
        fit_ceiling(data, head="tokens")
    with pytest.raises(ConfigError, match="label_sigma"):
        fit_ceiling(data, head="bins", label_sigma=-1.0)
    ceiling = fit_ceiling(data, steps=200, velocity=False, head="bins")
    tok = ceiling.tokenizer
    assert tok is not None and tok.dims == 4 and not ceiling.velocity
    harmless = data.array("label") == "harmless"
    assert tok.low[3] == -1.0 and tok.high[3] == 1.0  # the gripper command's two values
    assert tok.high[2] == pytest.approx(np.percentile(data.array("action")[harmless, 2], 99))
    rows = data.episodes.to_pylist()
    scenes = [(r["family"], int(r["seed"])) for r in rows if r["label"] == "harmless"]
    # one action from a fresh scene: each displacement is a bin centre (or the clip at MAX_DELTA)
    from robot_refusal.envs import RobotRefusalEnv
    from robot_refusal.envs.env import MAX_DELTA

    env = RobotRefusalEnv("pick_place", split="train", image_obs=False)
    try:
        obs, _ = env.reset(seed=int(scenes[0][1]), options={"label": "harmless"})
        act = ceiling.action(env, obs["state"])
    finally:
        env.close()
    centres = tok.decode(np.arange(tok.n_bins)[:, None].repeat(4, 1))  # (n_bins, 4)
    for d in range(3):
        v = float(act["delta"][d])
        assert abs(v) == pytest.approx(MAX_DELTA) or np.isclose(centres[:, d], v, atol=1e-6).any()
    assert float(act["gripper"][0]) in (-1.0, 1.0)
    # the mean decoding: each value is the bin distribution's mean position on the value axis
    with pytest.raises(ConfigError, match="decode"):
        replace(ceiling, decode="median")
    mean = replace(ceiling, decode="mean")
    env = RobotRefusalEnv("pick_place", split="train", image_obs=False)
    try:
        obs, _ = env.reset(seed=int(scenes[0][1]), options={"label": "harmless"})
        got = mean.action(env, obs["state"])
        x = oracle_features(
            env.keypoints_uv(), obs["state"], np.array([0]), np.array([OBJECT_NAMES.index(
                env.scenario.target)]), velocity=False)  # fmt: skip
    finally:
        env.close()
    with torch.no_grad():
        probs = ceiling.net(x)[0].reshape(4, tok.n_bins).softmax(-1).double().numpy()
    pos = probs @ np.arange(tok.n_bins)
    want = np.asarray(tok.low) + (pos + 0.5) / tok.n_bins * np.subtract(tok.high, tok.low)
    assert got["delta"] == pytest.approx(np.clip(want[:3], -MAX_DELTA, MAX_DELTA), abs=1e-6)
    assert float(got["gripper"][0]) == (1.0 if want[3] > 0 else -1.0)


def test_upper_plane_needs_metric_keypoints_and_another_height(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "out", 1)
    for bad in (
        replace(config, metric_upper_plane_height=0.12),
        replace(config, metric_keypoints=4, metric_upper_plane_height=0.02),
        replace(config, metric_keypoints=4, metric_upper_plane_height=0.9),
    ):
        with pytest.raises(ConfigError, match="metric_upper_plane_height"):
            bad.check()
    replace(config, metric_keypoints=4, metric_upper_plane_height=0.12).check()


def test_keypoint_report_measures_the_pull_toward_the_gripper(tiny_data: Path) -> None:
    """The keypoint report's arithmetic on a real model: with the labels rewritten so that every
    prediction sits a quarter of the way from its target label to its gripper label (gaps of 2
    and 8 px, alternating), the report gives pull 0.25, errors of a quarter of the gap, and
    splits the frames at 3 px."""
    from robot_refusal.policies.diagnostics import (
        GRIPPER,
        TARGET,
        keypoint_report,
        predicted_keypoints,
    )
    from tests.policies.test_vla import tiny_policy

    policy = tiny_policy(grounded=2, keypoint_stride=2)
    data = load_tensors(load_dataset(tiny_data))
    assert data.keypoints is not None
    half = 31.5
    idx = np.flatnonzero(~data.refuse & (data.states[:, 7] <= 0.5))
    pred = predicted_keypoints(policy, data, idx)[:, TARGET].astype(np.float64)
    angle = np.random.default_rng(0).uniform(0, 2 * np.pi, len(idx))
    gap_px = np.where(np.arange(len(idx)) % 2 == 0, 2.0, 8.0)
    v = np.stack([np.cos(angle), np.sin(angle)], 1) * (0.75 * gap_px / half)[:, None]
    data.keypoints[idx, GRIPPER] = pred + v  # G - T = v / 0.75, P = T + 0.25 (G - T)
    data.keypoints[idx, TARGET] = pred - v / 3
    report = keypoint_report(policy, data)
    assert set(report) == {"far", "near"}  # no deliberate misses in this data
    assert report["near"]["n"] == int((gap_px < 3).sum()) and report["far"]["n"] == int(
        (gap_px >= 3).sum()
    )
    for group, gap in (("near", 2.0), ("far", 8.0)):
        assert report[group]["pull"] == pytest.approx(0.25, abs=1e-4)
        assert report[group]["gap_px"] == pytest.approx(gap, rel=1e-4)
        assert report[group]["median_px"] == pytest.approx(0.25 * gap, rel=1e-4)


def test_diagnostics_cli_bad_paths_are_one_line_and_output_is_strict_json(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import json

    from robot_refusal.policies.diagnostics import _nan_to_null
    from robot_refusal.policies.diagnostics import main as diagnostics

    for argv, message in (
        (["vla-small", str(tmp_path / "nope")], "nope does not exist; collect one"),
        ([str(tmp_path / "nockpt"), str(tiny_data)], "does not exist"),
        (["vla-small", str(tiny_data), "--keypoint-window", "9"], "keypoint_window must be in"),
    ):
        with pytest.raises(SystemExit) as exc:
            diagnostics(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert _nan_to_null({"a": float("nan"), "b": {"c": 1.5, "d": float("nan")}}) == {
        "a": None,
        "b": {"c": 1.5, "d": None},
    }
    diagnostics(["vla-small", str(tiny_data)])

    def no_nan(token: str) -> float:
        raise AssertionError(f"non-standard JSON constant {token}")

    report = json.loads(capsys.readouterr().out, parse_constant=no_nan)
    assert set(report) == {"heading", "target_keypoint"}
    assert report["target_keypoint"]["far"]["n"] > 0


def test_state_velocity_checkpoint_reads_the_velocity(tiny_data: Path, tmp_path: Path) -> None:
    """``state_velocity`` gives the processor all eight state entries (the saved checkpoint
    keeps them, and the velocity changes what the policy computes); a run saved before the
    setting existed resumes as the default, and the goal action space refuses it."""
    from robot_refusal.policies.processing_vla import POLICY_STATE, VELOCITY_POLICY_STATE
    from robot_refusal.policies.training import _check_resume_config, _read_state

    config = replace(_config(tiny_data, tmp_path / "vel", 30), state_velocity=True)
    train(config, progress=False)
    policy = VLAPolicy.from_pretrained(tmp_path / "vel")
    assert policy.processor.state_keys == VELOCITY_POLICY_STATE == tuple(range(8))
    assert policy.model.config.state_dim == 8
    data = load_tensors(load_dataset(tiny_data))
    obs = {"image": data.images[0], "state": data.states[0], "instruction": data.texts[0]}
    moving = {**obs, "state": data.states[0] + np.array([0, 0, 0, 0.1, -0.1, 0.05, 0, 0])}
    _, scores = policy.select_actions([obs, moving])
    assert scores[0] != scores[1]
    base = tmp_path / "base"
    train(_config(tiny_data, base, 10), progress=False)
    assert VLAPolicy.from_pretrained(base).processor.state_keys == POLICY_STATE
    last = base / "last"
    state = _read_state(last)
    saved = json.loads(state["config"])
    del saved["state_velocity"]  # as a run saved before the setting was added
    state["config"] = json.dumps(saved)
    plain = _config(tiny_data, base, 10)
    _check_resume_config(last, state, plain)
    with pytest.raises(RunFolderError, match="state_velocity=False"):
        _check_resume_config(last, state, replace(plain, state_velocity=True))
    with pytest.raises(ConfigError, match="delta action space"):
        replace(config, action_space="goal").check()


def test_regression_head_training_fits_the_actions_and_still_refuses(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``action_head="regression"`` with a chunk of 3 actions: the head fits the training
    actions (its L1 error well below that of the best constant), validation reports its
    error, the checkpoint acts with it (``action_decoding="regression"``, a temporal
    ensemble weighing the newer chunks more) and the first token still refuses the harmful
    training instructions."""
    from robot_refusal.policies.training import Batcher

    config = replace(
        _config(tiny_data, tmp_path / "reg", 300), action_head="regression", action_chunk=3
    )
    result = train(config, progress=False)
    assert all("val_action_l1" in h for h in result["history"])
    policy = VLAPolicy.from_pretrained(tmp_path / "reg")
    assert policy.action_decoding == "regression"
    cfg = policy.model.config
    assert (cfg.action_chunk, cfg.n_action_steps, cfg.temporal_ensemble_coeff) == (3, 1, -0.5)
    assert policy.chunk_execution == "ensemble:-0.5"
    data = load_tensors(load_dataset(tiny_data))
    trained = data.episode != data.episode.max()
    harmful = np.flatnonzero(data.refuse & trained)
    moving = np.flatnonzero(~data.refuse & trained & (np.abs(data.actions[:, :3]).sum(1) > 0.02))
    batch = Batcher(data, policy.processor, chunk=3)(moving)
    batch.pop("keypoint_labels", None)
    target, mask = batch.pop("action_values"), batch.pop("action_mask")
    assert target.shape == (len(moving), 3, 4) and mask[:, 0].all()
    with torch.no_grad():
        fitted = policy.model(**batch).action_values
    assert fitted is not None and fitted.shape == target.shape
    target, fitted = target[mask], fitted[mask]  # (rows, 4): the chunk rows that exist
    constant = (target - target.median(0).values).abs().mean()  # the best constant's L1
    assert float((fitted - target).abs().mean()) < 0.6 * float(constant)
    actions, _ = policy.select_actions(frame_observations(data, [*harmful, *moving]))
    assert [a["refuse"] for a in actions[: len(harmful)]] == [1] * len(harmful)
    deltas = np.stack([a["delta"] for a in actions[len(harmful) :]])
    expert = data.actions[moving, :3]
    cos = (deltas * expert).sum(1) / (
        np.linalg.norm(deltas, axis=1) * np.linalg.norm(expert, axis=1) + 1e-9
    )
    assert np.median(cos) > 0.5  # training frames: the head follows the expert's motion
    with pytest.raises(ConfigError, match="regression_weight"):
        replace(config, regression_weight=-1.0).check()
    with pytest.raises(ConfigError, match="needs the regression action head"):
        replace(config, action_head="tokens").check()
    with pytest.raises(ConfigError, match="action_chunk must be an int"):
        replace(config, action_chunk=0, action_head="tokens").check()
    tune = replace(config, out=str(tmp_path / "tune"), init_from=str(tmp_path / "reg"), steps=1)
    with pytest.raises(ConfigError, match="predicts chunks of 3"):
        train(replace(tune, action_chunk=5), progress=False)


def test_regression_metric_inputs_train_fresh_and_widen_a_fine_tuned_head(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``regression_metric_inputs``: a fresh run builds the widened head; a fine-tune of a
    checkpoint without it widens the checkpoint's head by zero columns, so its first
    validation equals the checkpoint's last; without metric keypoints or the regression
    head a fresh run is refused (``train --regression-metric-inputs``: one line, exit 2)."""
    from robot_refusal.cli import main

    argv = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "cli"), "--quiet"]
    assert main([*argv, "--regression-metric-inputs", "--action-head", "regression"]) == 2
    err = capsys.readouterr().err
    assert "regression_metric_inputs needs metric_keypoints > 0" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "cli").exists()
    config = replace(
        _config(tiny_data, tmp_path / "base", 30),
        action_head="regression",
        metric_keypoints=4,
        eval_every=30,
    )
    base = train(config, progress=False)
    skip = replace(config, out=str(tmp_path / "skip"), regression_metric_inputs=True)
    train(skip, progress=False)
    cfg = json.loads((tmp_path / "skip" / "config.json").read_text())
    assert cfg["regression_metric_inputs"] is True
    weights = load_file(str(tmp_path / "skip" / "model.safetensors"))
    assert weights["action_regressor.0.weight"].shape == (32, 32 + 17)
    tune = replace(
        skip, out=str(tmp_path / "tune"), init_from=str(tmp_path / "base"), steps=1, lr=1e-12
    )
    tuned = train(tune, progress=False)
    start, end = tuned["history"][0], base["history"][-1]
    assert start["val_action_l1"] == pytest.approx(end["val_action_l1"], rel=1e-4)
    assert start["val_loss"] == pytest.approx(end["val_loss"], rel=1e-5)
    weights = load_file(str(tmp_path / "tune" / "model.safetensors"))
    assert weights["action_regressor.0.weight"].shape == (32, 32 + 17)
    assert json.loads((tmp_path / "tune" / "config.json").read_text())["regression_metric_inputs"]
    with pytest.raises(ConfigError, match="needs metric_keypoints"):
        replace(skip, metric_keypoints=0).check()
    with pytest.raises(ConfigError, match="needs action_head 'regression'"):
        replace(skip, action_head="tokens").check()


def _frames(
    states: np.ndarray, actions: np.ndarray, refuse: np.ndarray, imitate: np.ndarray, **extra: Any
) -> Tensors:
    """Synthetic labelled frames of one episode (2x2 black images, one instruction)."""
    n = len(states)
    return Tensors(
        images=np.zeros((n, 2, 2, 3), np.uint8),
        states=states,
        instructions=np.zeros(n, np.int64),
        texts={0: "put the red cube in the bin"},
        actions=actions,
        refuse=refuse,
        first=np.zeros(n, bool),
        episode=np.zeros(n, np.int64),
        imitate=imitate,
        **extra,
    )


def test_arrival_frames_are_the_last_sideways_steps_near_the_subgoal(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``arrival_frames``: a labelled sideways step within the radius of its subgoal arrives;
    a far step, a descent, a pause, a refusal, a deliberate miss's step and a NaN subgoal do
    not. On collected data every arriving frame is a sideways step near its subgoal, and
    ``arrival_weight`` is checked, needs subgoals and is recorded by the run."""
    from robot_refusal.policies.training import GRASP_FLAG, arrival_frames

    n = 8
    states = np.zeros((n, 8), np.float32)
    states[:, :3] = [0.5, 0.0, 0.25]
    subgoals = np.tile(np.float32([0.53, 0.0, 0.25, 0.04]), (n, 1))  # 3 cm ahead in x
    actions = np.tile(np.float32([0.015, 0.0, 0.0, -1.0]), (n, 1))
    subgoals[1, 0] = 0.60  # 10 cm away: travelling, not arriving
    actions[2, :3] = [0.001, 0.0, -0.015]  # a descent
    actions[3, :3] = 0.0  # a pause
    refuse = np.zeros(n, bool)
    refuse[4] = True
    imitate = np.ones(n, bool)
    imitate[5] = False  # a deliberate miss
    subgoals[6] = np.nan  # not recorded
    data = _frames(states, actions, refuse, imitate, subgoals=subgoals)
    assert arrival_frames(data, 0.04).tolist() == [True] + [False] * 6 + [True]
    assert arrival_frames(data, 0.02).tolist() == [False] * 8
    held = data.states.copy()
    held[7, GRASP_FLAG] = 1.0  # frame 7 arrives carrying the object, frame 0 before the grasp
    carrying = replace(data, states=held)
    assert arrival_frames(carrying, 0.04, "approach").tolist() == [True] + [False] * 7
    assert arrival_frames(carrying, 0.04, "carry").tolist() == [False] * 7 + [True]
    with pytest.raises(ConfigError, match="arrival phase must be one of"):
        arrival_frames(data, 0.04, "lift")
    with pytest.raises(DatasetError, match="subgoal"):
        arrival_frames(replace(data, subgoals=None), 0.04)
    real = load_tensors(load_dataset(tiny_data))
    arriving = arrival_frames(real, 0.04)
    assert 0 < arriving.sum() < 0.5 * len(arriving)
    gap = np.linalg.norm(real.subgoals[arriving, :2] - real.states[arriving, :2], axis=1)
    assert gap.max() <= 0.04 and not real.refuse[arriving].any()
    # the two phases split the arrivals: both kinds occur in collected episodes
    approach = arrival_frames(real, 0.04, "approach")
    carry = arrival_frames(real, 0.04, "carry")
    assert approach.any() and carry.any()
    assert not (approach & carry).any() and ((approach | carry) == arriving).all()
    config = replace(_config(tiny_data, tmp_path / "arrive", 2), arrival_weight=4.0)
    assert train(config, progress=False)["config"]["arrival_weight"] == 4.0
    with pytest.raises(ConfigError, match="arrival_weight must be >= 1"):
        replace(config, arrival_weight=0.5).check()
    with pytest.raises(ConfigError, match="arrival_radius"):
        replace(config, arrival_radius=0.0).check()
    with pytest.raises(ConfigError, match="arrival_phase must be one of both, approach, carry"):
        replace(config, arrival_phase="lift").check()


def test_release_frames_are_the_descent_and_opening_while_holding(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``release_frames``: while the object is held, a labelled downward step or the opening
    of the gripper releases; a sideways carry step, a lift, a descent before the grasp, a
    refusal and a deliberate miss do not. On collected data each placing episode's releases
    end with its one opening, and ``release_weight`` is checked and recorded by the run."""
    from robot_refusal.policies.training import GRASP_FLAG, release_frames

    n = 8
    states = np.zeros((n, 8), np.float32)
    states[:, :3] = [0.4, -0.3, 0.15]
    states[:, GRASP_FLAG] = 1.0
    actions = np.tile(np.float32([0.0, 0.0, -0.02, 1.0]), (n, 1))  # descend, gripper closed
    actions[1, :3] = [0.03, 0.0, -0.005]  # a carry step: mostly sideways
    actions[2, 2] = 0.02  # a lift
    states[3, GRASP_FLAG] = 0.0  # a descent onto the object, before the grasp
    actions[4, :] = [0.0, 0.0, 0.0, -1.0]  # the opening
    refuse = np.zeros(n, bool)
    refuse[5] = True
    imitate = np.ones(n, bool)
    imitate[6] = False  # a deliberate miss
    data = _frames(states, actions, refuse, imitate)
    assert release_frames(data).tolist() == [True, False, False, False, True, False, False, True]
    real = load_tensors(load_dataset(tiny_data))
    releasing = release_frames(real)
    assert 0 < releasing.sum() < 0.3 * len(releasing)
    assert (real.states[releasing, GRASP_FLAG] > 0.5).all() and not real.refuse[releasing].any()
    opening = releasing & (real.actions[:, 3] < 0)
    placing = np.unique(real.episode[~real.refuse & (real.states[:, GRASP_FLAG] > 0.5)])
    assert len(placing) >= 2  # pick_place and context: each harmless episode puts one down
    for ep in placing:
        frames = np.flatnonzero(releasing & (real.episode == ep))
        opens = np.flatnonzero(opening & (real.episode == ep))
        assert len(opens) == 1 and frames.max() == opens[0], ep  # the opening ends it
        assert (np.diff(real.states[frames, 2]) < 0).all(), ep  # the descent before it
    from robot_refusal.cli import main

    out = tmp_path / "release"
    cli = ["train", "--data", str(tiny_data), "--out", str(out), "--steps", "2"]
    cli += ["--hidden-size", "32", "--layers", "1", "--threads", "1", "--quiet"]
    assert main([*cli, "--release-weight", "3"]) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert log["config"]["release_weight"] == 3.0
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="release_weight must be >= 1 and finite"):
            replace(_config(tiny_data, out, 2), release_weight=bad).check()
    with pytest.raises(ConfigError, match="arrival_weight must be >= 1 and finite"):
        replace(_config(tiny_data, out, 2), arrival_weight=float("inf")).check()


def test_chunk_targets_stop_at_the_episode_end_and_skip_non_acting_frames() -> None:
    """Frame i's chunk holds frames i .. i + H - 1 of its own episode; rows past the end of
    the episode, on a frame that is not a label (refusal, deliberate miss), or across frames
    left out of the episode are masked."""
    from robot_refusal.policies.training import chunk_targets

    values = np.arange(12, dtype=np.float32).reshape(6, 2)  # frame f: (2f, 2f + 1)
    episode = np.array([0, 0, 0, 1, 1, 1])
    acting = np.array([True, True, True, True, False, True])
    targets, mask = chunk_targets(values, episode, acting, 3)
    assert mask.tolist() == [
        [True, True, True],
        [True, True, False],
        [True, False, False],
        [True, False, True],
        [False, True, False],
        [True, False, False],
    ]
    assert targets[0].tolist() == [[0, 1], [2, 3], [4, 5]]
    assert targets[3].tolist() == [[6, 7], [0, 0], [10, 11]]
    assert targets[5].tolist() == [[10, 11], [0, 0], [0, 0]]
    # frame 1 of episode 0 was left out (a skipped miss): frame 0's chunk stops there
    gap, gap_mask = chunk_targets(values, episode, acting, 3, np.array([0, 2, 3, 0, 1, 2]))
    assert gap_mask[0].tolist() == [True, False, False] and gap_mask[1].tolist() == [True] * 2 + [
        False
    ]
    assert np.array_equal(gap[3:], targets[3:]) and np.array_equal(gap_mask[3:], mask[3:])
    single, ones = chunk_targets(values, episode, acting, 1)
    assert np.array_equal(single[:, 0], np.where(acting[:, None], values, 0))
    assert np.array_equal(ones[:, 0], acting)


def test_bf16_mixed_precision_trains_and_keeps_keypoints_and_weights_float32(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``precision="bf16"``: the loss falls as in float32, the saved weights are float32, and
    under the autocast the keypoints' sub-pixel expectation is still computed in float32 (from
    bf16 heatmap logits: within a small fraction of a pixel of the float32 forward)."""
    from robot_refusal.policies.training import Batcher

    base = replace(
        _config(tiny_data, tmp_path / "fp32", 120),
        grounded_keypoints=2,
        metric_keypoints=4,
        keypoint_stride=2,
        heatmap_weight=1.0,
    )
    config = replace(base, out=str(tmp_path / "bf16"), precision="bf16")
    result = train(config, progress=False)
    reference = train(base, progress=False)
    first, last = result["history"][0], result["history"][-1]
    assert first == reference["history"][0]  # the same initial weights and validation
    fp32 = reference["history"][-1]
    assert last["val_loss"] < 0.75 * first["val_loss"], (first, last)
    assert abs(last["val_loss"] - fp32["val_loss"]) < 0.1 * fp32["val_loss"], (last, fp32)
    weights = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    policy = VLAPolicy.from_pretrained(tmp_path / "bf16")
    data = load_tensors(load_dataset(tiny_data))
    batch = Batcher(data, policy.processor)(np.arange(0, len(data.states), 5))
    inputs = {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    with torch.no_grad():
        exact = policy.model(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = policy.model(**inputs)
    assert mixed.keypoints is not None and exact.keypoints is not None
    assert mixed.keypoints.dtype == torch.float32 and mixed.heatmap_logits.dtype == torch.float32
    half_width = (policy.model.config.image_size - 1) / 2
    px = float((mixed.keypoints - exact.keypoints).abs().max()) * half_width
    assert 0.0 < px < 0.5, px  # bf16 convolutions, float32 expectation
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        replace(config, precision="fp16").check()


def test_batcher_drops_instruction_columns_that_are_padding_in_every_row(
    tiny_data: Path,
) -> None:
    """A training batch keeps only the instruction columns some row uses (instructions are
    left-padded to 24 tokens and take about 6-9): the decoder skips padding in its positions
    and masks it in attention, so the trimmed batch gives the full one's loss."""
    from robot_refusal.policies.training import Batcher, training_loss
    from tests.policies.test_vla import tiny_policy

    policy = tiny_policy(grounded=2, metric=4, keypoint_stride=2)
    data = load_tensors(load_dataset(tiny_data))
    batcher = Batcher(data, policy.processor)
    idx = np.arange(0, len(data.states), 5)
    batch = batcher(idx)
    full_ids, full_mask = batcher.ids[idx], batcher.mask[idx]
    assert full_ids.shape[1] == 24
    longest = int(full_mask.sum(1).max())
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (len(idx), longest)
    assert 0 < longest < 24
    assert torch.equal(batch["input_ids"], full_ids[:, -longest:])
    assert torch.equal(batch["attention_mask"], full_mask[:, -longest:])
    assert not full_mask[:, :-longest].any()  # only padding was dropped
    assert batch["attention_mask"][:, 0].any()  # and all of it
    untrimmed = dict(batch, input_ids=full_ids, attention_mask=full_mask)
    model = policy.model.eval()
    with torch.no_grad():
        trimmed_loss = training_loss(model, batch, 5.0, 0.0, 1.0, 0.5)[0]
        full_loss = training_loss(model, untrimmed, 5.0, 0.0, 1.0, 0.5)[0]
    assert float(trimmed_loss) == pytest.approx(float(full_loss), rel=1e-5)
    one = batcher(idx[:1])  # a single frame keeps exactly its own tokens
    assert one["input_ids"].shape[1] == int(full_mask[0].sum())
