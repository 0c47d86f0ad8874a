"""Acceptance of the scripted experts over the test split (>= 50 episodes per family and label)."""

from __future__ import annotations

import numpy as np
import pytest

from robot_refusal.envs import FAMILIES
from robot_refusal.envs.env import RobotRefusalEnv
from robot_refusal.envs.expert import SLOW, ScriptedExpert, UnsafeExpert, plan_path
from robot_refusal.envs.scene import OBJECTS, ZONE_RADIUS, Person
from robot_refusal.rollout import plan_episodes, run_episode

N = 50


def _run(family: str, label: str, agent_cls: type) -> list[dict]:
    env = RobotRefusalEnv(family, split="test", image_obs=False)
    agent = agent_cls(env)
    plan = plan_episodes([family], N, seed=0, labels=[label])
    records = [run_episode(env, agent, spec) for spec in plan]
    env.close()
    return records


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_solves_harmless_with_zero_cost(family: str) -> None:
    recs = _run(family, "harmless", ScriptedExpert)
    success = np.mean([r["is_success"] for r in recs])
    assert len(recs) == N
    assert success >= 0.98, [r["instruction"] for r in recs if not r["is_success"]]
    assert all(r["cost_total"] == 0 for r in recs), [r["costs"] for r in recs if r["cost_total"]]
    assert not any(r["refused"] for r in recs)
    if family == "keepout":  # every transport crosses the person: the expert is cautious
        assert all(r["cautious_steps"] > 0 for r in recs)


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_refuses_every_harmful_at_the_first_step(family: str) -> None:
    recs = _run(family, "harmful", ScriptedExpert)
    assert all(r["refused"] and r["steps"] == 0 and r["ee_path_length"] == 0 for r in recs)
    assert not any(r["unsafe_outcome"] for r in recs)


@pytest.mark.parametrize("family", FAMILIES)
def test_unsafe_expert_fires_costs_and_unsafe_outcomes(family: str) -> None:
    recs = _run(family, "harmful", UnsafeExpert)
    unsafe = np.mean([r["unsafe_outcome"] and r["cost_total"] > 0 for r in recs])
    assert unsafe >= 0.95, [r["instruction"] for r in recs if not r["unsafe_outcome"]]
    categories = {r["category"] for r in recs}
    assert "none" not in categories


def test_unsafe_outcomes_fire_the_matching_cost_parts() -> None:
    env = RobotRefusalEnv("keepout", split="test", image_obs=False)
    agent = UnsafeExpert(env)
    for task, part in [("shortest_path", "keepout"), ("push_person", "contact")]:
        (spec,) = plan_episodes(["keepout"], 1, seed=1, labels=["harmful"])
        env.reset(seed=spec.seed, options={"label": "harmful", "task": task})
        agent.reset()
        totals = 0.0
        obs = None
        for _ in range(200):
            obs, _, term, trunc, info = env.step(agent.select_action(obs))
            totals += info[f"cost_{part}"]
            if term or trunc:
                break
        assert info["unsafe_outcome"] and totals > 0, (task, part)
    env.close()


def test_detour_keeps_clear_of_the_zone() -> None:
    person = Person(hand=(0.52, 0.0), torso_y=0.0)
    start, goal = np.array([0.5, 0.3]), np.array([0.5, -0.3])
    path, detour = plan_path(start, goal, person, ZONE_RADIUS + 0.05)
    assert detour
    pts = np.concatenate(
        [np.linspace(a, b, 50) for a, b in zip([start, *path[:-1]], path, strict=True)]
    )
    assert person.zone_distance(pts).min() >= ZONE_RADIUS + 0.05 - 1e-3
    straight, detour = plan_path(np.array([0.35, 0.3]), np.array([0.35, 0.35]), person, 0.15)
    assert not detour and len(straight) == 1


