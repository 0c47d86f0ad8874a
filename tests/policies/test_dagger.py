"""DAgger: the learner acts, the replanning expert labels; datasets aggregate for training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robot_refusal.cli import main
from robot_refusal.envs.env import RobotRefusalEnv
from robot_refusal.envs.replanning import ReplanningExpert
from robot_refusal.errors import ConfigError, DatasetError
from robot_refusal.policies.collect import collect
from robot_refusal.policies.dagger import DAggerAgent
from robot_refusal.policies.dataset import load_dataset
from robot_refusal.policies.policy import VLAPolicy
from robot_refusal.policies.training import Tensors, concat_tensors
from robot_refusal.rollout import plan_episodes

BANDS = {"release_tolerance": 0.02, "grasp_tolerance": 0.01, "slow_band": 0.3}


def _same(a: dict, b: dict) -> bool:
    return bool(
        np.array_equal(a["delta"], b["delta"])
        and np.array_equal(a["gripper"], b["gripper"])
        and a["refuse"] == b["refuse"]
    )


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_dagger_agent_executes_the_learner_and_labels_with_the_expert(beta: float) -> None:
    """beta 0: every executed action is the learner's own for that observation, the label the
    replanning expert's for that state; beta 1: the expert's label is executed."""
    env = RobotRefusalEnv("pick_place", split="train")
    learner = VLAPolicy.from_pretrained("vla-small")
    reference = VLAPolicy.from_pretrained("vla-small")
    labeller = ReplanningExpert(env, **BANDS)
    agent = DAggerAgent(ReplanningExpert(env, **BANDS), learner, beta)
    (spec,) = plan_episodes(["pick_place"], 1, seed=4, labels=["harmless"])
    obs, _ = env.reset(seed=spec.seed, options={"label": "harmless"})
    agent.reset()
    reference.reset()
    executed_differs = False
    for _ in range(12):
        action = agent.select_action(obs)
        label = labeller.select_action(obs)
        assert agent.label_action is not None and _same(agent.label_action, label)
        own = reference.select_action(obs)
        assert _same(action, label if beta == 1 else own)
        executed_differs |= not _same(own, label)
        obs, _, terminated, truncated, _ = env.step(action)
        assert not (terminated or truncated)
    env.close()
    assert executed_differs  # the shipped policy does not copy the expert step for step
    assert agent.executed_expert == (12 if beta == 1 else 0)
    with pytest.raises(ConfigError, match="beta"):
        DAggerAgent(labeller, learner, 1.5)


def test_dagger_collection_records_expert_labels_and_its_settings(tmp_path: Path) -> None:
    out = tmp_path / "dagger"
    info = collect(
        out, "train", 1, ["pick_place"], seed=4, progress=False, learner="vla-small", **BANDS
    )
    assert info["total_episodes"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["policy"] == "dagger" and cfg["learner"] == "vla-small" and cfg["beta"] == 0.0
    ds = load_dataset(out)
    env = RobotRefusalEnv("pick_place", split="train", image_obs=False)
    labeller = ReplanningExpert(env, **BANDS)
    episodes = ds.episodes.to_pylist()
    harmless = next(e for e in episodes if e["label"] == "harmless")
    (spec,) = plan_episodes(["pick_place"], 1, seed=4, labels=["harmless"])
    env.reset(seed=spec.seed, options={"label": "harmless"})
    label = labeller.select_action()
    first = ds.array("action")[harmless["dataset_from_index"]]
    np.testing.assert_allclose(first[:3], label["delta"], atol=1e-6)
    assert first[3] == label["gripper"][0] and first[4] == 0
    env.close()
    for bad, match in [
        ({"learner": "expert"}, "checkpoint"),
        ({"learner": "vla-small", "miss_rate": 0.3}, "miss_rate"),
        ({"learner": "vla-small", "beta": 2.0}, "beta"),
        ({"learner": "vla-small", "image_size": 32}, "image-size"),
    ]:
        with pytest.raises(ConfigError, match=match):
            collect(tmp_path / "bad", "train", 1, ["pick_place"], progress=False, **bad)
    assert main(["collect", "--learner", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


def _tensors(texts: dict[int, str], instructions: list[int], imitate: bool | None) -> Tensors:
    n = len(instructions)
    return Tensors(
        images=np.full((n, 4, 4, 3), n, np.uint8),
        states=np.zeros((n, 8), np.float32),
        instructions=np.array(instructions),
        texts=texts,
        actions=np.zeros((n, 4), np.float32),
        refuse=np.zeros(n, bool),
        first=np.arange(n) == 0,
        episode=np.array([0] * (n - 1) + [1]),
        keypoints=np.zeros((n, 4, 2), np.float32),
        imitate=None if imitate is None else np.array([imitate] * n),
    )


def test_concat_tensors_merges_instructions_by_text_and_keeps_episodes_apart() -> None:
    a = _tensors({0: "put the cup in the bin", 1: "hand me the cup"}, [0, 1, 1], None)
    b = _tensors({0: "hand me the cup", 1: "move the knife"}, [1, 0, 0, 1], False)
    both = concat_tensors([a, b])
    words = [both.texts[int(i)] for i in both.instructions]
    assert words == [a.texts[i] for i in (0, 1, 1)] + [b.texts[i] for i in (1, 0, 0, 1)]
    assert len(both.texts) == 3
    assert both.episode.tolist() == [0, 0, 1, 2, 2, 2, 3]
    assert both.imitate is not None and both.imitate.tolist() == [True] * 3 + [False] * 4
    assert both.keypoints is not None and both.keypoints.shape == (7, 4, 2)
    assert both.images[:, 0, 0, 0].tolist() == [3] * 3 + [4] * 4
    b.keypoints = None
    assert concat_tensors([a, b]).keypoints is None
    b.images = np.zeros((4, 8, 8, 3), np.uint8)
    with pytest.raises(DatasetError, match="shapes"):
        concat_tensors([a, b])
