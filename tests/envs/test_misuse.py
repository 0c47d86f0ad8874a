"""Misuse of the env gives typed, clear errors (found by a new-user trial)."""

from __future__ import annotations

import numpy as np
import pytest

from robot_refusal.envs.env import RobotRefusalEnv
from robot_refusal.envs.expert import ScriptedExpert
from robot_refusal.envs.scene import CONTAINERS
from robot_refusal.envs.sim import PyBulletSim
from robot_refusal.envs.task import ON_FLOOR_Z
from robot_refusal.errors import (
    ConfigError,
    EnvStateError,
    InvalidActionError,
    SimulatorError,
    UnknownNameError,
)

ZERO = {"delta": [0.0, 0.0, 0.0], "gripper": [-1.0], "refuse": 0}


def test_step_after_the_episode_ended_raises() -> None:
    env = RobotRefusalEnv("handover", image_obs=False, label="harmful")
    env.reset(seed=0)
    env.step({**ZERO, "refuse": 1})
    with pytest.raises(EnvStateError, match="reset"):
        env.step(ZERO)  # a refusal cannot be taken back
    env.reset(seed=0)
    env.step(ZERO)  # a new episode steps again
    env.close()
    with pytest.raises(EnvStateError, match="closed"):
        env.reset(seed=0)


def test_step_after_truncation_raises() -> None:
    env = RobotRefusalEnv("pick_place", image_obs=False, label="harmless")
    env.reset(seed=0)
    truncated = False
    for _ in range(env.suite.max_steps):
        *_, terminated, truncated, info = env.step(ZERO)
    assert truncated and not terminated and info["steps"] == env.suite.max_steps
    with pytest.raises(EnvStateError):
        env.step(ZERO)
    env.close()


@pytest.mark.parametrize("task", ["sharp_to_hand", "place_in_container"])
def test_task_option_alone_infers_the_label(task: str) -> None:
    env = RobotRefusalEnv("pick_place", image_obs=False)
    for seed in range(8):
        _, info = env.reset(seed=seed, options={"task": task})
        assert info["task"] == task
        assert info["label"] == ("harmful" if task == "sharp_to_hand" else "harmless")
    env.close()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"label": 1}, ConfigError, "label"),
        ({"task": None, "label": "harmful"}, None, None),
        ({"instruction": ["x"]}, ConfigError, "instruction"),
        ({"labell": "harmful"}, ConfigError, "labell"),
        ({"label": "harmful", "task": "place_in_container"}, ConfigError, "no harmful"),
        ({"instruction": "put the red cube in the moon"}, UnknownNameError, "in all"),
    ],
)
def test_bad_reset_options(options: dict, error: type | None, match: str | None) -> None:
    env = RobotRefusalEnv("pick_place", image_obs=False)
    if error is None:
        env.reset(seed=0, options=options)
    else:
        with pytest.raises(error, match=match) as e:
            env.reset(seed=0, options=options)
        assert len(str(e.value)) < 2000
    env.close()


@pytest.mark.parametrize("size", [(64,), (64, 64, 3), 64, "64", (64.5, 64), (0, 64), None])
def test_bad_image_sizes_are_config_errors(size: object) -> None:
    with pytest.raises(ConfigError, match="positive pixels"):
        RobotRefusalEnv("pick_place", image_size=size)  # type: ignore[arg-type]


def test_snapshot_misuse() -> None:
    env = RobotRefusalEnv("keepout", image_obs=False)
    with pytest.raises(EnvStateError, match="reset"):
        env.save_state()
    env.reset(seed=0)
    snap = env.save_state()
    with pytest.raises(EnvStateError, match="snapshot"):
        env.restore_state(None)  # type: ignore[arg-type]
    env.release_state(snap)
    env.release_state(snap)
    with pytest.raises(EnvStateError, match="released"):
        env.restore_state(snap)
    snap = env.save_state()
    env.reset(seed=0)
    with pytest.raises(EnvStateError, match="another episode"):
        env.restore_state(snap)
    env.close()


def test_complex_or_extra_action_fields_are_rejected() -> None:
    env = RobotRefusalEnv("pick_place", image_obs=False)
    env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="complex"):
        env.step({**ZERO, "delta": np.array([1j, 0, 0])})
    with pytest.raises(InvalidActionError, match="unexpected"):
        env.step({**ZERO, "speed": 1.0})
    env.close()


def test_gui_without_display_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    with pytest.raises(SimulatorError, match="display"):
        PyBulletSim(gui=True)


def test_object_perched_on_a_bin_wall_is_not_a_success() -> None:
    """Success needs the object on the container's floor, not on top of a wall."""
    env = RobotRefusalEnv("pick_place", image_obs=False, label="harmless")
    env.reset(seed=0, options={"task": "place_in_container"})
    sc = env.scenario
    assert sc is not None and env.task is not None
    cont = sc.instruction.container
    assert cont is not None
    cx, cy = sc.containers[cont]
    wall_top = CONTAINERS[cont].rim
    env.sim.set_body_pose(sc.target, (cx, cy, wall_top))  # hovering at wall height, inside
    assert not env.task._placed_in(cont)
    env.sim.set_body_pose(sc.target, (cx, cy, ON_FLOOR_Z - 0.03))
    assert env.task._placed_in(cont)
    env.close()


def test_expert_still_succeeds_after_a_refused_reset_sequence() -> None:
    env = RobotRefusalEnv("context", image_obs=False, label="harmless")
    obs, _ = env.reset(seed=3)
    expert = ScriptedExpert(env)
    expert.reset()
    for _ in range(150):
        obs, _, term, trunc, info = env.step(expert.select_action(obs))
        if term or trunc:
            break
    assert info["is_success"] and info["cost"] == 0
    env.close()
