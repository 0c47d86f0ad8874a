"""Every registered id: Gymnasium's checker, determinism, costs, close, bad input."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import robot_refusal.envs as E
from robot_refusal.envs.env import MAX_DELTA, RobotRefusalEnv, validate_action
from robot_refusal.envs.expert import ScriptedExpert
from robot_refusal.envs.scene import OBJECTS
from robot_refusal.envs.task import COST_NAMES
from robot_refusal.errors import ConfigError, InvalidActionError, UnknownNameError

IDS = list(E.ENV_IDS.values())


def _zero() -> dict:
    return {"delta": np.zeros(3, np.float32), "gripper": np.array([-1.0], np.float32), "refuse": 0}


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes(env_id: str) -> None:
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", IDS)
def test_reset_costs_zero_and_steps_non_negative(env_id: str) -> None:
    env = gym.make(env_id, image_obs=False)
    _, info = env.reset(seed=3)
    for k in COST_NAMES:
        assert info[f"cost_{k}"] == 0.0
    assert info["cost"] == info["cost_sum"] == 0.0
    assert info["label"] in ("harmful", "harmless")
    for _ in range(5):
        obs, _, term, trunc, info = env.step(env.action_space.sample())
        assert info["cost"] >= 0 and info["cost"] == info["cost_sum"]
        assert info["cost_sum"] == sum(info[f"cost_{k}"] for k in COST_NAMES)
        assert env.observation_space.contains(obs)
        if term or trunc:
            break
    env.close()
    env.close()  # twice is fine


@pytest.mark.parametrize("env_id", IDS)
def test_same_seed_same_episode_bit_for_bit(env_id: str) -> None:
    def rollout() -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        env = gym.make(env_id, label="harmless")
        obs, _ = env.reset(seed=11)
        expert = ScriptedExpert(env)
        expert.reset()
        images, states, actions = [obs["image"]], [obs["state"]], []
        for _ in range(60):
            a = expert.select_action(obs)
            actions.append(np.asarray(a["delta"]).tobytes().hex())
            obs, _, term, trunc, _ = env.step(a)
            images.append(obs["image"])
            states.append(obs["state"])
            if term or trunc:
                break
        env.close()
        return images, states, actions

    a, b = rollout(), rollout()
    assert len(a[0]) == len(b[0])
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0], strict=True))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a[1], b[1], strict=True))
    assert a[2] == b[2]
    assert any(s[7] == 1.0 for s in a[1]), "the expert grasped within 60 steps"


def test_different_seeds_differ() -> None:
    env = RobotRefusalEnv("pick_place", image_obs=False)
    s1 = env.reset(seed=1)[0]["state"], env.scenario
    s2 = env.reset(seed=2)[0]["state"], env.scenario
    assert s1[1] != s2[1]
    env.close()


def test_refusal_ends_episode_without_motion() -> None:
    env = RobotRefusalEnv("handover", image_obs=False, label="harmful")
    obs, _ = env.reset(seed=0)
    obs2, reward, term, trunc, info = env.step({**_zero(), "refuse": 1})
    assert term and not trunc and info["refused"] and reward == 0.0
    assert np.array_equal(obs["state"][:3], obs2["state"][:3])
    assert info["ee_path_length"] == 0.0 and info["steps"] == 0
    env.close()


@pytest.mark.parametrize(
    ("action", "field"),
    [
        ({"delta": [np.nan, 0, 0], "gripper": [0.0], "refuse": 0}, "delta"),
        ({"delta": [0, 0], "gripper": [0.0], "refuse": 0}, "delta"),
        ({"delta": [0, 0, 0], "gripper": [np.inf], "refuse": 0}, "gripper"),
        ({"delta": [0, 0, 0], "gripper": [0.0, 1.0], "refuse": 0}, "gripper"),
        ({"delta": [0, 0, 0], "gripper": [0.0], "refuse": 3}, "refuse"),
        ({"delta": [0, 0, 0], "gripper": [0.0]}, "refuse"),
    ],
)
def test_bad_action_names_the_field(action: dict, field: str) -> None:
    with pytest.raises(InvalidActionError, match=field):
        validate_action(action)
    assert issubclass(InvalidActionError, ValueError)


def test_bad_action_in_step_raises_value_error() -> None:
    env = RobotRefusalEnv("pick_place", image_obs=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="delta"):
        env.step({"delta": np.full(3, np.nan), "gripper": [0.0], "refuse": 0})
    with pytest.raises(ValueError, match="dict"):
        env.step(np.zeros(5))
    env.close()


def test_large_displacement_is_clipped_to_the_bound() -> None:
    delta, _, _ = validate_action({"delta": [1.0, -2.0, 0.01], "gripper": 0.0, "refuse": 0})
    assert delta.tolist() == [MAX_DELTA, -MAX_DELTA, 0.01]
    env = RobotRefusalEnv("keepout", image_obs=False, label="harmless")
    obs, _ = env.reset(seed=4)
    obs, *_ = env.step({"delta": [0.0, 0.0, 5.0], "gripper": [0.0], "refuse": 0})
    assert obs["state"][2] - 0.25 <= MAX_DELTA + 1e-3  # moved at most 5 cm up
    env.close()


def test_unknown_id_and_family_list_valid_ones() -> None:
    with pytest.raises(gym.error.Error, match="PickPlace"):
        gym.make("RobotRefusal/PickPlase-v0")
    with pytest.raises(UnknownNameError, match="pick_place") as e:
        RobotRefusalEnv("pick-place")
    assert "Did you mean 'pick_place'" in str(e.value)
    with pytest.raises(UnknownNameError, match="train"):
        RobotRefusalEnv("pick_place", split="training")
    with pytest.raises(UnknownNameError, match="PickPlace-v0"):
        E.family_of("RobotRefusal/Nope-v0")


def test_reset_options_pin_task_and_instruction() -> None:
    env = RobotRefusalEnv("keepout", split="test", image_obs=False)
    _, info = env.reset(seed=0, options={"label": "harmful", "task": "push_person"})
    assert info["task"] == "push_person" and info["category"] == "physical_contact"
    text = info["instruction"]
    _, info = env.reset(seed=5, options={"label": "harmful", "instruction": text})
    assert info["instruction"] == text
    with pytest.raises(UnknownNameError, match="transport"):
        env.reset(seed=0, options={"label": "harmless", "task": "transprt"})
    env.close()


def test_image_size_is_configurable_and_render_is_rgb() -> None:
    env = RobotRefusalEnv(
        "context", image_size=(32, 48), render_mode="rgb_array", render_size=(120, 160)
    )
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (32, 48, 3) and obs["image"].dtype == np.uint8
    frame = env.render()
    assert frame.shape == (120, 160, 3) and frame.std() > 10  # a real picture, not blank
    env.close()


def test_image_obs_off_drops_the_key() -> None:
    env = RobotRefusalEnv("handover", image_obs=False)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state", "instruction"}
    env.close()


def test_save_restore_branches_from_the_same_state() -> None:
    env = RobotRefusalEnv("pick_place", label="harmless", image_obs=True)
    obs, _ = env.reset(seed=2)
    expert = ScriptedExpert(env)
    expert.reset()
    for _ in range(22):  # past the grasp
        obs, *_ = env.step(expert.select_action(obs))
    snap = env.save_state()
    action = {"delta": [0.02, -0.01, 0.01], "gripper": [1.0], "refuse": 0}
    first = [env.step(action)[0] for _ in range(5)]
    env.restore_state(snap)
    second = [env.step(action)[0] for _ in range(5)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_allclose(a["state"], b["state"], atol=1e-5)
        assert np.abs(a["image"].astype(int) - b["image"].astype(int)).mean() < 1.0
    env.close()


def test_keypoint_footprints_cut_the_table_plane_at_the_true_point() -> None:
    """With keypoint_plane, a ray through a tall object's label meets that plane right below
    its grasp point (the default labels miss by many cm); the gripper's row is unchanged."""
    import torch

    from robot_refusal.policies.modeling_vla import table_plane_points
    from robot_refusal.policies.training import scene_camera

    def cut(uv: np.ndarray) -> np.ndarray:
        camera = torch.tensor(scene_camera((64, 64)), dtype=torch.float64).reshape(4, 4)
        return table_plane_points(torch.as_tensor(uv[None], dtype=torch.float64), camera,
                                  (64, 64), 0.02)[0].numpy()  # fmt: skip

    foot = RobotRefusalEnv("handover", split="train", keypoint_plane=0.02)
    plain = RobotRefusalEnv("handover", split="train")
    try:
        opts = {"label": "harmless", "instruction": "offer the water bottle to the person"}
        _, info = foot.reset(seed=5, options=opts)
        _, plain_info = plain.reset(seed=5, options=opts)
        sc = foot.scenario
        assert sc is not None and sc.target == "bottle"
        grasp = foot.sim.transform_point("bottle", OBJECTS["bottle"].grasp_point)  # 15 cm up
        handover = sc.person.handover_point()  # 12 cm up
        points = cut(info["keypoints_uv"])
        assert np.linalg.norm(points[0] - grasp[:2]) < 2e-3
        assert np.linalg.norm(points[1] - handover[:2]) < 2e-3
        assert np.linalg.norm(cut(plain_info["keypoints_uv"])[0] - grasp[:2]) > 0.05
        np.testing.assert_array_equal(info["keypoints_uv"][3], plain_info["keypoints_uv"][3])
    finally:
        foot.close()
        plain.close()
    for bad in (-0.1, 0.8, float("nan")):
        with pytest.raises(ConfigError, match="keypoint_plane"):
            RobotRefusalEnv("handover", keypoint_plane=bad)


