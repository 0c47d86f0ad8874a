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


REPORT_FILES = ("report.md", "report.html", "plots")
"""What ``robot-refusal report`` adds to a run folder."""
OWNED = (CONFIG, EPISODES, SUMMARY, *REPORT_FILES)
"""Entries of a run folder that robot-refusal writes (and ``--force`` may delete)."""


def read_episode_records(
    path: Path, key_fields: tuple[str, ...] = ("episode_id",), hint: str = ""
) -> list[dict[str, Any]]:
    """The records of an ``episodes.jsonl`` file, read-only, first of each id kept.

    Args:
        path: The file.
        key_fields: Record fields (strings) that together identify an episode.
        hint: Appended to error messages (what the user can do about them).

    Returns:
        The records in file order; a trailing partial line (a killed writer) is left out.

    Raises:
        RunFolderError: A line that is not a JSON record, or one without the ``key_fields``
            (naming ``file:line``).
    """
    lines = path.read_bytes().split(b"\n")
    records, seen = [], set()
    for i, line in enumerate(lines[:-1], 1):  # lines[-1]: b"" or a partial line
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:  # JSONDecodeError or UnicodeDecodeError
            raise RunFolderError(f"{path}:{i} is not a JSON record ({e}){hint}") from e
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in key_fields):
            raise RunFolderError(f"{path}:{i} lacks {' or '.join(key_fields)}{hint}")
        key = ":".join(rec[k] for k in key_fields)
        if key not in seen:
            seen.add(key)
            records.append(rec)
    return records


class RunFolder:
    """An output folder of episode records.

    Args:
        path: Folder (created if missing); must not be empty or an existing file.
        config: The run's settings; a resumed run must have the same ones.
        resume: Continue a run already in ``path``.
        force: Delete the entries of ``path`` that we write (``owned``) and start over.
        owned: Names of the entries the command writes; ``--force`` refuses to touch a folder
            that holds anything else, so that it never deletes a user's files.
        key_fields: Record fields that together identify an episode (``attack`` runs the same
            episode under several conditions: ``("condition", "episode_id")``).

    Raises:
        RunFolderError: If ``path`` is empty, a file or not creatable; if it holds a run and
            neither ``resume`` nor ``force`` is set, or both are; if ``resume`` meets different
            settings or a folder that is not a run; if ``force`` meets files we did not write;
            if a record line is corrupt.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: Mapping[str, Any],
        resume: bool = False,
        force: bool = False,
        owned: tuple[str, ...] = OWNED,
        key_fields: tuple[str, ...] = ("episode_id",),
    ) -> None:
        if not str(path).strip():
            raise RunFolderError("the output folder must not be empty (--out '')")
        if resume and force:
            raise RunFolderError("--resume and --force exclude each other; pick one")
        self.path = Path(path)
        self.config = dict(config)
        self.owned = tuple(dict.fromkeys((*OWNED, *owned)))
        self.key_fields = tuple(key_fields)
        self.records: list[dict[str, Any]] = []
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a folder; choose another --out")
        existing = self.path.is_dir() and any(self.path.iterdir())
        if existing and force:
            self._clear()
        elif existing and not resume:
            raise RunFolderError(
                f"run folder {self.path} already exists; pass --resume to "
                f"continue it or --force to overwrite it"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot create {self.path}: {e.strerror or e}") from e
        cfg_path = self.path / CONFIG
        if existing and resume:
            self._check_config(cfg_path)
            self.records = self._load()
        self.write_json(CONFIG, self.config)

    def _clear(self) -> None:
        foreign = sorted(p.name for p in self.path.iterdir() if p.name not in self.owned)
        foreign = [n for n in foreign if ".tmp" not in n]  # our killed writers' files
        if foreign:
            raise RunFolderError(
                f"refusing to --force {self.path}: it holds files robot-refusal did not write "
                f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}); "
                f"choose another --out"
            )
        for p in self.path.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()

    def _check_config(self, cfg_path: Path) -> None:
        if not cfg_path.is_file():
            raise RunFolderError(
                f"cannot resume {self.path}: it has no {CONFIG}, so it is not a robot-refusal "
                f"run; choose another --out"
            )
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunFolderError(f"{cfg_path} is corrupt ({e}); use --force to restart") from e
        if not isinstance(old, dict):
            raise RunFolderError(f"{cfg_path} is not a JSON object; use --force to restart")
        if "command" in self.config and "command" not in old:
            raise RunFolderError(
                f"cannot resume {self.path}: its {CONFIG} is not a robot-refusal run's; "
                "choose another --out"
            )
        keys = set(old) | set(self.config)
        diff = sorted(k for k in keys if old.get(k) != self.config.get(k))
        if diff:
            was = ", ".join(f"{k}={old.get(k)!r} (now {self.config.get(k)!r})" for k in diff)
            raise RunFolderError(
                f"cannot resume {self.path}: it was started with {was}; use --force to restart"
            )

    def key(self, record: Mapping[str, Any]) -> str:
        """The id of a record: its ``key_fields`` joined by ``:``."""
        return ":".join(str(record[k]) for k in self.key_fields)

    @property
    def done(self) -> set[str]:
        """Ids (:meth:`key`) of the finished episodes."""
        return {self.key(r) for r in self.records}

    def _load(self) -> list[dict[str, Any]]:
        path = self.path / EPISODES
        if not path.exists():
            return []
        raw = path.read_bytes()
        complete, _, tail = raw.rpartition(b"\n")
        if tail:  # a partial line from a killed writer: drop it
            with open(path, "wb") as f:
                f.write(complete + b"\n" if complete else b"")
        return read_episode_records(path, self.key_fields, "; use --force to restart the run")

    def count(self) -> int:
        """How many episode records are saved."""
        return len(self.records)

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
