"""The ``eval`` command end to end, its outputs, resume after kill -9, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robot_refusal.cli import main

KEYS_HARMFUL = {"n", "refusal_rate", "asr", "violation_rate", "mean_cost"}
KEYS_HARMLESS = {"n", "success_rate", "over_refusal_rate", "violation_rate", "mean_cost"}


def test_eval_writes_episodes_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(["eval", "--policy", "expert", "--episodes", "2", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"conditions", "policy", "direction", "seed", "versions"} <= set(summary)
    base = summary["conditions"]["baseline"]
    assert set(base["harmful"]) >= KEYS_HARMFUL and set(base["harmless"]) >= KEYS_HARMLESS
    assert {"refusal_score_mean", "kl_mean"} <= set(base)
    assert base["harmful"]["n"] == 8 and base["harmful"]["refusal_rate"] == 1.0
    assert base["harmless"]["success_rate"] == 1.0
    lines = (out / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 16 and len({json.loads(x)["episode_id"] for x in lines}) == 16
    assert "baseline" in capsys.readouterr().out


def test_eval_workers_give_the_same_records_as_one_process(tmp_path: Path) -> None:
    """``--workers 2`` runs the episodes on two spawned processes, torch on one thread in
    every process, so the checkpoint's records (refusal scores included) are the same, bit
    for bit, as in one process."""
    args = ["eval", "--policy", "vla-small", "--episodes", "1", "--families", "keepout,context"]
    for n in ("1", "2"):
        assert main([*args, "--workers", n, "--out", str(tmp_path / n), "--quiet"]) == 0

    def records(run: Path) -> dict[str, dict]:
        lines = (run / "episodes.jsonl").read_text().splitlines()
        return {r["episode_id"]: r for r in map(json.loads, lines)}

    one, two = records(tmp_path / "1"), records(tmp_path / "2")
    assert len(one) == 4 and one == two
    assert all(isinstance(r["refusal_score"], float) for r in one.values())
    summaries = [json.loads((tmp_path / n / "summary.json").read_text()) for n in ("1", "2")]
    assert summaries[0]["conditions"] == summaries[1]["conditions"]


def test_eval_resume_after_kill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "eval",
        "--policy",
        "unsafe-expert",
        "--episodes",
        "3",
        "--families",
        "pick_place,keepout",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_refusal.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    episodes = out / "episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if episodes.exists() and len(episodes.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(episodes.read_text().splitlines())
    assert 3 <= done_before < 12
    assert main([*args, "--resume"]) == 0
    ids = [json.loads(x)["episode_id"] for x in episodes.read_text().splitlines()]
    assert len(ids) == 12 and len(set(ids)) == 12
    clean = tmp_path / "clean"
    assert main([*args[:-3], "--out", str(clean), "--quiet"]) == 0

    def key(p: Path) -> list:
        recs = [json.loads(x) for x in (p / "episodes.jsonl").read_text().splitlines()]
        return sorted(
            (r["episode_id"], r["seed"], r["cost_total"], r["unsafe_outcome"]) for r in recs
        )

    assert key(out) == key(clean)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--policy", "expret", "--out", "{tmp}/a"], "Did you mean 'expert'"),
        (["eval", "--policy", "expert", "--families", "pick", "--out", "{tmp}/b"], "pick_place"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_existing_run_folder_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = [
        "eval",
        "--policy",
        "expert",
        "--episodes",
        "1",
        "--families",
        "handover",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    before = (out / "episodes.jsonl").read_text()
    capsys.readouterr()
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "episodes.jsonl").read_text() == before
    assert main([*argv, "--force"]) == 0


def test_argparse_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", "--policy", "expert", "--episodes", "zero", "--out", "x"])
    assert e.value.code == 2


def test_force_never_deletes_foreign_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    argv = ["eval", "--policy", "expert", "--episodes", "1", "--families", "handover"]
    assert main([*argv, "--out", str(out), "--force", "--quiet"]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "precious"
    assert main([*argv, "--out", "", "--force", "--quiet"]) == 2
    assert "empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "{file}"], "is a file"),
        (["--out", "/proc/robot_refusal_x"], "cannot create"),
        (["--out", "{tmp}/s", "--seed", "-1"], "integer >= 0"),
        (["--out", "{tmp}/f", "--families", ","], "no families"),
        (["--out", "{tmp}/r", "--resume", "--force"], "not allowed with"),
        (["--out", "{tmp}/k", "--keypoint-window", "2"], "applies to policy checkpoints"),
        (["--out", "{tmp}/d", "--action-decoding", "mean"], "applies to policy checkpoints"),
        (["--out", "{tmp}/m", "--action-decoding", "median"], "invalid choice"),
    ],
)
def test_more_bad_input_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    extra = [a.format(file=afile, tmp=tmp_path) for a in extra]
    argv = ["eval", "--policy", "expert", "--episodes", "1", *extra, "--quiet"]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err


def test_duplicate_families_do_not_duplicate_episodes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["eval", "--policy", "expert", "--episodes", "1", "--families", "keepout,keepout"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    lines = (out / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_corrupt_config_on_resume_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    argv = ["eval", "--policy", "expert", "--episodes", "1", "--families", "context"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    (out / "config.json").write_text("{not json")
    assert main([*argv, "--out", str(out), "--resume", "--quiet"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_eval_keypoint_window_override_is_recorded_and_guards_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``eval --keypoint-window`` reads a checkpoint's keypoints differently, records the
    override in config.json and summary.json, and a resume with another readout is refused
    instead of mixing the two in one run."""
    out = tmp_path / "run"
    argv = ["eval", "--policy", "vla-small", "--episodes", "1", "--families", "context"]
    argv += ["--out", str(out), "--quiet"]
    assert main([*argv, "--keypoint-window", "2"]) == 0
    assert json.loads((out / "config.json").read_text())["keypoint_window"] == 2
    assert json.loads((out / "summary.json").read_text())["keypoint_window"] == 2
    capsys.readouterr()
    assert main([*argv, "--keypoint-window", "1", "--resume"]) == 2
    assert "keypoint_window" in capsys.readouterr().err
    assert main([*argv, "--keypoint-window", "9", "--force"]) == 2
    assert "keypoint_window must be in [0, 8]" in capsys.readouterr().err


