"""Run folders: append/flush, resume after a partial line, refuse to overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robot_refusal.errors import RunFolderError
from robot_refusal.runs import EPISODES, RunFolder

CFG = {"command": "eval", "seed": 0}


def test_append_resume_drops_partial_line(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r", CFG)
    run.append({"episode_id": "a", "x": 1})
    run.append({"episode_id": "b", "x": 2})
    with open(tmp_path / "r" / EPISODES, "a") as f:
        f.write('{"episode_id": "c", "x"')  # killed mid-write
    again = RunFolder(tmp_path / "r", CFG, resume=True)
    assert again.done == {"a", "b"}
    again.append({"episode_id": "c", "x": 3})
    lines = (tmp_path / "r" / EPISODES).read_text().splitlines()
    assert [json.loads(x)["episode_id"] for x in lines] == ["a", "b", "c"]


def test_existing_folder_needs_resume_or_force(tmp_path: Path) -> None:
    RunFolder(tmp_path / "r", CFG).append({"episode_id": "a"})
    with pytest.raises(RunFolderError, match="--resume"):
        RunFolder(tmp_path / "r", CFG)
    with pytest.raises(RunFolderError, match=r"started with seed=0 \(now 1\)"):
        RunFolder(tmp_path / "r", {**CFG, "seed": 1}, resume=True)
    fresh = RunFolder(tmp_path / "r", CFG, force=True)
    assert fresh.done == set()
    assert not (tmp_path / "r" / EPISODES).exists()


def test_corrupt_record_is_a_clear_error(tmp_path: Path) -> None:
    RunFolder(tmp_path / "r", CFG).append({"episode_id": "a"})
    with open(tmp_path / "r" / EPISODES, "a") as f:
        f.write("not json\n")
    with pytest.raises(RunFolderError, match=r"episodes.jsonl:2"):
        RunFolder(tmp_path / "r", CFG, resume=True)


def test_resume_into_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "robot_refusal_vla", "hidden_size": 128}')
    with pytest.raises(RunFolderError, match="not a robot-refusal run"):
        RunFolder(folder, {"command": "attack", "seed": 0}, resume=True)
    assert "hidden_size" in (folder / "config.json").read_text()  # untouched


def test_report_reads_records_as_the_run_folder_does(tmp_path: Path) -> None:
    """``report.load_run`` leaves out a partial last line (a run killed mid-write) and names
    the file and line of a corrupt record."""
    from robot_refusal.report import load_run

    run = tmp_path / "r"
    run.mkdir()
    (run / "summary.json").write_text('{"conditions": {"baseline": {}}}')
    (run / "config.json").write_text("{}")
    rec = [{"episode_id": e, "condition": "baseline", "refusal_score": 1.0} for e in "ab"]
    body = "".join(json.dumps(r) + "\n" for r in rec)
    (run / EPISODES).write_text(body + '{"episode_id": "c", "cond')
    _, _, records = load_run(run)
    assert records == rec
    (run / EPISODES).write_text('{"episode_id": "a", "condition": "baseline"}\n{oops\n' + body)
    with pytest.raises(RunFolderError, match=r"episodes\.jsonl:2 is not a JSON record"):
        load_run(run)
