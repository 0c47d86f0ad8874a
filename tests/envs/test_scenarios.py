"""Scenario suites: data files, deterministic disjoint splits, layouts, scene-dependent labels."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from robot_refusal.envs import FAMILIES
from robot_refusal.envs.scenarios import SPLITS, load_suite, sample_scenario
from robot_refusal.envs.scene import HAZARD_DISTANCE, OBJECTS, ZONE_RADIUS
from robot_refusal.errors import SuiteError, UnknownNameError


@pytest.mark.parametrize("family", FAMILIES)
def test_splits_are_disjoint_complete_and_cover_every_task(family: str) -> None:
    suite = load_suite(family)
    texts = {s: {i.text for i in suite.instructions[s]} for s in SPLITS}
    assert not texts["train"] & texts["val"]
    assert not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    tasks = {i.task for s in SPLITS for i in suite.instructions[s]}
    for split in SPLITS:
        assert {i.task for i in suite.instructions[split]} == tasks
        for label in ("harmful", "harmless"):
            assert suite.pool(split, label), (split, label)
    n = {s: len(suite.instructions[s]) for s in SPLITS}
    assert n["train"] > n["val"] > 0 and n["train"] > n["test"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_splits_are_deterministic_from_the_suite_seed(family: str) -> None:
    first = load_suite(family)
    load_suite.cache_clear()
    second = load_suite(family)
    assert first.instructions == second.instructions
    assert first is not second


def test_suites_are_data_files_with_harm_categories() -> None:
    root = resources.files("robot_refusal.envs").joinpath("suites")
    for family in FAMILIES:
        data = json.loads(root.joinpath(f"{family}.json").read_text())
        assert data["family"] == family
        for task in data["tasks"]:
            assert task["category"] == "none" or task["label"] in ("harmful", "scene")
            assert task["templates"]


def test_every_harmful_object_is_handled_in_some_harmless_task() -> None:
    """Composition: harmful instructions need no skill that harmless ones do not teach."""
    harmless, harmful = set(), set()
    for family in FAMILIES:
        for inst in load_suite(family).instructions["train"]:
            if inst.obj is None:
                continue
            (harmful if inst.label == "harmful" else harmless).add(inst.obj)
    assert harmful <= harmless, harmful - harmless


def test_scene_dependent_family_uses_one_instruction_for_both_labels() -> None:
    suite = load_suite("context")
    assert suite.scene_dependent
    harmful = {i.text for i in suite.pool("test", "harmful")}
    harmless = {i.text for i in suite.pool("test", "harmless")}
    assert harmful == harmless
    inst = suite.pool("test", "harmful")[0]
    for seed in range(10):
        bad = sample_scenario(suite, inst, "harmful", np.random.default_rng(seed))
        good = sample_scenario(suite, inst, "harmless", np.random.default_rng(seed))
        plate_bad, plate_good = (
            np.array(bad.containers["plate"]),
            np.array(good.containers["plate"]),
        )
        assert np.linalg.norm(bad.person.hand_xy - plate_bad) < 0.03  # the hand rests on the plate
        assert np.linalg.norm(good.person.hand_xy - plate_good) > 0.3
        assert bad.category == "crush_hand" and good.category == "none"


@pytest.mark.parametrize("family", FAMILIES)
def test_layouts_keep_objects_clear_of_the_person(family: str) -> None:
    suite = load_suite(family)
    rng = np.random.default_rng(0)
    for label in ("harmful", "harmless"):
        for inst in suite.pool("train", label)[:20]:
            sc = sample_scenario(suite, inst, label, rng)
            for name, xy in sc.objects.items():
                d = sc.person.zone_distance(np.array(xy))
                need = HAZARD_DISTANCE if OBJECTS[name].hazardous else ZONE_RADIUS
                assert d > need, (name, d)


def test_mismatched_label_and_unknown_names_raise() -> None:
    suite = load_suite("pick_place")
    inst = suite.pool("train", "harmful")[0]
    with pytest.raises(SuiteError, match="harmful"):
        sample_scenario(suite, inst, "harmless", np.random.default_rng(0))
    with pytest.raises(UnknownNameError, match="pick_place"):
        load_suite("pickplace")
    with pytest.raises(UnknownNameError, match="test"):
        suite.pool("testing", "harmful")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_instruction_fits_the_text_space(family: str) -> None:
    from robot_refusal.envs.env import INSTRUCTION_CHARSET, MAX_INSTRUCTION

    for split in SPLITS:
        for inst in load_suite(family).instructions[split]:
            assert 0 < len(inst.text) <= MAX_INSTRUCTION
            assert set(inst.text) <= set(INSTRUCTION_CHARSET), inst.text
