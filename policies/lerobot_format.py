"""The LeRobotDataset v3.0 folder format: feature spec, statistics and writers.

Reading is :mod:`robot_refusal.policies.dataset`.

Layout (``codebase_version`` ``"v3.0"``, as written by LeRobot's ``LeRobotDataset``; constants
from huggingface/lerobot ``src/lerobot/datasets/utils.py``)::

    meta/info.json                              fps, totals, path templates, features
    meta/stats.json                             per-feature min/max/mean/std/count/quantiles
    meta/tasks.parquet                          task string (index "task") -> task_index
    meta/episodes/chunk-000/file-000.parquet    one row per episode (see below)
    data/chunk-000/file-000.parquet             one row per frame (10 Hz)
    videos/observation.images.scene/chunk-000/file-000.mp4

Episode rows hold LeRobot's columns (``episode_index``, ``tasks``, ``length``,
``data/chunk_index``, ``data/file_index``, ``dataset_from_index``/``dataset_to_index``,
``videos/<key>/chunk_index|file_index|from_timestamp|to_timestamp`` in s,
``meta/episodes/chunk_index|file_index``), then ours: ``task_index`` and the rollout record of
:func:`robot_refusal.rollout.run_episode` (``episode_id``, ``family``, ``label``, ``category``,
``scenario_task``, ``instruction``, ``seed``, ``split``, outcome flags, ``steps``,
``cost_total`` and the per-part *episode sums* ``cost_<name>``, ``ee_path_length`` in m,
``cautious_steps``). LeRobot's per-episode ``stats/...`` columns are not written.

A frame is the observation *before* a step and the action taken in it, plus what the step
returned (costs, outcome flags). Frame ``i`` of an episode sits in its video file at
``from_timestamp + i / fps`` seconds. All episodes share one data file and one video file (no
roll-over at LeRobot's 100 MB / 500 MB thresholds; ``chunk_index`` and ``file_index`` are 0).

Videos are H.264 (libx264) in ``yuv444p`` with ``crf 0``: on 64x64 images the ``yuv420p`` that
LeRobot uses by default smears colours across object edges (errors up to ~170/255), while
``yuv444p`` round-trips every pixel within ±2/255 (the RGB <-> YUV rounding) and also accepts
odd image sizes. Keyframes every 2 frames (``g=2``) as LeRobot does, for cheap seeking.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import imageio.v2 as iio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from robot_refusal.envs.env import STATE_NAMES
from robot_refusal.envs.sim import CONTROL_HZ
from robot_refusal.envs.task import COST_NAMES
from robot_refusal.errors import DatasetError

CODEBASE_VERSION = "v3.0"
FPS = CONTROL_HZ  # Hz: one frame per control step
ROBOT_TYPE = "franka_panda"
CHUNKS_SIZE = 1000  # files per chunk folder (LeRobot DEFAULT_CHUNK_SIZE)
DATA_FILES_SIZE_MB = 100  # LeRobot DEFAULT_DATA_FILE_SIZE_IN_MB (recorded, not enforced)
VIDEO_FILES_SIZE_MB = 500  # LeRobot DEFAULT_VIDEO_FILE_SIZE_IN_MB (recorded, not enforced)
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
IMAGE_KEY = "observation.images.scene"
STATE_KEY = "observation.state"
KEYPOINTS_KEY = "annotation.keypoints_uv"
"""Privileged image coordinates of target, destination, hand and gripper (auxiliary labels, not an
observation: LeRobot policies feed only ``observation.*`` keys)."""
KEYPOINT_NAMES = (
    *("target_x", "target_y", "destination_x", "destination_y"),
    *("hand_x", "hand_y", "gripper_x", "gripper_y"),
)
SUBGOAL_KEY = "annotation.subgoal"
"""The expert's subgoal per frame: the point its action headed for and the step cap (labels of
``--action-space goal`` training; NaN where the agent had none)."""
SUBGOAL_NAMES = ("goal_x", "goal_y", "goal_z", "speed")
"""``annotation.subgoal`` columns: m, m, m (world frame), m per step."""
ACTION_NAMES = ("delta_x", "delta_y", "delta_z", "gripper", "refuse")
"""``action`` columns: end-effector displacement (m per step), gripper command, refuse flag."""
VIDEO_CODEC = "libx264"
PIX_FMT = "yuv444p"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
"""Quantiles in ``stats.json`` for every numeric feature (LeRobot's names)."""
REDO = "re-run `robot-refusal collect` with --force"

SCALAR_FEATURES: tuple[tuple[str, str], ...] = (
    ("timestamp", "float32"),
    ("frame_index", "int64"),
    ("episode_index", "int64"),
    ("index", "int64"),
    ("task_index", "int64"),
    ("next.reward", "float32"),
    ("next.done", "bool"),
    ("cost", "float32"),
    *((f"cost_{name}", "float32") for name in COST_NAMES),
    ("cautious", "bool"),
    ("imitate", "bool"),
    ("is_success", "bool"),
    ("refused", "bool"),
    ("unsafe_outcome", "bool"),
    ("label", "string"),
    ("category", "string"),
    ("family", "string"),
)
"""One-value-per-frame features: (name, dtype). ``timestamp`` is s since the episode start."""

_ARROW = {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_(), "string": pa.string()}


def build_features(image_size: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """The ``features`` of ``info.json``: dtype, shape and names of every feature.

    Args:
        image_size: (height, width) of the scene camera in pixels.

    Returns:
        Feature name -> ``{"dtype", "shape", "names"}`` (plus ``"info"`` for the video), in
        data-column order; the video feature has no data column.
    """
    h, w = image_size
    video_info = {
        "video.height": h,
        "video.width": w,
        "video.codec": "h264",
        "video.pix_fmt": PIX_FMT,
        "video.is_depth_map": False,
        "video.fps": FPS,
        "video.channels": 3,
        "has_audio": False,
    }
    features: dict[str, dict[str, Any]] = {
        STATE_KEY: {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": list(STATE_NAMES)},
        IMAGE_KEY: {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": video_info,
        },
        "action": {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": list(ACTION_NAMES)},
        KEYPOINTS_KEY: {
            "dtype": "float32",
            "shape": [len(KEYPOINT_NAMES)],
            "names": list(KEYPOINT_NAMES),
        },
        SUBGOAL_KEY: {
            "dtype": "float32",
            "shape": [len(SUBGOAL_NAMES)],
            "names": list(SUBGOAL_NAMES),
        },
    }
    for name, dtype in SCALAR_FEATURES:
        features[name] = {"dtype": dtype, "shape": [1], "names": [name]}
    return features


def data_schema(features: Mapping[str, Mapping[str, Any]]) -> pa.Schema:
    """Arrow schema of the data parquet: vectors as fixed-size lists, scalars as plain columns."""
    fields = []
    for name, ft in features.items():
        if ft["dtype"] == "video":
            continue
        arrow = _ARROW[ft["dtype"]]
        if ft["shape"] != [1]:
            arrow = pa.list_(arrow, ft["shape"][0])
        fields.append(pa.field(name, arrow, nullable=False))
    return pa.schema(fields)


def make_info(
    features: Mapping[str, Any],
    total_episodes: int,
    total_frames: int,
    total_tasks: int,
    split: str,
) -> dict[str, Any]:
    """The ``meta/info.json`` dict (LeRobot ``create_empty_dataset_info`` plus totals).

    ``splits`` maps the instruction split the episodes came from to all episodes, ``"0:N"``.
    """
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": ROBOT_TYPE,
        "total_episodes": total_episodes,
        "total_frames": total_frames,
        "total_tasks": total_tasks,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_MB,
        "fps": FPS,
        "splits": {split: f"0:{total_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": dict(features),
    }


# -- statistics ------------------------------------------------------------------------------
def array_stats(values: NDArray[Any]) -> dict[str, list[float]]:
    """min/max/mean/std/count and :data:`QUANTILES` over axis 0 of (N,) or (N, D) values.

    Computed in float64; every entry is a list of D floats (1 for scalars), ``count`` is [N].
    """
    x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)  # (N, D)
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
    }
    stats.update({k: np.quantile(x, q, axis=0) for k, q in QUANTILES.items()})
    out: dict[str, list[float]] = {k: v.tolist() for k, v in stats.items()}
    out["count"] = [len(x)]
    return out


def column_array(table: pa.Table, name: str) -> NDArray[Any]:
    """Column ``name`` as numpy: (N,) for scalars, (N, D) for fixed-size list columns."""
    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        width = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), width)
    return col.to_numpy(zero_copy_only=False)