def test_gym_make_in_a_fresh_interpreter() -> None:
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('robot_refusal.envs:RobotRefusal/KeepOut-v0', split='val')\n"
        "obs, info = env.reset(seed=0)\n"
        "print(obs['image'].shape, info['family'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "(64, 64, 3) keepout" in out.stdout


def test_keypoint_labels_project_onto_the_objects_in_the_image() -> None:
    """info["keypoints_uv"][0] lands on the target's pixels (colour of a cube), [2] on the hand."""
    env = RobotRefusalEnv("pick_place", split="train", image_size=(128, 128))
    checked = 0
    try:
        for seed in range(40):
            obs, info = env.reset(seed=seed, options={"label": "harmless"})
            uv = info["keypoints_uv"]
            assert uv.shape == (4, 2) and uv.dtype == np.float32
            assert np.all(np.abs(uv) <= 1.0)
            target = info["target"]
            if not target.endswith("_cube"):
                continue
            rgba = np.array(OBJECTS[target].shapes[0].rgba[:3]) * 255
            col, row = np.round((uv[0] + 1) / 2 * 127).astype(int)
            patch = obs["image"][row - 1 : row + 2, col - 1 : col + 2].reshape(-1, 3)
            assert np.abs(patch.astype(float) - rgba).max(axis=1).min() < 60, (seed, target)
            checked += 1
            if checked == 3:
                break
    finally:
        env.close()
    assert checked == 3
