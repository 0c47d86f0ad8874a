"""Loading a demonstration dataset written by ``robot-refusal collect`` (LeRobotDataset v3.0).

For our tests and for training: the frame table (pyarrow, with numpy views per column), the
episode and task tables, ``info.json``/``stats.json`` and the decoded video frames of an episode.
Every missing or corrupt file raises :class:`~robot_refusal.errors.DatasetError` naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from robot_refusal.errors import DatasetError
from robot_refusal.policies.lerobot_format import (
    CODEBASE_VERSION,
    IMAGE_KEY,
    INFO_PATH,
    REDO,
    STATS_PATH,
    TASKS_PATH,
    column_array,
    first_line,
)


def _require(path: Path) -> None:
    if not path.is_file():
        raise DatasetError(f"dataset file {path} is missing; {REDO}")


def read_json(path: Path) -> Any:
    """Parse a JSON file.

    Raises:
        DatasetError: Naming ``path`` if it is missing or not JSON.
    """
    _require(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({first_line(e)}); {REDO}") from e


def read_parquet(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a parquet file (optionally only ``columns``).

    Raises:
        DatasetError: Naming ``path`` if it is missing, corrupt or lacks a column.
    """
    _require(path)
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (OSError, pa.ArrowException, KeyError) as e:
        raise DatasetError(
            f"{path} is not a readable parquet file ({first_line(e)}); {REDO}"
        ) from e


def read_video(path: Path, start: int = 0, stop: int | None = None) -> NDArray[np.uint8]:
    """Decode frames ``start:stop`` of an MP4 as (T, H, W, 3) uint8.

    Raises:
        DatasetError: Naming ``path`` if it is missing, unreadable, or has fewer than ``stop``
            frames.
    """
    _require(path)
    frames: list[NDArray[np.uint8]] = []
    try:
        for i, frame in enumerate(iio3.imiter(path, plugin="FFMPEG")):
            if stop is not None and i >= stop:
                break
            if i >= start:
                frames.append(np.asarray(frame, dtype=np.uint8))
    except (OSError, RuntimeError, ValueError, IndexError) as e:
        raise DatasetError(f"{path} is not a readable MP4 ({first_line(e)}); {REDO}") from e
    if stop is not None and len(frames) < stop - start:
        raise DatasetError(
            f"{path} has {start + len(frames)} frames, expected at least {stop}; {REDO}"
        )
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)


@dataclass(frozen=True)
class DemoDataset:
    """A loaded demonstration dataset (LeRobotDataset v3.0 folder).

    Attributes:
        root: The dataset folder.
        info: ``meta/info.json``.
        stats: ``meta/stats.json``.
        tasks: task_index -> task string (the instruction).
        episodes: One row per episode (``meta/episodes/...``), sorted by ``episode_index``.
        frames: One row per frame (all data files), sorted by ``index``.
    """

    root: Path
    info: dict[str, Any]
    stats: dict[str, Any]
    tasks: dict[int, str]
    episodes: pa.Table
    frames: pa.Table

    def array(self, name: str) -> NDArray[Any]:
        """A frame column as numpy, (N,) for scalars and (N, D) for vectors.

        ``observation.state`` is (N, 8) float32: end-effector position (m), velocity (m/s),
        gripper opening (m), grasp flag. ``action`` is (N, 5) float32: end-effector
        displacement (m per 0.1 s step), gripper command (> 0 closes), refuse flag (0/1).

        Raises:
            KeyError: If there is no such column.
        """
        return column_array(self.frames, name)

    def episode(self, episode_index: int) -> dict[str, Any]:
        """The episodes-table row of ``episode_index`` as a dict.

        Raises:
            IndexError: If there is no such episode.
        """
        if not 0 <= episode_index < self.episodes.num_rows:
            raise IndexError(
                f"episode {episode_index} out of range 0..{self.episodes.num_rows - 1}"
            )
        return self.episodes.slice(episode_index, 1).to_pylist()[0]

    @property
    def keypoint_plane(self) -> float | None:
        """The height (m) whose footprints the target, destination and hand keypoint labels
        are (``collect --keypoint-plane``), from the folder's ``config.json``; None: the labels
        are the points themselves (also for a folder without collect's ``config.json``).

        Raises:
            DatasetError: If ``config.json`` is corrupt.
        """
        path = self.root / "config.json"
        if not path.is_file():
            return None
        config = read_json(path)
        plane = config.get("keypoint_plane") if isinstance(config, dict) else None
        return None if plane is None else float(plane)

    def video_frames(self, episode_index: int) -> NDArray[np.uint8]:
        """Decoded scene-camera frames of one episode, (length, H, W, 3) uint8.

        Raises:
            DatasetError: If the video file is missing, corrupt or too short.
        """
        ep = self.episode(episode_index)
        prefix = f"videos/{IMAGE_KEY}/"
        path = self.root / self.info["video_path"].format(
            video_key=IMAGE_KEY,
            chunk_index=ep[prefix + "chunk_index"],
            file_index=ep[prefix + "file_index"],
        )
        start = round(ep[prefix + "from_timestamp"] * self.info["fps"])
        return read_video(path, start, start + ep["length"])


def load_dataset(root: str | os.PathLike[str]) -> DemoDataset:
    """Load a dataset folder written by ``robot-refusal collect``.

    Raises:
        DatasetError: If ``root`` is not a folder; naming the file that is missing or corrupt,
            or if ``info.json`` is not LeRobotDataset v3.0 or its totals disagree with the files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist; collect one with `robot-refusal collect "
            f"--out {root}`"
        )
    info = read_json(root / INFO_PATH)
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise DatasetError(
            f"{root / INFO_PATH} has codebase_version {info.get('codebase_version')!r}, "
            f"expected {CODEBASE_VERSION!r}"
        )
    episodes = _read_nested(root, "meta/episodes").sort_by("episode_index")
    frames = _read_nested(root, "data").sort_by("index")
    tasks_tab = read_parquet(root / TASKS_PATH, ["task_index", "task"])
    tasks = dict(
        zip(tasks_tab["task_index"].to_pylist(), tasks_tab["task"].to_pylist(), strict=True)
    )
    totals = (info.get("total_episodes"), info.get("total_frames"))
    if totals != (episodes.num_rows, frames.num_rows):
        raise DatasetError(
            f"{root / INFO_PATH} lists {totals[0]} episodes, {totals[1]} frames; "
            f"the files hold {episodes.num_rows}, "
            f"{frames.num_rows}; {REDO}"
        )
    stats = read_json(root / STATS_PATH)
    return DemoDataset(root, info, stats, tasks, episodes, frames)


def _read_nested(root: Path, folder: str) -> pa.Table:
    """Concatenate ``<folder>/chunk-*/file-*.parquet``."""
    paths = sorted((root / folder).glob("chunk-*/file-*.parquet"))
    if not paths:
        raise DatasetError(
            f"dataset file {root / folder}/chunk-000/file-000.parquet is missing; {REDO}"
        )
    return pa.concat_tables([read_parquet(p) for p in paths])
