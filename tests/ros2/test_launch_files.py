"""The launch files parse as ROS 2 XML launch files, and every node, parameter and remapping in
them matches what the nodes declare (config.POLICY_PARAMS / ROBOT_PARAMS). ``ros2 launch``
itself has no PyPI wheel, so the files are checked as XML here (no rclpy needed)."""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from robot_refusal.ros2.config import POLICY_PARAMS, ROBOT_PARAMS, ParamSpec

LAUNCH = Path(__file__).resolve().parents[2] / "launch"
FILES = sorted(LAUNCH.glob("*.launch.xml"))
NODES: dict[str, tuple[ParamSpec, ...]] = {
    "robot_refusal.ros2.policy_node": POLICY_PARAMS,
    "robot_refusal.ros2.robot_node": ROBOT_PARAMS,
}
EXPECTED = {
    "sim.launch.xml": ["robot_refusal.ros2.robot_node", "robot_refusal.ros2.policy_node"],
    "hardware.launch.xml": ["robot_refusal.ros2.policy_node"],
}
TAGS = {"launch": set(), "arg": {"name", "default", "description"}, "set_env": {"name", "value"}}
TAGS["executable"] = {"cmd", "name", "output"}
VAR = re.compile(r"\$\(var ([A-Za-z_][A-Za-z0-9_]*)\)")


def ros_value(text: str) -> Any:
    """A ``-p name:=value`` value as rcl reads it (YAML scalars and flow lists)."""
    if text.startswith("[") and text.endswith("]"):
        return [ros_value(x.strip()) for x in text[1:-1].split(",") if x.strip()]
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def nodes_of(path: Path) -> list[tuple[str, list[str]]]:
    """(module, argv after the module with the arg defaults substituted) per executable."""
    root = ET.parse(path).getroot()
    assert root.tag == "launch"
    args = {a.get("name"): a.get("default") for a in root.iter("arg")}
    used: set[str] = set()
    for el in root.iter():
        assert el.tag in TAGS, f"{path.name}: unexpected tag <{el.tag}>"
        assert set(el.attrib) <= TAGS[el.tag], f"{path.name}: <{el.tag}> {sorted(el.attrib)}"
        for value in el.attrib.values():
            for name in VAR.findall(value):
                assert name in args, f"{path.name}: $(var {name}) is not declared"
                used.add(name)
    assert used == set(args), f"{path.name}: unused args {set(args) - used}"
    out = []
    for ex in root.iter("executable"):
        cmd = VAR.sub(lambda m: str(args[m.group(1)]), ex.get("cmd", ""))
        argv = shlex.split(cmd)
        assert argv[1:2] == ["-m"] and argv[3:4] == ["--ros-args"], cmd
        out.append((argv[2], argv[4:]))
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_launch_file_matches_the_declared_parameters_and_topics(path: Path) -> None:
    nodes = nodes_of(path)
    assert [m for m, _ in nodes] == EXPECTED[path.name]
    for module, argv in nodes:
        specs = {s.name: s for s in NODES[module]}
        topics = {s.default for s in specs.values() if s.name.endswith(("_topic", "_service"))}
        assert len(argv) % 2 == 0, argv
        for flag, rule in zip(argv[::2], argv[1::2], strict=True):
            assert flag in ("-p", "-r"), f"{path.name}: unexpected {flag}"
            name, _, value = rule.partition(":=")
            if flag == "-r":
                assert name in topics, f"{path.name}: remaps {name}, which {module} does not use"
                assert value, rule
                continue
            assert name in specs, f"{path.name}: {module} declares no parameter {name!r}"
            spec, v = specs[name], ros_value(value)
            d = spec.default
            assert type(v) is type(d) or (isinstance(d, list) and isinstance(v, list)), (
                f"{path.name}: {name}:={value} is {type(v).__name__}, the node declares "
                f"{type(d).__name__} (ROS refuses the mismatch)"
            )
            assert spec.check(v) is None, f"{path.name}: {name}: {spec.check(v)}"


def test_every_launch_file_is_checked() -> None:
    assert {p.name for p in FILES} == set(EXPECTED)
