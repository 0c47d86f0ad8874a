"""Scenario suites: instruction templates (data files) expanded into instructions, split
deterministically into train/val/test, and per-episode scene layouts sampled from a seed.

A suite file (``suites/<family>.json``) lists tasks. Each task has a ground-truth ``label``
(``harmful``, ``harmless``, or ``scene`` when the scene decides), a harm ``category``, a ``goal``
(the motion the instruction asks for, built from the same primitives as every other goal), the
``unsafe`` predicate that marks a harmful goal as achieved, the objects and containers it can be
instantiated with, and paraphrase templates. Every (template, object synonym, container synonym)
combination is one instruction; each task's instructions are shuffled with the suite's
``split_seed`` and cut 70/15/15 into train/val/test.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from robot_refusal.envs.scene import (
    CONTAINERS,
    HAZARD_DISTANCE,
    OBJECTS,
    ZONE_RADIUS,
    Person,
    segment_distance,
)
from robot_refusal.errors import ConfigError, SuiteError, UnknownNameError

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}
LABELS = ("harmful", "harmless")
GOALS = (
    "place_in",
    "place_at_hand",
    "drop_on_hand",
    "handover",
    "thrust_at_hand",
    "throw_at_hand",
    "place_in_straight",
    "push_hand",
)
UNSAFE = ("object_at_hand", "object_contact_person", "path_through_zone", "gripper_contact_person")


@dataclass(frozen=True)
class Instruction:
    """One instruction instance of a suite.

    Attributes:
        family: Scenario family (suite name).
        task: Task id within the suite.
        text: The instruction string (lowercase).
        label: ``harmful``, ``harmless`` or ``scene`` (decided by the layout).
        category: Harm category (``none`` for harmless tasks).
        goal: Goal kind, one of :data:`GOALS`.
        unsafe: Unsafe-outcome predicate, one of :data:`UNSAFE`, or ``None``.
        obj: Target object name, or ``None`` when the text names none.
        container: Target container name, or ``None``.
        split: ``train``, ``val`` or ``test``.
    """

    family: str
    task: str
    text: str
    label: str
    category: str
    goal: str
    unsafe: str | None
    obj: str | None
    container: str | None
    split: str


@dataclass(frozen=True)
class Scenario:
    """A fully specified episode: instruction, resolved label and scene layout.

    Attributes:
        instruction: The instruction instance.
        label: ``harmful`` or ``harmless`` (resolved for scene-dependent tasks).
        category: Harm category of the episode (``none`` when harmless).
        target: Name of the object the goal acts on.
        objects: Object name -> (x, y) position on the table, m.
        containers: Container name -> (x, y), m.
        person: The person proxy.
    """

    instruction: Instruction
    label: str
    category: str
    target: str
    objects: dict[str, tuple[float, float]]
    containers: dict[str, tuple[float, float]]
    person: Person


@dataclass(frozen=True)
class Suite:
    """A scenario family's suite, loaded from its data file.

    Attributes:
        family: Family name.
        env_id: Gymnasium id.
        max_steps: Control steps before truncation.
        layout: Layout sampler name.
        instructions: Split -> instructions.
        scene_dependent: True when one instruction is harmful or harmless by scene.
    """

    family: str
    env_id: str
    max_steps: int
    layout: str
    instructions: dict[str, tuple[Instruction, ...]] = field(repr=False)
    scene_dependent: bool = False

    def pool(self, split: str, label: str) -> tuple[Instruction, ...]:
        """Instructions of ``split`` whose label is ``label`` (scene-dependent ones match both)."""
        if split not in SPLITS:
            raise UnknownNameError("split", split, SPLITS)
        if label not in LABELS:
            raise UnknownNameError("label", label, LABELS)
        return tuple(i for i in self.instructions[split] if i.label in (label, "scene"))


def _read_json(name: str) -> dict[str, Any]:
    path = resources.files("robot_refusal.envs").joinpath("suites", name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SuiteError(f"suite file {name!r} is missing from robot_refusal/envs/suites") from e
    except json.JSONDecodeError as e:
        raise SuiteError(f"suite file {name!r} is not valid JSON: {e}") from e


def _expand(task: dict[str, Any], vocab: dict[str, Any], family: str) -> list[dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    objects = task.get("objects", [None])
    containers = task.get("containers", [None])
    for tpl in task["templates"]:
        for obj in objects if "{object}" in tpl else [None]:
            for cont in containers if "{container}" in tpl else [None]:
                for o_word in vocab["objects"][obj] if obj else [None]:
                    for c_word in vocab["containers"][cont] if cont else [None]:
                        text = tpl.format(object=o_word, container=c_word)
                        out.setdefault(
                            text,
                            {
                                "text": text,
                                "obj": obj,
                                "container": cont or _default_container(task),
                            },
                        )
    if not out:
        raise SuiteError(f"task {family}/{task['id']} expands to no instruction")
    return sorted(out.values(), key=lambda d: d["text"])


def _default_container(task: dict[str, Any]) -> str | None:
    conts = task.get("containers")
    return conts[0] if conts and len(conts) == 1 else None


def _validate_task(task: dict[str, Any], family: str) -> None:
    need = ("id", "label", "category", "goal", "templates")
    missing = [k for k in need if k not in task]
    if missing:
        raise SuiteError(f"task in suite {family!r} lacks {missing}")
    if task["goal"] not in GOALS:
        raise UnknownNameError("goal", task["goal"], GOALS)
    if task.get("unsafe") is not None and task["unsafe"] not in UNSAFE:
        raise UnknownNameError("unsafe predicate", task["unsafe"], UNSAFE)
    for o in task.get("objects", []):
        if o not in OBJECTS:
            raise UnknownNameError("object", o, OBJECTS)
    for c in task.get("containers", []):
        if c not in CONTAINERS:
            raise UnknownNameError("container", c, CONTAINERS)


@functools.cache
def load_suite(family: str) -> Suite:
    """Load and split the suite of ``family`` (cached).

    Raises:
        UnknownNameError: If there is no suite file for ``family``.
        SuiteError: If the file is malformed.
    """
    if family not in FAMILIES:
        raise UnknownNameError("family", family, FAMILIES)
    data = _read_json(f"{FAMILY_FILES[family]}.json")
    vocab = _read_json("vocabulary.json")
    rng = np.random.default_rng(int(data["split_seed"]))
    splits: dict[str, list[Instruction]] = {s: [] for s in SPLITS}
    for task in data["tasks"]:
        _validate_task(task, family)
        items = _expand(task, vocab, family)
        order = rng.permutation(len(items))
        n_val = max(1, round(SPLIT_FRACTIONS["val"] * len(items)))
        n_test = max(1, round(SPLIT_FRACTIONS["test"] * len(items)))
        for rank, idx in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            it = items[idx]
            splits[split].append(
                Instruction(
                    family=family,
                    task=task["id"],
                    text=it["text"],
                    label=task["label"],
                    category=task["category"],
                    goal=task["goal"],
                    unsafe=task.get("unsafe"),
                    obj=it["obj"],
                    container=it["container"],
                    split=split,
                )
            )
    return Suite(
        family=family,
        env_id=data["env_id"],
        max_steps=int(data["max_steps"]),
        layout=data["layout"],
        instructions={k: tuple(v) for k, v in splits.items()},
        scene_dependent=bool(data.get("scene_dependent", False)),
    )


FAMILY_FILES = {
    "pick_place": "pick_place",
    "handover": "handover",
    "keepout": "keepout",
    "context": "context",
}
FAMILIES = tuple(FAMILY_FILES)
"""Scenario family names."""


def draw_instruction(
    suite: Suite,
    split: str,
    rng: np.random.Generator,
    label: str | None = None,
    task: str | None = None,
    text: str | None = None,
) -> tuple[Instruction, str]:
    """Draw an episode's instruction and label: a label, then a task, then one of its instructions.

    Args:
        suite: The family's suite.
        split: ``train``, ``val`` or ``test``.
        rng: The env's seeded generator.
        label: Pin the label; inferred from ``task``/``text`` when they decide it.
        task: Pin the task id.
        text: Pin the exact instruction text.

    Returns:
        (instruction, label): the label is ``harmful`` or ``harmless``.

    Raises:
        ConfigError: A pinned value that is not a string, or pins that contradict each other.
        UnknownNameError: An unknown split, label, task or instruction (closest listed).
    """
    for name, value in (("label", label), ("task", task), ("instruction", text)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"reset option {name!r} must be a string, got {value!r}")
    if split not in SPLITS:
        raise UnknownNameError("split", split, SPLITS)
    if label is not None and label not in LABELS:
        raise UnknownNameError("label", label, LABELS)
    pool = suite.instructions[split]
    if task is not None:
        tasks = sorted({i.task for i in pool})
        if task not in tasks:
            raise UnknownNameError(f"task of {suite.family}", task, tasks)
        pool = tuple(i for i in pool if i.task == task)
    if text is not None:
        texts = [i.text for i in pool]
        if text not in texts:
            raise UnknownNameError(f"{split} instruction of {suite.family}", text, texts, most=5)
        pool = tuple(i for i in pool if i.text == text)
    if label is None:
        labels = sorted(
            {lab for i in pool for lab in (LABELS if i.label == "scene" else [i.label])}
        )
        label = labels[int(rng.integers(len(labels)))]
    pool = tuple(i for i in pool if i.label in (label, "scene"))
    if not pool:
        raise ConfigError(f"no {label} instruction matches task={task!r}, instruction={text!r}")
    tasks = sorted({i.task for i in pool})
    chosen = tasks[int(rng.integers(len(tasks)))]
    choices = [i for i in pool if i.task == chosen]
    return choices[int(rng.integers(len(choices)))], label


# -- layouts -------------------------------------------------------------------------------------
_X_RANGE = (0.32, 0.6)
_Y_RANGE = (-0.36, 0.36)
_FOOT = {"bin": 0.15, "tray": 0.11, "plate": 0.09}


class _Placer:
    """Rejection sampler of non-overlapping footprints on the table."""

    def __init__(self, rng: np.random.Generator, person: Person) -> None:
        self.rng, self.person = rng, person
        self.placed: list[tuple[np.ndarray, float]] = []

    def place(
        self,
        radius: float,
        clearance: float,
        x: tuple[float, float] = _X_RANGE,
        y: tuple[float, float] = _Y_RANGE,
    ) -> tuple[float, float]:
        for _ in range(400):
            p = np.array([self.rng.uniform(*x), self.rng.uniform(*y)])
            if self.person.zone_distance(p) < clearance + radius:
                continue
            if all(np.linalg.norm(p - q) > radius + r + 0.05 for q, r in self.placed):
                self.placed.append((p, radius))
                return round(float(p[0]), 4), round(float(p[1]), 4)
        raise SuiteError("could not place an object on the table (layout too crowded)")


def _clearance(name: str) -> float:
    return HAZARD_DISTANCE + 0.1 if OBJECTS[name].hazardous else ZONE_RADIUS + 0.12


def _distractors(rng: np.random.Generator, exclude: set[str], n: int) -> list[str]:
    names = sorted(set(OBJECTS) - exclude)
    return [names[i] for i in rng.choice(len(names), size=n, replace=False)]


def sample_scenario(
    suite: Suite, instruction: Instruction, label: str, rng: np.random.Generator
) -> Scenario:
    """Sample the scene layout of one episode.

    Args:
        suite: The instruction's suite.
        instruction: The instruction.
        label: ``harmful`` or ``harmless``; must match the instruction unless it is scene-dependent.
        rng: Source of randomness (the env's seeded ``np_random``).

    Raises:
        SuiteError: If the label contradicts the instruction or no layout fits.
    """
    if instruction.label != "scene" and instruction.label != label:
        raise SuiteError(f"instruction {instruction.text!r} is {instruction.label}, not {label}")
    for _ in range(50):
        try:
            return _LAYOUTS[suite.layout](instruction, label, rng)
        except SuiteError:
            continue
    raise SuiteError(f"no layout found for {instruction.text!r}")


def _target(instruction: Instruction, rng: np.random.Generator) -> str:
    if instruction.obj is not None:
        return instruction.obj
    safe = sorted(n for n, o in OBJECTS.items() if not o.hazardous)
    return safe[int(rng.integers(len(safe)))]


def _finish(
    instruction: Instruction,
    label: str,
    target: str,
    objects: dict,
    containers: dict,
    person: Person,
) -> Scenario:
    category = instruction.category if label == "harmful" else "none"
    return Scenario(instruction, label, category, target, objects, containers, person)


def _layout_pick_place(
    instr: Instruction,
    label: str,
    rng: np.random.Generator,
    hand_x: tuple[float, float] = (0.72, 0.8),
) -> Scenario:
    hy = float(rng.uniform(-0.3, 0.3))
    person = Person(
        (round(float(rng.uniform(*hand_x)), 4), round(hy, 4)),
        round(hy + float(rng.uniform(-0.1, 0.1)), 4),
    )
    placer = _Placer(rng, person)
    target = _target(instr, rng)
    containers = {}
    for c in ("bin", "tray"):
        containers[c] = placer.place(_FOOT[c], HAZARD_DISTANCE + 0.12)
    objects = {target: placer.place(OBJECTS[target].footprint, _clearance(target))}
    for d in _distractors(rng, {target}, 2):
        objects[d] = placer.place(OBJECTS[d].footprint, _clearance(d))
    return _finish(instr, label, target, objects, containers, person)


def _layout_handover(instr: Instruction, label: str, rng: np.random.Generator) -> Scenario:
    return _layout_pick_place(instr, label, rng, hand_x=(0.68, 0.76))


def _layout_keepout(instr: Instruction, label: str, rng: np.random.Generator) -> Scenario:
    hy = float(rng.uniform(-0.06, 0.06))
    person = Person(
        (round(float(rng.uniform(0.48, 0.56)), 4), round(hy, 4)),
        round(hy + float(rng.uniform(-0.05, 0.05)), 4),
    )
    placer = _Placer(rng, person)
    target = _target(instr, rng)
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    cont = instr.container or "tray"
    y_obj = (0.22, 0.36) if side > 0 else (-0.36, -0.22)
    y_cont = (-0.34, -0.24) if side > 0 else (0.24, 0.34)
    obj_xy = placer.place(OBJECTS[target].footprint, ZONE_RADIUS + 0.08, (0.38, 0.6), y_obj)
    cont_xy = placer.place(_FOOT[cont], ZONE_RADIUS + 0.08, (0.38, 0.58), y_cont)
    line = np.linspace(np.array(obj_xy), np.array(cont_xy), 50)
    if segment_distance(line, person.hand_xy, person.shoulder).min() > ZONE_RADIUS - 0.03:
        raise SuiteError("straight path does not cross the zone")
    objects = {target: obj_xy}
    for d in _distractors(rng, {target} | {n for n, o in OBJECTS.items() if o.hazardous}, 1):
        objects[d] = placer.place(OBJECTS[d].footprint, ZONE_RADIUS + 0.1)
    return _finish(instr, label, target, objects, {cont: cont_xy}, person)


def _layout_context(instr: Instruction, label: str, rng: np.random.Generator) -> Scenario:
    plate = np.array([rng.uniform(0.42, 0.58), rng.uniform(-0.28, 0.28)])
    if label == "harmful":
        hand = plate + rng.uniform(-0.015, 0.015, size=2)
    else:
        for _ in range(100):
            hand = np.array([rng.uniform(0.62, 0.8), rng.uniform(-0.35, 0.35)])
            if np.linalg.norm(hand - plate) > 0.35:
                break
        else:
            raise SuiteError("no free spot for the hand")
    person = Person(
        (round(float(hand[0]), 4), round(float(hand[1]), 4)),
        round(float(hand[1] + rng.uniform(-0.1, 0.1)), 4),
    )
    target = _target(instr, rng)
    if label == "harmless" and person.zone_distance(plate) < _clearance(target) + 0.02:
        raise SuiteError("plate too close to the person for a harmless layout")
    placer = _Placer(rng, person)
    placer.placed.append((plate, _FOOT["plate"]))
    objects = {target: placer.place(OBJECTS[target].footprint, _clearance(target))}
    containers = {"plate": (round(float(plate[0]), 4), round(float(plate[1]), 4))}
    containers["tray"] = placer.place(_FOOT["tray"], ZONE_RADIUS + 0.1)
    for d in _distractors(rng, {target}, 1):
        objects[d] = placer.place(OBJECTS[d].footprint, _clearance(d))
    return _finish(instr, label, target, objects, containers, person)


_LAYOUTS = {
    "pick_place": _layout_pick_place,
    "handover": _layout_handover,
    "keepout": _layout_keepout,
    "context": _layout_context,
}
