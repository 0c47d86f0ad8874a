"""The replanning expert labels states off the expert's path (DAgger's labeller)."""

from __future__ import annotations

import numpy as np
import pytest

from robot_refusal.envs import FAMILIES
from robot_refusal.envs.env import RobotRefusalEnv
from robot_refusal.envs.expert import ScriptedExpert
from robot_refusal.envs.replanning import ReplanningExpert
from robot_refusal.envs.scene import OBJECTS
from robot_refusal.rollout import plan_episodes, run_episode

BANDS = {"release_tolerance": 0.02, "grasp_tolerance": 0.01, "slow_band": 0.3}


@pytest.mark.parametrize("family", FAMILIES)
def test_replanning_alone_solves_harmless_with_zero_cost_and_agrees_with_the_expert(
    family: str,
) -> None:
    """Acting on its own labels it is a complete expert; on the scripted expert's own path its
    labels agree with the expert's actions (to 5 mm per step and the gripper's sign) on most
    steps (the differences: the expert's holds after a grasp, its vertical lift near the
    end of a move)."""
    env = RobotRefusalEnv(family, split="val", image_obs=False)
    replan, expert = ReplanningExpert(env, **BANDS), ScriptedExpert(env, **BANDS)
    agree = []
    for spec in plan_episodes([family], 3, seed=2, labels=["harmless"]):
        rec = run_episode(env, replan, spec)
        assert rec["is_success"] and rec["cost_total"] == 0, (spec, rec["costs"])
        obs, _ = env.reset(seed=spec.seed, options={"label": "harmless"})
        expert.reset()
        replan.reset()
        done = False
        while not done:
            a, b = expert.select_action(obs), replan.select_action(obs)
            same_grip = np.sign(a["gripper"][0]) == np.sign(b["gripper"][0])
            agree.append(bool(np.linalg.norm(a["delta"] - b["delta"]) < 0.005 and same_grip))
            obs, _, terminated, truncated, _ = env.step(a)
            done = terminated or truncated
    env.close()
    assert np.mean(agree) > 0.8, np.mean(agree)


def test_replanning_labels_the_learners_mistakes() -> None:
    """States a learner reaches and the expert never does: a descent beside the object is
    corrected toward the grasp point, a gripper within the band closes, a gripper closed on
    nothing high up opens, one closed low lifts first; harmful instructions are refused."""
    env = RobotRefusalEnv("pick_place", split="val", image_obs=False)
    agent = ReplanningExpert(env, **BANDS)
    (spec,) = plan_episodes(["pick_place"], 1, seed=3, labels=["harmless"])
    env.reset(seed=spec.seed, options={"label": "harmless"})
    assert env.scenario is not None and env.robot is not None
    target = env.scenario.target
    gp = env.sim.transform_point(target, OBJECTS[target].grasp_point)

    def label_at(point: np.ndarray, closed: bool = False) -> dict:
        assert env.robot is not None
        env.robot.home(point)
        if closed:
            env.robot.close_gripper({})  # no candidates: closes on nothing
        return agent.select_action()

    a = label_at(gp + np.array([0.015, 0.0, 0.04]))  # inside the descent cone, 1.5 cm off
    assert a["gripper"][0] < 0 and a["delta"][0] < -0.005 and a["delta"][2] < -0.01
    a = label_at(gp + np.array([0.06, 0.0, 0.03]))  # far beside it, low: up and over first
    assert a["gripper"][0] < 0 and a["delta"][2] > 0
    a = label_at(gp + np.array([0.004, 0.0, 0.004]))  # inside the 1 cm grasp band: close
    assert a["gripper"][0] > 0 and np.allclose(a["delta"], 0)
    a = label_at(gp + np.array([0.05, 0.0, 0.05]), closed=True)  # closed on nothing, low
    assert a["gripper"][0] > 0 and a["delta"][2] > 0.01 and np.allclose(a["delta"][:2], 0)
    a = label_at(np.array([gp[0], gp[1], 0.21]), closed=True)  # closed on nothing, high
    assert a["gripper"][0] < 0 and np.allclose(a["delta"], 0)
    assert agent.imitate
    env.reset(seed=spec.seed, options={"label": "harmful"})
    assert agent.select_action()["refuse"] == 1
    env.close()


def test_transfer_toward_a_point_beside_the_arm_is_pursued_not_recursed() -> None:
    """A point near the middle of the arm (an object the learner knocked there): the vertex on
    the ray from the hand through it lies inside the clearance too, so the transfer pursues
    the detour's circle (it once recursed without end) and keeps the clearance it has."""
    env = RobotRefusalEnv("keepout", split="val", image_obs=False)
    agent = ReplanningExpert(env, **BANDS)
    (spec,) = plan_episodes(["keepout"], 1, seed=3, labels=["harmless"])
    env.reset(seed=spec.seed, options={"label": "harmless"})
    assert env.scenario is not None and env.robot is not None
    person = env.scenario.person
    beside = (person.hand_xy + person.shoulder) / 2 + 0.12 * person.toward_robot()[::-1]
    dest = np.array([*beside, 0.2])
    before = float(person.zone_distance(env.robot.ee_position()))
    action = next(agent._transfer(dest, grip=-1.0))
    after = float(person.zone_distance(env.robot.ee_position() + action["delta"]))
    assert np.linalg.norm(action["delta"]) > 0.005
    assert after >= min(before, agent._carry_radius()) - 0.01
    env.close()
