"""Run folders: ``config.json``, ``episodes.jsonl`` (appended and flushed per episode) and
``summary.json`` (DESIGN.md section 8).

A killed run loses at most the episode in flight: each record is written as one line, flushed
and fsynced before the next episode starts, and ``resume`` drops a trailing partial line and
skips every finished episode id.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robot_refusal.errors import RunFolderError

EPISODES = "episodes.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"


class RunFolder:
    """An output folder of episode records.

    Args:
        path: Folder (created if missing).
        config: The run's settings; a resumed run must have the same ones.
        resume: Continue a run already in ``path``.
        force: Delete our files in ``path`` first and start over.

    Raises:
        RunFolderError: If ``path`` holds a run and neither ``resume`` nor ``force`` is set, if
            ``resume`` meets different settings, or if a record line is corrupt.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: Mapping[str, Any],
        resume: bool = False,
        force: bool = False,
    ) -> None:
        self.path = Path(path)
        self.config = dict(config)
        self.records: list[dict[str, Any]] = []
        existing = self.path.exists() and any(self.path.iterdir())
        if existing and force:
            shutil.rmtree(self.path)
        elif existing and not resume:
            raise RunFolderError(
                f"run folder {self.path} already exists; pass --resume to "
                f"continue it or --force to overwrite it"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_path = self.path / CONFIG
        if existing and resume and cfg_path.exists():
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
            keys = set(old) | set(self.config)
            diff = sorted(k for k in keys if old.get(k) != self.config.get(k))
            if diff:
                raise RunFolderError(
                    f"cannot resume {self.path}: settings differ in {diff} "
                    f"(was {[old.get(k) for k in diff]}); use --force to restart"
                )
            self.records = self._load()
        cfg_path.write_text(json.dumps(self.config, indent=2, sort_keys=True), encoding="utf-8")

    @property
    def done(self) -> set[str]:
        """Ids of the finished episodes."""
        return {r["episode_id"] for r in self.records}

    def _load(self) -> list[dict[str, Any]]:
        path = self.path / EPISODES
        if not path.exists():
            return []
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        if tail:  # a partial line from a killed writer: drop it
            with open(path, "wb") as f:
                f.write(b"\n".join(complete) + (b"\n" if complete else b""))
        records, seen = [], set()
        for i, line in enumerate(complete, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RunFolderError(
                    f"{path}:{i} is not a JSON record ({e}); use --force to restart the run"
                ) from e
            if rec["episode_id"] not in seen:
                seen.add(rec["episode_id"])
                records.append(rec)
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one episode record as a line, flushed and fsynced."""
        with open(self.path / EPISODES, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(dict(record))

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        """Write ``data`` as indented JSON to ``name`` in the folder (atomically)."""
        target = self.path / name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, target)
        return target
