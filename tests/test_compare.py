"""Paired comparison of two runs (``robot-refusal compare``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from robot_refusal.cli import main
from robot_refusal.compare import compare_records, mcnemar_exact, read_records
from robot_refusal.errors import ConfigError, RunFolderError


def record(i: int, label: str, family: str = "pick_place", **outcome: Any) -> dict[str, Any]:
    """An episode record with the fields ``compare`` reads; outcome flags default to False."""
    return {
        "episode_id": f"{family}-{label}-{i:04d}",
        "condition": outcome.pop("condition", "baseline"),
        "family": family,
        "label": label,
        "seed": 1000 + i,
        "split": "test",
        "instruction": f"instruction {i}",
        "is_success": outcome.get("success", False),
        "refused": outcome.get("refused", False),
        "unsafe_outcome": outcome.get("unsafe", False),
        "cost_total": outcome.get("cost", 0.0),
    }


def write_run(folder: Path, records: list[dict[str, Any]], tail: bytes = b"") -> Path:
    folder.mkdir(parents=True)
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    (folder / "episodes.jsonl").write_bytes(lines + tail)
    return folder


def test_mcnemar_exact_values() -> None:
    # p = min(1, 2 P[X <= min(b, c)]), X ~ Bin(b + c, 1/2)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(10, 3) == pytest.approx(2 * (1 + 13 + 78 + 286) / 2**13)  # 0.0923
    assert mcnemar_exact(3, 10) == mcnemar_exact(10, 3)
    assert mcnemar_exact(4, 4) == 1.0
    assert mcnemar_exact(47, 6) < 1e-8
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 2)


def test_counts_by_outcome_and_family() -> None:
    # harmless successes: A on 0,1,2 (pick_place) and 4 (handover); B on 1,2,3 and 4
    a = [record(i, "harmless", success=i in (0, 1, 2)) for i in range(4)]
    b = [record(i, "harmless", success=i in (1, 2, 3), cost=1.0 * (i == 0)) for i in range(4)]
    a.append(record(4, "harmless", "handover", success=True))
    b.append(record(4, "harmless", "handover", success=True))
    a += [record(i, "harmful", refused=True) for i in range(2)]
    b += [record(0, "harmful", refused=True), record(1, "harmful", unsafe=True)]
    out = compare_records(a, b)
    assert out["paired"] == 7 and out["only_in_a"] == out["only_in_b"] == 0
    s = out["outcomes"]["harmless"]["success"]
    assert (s["n"], s["both"], s["only_a"], s["only_b"], s["neither"]) == (5, 3, 1, 1, 0)
    assert s["a"] == s["b"] == pytest.approx(0.8) and s["p_value"] == 1.0
    v = out["outcomes"]["harmless"]["violation"]
    assert (v["only_a"], v["only_b"], v["b"]) == (0, 1, pytest.approx(0.2))
    r = out["outcomes"]["harmful"]["refusal"]
    assert (r["both"], r["only_a"], r["only_b"], r["a"], r["b"]) == (1, 1, 0, 1.0, 0.5)
    assert out["outcomes"]["harmful"]["asr"]["only_b"] == 1
    fam = out["by_family"]["harmless"]
    assert set(fam) == {"handover", "pick_place"}
    assert fam["pick_place"]["success"]["n"] == 4 and fam["handover"]["success"]["both"] == 1


def test_unpaired_episodes_are_left_out_and_mismatches_refused() -> None:
    a = [record(i, "harmless", success=True) for i in range(3)]
    b = [record(i, "harmless") for i in range(1, 5)]
    out = compare_records(a, b)
    assert (out["paired"], out["only_in_a"], out["only_in_b"]) == (2, 1, 2)
    assert out["outcomes"]["harmless"]["success"]["only_a"] == 2
    other = [{**r, "seed": r["seed"] + 1} for r in a]
    with pytest.raises(ConfigError, match="differs in seed"):
        compare_records(a, other)
    with pytest.raises(ConfigError, match="share no episode"):
        compare_records(a, [record(9, "harmless")])


def test_read_records_conditions_and_bad_files(tmp_path: Path) -> None:
    recs = [record(i, "harmless", condition=c) for c in ("baseline", "ablate") for i in range(2)]
    run = write_run(tmp_path / "attack", recs, tail=b'{"episode_id": "trunc')  # killed writer
    assert [r["condition"] for r in read_records(run, "ablate")] == ["ablate", "ablate"]
    with pytest.raises(RunFolderError, match="ablate, baseline; choose one"):
        read_records(run)
    with pytest.raises(RunFolderError, match="no episodes of condition 'add'"):
        read_records(run, "add")
    with pytest.raises(RunFolderError, match="does not exist"):
        read_records(tmp_path / "nowhere")
    bad = write_run(tmp_path / "bad", recs[:1])
    (bad / "episodes.jsonl").write_bytes(
        b'{"episode_id": "x", "condition": "baseline"}\nnot json\n'
    )
    with pytest.raises(RunFolderError, match=r"episodes\.jsonl:2 is not a JSON record"):
        read_records(bad)


def test_compare_cli_on_real_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The expert refuses every harmful instruction and the unsafe expert none: paired on the
    same episodes, refusal holds only in A on every harmful pair."""
    base = ["eval", "--episodes", "2", "--families", "pick_place", "--workers", "1", "--quiet"]
    for name in ("expert", "unsafe-expert"):
        assert main([*base, "--policy", name, "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    out_json = tmp_path / "cmp.json"
    argv = ["compare", str(tmp_path / "expert"), str(tmp_path / "unsafe-expert")]
    assert main([*argv, "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "2 paired episodes" not in text and "4 paired episodes" in text
    assert "| harmful | refusal | 2 | 100.0% | 0.0% | 0 | 2 | 0 | 0 | 0.5 |" in text
    data = json.loads(out_json.read_text())
    assert data["outcomes"]["harmful"]["asr"]["only_b"] == 2
    harmless = data["outcomes"]["harmless"]["success"]
    assert harmless["n"] == 2 and harmless["only_a"] == harmless["only_b"] == 0
    assert main(["compare", str(tmp_path / "expert"), str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
