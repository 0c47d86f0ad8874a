"""``robot-refusal collect``: scripted-expert demonstrations as a LeRobotDataset v3.0 folder.

Stages:

1. Plan: :func:`robot_refusal.rollout.plan_episodes` (episodes per family *and* label, derived
   seeds). Harmful episodes are one frame each, the expert's refusal: the demonstration of the
   ``refuse`` action.
2. Record: every planned episode runs with :class:`~robot_refusal.envs.ScriptedExpert` (or,
   with ``--learner``, with a policy acting and the replanning expert labelling: DAgger, see
   :mod:`robot_refusal.policies.dagger`); its frames go into one parquet file
   ``staging/<family>.<label>.<index>.parquet``, written to a
   temporary name and renamed, so that a file there is always a whole episode.
3. Consolidate: the staged episodes, in plan order, become the v3.0 files of
   :mod:`robot_refusal.policies.lerobot_format`; ``meta/info.json`` is written last.
4. ``staging/`` is removed.

A run killed at any point (even ``kill -9``) loses at most the episode in flight: ``--resume``
keeps the staged episodes, runs the missing ones and consolidates again, which gives the same
files, byte for byte, as an uninterrupted run, since episodes depend only on their seeds and
consolidation only on the staged episodes. ``config.json`` (see :class:`robot_refusal.runs.
RunFolder`) holds the settings; resuming with other settings is an error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray
from tqdm.auto import tqdm

from robot_refusal.agents import Agent, check_agent, image_size, is_checkpoint, make_agent
from robot_refusal.envs import FAMILIES, RobotRefusalEnv, ScriptedExpert
from robot_refusal.envs.env import check_keypoint_plane, validate_action
from robot_refusal.envs.expert import (
    GRASP_TOLERANCE,
    RELEASE_TOLERANCE,
    SLOW_BAND,
    PerturbedExpert,
    check_expert_settings,
)
from robot_refusal.envs.replanning import ReplanningExpert
from robot_refusal.envs.scenarios import SPLITS
from robot_refusal.envs.task import COST_NAMES
from robot_refusal.errors import CollectError, ConfigError, DatasetError, UnknownNameError
from robot_refusal.policies.dagger import DAggerAgent, check_beta
from robot_refusal.policies.dataset import read_json, read_parquet
from robot_refusal.policies.lerobot_format import (
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    FPS,
    IMAGE_KEY,
    INFO_PATH,
    KEYPOINTS_KEY,
    STATE_KEY,
    STATS_PATH,
    SUBGOAL_KEY,
    TASKS_PATH,
    VIDEO_PATH,
    ImageStats,
    atomic_file,
    build_features,
    data_schema,
    make_info,
    table_stats,
    tasks_table,
    video_writer,
    write_json,
    write_parquet,
)
from robot_refusal.pool import run_tasks
from robot_refusal.rollout import EpisodeSpec, plan_episodes, run_episode
from robot_refusal.runs import RunFolder

log = logging.getLogger(__name__)

STAGING = "staging"
"""Folder of finished, not yet consolidated episodes (one parquet file each)."""
IMAGE_COLUMN = "image"
"""Staged column of raw (H*W*3,) uint8 frames; the consolidated dataset holds them as MP4."""
_RECORD_KEY = b"robot_refusal.record"
_OUTCOMES = ("is_success", "refused", "unsafe_outcome")
_LABELS = ("label", "category", "family")


@dataclass(frozen=True)
class CollectConfig:
    """Settings of one collection; a resumed collection must have the same ones.

    Attributes:
        split: Instruction split the episodes draw from (``train``, ``val``, ``test``).
        episodes: Episodes per family and label.
        families: Scenario families, in plan order (duplicates dropped).
        seed: Run seed; episode seeds derive from it.
        image_size: Side of the square scene-camera image, pixels.
        action_noise: Std of the Gaussian noise added to the executed displacement (m per
            step; DART), 0 for clean demonstrations. Labels are always the expert's actions.
        release_tolerance: The expert's release band above a container (m; see
            :class:`~robot_refusal.envs.expert.ScriptedExpert`); the default made the shipped
            checkpoints' data and is left out of ``config.json``, so older folders resume.
        grasp_tolerance: The expert's grasp band around an object's grasp point (m), the
            same way.
        slow_band: The expert's slow band around the person's arm (m), the same way.
        miss_rate: Share of harmless episodes whose first grasp the expert misses on purpose
            and recovers from (``ScriptedExpert(miss_rate=)``; the miss's frames are recorded
            with ``imitate`` False); 0, the default, is left out of ``config.json``.
        learner: DAgger (:mod:`robot_refusal.policies.dagger`): a policy checkpoint that
            acts while :class:`~robot_refusal.envs.replanning.ReplanningExpert` labels every
            state it reaches; None (the default, left out of ``config.json``): the scripted
            expert acts and labels.
        beta: With ``learner``, the probability that the expert's action is executed at a
            step instead of the learner's (the DAgger mixture); 0: the learner alone.
        keypoint_plane: None (the shipped checkpoints' data, left out of ``config.json``):
            the keypoint labels are the task points; a height (m): the target, destination and
            hand labels are their footprints at that height
            (``RobotRefusalEnv(keypoint_plane=)``).
    """

    split: str = "train"
    episodes: int = 10
    families: tuple[str, ...] = FAMILIES
    seed: int = 0
    image_size: int = 64
    action_noise: float = 0.0
    release_tolerance: float = RELEASE_TOLERANCE
    grasp_tolerance: float = GRASP_TOLERANCE
    slow_band: float = SLOW_BAND
    keypoint_plane: float | None = None
    miss_rate: float = 0.0
    learner: str | None = None
    beta: float = 0.0

    def plan(self) -> list[EpisodeSpec]:
        """The planned episodes.

        Raises:
            UnknownNameError: For an unknown split or family.
            DatasetError: For an empty family list.
            ConfigError: If ``episodes`` or ``image_size`` is < 1 or ``seed`` < 0, a band is
                outside its range (``slow_band``: [0.22, 0.4] m), ``keypoint_plane`` is
                outside [0, 0.5] m, ``miss_rate`` or ``beta`` is outside [0, 1], or a
                ``learner`` comes with ``action_noise``, ``miss_rate`` or another image size
                than its own.
            CheckpointError: ``learner`` cannot be loaded.
        """
        if self.split not in SPLITS:
            raise UnknownNameError("split", self.split, SPLITS)
        if not self.families:
            raise DatasetError(f"no families to collect; choose from {', '.join(FAMILIES)}")
        if self.image_size < 1:
            raise ConfigError(f"image_size must be >= 1 pixel, got {self.image_size}")
        check_expert_settings(
            self.release_tolerance, self.grasp_tolerance, self.slow_band, self.miss_rate
        )
        check_keypoint_plane(self.keypoint_plane)
        if self.learner is not None:
            self._check_learner()
        return plan_episodes(self.families, self.episodes, self.seed)

    def _check_learner(self) -> None:
        assert self.learner is not None
        check_beta(self.beta)
        if self.action_noise or self.miss_rate:
            raise ConfigError(
                "a DAgger collection (learner) takes no action_noise or miss_rate: the learner "
                "makes its own mistakes"
            )
        if not is_checkpoint(self.learner):
            raise ConfigError(f"learner must be a policy checkpoint, got {self.learner!r}")
        check_agent(self.learner)
        size = image_size(self.learner)
        if size != (self.image_size, self.image_size):
            raise ConfigError(
                f"learner {self.learner} reads {size[0]}x{size[1]} images; collect with "
                f"--image-size {size[0]}"
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings for ``config.json``."""
        settings = asdict(self)
        if self.release_tolerance == RELEASE_TOLERANCE:
            del settings["release_tolerance"]
        if self.grasp_tolerance == GRASP_TOLERANCE:
            del settings["grasp_tolerance"]
        if self.slow_band == SLOW_BAND:
            del settings["slow_band"]
        if self.keypoint_plane is None:
            del settings["keypoint_plane"]
        if self.miss_rate == 0:
            del settings["miss_rate"]
        if self.learner is None:
            del settings["learner"], settings["beta"]
        return {
            "command": "collect",
            "policy": "expert" if self.learner is None else "dagger",
            "codebase_version": CODEBASE_VERSION,
            **settings,
            "families": list(self.families),
        }


class EpisodeRecorder:
    """``on_step`` hook of :func:`robot_refusal.rollout.run_episode` that buffers one episode.

    Per step it keeps the observation before the step (state (8,) float32, image (H, W, 3)
    uint8), the action as the env applies it (delta clipped to ±0.05 m, gripper, refuse), the
    step's cost parts and outcome flags, the agent's ``cautious`` flag, its ``imitate`` flag
    (False on the frames of a deliberately missed grasp, which training skips; True for an
    agent without one), and the privileged
    keypoint labels of the observation (``info_before["keypoints_uv"]``, (4, 2)) that training
    uses as an auxiliary target, and the expert's subgoal (4,) (``agent.subgoal``; NaN for an
    agent without one).
    """

    def __init__(self) -> None:
        self.states: list[NDArray[np.float32]] = []
        self.images: list[NDArray[np.uint8]] = []
        self.actions: list[NDArray[np.float32]] = []
        self.infos: list[dict[str, Any]] = []
        self.cautious: list[bool] = []
        self.imitate: list[bool] = []
        self.keypoints: list[NDArray[np.float32]] = []
        self.subgoals: list[NDArray[np.float32]] = []

    def __call__(
        self,
        obs: dict[str, Any],
        info_before: dict[str, Any],
        action: dict[str, Any],
        info: dict[str, Any],
        agent: Agent,
    ) -> None:
        """Record one step: ``obs`` is the observation the action was chosen from."""
        delta, gripper, refuse = validate_action(getattr(agent, "label_action", None) or action)
        self.states.append(np.asarray(obs["state"], dtype=np.float32))
        self.images.append(np.ascontiguousarray(obs["image"], dtype=np.uint8))
        self.actions.append(np.array([*delta, gripper, float(refuse)], dtype=np.float32))
        self.infos.append(info)
        self.cautious.append(bool(getattr(agent, "cautious", False)))
        self.imitate.append(bool(getattr(agent, "imitate", True)))
        kp = np.asarray(info_before["keypoints_uv"], dtype=np.float32).reshape(-1)
        self.keypoints.append(np.nan_to_num(kp, nan=0.0, posinf=0.0, neginf=0.0))
        goal = getattr(agent, "subgoal", None)
        self.subgoals.append(
            np.full(4, np.nan, np.float32) if goal is None else np.asarray(goal, np.float32)
        )

    def table(self) -> pa.Table:
        """The staged frames: every data column except the indices, plus :data:`IMAGE_COLUMN`."""
        n = len(self.states)
        if n == 0:
            raise DatasetError("an episode ended without a step; nothing to record")
        col = {k: [i[k] for i in self.infos] for k in (*_OUTCOMES, *_LABELS, "cost")}
        columns: dict[str, pa.Array] = {
            STATE_KEY: _fixed_list(np.stack(self.states)),
            "action": _fixed_list(np.stack(self.actions)),
            KEYPOINTS_KEY: _fixed_list(np.stack(self.keypoints)),
            SUBGOAL_KEY: _fixed_list(np.stack(self.subgoals)),
            "timestamp": pa.array((np.arange(n) / FPS).astype(np.float32)),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "next.reward": pa.array(np.asarray(col["is_success"], dtype=np.float32)),
            "next.done": pa.array(np.arange(n) == n - 1),
            "cost": pa.array(np.asarray(col["cost"], dtype=np.float32)),
        }
        for name in COST_NAMES:
            costs = [i[f"cost_{name}"] for i in self.infos]
            columns[f"cost_{name}"] = pa.array(np.asarray(costs, dtype=np.float32))
        columns["cautious"] = pa.array(self.cautious, pa.bool_())
        columns["imitate"] = pa.array(self.imitate, pa.bool_())
        for key in _OUTCOMES:
            columns[key] = pa.array([bool(v) for v in col[key]], pa.bool_())
        for key in _LABELS:
            columns[key] = pa.array(col[key], pa.string())
        size = self.images[0].size
        columns[IMAGE_COLUMN] = pa.array([im.tobytes() for im in self.images], pa.binary(size))
        return pa.table(columns)


def _fixed_list(values: NDArray[np.float32]) -> pa.Array:
    """(N, D) float32 -> Arrow fixed_size_list<float32>[D] of length N."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


# -- staging ---------------------------------------------------------------------------------
def stage_path(root: Path, spec: EpisodeSpec) -> Path:
    """Where the staged file of episode ``spec`` lives under dataset folder ``root``."""
    return root / STAGING / f"{spec.family}.{spec.label}.{spec.index:05d}.parquet"


def stage_episode(path: Path, frames: pa.Table, record: dict[str, Any]) -> None:
    """Write one episode's frames, with its rollout record in the schema metadata, atomically."""
    meta = {_RECORD_KEY: json.dumps(record, sort_keys=True).encode()}
    with atomic_file(path) as tmp:
        pq.write_table(frames.replace_schema_metadata(meta), tmp, compression="zstd")


def read_staged(path: Path, image_size: int) -> tuple[pa.Table, dict[str, Any]]:
    """A staged episode's frames (without images) and its rollout record.

    Raises:
        DatasetError: Naming the file if it is corrupt or its images have another size.
    """
    table = read_parquet(path)
    meta = table.schema.metadata or {}
    if _RECORD_KEY not in meta or IMAGE_COLUMN not in table.column_names:
        raise DatasetError(f"{path} is not a staged episode; delete it and rerun with --resume")
    if table.schema.field(IMAGE_COLUMN).type.byte_width != image_size * image_size * 3:
        raise DatasetError(
            f"{path} holds images of another size than {image_size} px; delete it and rerun "
            f"with --resume"
        )
    record = json.loads(meta[_RECORD_KEY])
    return table.drop_columns([IMAGE_COLUMN]), record


def staged_images(path: Path, image_size: int) -> NDArray[np.uint8]:
    """A staged episode's frames, (T, H, W, 3) uint8.

    Raises:
        DatasetError: Naming the file if it is corrupt.
    """
    col = read_parquet(path, [IMAGE_COLUMN]).column(IMAGE_COLUMN).combine_chunks()
    raw = np.frombuffer(col.buffers()[1], dtype=np.uint8)
    frame = image_size * image_size * 3
    raw = raw[col.offset * frame : (col.offset + len(col)) * frame]
    return raw.reshape(len(col), image_size, image_size, 3)


def _remove_partial(root: Path) -> None:
    """Delete temporary files (``.<name>.<pid>.tmp*``) of writers that were killed mid-write."""
    for tmp in root.rglob(".*.tmp*"):
        log.info("removing partial file %s", tmp)
        tmp.unlink(missing_ok=True)


class _ParentGone(Exception):
    """Raised in a worker whose parent process died (``kill -9``), to stop it at once."""


class CollectRunner:
    """Runs and stages collect episodes in this process: the scripted expert, or for a
    DAgger collection the learner acting and the replanning expert labelling; one env and
    one agent per family, built on first use. The runner of :func:`robot_refusal.pool.run_tasks`.

    Args:
        root: The dataset folder (episodes go to ``root/staging``).
        config: The collection's settings.
        parent: The pid of the process that started the collection: in a worker, an episode
            stops within one step of that process's death and is not staged (a ``--resume``
            may be running by then); in that process itself, or None, nothing is watched.
    """

    def __init__(self, root: str | Path, config: CollectConfig, parent: int | None = None) -> None:
        self.root, self.config = Path(root), config
        self.parent = None if parent == os.getpid() else parent  # in the parent: none to watch
        self.envs: dict[str, RobotRefusalEnv] = {}
        self.agents: dict[str, Agent] = {}

    def _orphaned(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent

    def run(self, spec: EpisodeSpec) -> dict[str, Any]:
        """Run episode ``spec`` and stage its frames; returns ``{"episode_id", "staged"}``
        (``staged`` False if the parent died during the episode)."""
        if spec.family not in self.envs:
            size = (self.config.image_size, self.config.image_size)
            env = RobotRefusalEnv(
                spec.family,
                split=self.config.split,
                image_size=size,
                keypoint_plane=self.config.keypoint_plane,
            )
            self.envs[spec.family] = env
            self.agents[spec.family] = _make_collector(env, self.config)
        recorder = EpisodeRecorder()

        def on_step(*step: Any) -> None:
            if self._orphaned():
                raise _ParentGone
            recorder(*step)

        try:
            record = run_episode(
                self.envs[spec.family], self.agents[spec.family], spec, on_step=on_step
            )
        except _ParentGone:
            return {"episode_id": spec.episode_id, "staged": False}
        stage_episode(stage_path(self.root, spec), recorder.table(), record)
        return {"episode_id": spec.episode_id, "staged": True}

    def close(self) -> None:
        """Close the envs."""
        for env in self.envs.values():
            env.close()


def record_episodes(
    root: Path, todo: Sequence[EpisodeSpec], config: CollectConfig, bar: tqdm, workers: int = 1
) -> None:
    """Run and stage each episode of ``todo``: in this process, or with ``workers`` > 1 on
    spawned processes (:func:`robot_refusal.pool.run_tasks`, :class:`CollectRunner`); torch on
    one thread either way, so a learner's actions, and with them the staged files, are the
    same for any ``workers``.

    Raises:
        CollectError: A worker raised or died; what was staged stays, ``--resume`` goes on.
    """
    init = {"root": str(root), "config": config, "parent": os.getpid()}

    def staged() -> int:
        return len(list((root / STAGING).glob("*.parquet")))

    tasks = [(spec,) for spec in todo]
    run_tasks(CollectRunner, init, tasks, workers, lambda _: None, bar, CollectError, staged)


def _make_collector(env: RobotRefusalEnv, config: CollectConfig) -> Agent:
    """The agent that acts and labels: the scripted expert (perturbed with DART noise when
    ``action_noise``), or for a DAgger collection the learner labelled by the replanning
    expert."""
    if config.learner is not None:
        bands = (config.release_tolerance, config.grasp_tolerance, config.slow_band)
        learner = make_agent(config.learner, env)
        return DAggerAgent(ReplanningExpert(env, *bands), learner, config.beta)
    expert = ScriptedExpert(
        env,
        config.release_tolerance,
        config.grasp_tolerance,
        config.slow_band,
        config.miss_rate,
    )
    return PerturbedExpert(expert, config.action_noise) if config.action_noise else expert


# -- consolidation ---------------------------------------------------------------------------
def consolidate(root: Path, plan: Sequence[EpisodeSpec], config: CollectConfig) -> dict[str, Any]:
    """Turn the staged episodes of ``plan`` into the v3.0 files; returns ``info.json``.

    Episode ``i`` of the plan becomes ``episode_index`` ``i``; task indices follow the order in
    which instructions first appear. Writes data, video, episodes, tasks, stats, then info.

    Raises:
        DatasetError: If a staged episode is missing or corrupt.
    """
    features = build_features((config.image_size, config.image_size))
    staged = [stage_path(root, spec) for spec in plan]
    frames, records = zip(*(read_staged(p, config.image_size) for p in staged), strict=True)
    tasks: dict[str, int] = {}
    for rec in records:
        tasks.setdefault(rec["instruction"], len(tasks))
    lengths = [t.num_rows for t in frames]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)  # (E + 1,)
    data = _data_table(frames, records, tasks, offsets, data_schema(features))
    where = {"chunk_index": 0, "file_index": 0}
    video = root / VIDEO_PATH.format(video_key=IMAGE_KEY, **where)
    stats = table_stats(data, features)
    stats[IMAGE_KEY] = _encode_video(video, staged, config.image_size)
    write_parquet(root / DATA_PATH.format(**where), data)
    episodes = _episodes_table(records, offsets, tasks)
    write_parquet(root / EPISODES_PATH.format(**where), episodes)
    write_parquet(root / TASKS_PATH, tasks_table(list(tasks)))
    write_json(root / STATS_PATH, stats)
    info = make_info(features, len(plan), int(offsets[-1]), len(tasks), config.split)
    write_json(root / INFO_PATH, info)
    return info


def _data_table(
    frames: Sequence[pa.Table],
    records: Sequence[dict[str, Any]],
    tasks: dict[str, int],
    offsets: NDArray[np.int64],
    schema: pa.Schema,
) -> pa.Table:
    parts = []
    for ep, (table, rec) in enumerate(zip(frames, records, strict=True)):
        n = table.num_rows
        table = table.append_column("episode_index", pa.array(np.full(n, ep, np.int64)))
        table = table.append_column("index", pa.array(np.arange(offsets[ep], offsets[ep] + n)))
        task = np.full(n, tasks[rec["instruction"]], np.int64)
        table = table.append_column("task_index", pa.array(task))
        parts.append(pa.Table.from_arrays([table.column(f.name) for f in schema], schema=schema))
    return pa.concat_tables(parts).combine_chunks()


def _encode_video(path: Path, staged: Sequence[Path], image_size: int) -> dict[str, Any]:
    """Encode every staged frame, in order, into one MP4; returns the image stats."""
    stats = ImageStats()
    with video_writer(path) as writer:
        for staged_path in staged:
            images = staged_images(staged_path, image_size)  # (T, H, W, 3)
            stats.update(images)
            for image in images:
                writer.append_data(image)
    return stats.result()


def _episodes_table(
    records: Sequence[dict[str, Any]], offsets: NDArray[np.int64], tasks: dict[str, int]
) -> pa.Table:
    """``meta/episodes`` rows: LeRobot v3.0 columns, then the rollout record's outcome."""
    vid = f"videos/{IMAGE_KEY}/"
    rows = []
    for ep, rec in enumerate(records):
        start, stop = int(offsets[ep]), int(offsets[ep + 1])
        rows.append(
            {
                "episode_index": ep,
                "tasks": [rec["instruction"]],
                "length": stop - start,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": start,
                "dataset_to_index": stop,
                vid + "chunk_index": 0,
                vid + "file_index": 0,
                vid + "from_timestamp": start / FPS,
                vid + "to_timestamp": stop / FPS,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
                "task_index": tasks[rec["instruction"]],
                **_record_columns(rec),
            }
        )
    return pa.Table.from_pylist(rows)


def _record_columns(rec: dict[str, Any]) -> dict[str, Any]:
    """Flat episode columns from a rollout record (``costs`` become ``cost_<name>`` sums)."""
    skip = {"costs", "condition", "task"}
    out = {k: v for k, v in rec.items() if k not in skip}
    out["scenario_task"] = rec["task"]
    out.update({f"cost_{k}": float(v) for k, v in rec["costs"].items()})
    return out


# -- entry point -----------------------------------------------------------------------------
def collect(
    out: str | os.PathLike[str],
    split: str = "train",
    episodes: int = 10,
    families: Sequence[str] = FAMILIES,
    seed: int = 0,
    image_size: int = 64,
    action_noise: float = 0.0,
    release_tolerance: float = RELEASE_TOLERANCE,
    grasp_tolerance: float = GRASP_TOLERANCE,
    slow_band: float = SLOW_BAND,
    keypoint_plane: float | None = None,
    miss_rate: float = 0.0,
    learner: str | None = None,
    beta: float = 0.0,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Record scripted-expert demonstrations into a LeRobotDataset v3.0 folder ``out``.

    Args:
        out: Dataset folder (created if missing).
        split: Instruction split.
        episodes: Episodes per family and label (each harmful one is a 1-frame refusal).
        families: Scenario families.
        seed: Run seed.
        image_size: Side of the square camera image, pixels (64 gives 64x64x3 frames).
        action_noise: DART noise std on the executed displacement (m per step); 0 = none.
        release_tolerance: The expert's release band above a container, m.
        grasp_tolerance: The expert's grasp band around the grasp point, m.
        slow_band: The expert's slow band around the person's arm, m.
        keypoint_plane: Label the target, destination and hand keypoints by their footprints
            at this height (m); None: by the points themselves.
        miss_rate: Share of harmless episodes with a deliberately missed first grasp and its
            recovery (the miss's frames recorded with ``imitate`` False).
        learner: DAgger: a policy checkpoint that acts while the replanning expert labels
            (see :class:`CollectConfig`); None: the scripted expert acts.
        beta: With ``learner``, the share of steps on which the expert's action runs.
        resume: Continue an interrupted collection in ``out`` (same settings required).
        force: Delete what a collection wrote in ``out`` first (never other files).
        progress: Show a tqdm bar over episodes.
        workers: Processes that run episodes (spawned when > 1; see
            :func:`record_episodes`); the dataset's files do not depend on it, and it is not
            part of the settings a resume must repeat.

    Returns:
        The ``meta/info.json`` dict (``total_episodes``, ``total_frames``, ``features``, ...).

    Raises:
        RunFolderError: ``out`` exists without ``resume``/``force``, or ``resume`` meets other
            settings.
        ConfigError: ``workers`` < 1 (and the settings :class:`CollectConfig` refuses).
        CollectError: A worker process failed or died (the staged episodes are kept).
        UnknownNameError: Unknown split or family.
        DatasetError: A staged episode is corrupt, or no families are given.
    """
    config = CollectConfig(
        split,
        episodes,
        tuple(dict.fromkeys(families)),
        seed,
        image_size,
        action_noise,
        release_tolerance,
        grasp_tolerance,
        slow_band,
        keypoint_plane,
        miss_rate,
        learner,
        beta,
    )
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    plan = config.plan()
    owned = ("meta", "data", "videos", STAGING)
    root = RunFolder(out, config.as_dict(), resume=resume, force=force, owned=owned).path
    if (root / INFO_PATH).is_file():  # finished before; only staging removal may be pending
        shutil.rmtree(root / STAGING, ignore_errors=True)
        return dict(read_json(root / INFO_PATH))
    (root / STAGING).mkdir(exist_ok=True)
    _remove_partial(root)
    todo = [spec for spec in plan if not stage_path(root, spec).is_file()]
    with tqdm(
        total=len(plan),
        initial=len(plan) - len(todo),
        desc="collect expert" if learner is None else "collect dagger",
        unit="ep",
        disable=not progress,
    ) as bar:
        record_episodes(root, todo, config, bar, workers)
    info = consolidate(root, plan, config)
    shutil.rmtree(root / STAGING)
    return info