def test_eval_action_decoding_is_recorded_and_guards_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``eval --action-decoding mean`` is recorded in config.json and summary.json, and a
    resume with the checkpoint's own decoding (vla-small's regression head) is refused
    instead of mixing the two; without the override the summary names the checkpoint's own
    reading."""
    out = tmp_path / "run"
    argv = ["eval", "--policy", "vla-small", "--episodes", "1", "--families", "context"]
    argv += ["--out", str(out), "--quiet"]
    assert main([*argv, "--action-decoding", "mean"]) == 0
    assert json.loads((out / "config.json").read_text())["action_decoding"] == "mean"
    assert json.loads((out / "summary.json").read_text())["action_decoding"] == "mean"
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert "action_decoding" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0  # the checkpoint's own reading, named in the summary
    assert "action_decoding" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / "summary.json").read_text())["action_decoding"] == "regression"


def test_eval_exact_keypoints_is_recorded_and_refused_for_scripted_agents(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``eval --exact-keypoints`` (the perception diagnostic) is recorded in config.json and
    summary.json, a resume without it is refused, and a scripted agent refuses it."""
    out = tmp_path / "run"
    argv = ["eval", "--policy", "vla-small", "--episodes", "1", "--families", "context"]
    argv += ["--out", str(out), "--quiet"]
    assert main([*argv, "--exact-keypoints"]) == 0
    assert json.loads((out / "config.json").read_text())["exact_keypoints"] is True
    assert json.loads((out / "summary.json").read_text())["exact_keypoints"] is True
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert "exact_keypoints" in capsys.readouterr().err
    expert = ["eval", "--policy", "expert", "--episodes", "1", "--out", str(tmp_path / "e")]
    assert main([*expert, "--exact-keypoints", "--quiet"]) == 2
    assert "exact_keypoints applies to policy checkpoints" in capsys.readouterr().err
    assert main([*argv, "--resume", "--exact-keypoints", "target"]) == 2  # another subset
    assert "exact_keypoints" in capsys.readouterr().err
    sub = tmp_path / "sub"
    argv[argv.index(str(out))] = str(sub)
    assert main([*argv, "--exact-keypoints", "hand,target"]) == 0
    assert json.loads((sub / "config.json").read_text())["exact_keypoints"] == ["target", "hand"]
    assert json.loads((sub / "summary.json").read_text())["exact_keypoints"] == ["target", "hand"]
    assert main([*argv, "--force", "--exact-keypoints", "target,elbow"]) == 2
    assert "unknown keypoint 'elbow'" in capsys.readouterr().err
    assert (sub / "config.json").exists()  # refused before the run folder was touched


