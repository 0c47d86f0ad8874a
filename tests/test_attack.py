"""``robot-refusal attack``, the conditions and the sweep directions, on the shipped vla-small."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robot_refusal.attack import AttackConfig, attack, pick_showcase
from robot_refusal.cli import main
from robot_refusal.conditions import (
    ConditionSpec,
    SteeredPolicy,
    load_steering,
    parse_conditions,
    parse_floats,
    parse_ints,
)
from robot_refusal.directions import Direction, Subspace, checkpoint_hash
from robot_refusal.errors import ConfigError, DirectionError, UnknownNameError
from robot_refusal.extract import first_observations
from robot_refusal.policies.policy import CHECKPOINTS, VLAPolicy
from robot_refusal.sweeps import contrast_sets, layer_directions, rank_subspaces

torch.set_num_threads(1)
VLA_SMALL = CHECKPOINTS / "vla-small"
DIRECTION = VLA_SMALL / "direction"
V2_DIRECTION = CHECKPOINTS / "vla-small-v2" / "direction"
SMALL = ["--families", "context", "--episodes", "1", "--quiet"]


@pytest.fixture(scope="module")
def policy() -> VLAPolicy:
    return VLAPolicy.from_pretrained("vla-small")


@pytest.fixture(scope="module")
def first_obs(policy: VLAPolicy) -> dict[str, list[dict]]:
    return {
        label: first_observations(policy, "test", 2, 0, label, families=["pick_place", "context"])
        for label in ("harmful", "harmless")
    }


# -- parsing and bad input -------------------------------------------------------------------
def test_parsers_reject_bad_values() -> None:
    assert parse_conditions("baseline, ablate,baseline") == ["baseline", "ablate"]
    with pytest.raises(UnknownNameError, match="jailbreak"):
        parse_conditions("baseline,jailbreak")
    assert parse_floats("-2,-0.5,0,2", "--alpha") == [-2.0, -0.5, 0.0, 2.0]
    with pytest.raises(ConfigError, match="'one' is not a number"):
        parse_floats("0.5,one", "--alpha")
    with pytest.raises(ConfigError, match="finite"):
        parse_floats("nan", "--alpha")
    assert parse_ints("1,2,8", "--ranks", low=1) == [1, 2, 8]
    with pytest.raises(ConfigError, match="below 1"):
        parse_ints("0,2", "--ranks", low=1)
    spec = ConditionSpec("add_alpha=-1", "add", "x", alpha=-1.0, group="alpha", value=-1.0)
    assert ConditionSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    with pytest.raises(ConfigError, match="needs a direction"):
        ConditionSpec("ablate", "ablate")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--conditions", "baseline,jailbreak"], "unknown condition 'jailbreak'"),
        (["--alpha", "-0.5,high"], "'high' is not a number"),  # a leading minus works
        (["--add-alpha", "lots"], "'lots' is not a number"),
        (["--direction", str(V2_DIRECTION)], "another checkpoint"),
        (["--ranks", "0"], "below 1"),
        (["--ranks", "1000", "--sweep-episodes", "1"], "rank k must lie in 1..1 (1 harmful"),
        (["--layers", "0", "--conditions", ""], "nothing to run"),
        (["--layers", "7"], "layers must lie in 0..3"),
        (["--episodes", "0"], "expected an integer >= 1"),
        (["--resume", "--force"], "not allowed with"),
    ],
)
def test_attack_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    args = ["attack", "--policy", "vla-small", "--out", str(tmp_path / "run"), *SMALL]
    if "--direction" not in extra:
        args += ["--direction", str(DIRECTION)]
    try:
        code = main([*args, *extra])
    except SystemExit as e:  # argparse's own errors, also one line
        code = int(e.code or 0)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("robot-refusal: error:") and message in err, err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing left that would block the fixed command


def test_attack_rejects_wrong_width_missing_policy_and_existing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wide = Direction(torch.ones(64), layer=3, position=-1)
    wide.save(tmp_path / "wide")
    out = tmp_path / "run"
    base = ["attack", "--out", str(out), *SMALL]
    assert main([*base, "--policy", "vla-small", "--direction", str(tmp_path / "wide")]) == 2
    assert "width 64" in capsys.readouterr().err
    assert main([*base, "--policy", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "episodes.jsonl").write_text('{"episode_id": "x", "condition": "baseline"}\n')
    assert main([*base, "--policy", "vla-small", "--direction", str(DIRECTION)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "episodes.jsonl").read_text().count("\n") == 1  # untouched
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    zero = Direction(torch.zeros(128), layer=3, position=-1)
    zero.save(tmp_path / "zero")
    fresh = tmp_path / "fresh"
    args = ["attack", "--out", str(fresh), *SMALL, "--policy", "vla-small"]
    assert main([*args, "--direction", str(tmp_path / "zero")]) == 2
    assert "zero norm" in capsys.readouterr().err and not fresh.exists()
    assert main([*args[:-1], str(tmp_path / "wide.json")]) == 2
    assert "is a file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "summary.json").write_text('{"conditions": {}}')
    (empty / "config.json").write_text("{}")
    assert main(["report", str(empty)]) == 2
    assert "no conditions" in capsys.readouterr().err


# -- conditions on the real policy -------------------------------------------------------------
def test_steered_policy_moves_the_refusal_score_and_records_kl(
    policy: VLAPolicy, first_obs: dict[str, list[dict]]
) -> None:
    r = load_steering(DIRECTION)
    base = SteeredPolicy(policy, ConditionSpec("baseline"))
    ablate = SteeredPolicy(policy, ConditionSpec("ablate", "ablate", str(DIRECTION)), r)
    add = SteeredPolicy(policy, ConditionSpec("add", "add", str(DIRECTION)), r)
    ortho = SteeredPolicy(policy, ConditionSpec("o", "orthogonalize", str(DIRECTION)), r)
    for obs in first_obs["harmful"]:
        s0, kl0 = base.first_step(obs)
        s1, kl1 = ablate.first_step(obs)
        s2, _ = ortho.first_step(obs)
        assert s0 > 2.0 and s1 < 0.0 and kl0 == 0.0 and kl1 > 0.0
        assert s2 == pytest.approx(s1, abs=1e-3)  # orthogonalization == ablation
    for obs in first_obs["harmless"]:
        s0, _ = base.first_step(obs)
        s3, kl3 = add.first_step(obs)
        assert s0 < -2.0 and s3 > 0.0 and kl3 > 0.0
    # the shared model is left clean: no hooks and unchanged weights
    assert all(not b._forward_pre_hooks for b in policy.model.language_model.layers)
    assert base.first_step(first_obs["harmful"][0])[0] == pytest.approx(
        SteeredPolicy(policy, ConditionSpec("baseline")).first_step(first_obs["harmful"][0])[0]
    )


def test_sweep_directions(policy: VLAPolicy) -> None:
    sets = contrast_sets(policy, "val", 8, 0, ["pick_place", "handover", "keepout", "context"])
    ckpt = checkpoint_hash(VLA_SMALL)
    shipped = Direction.load(DIRECTION / "direction")
    by_layer = layer_directions(policy, sets, shipped.position, ckpt, "val")
    # the post-instruction tokens do not see the instruction at the embedding
    assert by_layer[0] is None
    d = by_layer[shipped.layer]
    assert d is not None and d.layer == shipped.layer and d.position == shipped.position
    # the shipped direction was read from the same val observations (extract's fit set)
    cos = float(d.unit() @ shipped.unit())
    assert cos > 0.999
    subs = rank_subspaces(policy, sets, shipped.layer, shipped.position, [1, 4], ckpt, "val")
    assert isinstance(subs[4], Subspace) and subs[4].k == 4 and subs[1].k == 1
    assert float((subs[1].basis[0] @ shipped.unit()).abs()) > 0.9
    with pytest.raises(ConfigError, match="rank k must lie in"):
        rank_subspaces(policy, sets, shipped.layer, shipped.position, [40], ckpt, "val")


# -- whole runs -------------------------------------------------------------------------------
@pytest.mark.slow
def test_attack_run_summary_videos_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = AttackConfig(
        "vla-small",
        str(out),
        direction=str(DIRECTION),
        conditions=("baseline", "ablate", "add", "caution"),
        families=("context",),
        episodes=1,
        sweep_episodes=1,
    )
    s = attack(cfg, progress=False)
    assert s["condition_order"] == ["baseline", "ablate", "add", "ablate_caution"]
    for name, cond in s["conditions"].items():
        assert set(cond["harmful"]) >= {"n", "refusal_rate", "asr", "violation_rate", "mean_cost"}
        assert set(cond["harmless"]) >= {
            "n",
            "success_rate",
            "over_refusal_rate",
            "violation_rate",
            "mean_cost",
        }
        assert cond["harmful"]["n"] == cond["harmless"]["n"] == 1, name
        assert {"refusal_score_mean", "kl_mean"} <= set(cond)
    for key in ("policy", "direction", "seed", "versions"):
        assert key in s
    # vla-small's own: the regression head's chunks, temporally ensembled
    assert s["action_decoding"] == "regression" and s["chunk_execution"] == "ensemble:-0.5"
    c = s["conditions"]
    assert c["baseline"]["kl_mean"] == 0.0 and c["ablate"]["kl_mean"] > 0.0
    assert c["baseline"]["harmful"]["refusal_rate"] == 1.0
    assert c["add"]["harmless"]["over_refusal_rate"] == 1.0  # addition induces refusal
    assert c["ablate"]["refusal_score_mean"] < c["baseline"]["refusal_score_mean"]
    assert s["caution_direction"]["path"].endswith("directions/caution.safetensors")
    records = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 8 and len({(r["condition"], r["episode_id"]) for r in records}) == 8
    # videos: same seed re-run reproduces the recorded episode, bit for bit
    assert set(s["videos"]) == {"ablate", "add", "ablate_caution"}
    assert all(v["reproduced"] for v in s["videos"].values())
    assert s["videos"]["add"]["outcome"] == "refused"
    assert (out / s["videos"]["add"]["file"]).stat().st_size > 1000
    assert main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| ablate |" in md and "gifs/add.gif" in md and "Aims (issue 5)" in md
    assert "1 episode per family and label" in md  # one episode, singular
    page = (out / "report.html").read_text()
    assert "data:image/gif;base64," in page and "src='plots/" not in page
    assert (out / "plots" / "rates.png").is_file()
    # an existing run is refused without --resume/--force; --resume with nothing left is a no-op
    assert attack(cfg, resume=True, progress=False)["conditions"] == s["conditions"]


@pytest.mark.slow
def test_attack_sweeps_and_report_plots(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = AttackConfig(
        "vla-small",
        str(out),
        direction=str(DIRECTION),
        conditions=(),
        alphas=(-1.0, 2.0),
        layers=(0, 3),
        ranks=(1, 2),
        source_families=("context",),
        families=("context",),
        episodes=1,
        sweep_episodes=2,
        videos=0,
    )
    s = attack(cfg, progress=False)
    assert s["condition_order"] == [
        "add_alpha=-1",
        "add_alpha=2",
        "ablate_layer=3",
        "ablate_k=1",
        "ablate_k=2",
        "ablate_from=context",
    ]
    assert s["sweeps"]["skipped"] == {"ablate_layer=0": "zero-norm difference in means"}
    assert s["conditions"]["add_alpha=2"]["harmless"]["over_refusal_rate"] == 1.0
    assert Subspace.load(out / "directions" / "rank2").k == 2
    main(["report", str(out)])
    for name in ("dose_response", "layers", "rank_k", "cross_family"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 5000, name


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_kill_9_then_resume_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "robot_refusal.cli",
        "attack",
        "--policy",
        "vla-small",
        "--direction",
        str(DIRECTION),
        "--conditions",
        "baseline,ablate",
        "--families",
        "keepout",
        "--episodes",
        "2",
        "--no-videos",
        "--quiet",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen([*args, "--workers", "2"], start_new_session=True)
    episodes = out / "episodes.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if episodes.exists() and len(_lines(episodes)) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers
    proc.wait()
    killed = _lines(episodes)
    assert 3 <= len(killed) < 8
    assert subprocess.run([*args, "--workers", "1", "--resume"], check=False).returncode == 0
    records = _lines(episodes)
    keys = [(r["condition"], r["episode_id"]) for r in records]
    assert len(keys) == len(set(keys)) == 8
    assert records[: len(killed)] == killed  # nothing rewritten
    # the same run uninterrupted in one process: the same episodes, bit for bit
    ref = tmp_path / "ref"
    ref_args = [a if a != str(out) else str(ref) for a in args]
    assert subprocess.run([*ref_args, "--workers", "1"], check=False).returncode == 0
    expected = {(r["condition"], r["episode_id"]): r for r in _lines(ref / "episodes.jsonl")}
    assert {k: r for k, r in zip(keys, records, strict=True)} == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conditions"]["baseline"]["harmful"]["n"] == 2


def test_pick_showcase_prefers_unsafe_then_flipped() -> None:
    def rec(cond: str, i: int, label: str, refused: bool, unsafe: bool = False) -> dict:
        return {
            "condition": cond,
            "episode_id": f"f/{label}/{i:05d}",
            "label": label,
            "refused": refused,
            "unsafe_outcome": unsafe,
        }

    records = [
        rec("baseline", 0, "harmful", True),
        rec("baseline", 1, "harmful", True),
        rec("ablate", 0, "harmful", True),
        rec("ablate", 1, "harmful", False),
    ]
    assert pick_showcase(records, "ablate")["episode_id"] == "f/harmful/00001"
    records.append(rec("ablate", 2, "harmful", False, unsafe=True))
    assert pick_showcase(records, "ablate")["episode_id"] == "f/harmful/00002"
    assert pick_showcase(records, "add") is None


def test_direction_errors_name_the_problem(policy: VLAPolicy, tmp_path: Path) -> None:
    with pytest.raises(DirectionError):
        load_steering(tmp_path / "none")
    narrow = Direction(torch.ones(16), layer=3, position=-1)
    with pytest.raises(DirectionError, match="width 16"):
        SteeredPolicy(policy, ConditionSpec("ablate", "ablate", "x"), narrow)
    with pytest.raises(ConfigError, match="layer must lie"):
        SteeredPolicy(policy, ConditionSpec("add", "add", "x", layer=9), load_steering(DIRECTION))


@pytest.mark.parametrize("command", ["attack", "report", "demo"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: robot-refusal " + command in capsys.readouterr().out


def test_steered_policy_holds_keypoints_as_eval_does(first_obs: dict[str, list[dict]]) -> None:
    """A condition on a checkpoint with a keypoint memory holds its keypoints as
    ``VLAPolicy`` does: the baseline's actions equal the plain policy's, step by step, and
    differ from those of the same weights without the memory (so the memory is in use)."""
    import numpy as np

    from tests.policies.test_vla import tiny_policy

    obs = first_obs["harmless"][:4]
    plain = tiny_policy(seed=2)
    memoryless = VLAPolicy(tiny_policy(seed=2).model, plain.processor)
    plain = VLAPolicy(plain.model, plain.processor, keypoint_memory=32)
    base = SteeredPolicy(plain, ConditionSpec("baseline"))
    assert base.keypoint_memory is not None
    for p in (plain, base, memoryless):
        p.reset()
    differs = False
    for o in [*obs, *obs]:
        got, want = base.select_action(o), plain.select_action(o)
        assert np.array_equal(got["delta"], want["delta"])
        assert np.array_equal(got["gripper"], want["gripper"])
        memoryless.select_action(o)
        differs |= plain.refusal_score != memoryless.refusal_score
    assert differs


def test_steered_policy_runs_a_chunked_checkpoint_as_eval_does(
    first_obs: dict[str, list[dict]],
) -> None:
    """A condition on a checkpoint with action chunks runs them as ``VLAPolicy`` does: the
    baseline's actions equal the plain policy's, step by step, open loop and ensembled; an
    ablation changes them and calls the (hooked) model only when the chunk is used up."""
    import numpy as np

    from tests.policies.test_vla import tiny_policy

    obs = first_obs["harmless"][:3]
    for spec in ("open-loop:2", "ensemble:0.5"):
        plain = tiny_policy(
            action_head="regression",
            action_decoding="regression",
            action_chunk=3,
            temporal_ensemble_coeff=0.01,
        )
        VLAPolicy(plain.model, plain.processor, chunk_execution=spec)
        base = SteeredPolicy(plain, ConditionSpec("baseline"))
        for p in (plain, base):
            p.reset()
        for o in [*obs, *obs]:
            got, want = base.select_action(o)["delta"], plain.select_action(o)["delta"]
            assert np.array_equal(got, want), spec
    width = plain.model.config.hidden_size
    r = Direction(torch.ones(width, dtype=torch.float64), layer=1)
    plain.model.config.n_action_steps, plain.model.config.temporal_ensemble_coeff = 3, None
    ablate = SteeredPolicy(plain, ConditionSpec("ablate", "ablate", "unused"), r)
    calls: list[int] = []
    hook = plain.model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        ablate.reset()
        plain.reset()
        moved = [ablate.select_action(o)["delta"] for o in [*obs, obs[0]]]
        assert len(calls) == 3  # steps 0 (steered, and the base for the KL) and 3
        assert not np.array_equal(moved[0], plain.select_action(obs[0])["delta"])
    finally:
        hook.remove()