def test_perturbed_expert_is_seeded_and_labels_are_clean() -> None:
    from robot_refusal.envs.expert import PerturbedExpert

    def run() -> tuple[list[np.ndarray], list[np.ndarray], bool]:
        env = RobotRefusalEnv("pick_place", split="test", image_obs=False, label="harmless")
        agent = PerturbedExpert(ScriptedExpert(env), sigma=0.004)
        obs, _ = env.reset(seed=5)
        agent.reset()
        executed, labels = [], []
        for _ in range(150):
            a = agent.select_action(obs)
            executed.append(np.asarray(a["delta"]))
            assert agent.label_action is not None
            labels.append(np.asarray(agent.label_action["delta"]))
            obs, _, term, trunc, info = env.step(a)
            if term or trunc:
                break
        env.close()
        return executed, labels, bool(info["is_success"])

    (e1, l1, ok1), (e2, _, _) = run(), run()
    assert all(np.array_equal(a, b) for a, b in zip(e1, e2, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(e1, l1, strict=True))  # noise applied
    assert ok1  # the expert recovers from the noise


@pytest.mark.parametrize("family", ["keepout", "handover"])
def test_expert_actions_are_the_displacement_toward_its_subgoal(family: str) -> None:
    """The subgoal labels of goal-space training reproduce every expert displacement."""
    from robot_refusal.envs.expert import goal_displacement

    env = RobotRefusalEnv(family, split="test", image_obs=False, label="harmless")
    expert = ScriptedExpert(env)
    obs, _ = env.reset(seed=3)
    expert.reset()
    slowed = moved = held = 0
    previous = None
    for _ in range(180):
        a = expert.select_action(obs)
        goal = expert.subgoal
        if goal[3] == 0 and previous is not None:  # a hold names the last point moved to
            np.testing.assert_array_equal(goal[:3], previous[:3])
        previous = goal
        again = goal_displacement(goal[:3], goal[3], obs["state"][:3]).astype(np.float32)
        np.testing.assert_array_equal(again, a["delta"])
        moved += bool(np.any(a["delta"]))
        slowed += bool(np.isclose(goal[3], 0.015))
        held += goal[3] == 0
        obs, _, term, trunc, info = env.step(a)
        if term or trunc:
            break
    env.close()
    assert info["is_success"] and moved > 20 and held > 0
    assert slowed > 0  # near the person the cap is SLOW


def test_goal_displacement_caps_and_clips() -> None:
    from robot_refusal.envs.expert import goal_displacement

    ee = np.array([0.5, 0.0, 0.2])
    x, y = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    np.testing.assert_allclose(goal_displacement(ee + 0.1 * x, 0.04, ee), 0.04 * x)
    np.testing.assert_allclose(goal_displacement(ee + 0.01 * x, 0.04, ee), 0.01 * x)
    np.testing.assert_array_equal(goal_displacement(ee + 0.1 * x, 0.0, ee), 0 * x)
    np.testing.assert_array_equal(goal_displacement(ee, 0.04, ee), 0 * x)
    np.testing.assert_allclose(goal_displacement(ee + x + y, 1.0, ee), 0.05 * (x + y))
    batch = goal_displacement(np.zeros((2, 3)), np.array([0.01, 0.02]), np.ones((2, 3)))
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), [0.01, 0.02])


def test_release_tolerance_opens_the_gripper_higher_and_still_places() -> None:
    """A looser release band: the gripper opens a step earlier on the way down (higher above
    the floor), and every pick-and-place still ends with the object resting in its container."""
    env = RobotRefusalEnv("pick_place", split="test", image_obs=False)
    heights: dict[float, list[float]] = {0.004: [], 0.02: []}
    for tol, out in heights.items():
        agent = ScriptedExpert(env, release_tolerance=tol)
        for spec in plan_episodes(["pick_place"], 6, seed=0, labels=["harmless"]):
            env.reset(seed=spec.seed, options={"label": "harmless"})
            agent.reset()
            done, info, held = False, {}, False
            while not done:
                action = agent.select_action()
                assert env.robot is not None
                if held and action["gripper"][0] <= 0 and env.robot.held is not None:
                    out.append(float(env.robot.ee_position()[2]))  # the opening step
                _, _, terminated, truncated, info = env.step(action)
                held = env.robot.held is not None
                done = terminated or truncated
            assert info["is_success"], (tol, spec)
    env.close()
    assert len(heights[0.02]) == len(heights[0.004]) == 6
    rise = np.subtract(heights[0.02], heights[0.004])  # m, per episode
    assert rise.min() > -0.001 and rise.mean() > 0.005, rise
    with pytest.raises(ValueError, match="release_tolerance"):
        ScriptedExpert(env, release_tolerance=0.05)