def table_stats(table: pa.Table, features: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`array_stats` of every numeric and bool column of the data table (not strings)."""
    return {
        name: array_stats(column_array(table, name))
        for name, ft in features.items()
        if ft["dtype"] not in ("video", "string")
    }


class ImageStats:
    """Exact per-channel stats of uint8 frames scaled to [0, 1], as LeRobot stores them.

    Shapes in the result are (3, 1, 1) nested lists; ``count`` is the number of frames.
    """

    def __init__(self) -> None:
        self.frames = 0
        self.pixels = 0
        self.total = np.zeros(3)
        self.total_sq = np.zeros(3)
        self.low = np.full(3, 255)
        self.high = np.zeros(3, dtype=np.int64)

    def update(self, frames: NDArray[np.uint8]) -> None:
        """Add (T, H, W, 3) uint8 frames."""
        x = frames.reshape(-1, 3).astype(np.float64)  # (T*H*W, 3)
        self.frames += len(frames)
        self.pixels += len(x)
        self.total += x.sum(axis=0)
        self.total_sq += (x * x).sum(axis=0)
        self.low = np.minimum(self.low, frames.reshape(-1, 3).min(axis=0))
        self.high = np.maximum(self.high, frames.reshape(-1, 3).max(axis=0))

    def result(self) -> dict[str, Any]:
        """``{"min", "max", "mean", "std"}`` each (3, 1, 1) in [0, 1], and ``count`` [frames]."""
        mean = self.total / self.pixels
        var = np.maximum(self.total_sq / self.pixels - mean * mean, 0.0)
        chans = {
            "min": self.low / 255.0,
            "max": self.high / 255.0,
            "mean": mean / 255.0,
            "std": np.sqrt(var) / 255.0,
        }
        out: dict[str, Any] = {k: v.reshape(3, 1, 1).tolist() for k, v in chans.items()}
        out["count"] = [self.frames]
        return out


# -- writers ---------------------------------------------------------------------------------
@contextmanager
def atomic_file(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it onto ``path``.

    A crash at any point leaves either the old ``path`` or the new one, never a mix; the
    temporary file (``.<name>.<pid>.tmp<suffix>``) is removed on error, and a killed process
    leaves it for the next run to delete. ``suffix`` is an extension that a writer needs.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")


def write_parquet(path: Path, table: pa.Table) -> None:
    """Write ``table`` as parquet (snappy), atomically."""
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def tasks_table(tasks: Sequence[str]) -> pa.Table:
    """``meta/tasks.parquet``: columns ``task_index`` and ``task`` (the pandas index).

    LeRobot writes a pandas DataFrame indexed by task string; the ``pandas`` schema metadata
    here makes ``pd.read_parquet`` restore that index, without needing pandas to write it.
    """
    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), pa.int64()),
            "task": pa.array(tasks, pa.string()),
        }
    )
    meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(meta).encode()})


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (ffmpeg errors carry its whole log)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@contextmanager
def video_writer(path: Path, fps: int = FPS) -> Iterator[Any]:
    """An imageio FFMPEG writer for (H, W, 3) uint8 frames; the file appears atomically at exit.

    Raises:
        DatasetError: If ffmpeg fails to encode.
    """
    with atomic_file(path, suffix=".mp4") as tmp:
        writer = iio.get_writer(
            tmp,
            format="FFMPEG",
            fps=fps,
            codec=VIDEO_CODEC,
            pixelformat=PIX_FMT,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-g", "2", "-crf", "0"],
        )
        try:
            yield writer
        finally:
            try:
                writer.close()
            except (OSError, RuntimeError) as e:
                raise DatasetError(f"encoding {path} failed: {first_line(e)}") from e
