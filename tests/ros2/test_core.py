"""The bridge's ROS-free core, without rclpy: conversions, safety layer, supervisor, config."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from robot_refusal.envs import RobotRefusalEnv
from robot_refusal.envs.scene import ZONE_RADIUS
from robot_refusal.ros2.config import POLICY_PARAMS, ROBOT_PARAMS, defaults, validate
from robot_refusal.ros2.convert import (
    InvalidMessageError,
    check_instruction,
    image_from_fields,
    image_to_fields,
    joint_positions,
    person_from_positions,
    seconds_to_stamp,
    stamp_to_seconds,
)
from robot_refusal.ros2.kinematics import PandaKinematics
from robot_refusal.ros2.safety import Limits, in_zone, limit_velocity, zone_distance
from robot_refusal.ros2.steering import RobotState
from robot_refusal.ros2.supervisor import Supervisor

WANTED = [f"panda_joint{i}" for i in range(1, 8)]


def test_core_imports_without_rclpy() -> None:
    import importlib
    import subprocess

    code = (
        "import sys; import robot_refusal.ros2.safety, robot_refusal.ros2.supervisor, "
        "robot_refusal.ros2.convert, robot_refusal.ros2.config, robot_refusal.cli; "
        "assert 'rclpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    importlib.import_module("robot_refusal.ros2")


def test_image_round_trip_bgr_and_padding() -> None:
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    h, w, enc, step, data = image_to_fields(img)
    assert np.array_equal(image_from_fields(h, w, enc, step, data, (64, 64)), img)
    bgr = img[..., ::-1].tobytes()
    assert np.array_equal(image_from_fields(64, 64, "bgr8", 192, bgr, (64, 64)), img)
    padded = np.concatenate([img.reshape(64, 192), np.zeros((64, 8), np.uint8)], 1).tobytes()
    assert np.array_equal(image_from_fields(64, 64, "rgb8", 200, padded, (64, 64)), img)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((64, 64, "mono8", 64, b"\0" * 4096), "encoding"),
        ((32, 32, "rgb8", 96, b"\0" * 3072), "32x32"),
        ((64, 64, "rgb8", 192, b"\0" * 100), "bytes"),
        ((64, 64, "rgb8", 100, b"\0" * 6400), "step"),
    ],
)
def test_bad_images_are_rejected(args: tuple, match: str) -> None:
    with pytest.raises(InvalidMessageError, match=match):
        image_from_fields(*args, (64, 64))


def test_joint_positions_order_and_rejections() -> None:
    names = [*reversed(WANTED), "panda_finger_joint1", "other"]
    pos = [*range(7, 0, -1), 0.04, 9.0]
    assert joint_positions(names, pos, WANTED).tolist() == list(range(1, 8))
    with pytest.raises(InvalidMessageError, match="NaN"):
        joint_positions(WANTED, [0, 0, float("nan"), 0, 0, 0, 0], WANTED)
    with pytest.raises(InvalidMessageError, match=r"lacks.*Did you mean 'panda_jiont1'"):
        joint_positions(["panda_jiont1", *WANTED[1:]], [0] * 7, WANTED)
    with pytest.raises(InvalidMessageError, match="names but"):
        joint_positions(WANTED, [0] * 6, WANTED)
    with pytest.raises(InvalidMessageError, match="repeats"):
        joint_positions(WANTED + WANTED[:1], [0] * 8, WANTED)


def test_instruction_and_stamps() -> None:
    assert check_instruction("  Put the Cube in the bin ", 256) == "put the cube in the bin"
    for bad, match in (
        ("a" * 100_000, "100000 characters"),
        ("   ", "empty"),
        ("a\x00b", "control"),
    ):
        with pytest.raises(InvalidMessageError, match=match):
            check_instruction(bad, 256)
    assert seconds_to_stamp(12.5) == (12, 500_000_000)
    assert stamp_to_seconds(*seconds_to_stamp(3.25)) == 3.25


LIM = Limits(np.array([0.25, -0.45, 0.005]), np.array([0.85, 0.45, 0.5]))
PERSON = person_from_positions([(0.6, 0.0, 0.03), (1.1, 0.14, 0.35)], 0.0)


def test_speed_accel_and_workspace_limits() -> None:
    ee, dt = np.array([0.4, 0.0, 0.2]), 0.1
    out = limit_velocity(ee, np.array([1.0, 0, 0]), np.array([0.25, 0, 0]), dt, LIM)
    assert np.allclose(out.velocity, [0.25, 0, 0]) and out.reasons == ("speed",)
    out = limit_velocity(ee, np.array([0.25, 0, 0]), np.array([-0.25, 0, 0]), dt, LIM)
    assert np.allclose(out.velocity, [-0.05, 0, 0]) and "accel" in out.reasons
    edge = np.array([0.84, 0.0, 0.2])
    out = limit_velocity(edge, np.array([0.2, 0, 0]), np.array([0.2, 0, 0]), dt, LIM)
    assert np.allclose(edge + out.velocity * dt, [0.85, 0, 0.2]) and out.reasons == ("workspace",)
    outside = np.array([0.9, 0.0, 0.2])  # may only come back
    out = limit_velocity(outside, np.array([0.1, 0, 0]), np.zeros(3), dt, LIM)
    assert out.velocity[0] <= 0
    assert limit_velocity(ee, np.array([np.nan, 0, 0]), np.zeros(3), dt, LIM).velocity.tolist() == [
        0,
        0,
        0,
    ]


def test_keepout_never_entered_whatever_the_commands() -> None:
    rng = np.random.default_rng(0)
    dt = 0.1
    for _ in range(20):
        ee, v_prev = np.array([0.4, rng.uniform(-0.3, 0.3), 0.1]), np.zeros(3)
        for _ in range(60):  # an adversarial policy: always straight at the hand, plus noise
            wanted = (np.array([0.6, 0.0, 0.03]) - ee) * 5 + rng.normal(0, 0.3, 3)
            out = limit_velocity(ee, wanted, v_prev, dt, LIM, PERSON)
            v_prev = out.velocity
            ee = ee + out.velocity * dt
            assert not bool(in_zone(ee, PERSON, LIM)), ee
            assert np.all(ee >= LIM.workspace_min - 1e-9) and np.all(ee <= LIM.workspace_max + 1e-9)
        assert zone_distance(ee, PERSON.points) >= ZONE_RADIUS


def test_keepout_slides_and_lets_a_robot_inside_leave() -> None:
    ee = np.array([0.6, -0.16, 0.05])  # beside the hand, moving across it -> slides
    out = limit_velocity(
        ee, np.array([0.0, 0.25, 0.0]), np.array([0.0, 0.25, 0.0]), 0.1, LIM, PERSON
    )
    assert "keepout" in out.reasons and not in_zone(ee + 2 * 0.1 * out.velocity, PERSON, LIM)
    inside = np.array([0.6, 0.05, 0.05])
    stay = limit_velocity(inside, np.array([0.0, -0.05, 0]), np.zeros(3), 0.1, LIM, PERSON)
    assert np.allclose(stay.velocity, 0) and stay.reasons == ("keepout",)
    leave = limit_velocity(inside, np.array([0.0, 0.1, 0]), np.zeros(3), 0.1, LIM, PERSON)
    assert leave.velocity[1] > 0


def test_supervisor_estop_latch_staleness_refusal_and_epochs() -> None:
    s = Supervisor(stale_timeout=0.25, person_timeout=1.0, overrun=0.2)
    assert s.check(0.0).state == "idle"
    s.set_instruction("put the cube in the bin")
    assert s.check(0.0).reason == "waiting for image"
    s.received("image", 0.0), s.received("joints", 0.0)
    assert s.check(0.1).motion
    epoch = s.policy_started(0.1)
    s.stop("test")
    assert not s.may_publish(epoch, 0.15) and s.check(0.15).state == "stopped"
    s.policy_finished()
    s.received("image", 0.2), s.received("joints", 0.2)
    assert s.check(0.2).state == "stopped"  # latched, fresh inputs do not release it
    assert s.rearm() == (True, "re-armed (was stopped: test)") and s.rearm()[0] is False
    assert s.check(0.3).motion and not s.check(0.5).motion  # 0.3 s old > 0.25
    s.received("image", 0.5), s.received("joints", 0.5)
    s.rejected("joints", "NaN")
    assert s.check(0.5).reason == "joints rejected: NaN"
    s.received("joints", 0.55)
    s.refuse()
    assert s.check(0.6).state == "refused"
    assert not s.set_instruction("put the cube in the bin")  # same text: still refused
    assert s.set_instruction("put the cup in the bin") and s.check(0.6).motion
    s.policy_started(0.6)
    s.received("image", 0.7), s.received("joints", 0.7)
    assert "overran" in s.check(0.85).reason
    s.policy_finished("RuntimeError: boom")
    assert (
        s.check(0.7).reason.startswith("policy raised") and s.check(0.7, retry_policy=True).motion
    )


def test_parameter_tables_and_validation() -> None:
    for specs in (POLICY_PARAMS, ROBOT_PARAMS):
        assert validate(specs, defaults(specs)) == []
        assert len({s.name for s in specs}) == len(specs)
    bad = {"max_speed": -1.0, "rate_hz": float("nan"), "twist_topic": "not a topic", "trigger": "x"}
    assert len(validate(POLICY_PARAMS, bad)) == 4
    assert validate(POLICY_PARAMS, {"workspace_min": [0, 0, 1.0], "workspace_max": [1.0, 1, 0.5]})
    assert validate(POLICY_PARAMS, {"policy": "x"}, changing=True) == [
        "policy is fixed after start; restart the node to change it"
    ]
    assert validate(POLICY_PARAMS, {"max_speed": 0.1}, changing=True) == []


def test_kinematics_matches_the_simulator_and_state_vector() -> None:
    env = RobotRefusalEnv("pick_place", image_obs=False)
    obs, _ = env.reset(seed=0)
    assert env.robot is not None
    q = env.sim.joint_positions(env.robot.name, range(7))
    kin = PandaKinematics()
    try:
        assert np.allclose(kin.forward(q), obs["state"][:3], atol=1e-5)
        target = obs["state"][:3] + np.array([0.03, -0.02, 0.01])
        assert np.allclose(kin.forward(kin.inverse(q, target)), target, atol=5e-3)
    finally:
        kin.close()
        env.close()
    st = RobotState(grasp_threshold=0.01)
    st.update(np.zeros(3), np.zeros(7), np.array([0.02, 0.02]), 0.0)
    st.update(np.array([0.01, 0, 0]), np.zeros(7), np.array([0.02, 0.02]), 0.1)
    st.gripper_closed = True
    assert np.allclose(st.vector(), [0.01, 0, 0, 0.1, 0, 0, 0.04, 1.0])
