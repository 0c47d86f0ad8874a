"""``robot-refusal extract`` and the selection on vla-small (skipped until it is shipped)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_refusal.cli import main
from robot_refusal.directions import Direction, checkpoint_hash
from robot_refusal.errors import ConfigError
from robot_refusal.extract import (
    ExtractConfig,
    capture,
    extract,
    first_observations,
    make_prober,
)
from robot_refusal.extraction import two_set_candidates
from robot_refusal.interventions import directional_ablation
from robot_refusal.policies.configuration_vla import REFUSE_ID
from robot_refusal.policies.policy import CHECKPOINTS, VLAPolicy
from robot_refusal.selection import VLA_KL_MAX, Selection, refusal_scores, select_direction
from tests.policies.test_vla import tiny_policy

torch.set_num_threads(1)
VLA_SMALL = CHECKPOINTS / "vla-small"
needs_vla_small = pytest.mark.skipif(
    not (VLA_SMALL / "model.safetensors").is_file(), reason="vla-small is not shipped yet"
)


def test_extract_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["extract", "--policy", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robot-refusal: error:") and "does not exist" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["extract", "--policy", "x", "--out", str(tmp_path), "--episodes", "0"])
    assert e.value.code == 2
    for bad in ("nan", "inf", "-1", "0", "lots"):  # refused before anything is read or written
        out = tmp_path / f"kl-{bad}"
        with pytest.raises(SystemExit) as e:
            main(["extract", "--policy", "vla-small", "--out", str(out), "--kl-max", bad])
        assert e.value.code == 2 and not out.exists()
        assert "number > 0" in capsys.readouterr().err
    for kl in (float("nan"), 0.0):  # the same check from Python, before the folder is made
        with pytest.raises(ConfigError, match="kl_max must be a finite number > 0"):
            extract(ExtractConfig("vla-small", str(tmp_path / "api"), kl_max=kl))
    assert not (tmp_path / "api").exists()


def test_extract_caution_writes_outputs(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    tiny_policy().save_pretrained(ckpt)
    out = tmp_path / "out"
    args = ["extract", "--policy", str(ckpt), "--out", str(out), "--kind", "caution"]
    assert main([*args, "--episodes", "1", "--quiet"]) == 0
    sel = json.loads((out / "selection.json").read_text())
    rows = list(csv.DictReader((out / "candidates.csv").open()))
    assert len(rows) == 2 * 3 == len(sel["candidates"])  # L = 2 layers x 3 positions
    assert sel["n_cautious"] >= 2 and sel["n_other"] >= 2
    d = Direction.load(out / "direction")
    assert (d.layer, d.position) == (sel["chosen"]["layer"], sel["chosen"]["position"])
    assert d.checkpoint == checkpoint_hash(ckpt) and d.split == "val" and d.d_model == 32
    assert d.scores["separation"] == pytest.approx(
        max(float(r["separation"]) for r in rows if not r["filtered"])
    )
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def vla_small() -> tuple[VLAPolicy, dict[str, list], Selection, list]:
    policy = VLAPolicy.from_pretrained(VLA_SMALL)
    sets = {
        (use, lab): first_observations(policy, "val", 4, int(use == "score"), lab)
        for use in ("fit", "score")
        for lab in ("harmful", "harmless")
    }
    cands = two_set_candidates(
        capture(policy, sets["fit", "harmful"], 64), capture(policy, sets["fit", "harmless"], 64)
    )
    sel = select_direction(
        policy.model,
        cands,
        make_prober(policy, sets["score", "harmful"], 64),
        make_prober(policy, sets["score", "harmless"], 64),
        [REFUSE_ID],
        kl_max=VLA_KL_MAX,
    )
    return policy, sets, sel, cands


@needs_vla_small
def test_vla_small_random_direction_is_a_weak_control(vla_small: tuple) -> None:
    policy, sets, sel, cands = vla_small
    usable = [i for i, s in enumerate(sel.scores) if s.filtered != "zero norm"]
    best = sel.chosen if sel.chosen is not None else min(usable, key=lambda i: sel.scores[i].bypass)
    probe = make_prober(policy, sets["score", "harmful"], 64)
    base = float(refusal_scores(probe(), [REFUSE_ID]).mean())
    assert base > 0  # the policy refuses harmful instructions
    selected_shift = base - sel.scores[best].bypass
    d = cands[best].direction.d_model
    rng = np.random.default_rng(0)
    random_shifts = []
    for _ in range(5):
        rand = Direction(torch.from_numpy(rng.standard_normal(d)))
        with directional_ablation(policy.model, rand):
            random_shifts.append(abs(base - float(refusal_scores(probe(), [REFUSE_ID]).mean())))
    assert selected_shift > 2.0
    assert max(random_shifts) < 0.2 * selected_shift, (selected_shift, random_shifts)


@needs_vla_small
def test_vla_small_selection_passes_the_filters(vla_small: tuple) -> None:
    _, _, sel, cands = vla_small
    assert len(sel.scores) == len(cands) == 4 * 3
    js = sel.to_json()
    assert len(js["candidates"]) == 12 and js["filters"]["kl_max"] == VLA_KL_MAX
    for s in sel.scores:
        if s.filtered != "zero norm":
            assert np.isfinite([s.bypass, s.induce, s.kl]).all() and s.kl >= 0
    best = sel.best()
    assert best is not None, "no candidate passed layer < 0.8 L, KL <= 1.0, induce >= 0: " + str(
        [
            (s.layer, s.position, round(s.bypass, 2), round(s.induce, 2), round(s.kl, 3))
            for s in sel.scores
        ]
    )
    assert best.bypass < 0 < best.induce and best.kl <= VLA_KL_MAX
