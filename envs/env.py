"""The Gymnasium environment: a Franka Panda at a table with a person, following an instruction.

Observation (``gymnasium.spaces.Dict``)

===============  ==========================  ==================================================
key              space                       meaning
===============  ==========================  ==================================================
``image``        Box(0, 255, (H, W, 3), u8)  scene camera, default 64x64 (omitted with
                                             ``image_obs=False``)
``state``        Box((8,), float32)          [0:3] end-effector position (m), [3:6] its velocity
                                             (m/s), [6] gripper opening (m), [7] grasp detected
``instruction``  Text(max_length=256)        the instruction, lowercase
===============  ==========================  ==================================================

Action (``gymnasium.spaces.Dict``)

===========  ==========================  =======================================================
key          space                       meaning
===========  ==========================  =======================================================
``delta``    Box(-0.05, 0.05, (3,), f32) end-effector displacement per control step (m), i.e.
                                         at most 0.5 m/s per axis; larger values are clipped
``gripper``  Box(-1, 1, (1,), f32)       > 0 closes (grasps), <= 0 opens (releases)
``refuse``   Discrete(2)                 1 refuses the instruction: the episode ends, no motion
===========  ==========================  =======================================================

Control runs at 10 Hz over 240 Hz physics. Per step ``info`` carries the Safety-Gymnasium cost
parts ``cost_<name>``, ``cost_sum`` and ``cost`` (see :mod:`robot_refusal.envs.task`), and the
outcome keys ``is_success``, ``refused``, ``unsafe_outcome``, ``label``, ``category``,
``family``, ``task``, and ``keypoints_uv``: privileged image coordinates of the target object,
the destination, the person's hand and the gripper (see :meth:`RobotRefusalEnv.keypoints_uv`),
recorded in demonstrations as auxiliary training labels; a policy never receives them. An
episode terminates on success, on an unsafe outcome or on refusal and is truncated after the
suite's ``max_steps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from robot_refusal.envs.robot import GraspState, Panda
from robot_refusal.envs.scenarios import (
    FAMILIES,
    LABELS,
    SPLITS,
    Scenario,
    Suite,
    draw_instruction,
    load_suite,
    sample_scenario,
)
from robot_refusal.envs.scene import (
    CONTAINERS,
    OBJECTS,
    build_container,
    build_object,
    build_person,
    build_table,
)
from robot_refusal.envs.sim import CONTROL_HZ, SUBSTEPS, PyBulletSim
from robot_refusal.envs.task import COST_NAMES, SafetyTask, TaskState
from robot_refusal.errors import (
    ConfigError,
    EnvStateError,
    InvalidActionError,
    UnknownNameError,
)

MAX_DELTA = 0.05  # m per control step
WORKSPACE_LOW = np.array([0.25, -0.45, 0.005])  # m, end-effector box
WORKSPACE_HIGH = np.array([0.85, 0.45, 0.5])
HOME = np.array([0.35, 0.0, 0.25])  # m, end-effector start
MAX_KEYPOINT_PLANE = 0.5  # m: the highest footprint plane of the keypoint labels
CAMERA_EYE = (0.45, -0.85, 0.85)
CAMERA_TARGET = (0.62, 0.0, 0.0)
INSTRUCTION_CHARSET = "abcdefghijklmnopqrstuvwxyz0123456789 ,.'-!?"
MAX_INSTRUCTION = 256
ACTION_KEYS = ("delta", "gripper", "refuse")
RESET_OPTIONS = ("label", "task", "instruction")
STATE_NAMES = ("ee_x", "ee_y", "ee_z", "ee_vx", "ee_vy", "ee_vz", "gripper_opening", "grasped")
STATE_LOW = np.array([-1.5, -1.5, -1.0, -5.0, -5.0, -5.0, 0.0, 0.0], np.float32)
"""State bounds (m, m/s, m, flag); observations are clipped into them."""
STATE_HIGH = np.array([1.5, 1.5, 1.5, 5.0, 5.0, 5.0, 0.09, 1.0], np.float32)


@dataclass(frozen=True)
class EnvState:
    """A snapshot of the whole episode (physics, grasp, task bookkeeping, step counters).

    Restore it with :meth:`RobotRefusalEnv.restore_state` on the same env and episode.
    """

    sim_state: int
    grasp: GraspState
    task: TaskState
    steps: int
    path_length: float
    scenario: Scenario


def check_keypoint_plane(height: float | None) -> None:
    """Raise :class:`ConfigError` unless ``height`` is None or a keypoint footprint plane in
    [0, 0.5] m (``RobotRefusalEnv(keypoint_plane=)``)."""
    if height is not None and not 0 <= height <= MAX_KEYPOINT_PLANE:
        raise ConfigError(
            f"keypoint_plane must be None or in [0, {MAX_KEYPOINT_PLANE}] m, got {height}"
        )


class RobotRefusalEnv(gym.Env):
    """Instruction-following Panda with a person at the table (one scenario family).

    Args:
        family: Scenario family, one of :data:`robot_refusal.envs.FAMILIES`.
        split: Instruction split, ``train``, ``val`` or ``test``.
        label: ``harmful``, ``harmless`` or ``None`` (each reset draws one with p = 0.5).
        image_size: (height, width) of ``obs["image"]`` in pixels.
        image_obs: Include the camera image in the observation.
        render_mode: ``None``, ``"rgb_array"`` or ``"human"`` (PyBullet GUI).
        render_size: (height, width) of :meth:`render` frames.
        keypoint_plane: None: :meth:`keypoints_uv` labels the task points themselves; a
            height (m): the target, destination and hand keypoints are their footprints, the
            points straight below (or above) them at this height, so that a ray through the
            label cut with this plane is the point's exact x, y whatever its height.

    Raises:
        UnknownNameError: For an unknown family, split, label or render mode.
        ConfigError: For an image or render size that is not two positive integers, or a
            ``keypoint_plane`` outside [0, 0.5] m.
        SimulatorError: For ``render_mode="human"`` without a display.

    ``reset(options=...)`` accepts ``label``, ``task`` (task id) and ``instruction`` (an exact
    instruction text of the split) to pin the episode.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 (Gymnasium's own declaration)
        "render_modes": ["rgb_array", "human"],
        "render_fps": CONTROL_HZ,
    }

    def __init__(
        self,
        family: str = "pick_place",
        split: str = "train",
        label: str | None = None,
        image_size: tuple[int, int] = (64, 64),
        image_obs: bool = True,
        render_mode: str | None = None,
        render_size: tuple[int, int] = (256, 256),
        keypoint_plane: float | None = None,
    ) -> None:
        if family not in FAMILIES:
            raise UnknownNameError("family", family, FAMILIES)
        if split not in SPLITS:
            raise UnknownNameError("split", split, SPLITS)
        if label is not None and label not in LABELS:
            raise UnknownNameError("label", label, LABELS)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise UnknownNameError("render mode", render_mode, self.metadata["render_modes"])
        self.family, self.split, self.label = family, split, label
        self.suite: Suite = load_suite(family)
        self.image_size, self.image_obs = _size("image_size", image_size), bool(image_obs)
        self.render_mode, self.render_size = render_mode, _size("render_size", render_size)
        check_keypoint_plane(keypoint_plane)
        self.keypoint_plane = keypoint_plane
        spaces: dict[str, gym.Space] = {
            "state": gym.spaces.Box(STATE_LOW, STATE_HIGH, dtype=np.float32),
            "instruction": gym.spaces.Text(
                MAX_INSTRUCTION, min_length=1, charset=INSTRUCTION_CHARSET
            ),
        }
        if image_obs:
            spaces["image"] = gym.spaces.Box(0, 255, (*self.image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Dict(
            {
                "delta": gym.spaces.Box(-MAX_DELTA, MAX_DELTA, (3,), np.float32),
                "gripper": gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
                "refuse": gym.spaces.Discrete(2),
            }
        )
        self.sim = PyBulletSim(gui=render_mode == "human")
        self.robot: Panda | None = None
        self.task: SafetyTask | None = None
        self.scenario: Scenario | None = None
        self._steps = 0
        self._path = 0.0
        self._done = False
        self._refused = False
        self._snapshots: set[int] = set()

    # -- Gymnasium API -------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode: draw an instruction and a layout from the seeded RNG, build the scene.

        Returns:
            ``(obs, info)``; every cost in ``info`` is 0.
        """
        if self.sim.closed:
            raise EnvStateError("this env is closed; make a new one")
        super().reset(seed=seed)
        if self._snapshots:
            for sid in self._snapshots:
                self.sim.remove_state(sid)
            self._snapshots.clear()
        self.scenario = self._draw_scenario(options if options is not None else {})
        self._build(self.scenario)
        self._steps, self._path, self._done, self._refused = 0, 0.0, False, False
        return self._obs(np.zeros(3)), self._info(dict.fromkeys(COST_NAMES, 0.0))

    def step(
        self, action: Mapping[str, Any]
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Apply one action for 0.1 s (24 physics steps).

        Raises:
            InvalidActionError: Wrong keys, shapes, NaN/inf or a refuse flag that is not 0/1.
            EnvStateError: Before :meth:`reset`, after the episode ended, or after :meth:`close`.
        """
        if self.task is None or self.robot is None or self.sim.closed:
            raise EnvStateError("call reset() before step()")
        if self._done:
            raise EnvStateError("the episode has ended (terminated or truncated); call reset()")
        delta, gripper, refuse = validate_action(action)
        task, robot = self.task, self.robot
        costs = dict.fromkeys(COST_NAMES, 0.0)
        if refuse:
            self._refused = self._done = True
            return self._obs(np.zeros(3)), 0.0, True, False, self._info(costs)
        ee0 = robot.ee_position()
        target = np.clip(ee0 + delta, WORKSPACE_LOW, WORKSPACE_HIGH)
        robot.command_ee(target)
        if gripper > 0:
            robot.close_gripper(self._grasp_candidates())
        else:
            robot.open_gripper()
        task.begin_step()
        for _ in range(4):
            self.sim.step(SUBSTEPS // 4)
            task.sample_contacts()
        ee = robot.ee_position()
        self._path += float(np.linalg.norm(ee - ee0))
        self._steps += 1
        costs = task.costs(ee)
        success = task.is_success(ee)
        unsafe = task.unsafe_outcome()
        vel = (ee - task.state.prev_ee) * CONTROL_HZ
        task.end_step(ee)
        terminated = success or unsafe
        truncated = not terminated and self._steps >= self.suite.max_steps
        self._done = terminated or truncated
        reward = 1.0 if success else 0.0
        return self._obs(vel), reward, terminated, truncated, self._info(costs)

    def render(self) -> np.ndarray | None:
        """An RGB frame (render_size..., 3) uint8 for ``rgb_array``; ``None`` otherwise."""
        if self.render_mode != "rgb_array":
            return None
        h, w = self.render_size
        return self.sim.render(w, h, CAMERA_EYE, CAMERA_TARGET)

    def close(self) -> None:
        """Release the physics client; safe to call more than once."""
        self.sim.close()
        super().close()

    # -- state save/restore --------------------------------------------------------------------
    def save_state(self) -> EnvState:
        """Snapshot the episode so that :meth:`restore_state` branches from the same point.

        A snapshot holds ~250 kB of PyBullet memory until :meth:`release_state` or the next
        :meth:`reset` frees it.

        Raises:
            EnvStateError: Before :meth:`reset`.
        """
        if self.task is None or self.robot is None or self.scenario is None:
            raise EnvStateError("call reset() before save_state()")
        sid = self.sim.save_state()
        self._snapshots.add(sid)
        return EnvState(
            sid,
            self.robot.grasp_state(),
            self.task.state.copy(),
            self._steps,
            self._path,
            self.scenario,
        )

    def restore_state(self, state: EnvState) -> None:
        """Return to a snapshot of this episode (same scene) taken by :meth:`save_state`.

        Raises:
            EnvStateError: Before :meth:`reset`, for something that is not a snapshot, for a
                released snapshot, or for one of another episode.
        """
        if self.task is None or self.robot is None:
            raise EnvStateError("call reset() before restore_state()")
        if not isinstance(state, EnvState):
            raise EnvStateError(f"expected a snapshot from save_state(), got {state!r}")
        if state.scenario is not self.scenario or state.sim_state not in self._snapshots:
            raise EnvStateError("snapshot belongs to another episode or was released")
        self.sim.restore_state(state.sim_state)
        self.robot.restore_grasp(state.grasp)
        self.task.state = state.task.copy()
        self._steps, self._path, self._done, self._refused = (
            state.steps,
            state.path_length,
            False,
            False,
        )

    def release_state(self, state: EnvState) -> None:
        """Free a snapshot's memory; it cannot be restored afterwards (releasing twice is fine)."""
        if isinstance(state, EnvState) and state.sim_state in self._snapshots:
            self._snapshots.discard(state.sim_state)
            self.sim.remove_state(state.sim_state)

    # -- internals -----------------------------------------------------------------------------
    def _draw_scenario(self, options: Mapping[str, Any]) -> Scenario:
        if not isinstance(options, Mapping):
            raise ConfigError(f"reset options must be a dict, got {type(options).__name__}")
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown reset options {unknown}; valid: {list(RESET_OPTIONS)}")
        instruction, label = draw_instruction(
            self.suite,
            self.split,
            self.np_random,
            label=options.get("label", self.label),
            task=options.get("task"),
            text=options.get("instruction"),
        )
        return sample_scenario(self.suite, instruction, label, self.np_random)

    def _build(self, sc: Scenario) -> None:
        sim = self.sim
        sim.reset()
        build_table(sim)
        build_person(sim, sc.person)
        for name, xy in sc.containers.items():
            build_container(sim, CONTAINERS[name], xy)
        for name, xy in sc.objects.items():
            build_object(sim, OBJECTS[name], xy)
        self.robot = Panda(sim)
        self.robot.home(HOME)
        sim.step(SUBSTEPS)
        self.task = SafetyTask(sim, self.robot, sc)

    def _grasp_candidates(self) -> dict[str, tuple[np.ndarray, float]]:
        assert self.scenario is not None
        return {
            n: (self.sim.transform_point(n, OBJECTS[n].grasp_point), OBJECTS[n].width)
            for n in self.scenario.objects
        }

    def _obs(self, vel: np.ndarray) -> dict[str, Any]:
        assert self.robot is not None and self.scenario is not None
        ee = self.robot.ee_position()
        state = np.concatenate(
            [ee, vel, [self.robot.gripper_opening(), float(self.robot.held is not None)]]
        )
        obs: dict[str, Any] = {
            "state": np.clip(state, STATE_LOW, STATE_HIGH).astype(np.float32),
            "instruction": self.scenario.instruction.text,
        }
        if self.image_obs:
            h, w = self.image_size
            obs["image"] = self.sim.render(w, h, CAMERA_EYE, CAMERA_TARGET)
        return obs

    def keypoints_uv(self) -> np.ndarray:
        """Privileged image coordinates (4, 2) of task points, for auxiliary supervision.

        Rows: the target object's grasp point (its current pose), the destination (centre of
        the named container on its floor, or the person's handover point), the person's hand
        and the gripper's grasp centre; with ``keypoint_plane`` set, the first three are the
        points' footprints at that height (the gripper's row is its own point). Coordinates
        as :meth:`PyBulletSim.project` for the observation camera: x right, y down, -1 and +1
        at the centres of the edge pixels. Read from the simulator: only training labels and
        evaluation use them, never the policy.
        """
        sc = self.scenario
        assert sc is not None
        spec = OBJECTS[sc.target]
        target = self.sim.transform_point(sc.target, spec.grasp_point)
        if sc.instruction.container is not None:
            dest = np.array([*sc.containers[sc.instruction.container], 0.02])
        else:
            dest = sc.person.handover_point()
        hand = np.array([*sc.person.hand_xy, 0.03])
        assert self.robot is not None
        points = np.stack([target, dest, hand, self.robot.ee_position()])
        if self.keypoint_plane is not None:
            points[:3, 2] = self.keypoint_plane
        h, w = self.image_size
        uv = PyBulletSim.project(points, w, h, CAMERA_EYE, CAMERA_TARGET)
        return uv.astype(np.float32)

    def _info(self, costs: dict[str, float]) -> dict[str, Any]:
        assert self.scenario is not None and self.task is not None
        sc = self.scenario
        info: dict[str, Any] = {f"cost_{k}": v for k, v in costs.items()}
        info["cost_sum"] = float(sum(costs.values()))
        info["cost"] = info["cost_sum"]
        info.update(
            is_success=self.task.state.success,
            refused=self._refused,
            unsafe_outcome=self.task.state.unsafe,
            label=sc.label,
            category=sc.category,
            family=self.family,
            task=sc.instruction.task,
            instruction=sc.instruction.text,
            target=sc.target,
            steps=self._steps,
            ee_path_length=self._path,
            keypoints_uv=self.keypoints_uv(),
        )
        return info


def _size(name: str, value: Any) -> tuple[int, int]:
    """``value`` as (height, width) of positive ints, else :class:`ConfigError`."""
    ok = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
        and all(v > 0 for v in value)
    )
    if not ok:
        raise ConfigError(f"{name} must be (height, width) in positive pixels, got {value!r}")
    return int(value[0]), int(value[1])


def validate_action(action: Mapping[str, Any]) -> tuple[np.ndarray, float, bool]:
    """Check an action and return ``(delta (3,) m clipped to ±MAX_DELTA, gripper, refuse)``.

    Raises:
        InvalidActionError: Naming the field: missing key, wrong shape, NaN/inf, bad refuse flag.
    """
    if not isinstance(action, Mapping):
        raise InvalidActionError(
            f"action must be a dict with keys delta, gripper, refuse; got {type(action).__name__}"
        )
    missing = [k for k in ACTION_KEYS if k not in action]
    extra = sorted(str(k) for k in action if k not in ACTION_KEYS)
    if missing or extra:
        raise InvalidActionError(
            f"action keys must be delta, gripper, refuse; missing {missing}, unexpected {extra}"
        )
    if any(np.iscomplexobj(action[k]) for k in ACTION_KEYS):
        raise InvalidActionError("action fields must be real numbers, got complex values")
    try:
        delta = np.asarray(action["delta"], dtype=np.float64)
        gripper = np.asarray(action["gripper"], dtype=np.float64).reshape(-1)
        refuse = np.asarray(action["refuse"]).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InvalidActionError(f"action fields must be numeric arrays: {e}") from e
    if delta.shape != (3,):
        raise InvalidActionError(f"action['delta'] must have shape (3,), got {delta.shape}")
    if not np.all(np.isfinite(delta)):
        raise InvalidActionError(f"action['delta'] contains NaN or inf: {delta.tolist()}")
    if gripper.shape != (1,) or not np.isfinite(gripper[0]):
        raise InvalidActionError(
            f"action['gripper'] must be one finite number, got {gripper.tolist()}"
        )
    if refuse.shape != (1,) or refuse[0] not in (0, 1):
        raise InvalidActionError(f"action['refuse'] must be 0 or 1, got {refuse.tolist()}")
    return np.clip(delta, -MAX_DELTA, MAX_DELTA), float(gripper[0]), bool(refuse[0])
