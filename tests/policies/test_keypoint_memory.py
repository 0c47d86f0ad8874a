"""The keypoint memory: which keypoints it holds, when, and that the decoder reads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robot_refusal.envs.env import STATE_NAMES, RobotRefusalEnv
from robot_refusal.errors import ConfigError
from robot_refusal.policies.keypoint_memory import GRASPED, KeypointMemory
from robot_refusal.policies.policy import VLAPolicy
from tests.policies.test_vla import tiny_policy

PX = 2 / 63  # one pixel of a 64x64 image in [-1, 1] keypoint units


def kp(*rows: tuple[float, float]) -> torch.Tensor:
    """(1, K, 2) keypoints from (x, y) rows given in pixels from the image centre."""
    return torch.tensor([[[x * PX, y * PX] for x, y in rows]], dtype=torch.float32)


def test_grasp_flag_index_is_the_env_states() -> None:
    assert STATE_NAMES[GRASPED] == "grasped"


def test_holds_static_keypoints_while_the_gripper_is_near_and_follows_them_when_far() -> None:
    memory = KeypointMemory(3.0, (64, 64))
    # step 0: gripper 20 px from everything; every keypoint is acquired and passed through
    first = kp((0, 0), (10, 0), (-10, 0), (0, 20), (5, 5))
    assert torch.equal(memory(first, grasped=False), first)
    # step 1: target still 20 px from the gripper: the new estimate is taken
    second = kp((0.5, 0), (10, 0), (-10, 0), (0, 15), (6, 6))
    assert torch.equal(memory(second, grasped=False), second)
    # step 2: the gripper is 1 px from the held target; the target's estimate is pulled
    # toward it, and the decoder reads the held one. Destination, hand, gripper and the
    # unlabelled keypoint are live.
    third = kp((0.5, 0.8), (10, 1), (-10, 1), (0.5, 1), (7, 7))
    out = memory(third, grasped=False)
    assert torch.allclose(out[0, 0], second[0, 0]) and not torch.equal(out[0, 0], third[0, 0])
    assert torch.equal(out[0, 1:], third[0, 1:])
    # the gripper moves 3.5 px from the held target: the new estimate is taken
    fourth = kp((0.5, 0.2), (10, 1), (-10, 1), (4, 0), (7, 7))
    assert torch.equal(memory(fourth, grasped=False), fourth)
    assert np.allclose(memory.held[0], fourth[0, 0].numpy())


def test_target_follows_the_grasped_object_and_is_acquired_afresh_after_release() -> None:
    memory = KeypointMemory(3.0, (64, 64))
    memory(kp((0, 0), (20, 0), (-20, 0), (0, 20)), grasped=False)
    held = kp((0, 1), (20, 0), (-20, 0), (0, 1))
    assert torch.allclose(memory(held, grasped=False)[0, 0], kp((0, 0))[0, 0])
    # grasped: the object moves with the gripper; the target is read live (the destination,
    # 20 px away, too)
    lifted = kp((0, -5), (20, 0), (-20, 0), (0, -5))
    assert torch.equal(memory(lifted, grasped=True), lifted)
    assert np.isnan(memory.held[0]).all()
    # released next to the gripper: the first estimate is the new held one
    dropped = kp((4, 4), (20, 0), (-20, 0), (4, 5))
    assert torch.equal(memory(dropped, grasped=False), dropped)
    later = kp((4, 5), (20, 0), (-20, 0), (4, 5))
    assert torch.allclose(memory(later, grasped=False)[0, 0], dropped[0, 0])
    # the destination is held near the gripper even while grasped
    at_dest = kp((19, 0), (19.5, 0.5), (-20, 0), (19, 0))
    assert torch.allclose(memory(at_dest, grasped=True)[0, 1], kp((20, 0))[0, 0])


def test_reset_forgets_and_bad_input_is_refused() -> None:
    memory = KeypointMemory(3.0, (64, 64))
    memory(kp((0, 0), (9, 0), (-9, 0), (0, 9)), grasped=False)
    memory.reset()
    assert np.isnan(memory.held).all()
    near = kp((1, 1), (9, 0), (-9, 0), (1, 0))
    assert torch.equal(memory(near, grasped=False), near)  # nothing held: read live
    with pytest.raises(ConfigError, match="shape"):
        memory(kp((0, 0), (1, 1), (2, 2)), grasped=False)  # no gripper keypoint
    with pytest.raises(ConfigError, match="shape"):
        memory(torch.zeros(2, 4, 2), grasped=False)  # one episode at a time
    for radius in (0, -1, 33, float("nan"), True, "3"):
        with pytest.raises(ConfigError, match=r"keypoint_memory|radius"):
            KeypointMemory(radius, (64, 64))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def episode() -> list[dict]:
    """Eight observations of one pick_place test episode under small constant moves."""
    env = RobotRefusalEnv("pick_place", split="test")
    obs, _ = env.reset(seed=3)
    out = [obs]
    for _ in range(7):
        move = {"delta": np.array([0.02, 0.0, -0.01]), "gripper": np.array([-1.0]), "refuse": 0}
        obs, *_ = env.step(move)
        out.append(obs)
    env.close()
    return out


def test_policy_feeds_the_held_keypoints_to_the_decoder(episode: list[dict]) -> None:
    """A policy with ``keypoint_memory`` acts, step by step, as the same weights without it
    fed the keypoints a :class:`KeypointMemory` makes of the model's own predictions; with
    the radius at 32 px the held keypoints differ from the live ones, so the test can fail."""
    with_memory = tiny_policy(seed=2)
    plain = VLAPolicy(tiny_policy(seed=2).model, with_memory.processor)
    with_memory = VLAPolicy(with_memory.model, with_memory.processor, keypoint_memory=32)
    assert with_memory.model.config.keypoint_memory == 32.0
    assert plain.keypoint_memory is None  # its own model's config says 0
    replica = KeypointMemory(32, (64, 64))
    with_memory.reset()
    held_any = False
    for obs in episode:
        inputs = plain.processor([obs])
        with torch.no_grad():
            live = plain.model.embed_prefix(**inputs)[2]  # (1, K, 2)
        expected = replica(live, grasped=False)
        held_any |= not torch.equal(expected, live)
        got = with_memory.select_action(obs)
        ref, _ = plain.select_actions([obs], keypoint_override=expected.numpy())
        for key in ref[0]:
            assert np.array_equal(np.asarray(got[key]), np.asarray(ref[0][key])), key
    assert held_any


def test_keypoint_memory_is_saved_loaded_and_checked(tmp_path: Path) -> None:
    pol = tiny_policy()
    pol.save_pretrained(tmp_path / "ckpt")
    assert VLAPolicy.from_pretrained(tmp_path / "ckpt").keypoint_memory is None
    loaded = VLAPolicy.from_pretrained(tmp_path / "ckpt", keypoint_memory=4)
    assert loaded.keypoint_memory is not None and loaded.keypoint_memory.radius_px == 4.0
    loaded.save_pretrained(tmp_path / "again")
    again = VLAPolicy.from_pretrained(tmp_path / "again")
    assert again.keypoint_memory is not None and again.keypoint_memory.radius_px == 4.0
    with pytest.raises(ConfigError, match=r"keypoint_memory must be in \[0, 32\]"):
        VLAPolicy.from_pretrained(tmp_path / "ckpt", keypoint_memory=-2)
    few = tiny_policy()
    few.model.config.num_keypoints = 3
    with pytest.raises(ConfigError, match=">= 4 keypoints"):
        VLAPolicy(few.model, few.processor, keypoint_memory=3)