def test_grasp_tolerance_closes_on_arrival_instead_of_after_a_stall() -> None:
    """With the default 3 mm band the expert creeps toward a flat object's grasp point for
    several steps before it closes; with a 1 cm band it closes within a step or two of the end
    of the descent, still within the grasp radius, and every episode still succeeds."""
    env = RobotRefusalEnv("context", split="val", image_obs=False)
    waits: dict[float, list[int]] = {0.003: [], 0.01: []}
    for tol, out in waits.items():
        agent = ScriptedExpert(env, release_tolerance=0.02, grasp_tolerance=tol)
        for spec in plan_episodes(["context"], 10, seed=0, labels=["harmless"]):
            env.reset(seed=spec.seed, options={"label": "harmless"})
            agent.reset()
            assert env.scenario is not None and env.robot is not None
            done, info, near = False, {}, 0
            while not done:
                action = agent.select_action()
                point = env.sim.transform_point(
                    env.scenario.target, OBJECTS[env.scenario.target].grasp_point
                )
                dist = float(np.linalg.norm(point - env.robot.ee_position()))
                if action["gripper"][0] > 0 and env.robot.held is None:
                    assert dist < 0.015, (tol, spec, dist)
                    out.append(near)  # steps spent within 1.5 cm before closing
                    near = -1000  # count the first closing only
                near += dist < 0.015
                _, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
            assert info["is_success"], (tol, spec)
    env.close()
    assert len(waits[0.003]) == len(waits[0.01]) == 10
    assert max(waits[0.01]) <= 2 < max(waits[0.003]), waits
    assert sum(waits[0.01]) < sum(waits[0.003]), waits
    with pytest.raises(ValueError, match="grasp_tolerance"):
        ScriptedExpert(env, grasp_tolerance=0.05)


def test_wider_slow_band_slows_down_earlier_and_still_succeeds() -> None:
    """With ``slow_band=0.3`` no step within 0.3 m of the arm is longer than the slow cap
    (the default band moves fast there), every handover still succeeds and none has a cost."""
    env = RobotRefusalEnv("handover", split="val", image_obs=False)
    fast_near: dict[float, int] = {}
    for band in (0.25, 0.3):
        agent = ScriptedExpert(env, release_tolerance=0.02, grasp_tolerance=0.01, slow_band=band)
        fast_near[band] = 0
        for spec in plan_episodes(["handover"], 5, seed=0, labels=["harmless"]):
            env.reset(seed=spec.seed, options={"label": "harmless"})
            agent.reset()
            assert env.scenario is not None and env.robot is not None
            done, info = False, {}
            while not done:
                action = agent.select_action()
                near = env.scenario.person.zone_distance(env.robot.ee_position()) < 0.3
                fast_near[band] += bool(near and np.linalg.norm(action["delta"]) > SLOW + 1e-6)
                _, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                assert info["cost"] == 0, (band, spec)
            assert info["is_success"], (band, spec)
    env.close()
    assert fast_near[0.3] == 0 < fast_near[0.25], fast_near
    for bad in (0.2, 0.5):
        with pytest.raises(ValueError, match="slow_band"):
            ScriptedExpert(env, slow_band=bad)


def test_deliberate_miss_is_masked_and_recovered_from() -> None:
    """With ``miss_rate=1`` the first grasp closes 3-5 cm beside the grasp point on frames marked
    ``imitate`` False; the recovery that follows (recorded) starts with the gripper closed on
    nothing, and the episode still succeeds. The draw follows the reset seed."""
    env = RobotRefusalEnv("pick_place", split="val", image_obs=False)
    agent = ScriptedExpert(env, release_tolerance=0.02, grasp_tolerance=0.01, miss_rate=1.0)
    masks, missed = [], []
    for spec in plan_episodes(["pick_place"], 3, seed=0, labels=["harmless"]):
        for _ in range(2):  # the same seed twice: the same miss
            env.reset(seed=spec.seed, options={"label": "harmless"})
            agent.reset()
            assert env.scenario is not None and env.robot is not None
            mask, done, info, closed_at = [], False, {}, None
            while not done:
                action = agent.select_action()
                mask.append(agent.imitate)
                if closed_at is None and action["gripper"][0] > 0:
                    point = env.sim.transform_point(
                        env.scenario.target, OBJECTS[env.scenario.target].grasp_point
                    )
                    closed_at = float(np.linalg.norm((point - env.robot.ee_position())[:2]))
                    assert not agent.imitate
                if len(mask) > 1 and mask[-1] and not mask[-2]:  # first recovery frame
                    missed.append(env.robot.held is None)  # (a long handle may be caught)
                    if missed[-1]:
                        assert env.robot.gripper_opening() < 0.01  # closed on nothing
                        assert action["gripper"][0] > 0 and action["delta"][2] > 0  # lift
                _, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
            assert info["is_success"], spec
            assert closed_at is not None and 0.025 < closed_at < 0.055, closed_at
            masks.append(mask)
    env.close()
    assert masks[0] == masks[1] and masks[2] == masks[3] and masks[0] != masks[2]
    assert len(missed) == 6 and sum(missed) >= 2, missed
    for mask in masks:
        assert not mask[0] and mask[-1] and 3 < mask.count(False) < len(mask) // 2
    never = ScriptedExpert(env, miss_rate=0.0)
    assert never.imitate and never._miss is None
    with pytest.raises(ValueError, match="miss_rate"):
        ScriptedExpert(env, miss_rate=1.5)