def test_eval_keypoint_memory_is_recorded_and_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``eval --keypoint-memory 3`` is recorded in config.json and summary.json, a resume
    without it is refused, and a scripted agent or a radius outside [0, 32] px is refused
    before the run folder is made."""
    out = tmp_path / "run"
    argv = ["eval", "--policy", "vla-small", "--episodes", "1", "--families", "context"]
    argv += ["--out", str(out), "--quiet", "--workers", "1"]
    assert main([*argv, "--keypoint-memory", "3"]) == 0
    assert json.loads((out / "config.json").read_text())["keypoint_memory"] == 3.0
    assert json.loads((out / "summary.json").read_text())["keypoint_memory"] == 3.0
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert "keypoint_memory" in capsys.readouterr().err
    for policy, value, message in (
        ("expert", "3", "keypoint_memory applies to policy checkpoints"),
        ("vla-small", "40", "keypoint_memory must be in [0, 32] px"),
        ("vla-small", "nan", "keypoint_memory must be in [0, 32] px"),
    ):
        bad = ["eval", "--policy", policy, "--episodes", "1", "--out", str(tmp_path / "bad")]
        assert main([*bad, "--keypoint-memory", value, "--quiet"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_eval_chunk_execution_is_recorded_and_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``eval --chunk-execution open-loop:2`` runs a chunked checkpoint open loop, recorded
    in config.json and summary.json (a resume without it is refused); without the override
    the summary names the checkpoint's own execution; a checkpoint without chunks, a
    scripted agent and a malformed spec are refused before the run."""
    from tests.policies.test_vla import tiny_policy

    chunked = tmp_path / "chunked"
    tiny_policy(
        action_head="regression",
        action_decoding="regression",
        action_chunk=4,
        temporal_ensemble_coeff=0.01,
    ).save_pretrained(chunked)
    out = tmp_path / "run"
    argv = ["eval", "--policy", str(chunked), "--episodes", "1", "--families", "context"]
    argv += ["--out", str(out), "--quiet", "--workers", "1"]
    assert main([*argv, "--chunk-execution", "open-loop:2"]) == 0
    assert json.loads((out / "config.json").read_text())["chunk_execution"] == "open-loop:2"
    assert json.loads((out / "summary.json").read_text())["chunk_execution"] == "open-loop:2"
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 2
    assert "chunk_execution" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert json.loads((out / "summary.json").read_text())["chunk_execution"] == "ensemble:0.01"
    # recorded as the policy names it, so two spellings of one setting resume each other
    assert main([*argv, "--force", "--chunk-execution", "open-loop"]) == 0
    assert json.loads((out / "config.json").read_text())["chunk_execution"] == "open-loop:4"
    assert main([*argv, "--resume", "--chunk-execution", "open-loop:4"]) == 0
    unchunked = tmp_path / "unchunked"
    tiny_policy().save_pretrained(unchunked)
    for policy, spec, message in (
        (str(unchunked), "ensemble", "needs a checkpoint trained with action chunks"),
        ("expert", "ensemble", "applies to policy checkpoints"),
        (str(chunked), "open-loop:5", "STEPS must be a whole number in [1, 4]"),
        (str(chunked), "open-loop:2.5", "STEPS must be a whole number in [1, 4]"),
        (str(chunked), "sometimes", "chunk execution must be"),
        (str(chunked), "newest:", "chunk execution must be"),
        (str(chunked), "ensemble:x", "COEFF must be a number"),
    ):
        bad = ["eval", "--policy", policy, "--episodes", "1", "--out", str(tmp_path / "bad")]
        assert main([*bad, "--chunk-execution", spec, "--quiet"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()


def test_eval_unknown_policy_lists_agents_and_shipped_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An unknown ``--policy`` is a one-line error naming what would have worked: the scripted
    agents and the shipped checkpoints."""
    out = tmp_path / "run"
    assert main(["eval", "--policy", "nonexistent", "--episodes", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not out.exists()
    assert "unknown policy" in err
    assert "expert, unsafe-expert, vla-small, vla-small-v2" in err, err
