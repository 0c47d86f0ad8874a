"""Command-line interface: ``robot-refusal <command>``.

Thin subcommands that call library code. Our errors become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from robot_refusal.errors import RobotRefusalError
from robot_refusal.ros2.commands import add_parsers as add_ros2_parsers

log = logging.getLogger("robot_refusal")


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (e.g. ``--kl-max``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _families(text: str) -> list[str]:
    from robot_refusal.envs import FAMILIES

    if text == "all":
        return list(FAMILIES)
    return [f.strip() for f in text.split(",") if f.strip()]


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``, else a one-line usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


_non_negative = _int_at_least(0)
_positive = _int_at_least(1)


def _add_run_args(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument(
        "--split",
        default=split,
        choices=["train", "val", "test"],
        help=f"instruction split (default: {split})",
    )
    p.add_argument(
        "--episodes", type=_positive, default=10, help="episodes per family and label (default: 10)"
    )
    p.add_argument(
        "--families",
        type=_families,
        default="all",
        help="comma-separated families or 'all' (default: all)",
    )
    p.add_argument("--seed", type=_non_negative, default=0, help="run seed >= 0 (default: 0)")
    p.add_argument("--out", required=True, help="output folder")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument(
        "--force", action="store_true", help="delete what an earlier run wrote in --out first"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments that ``eval`` and ``collect`` share, from the parsed options."""
    families = args.families if isinstance(args.families, list) else _families(args.families)
    return {
        "split": args.split,
        "episodes": args.episodes,
        "families": families,
        "seed": args.seed,
        "resume": args.resume,
        "force": args.force,
        "progress": not args.quiet,
    }


def cmd_eval(args: argparse.Namespace) -> int:
    """Run closed-loop episodes of a policy; write episodes.jsonl and summary.json."""
    from robot_refusal.rollout import evaluate
    from robot_refusal.tables import format_summary

    summary = evaluate(
        args.policy,
        args.out,
        keypoint_window=args.keypoint_window,
        workers=args.workers,
        action_decoding=args.action_decoding,
        exact_keypoints=args.exact_keypoints or False,
        chunk_execution=args.chunk_execution,
        keypoint_memory=args.keypoint_memory,
        **_run_kwargs(args),
    )
    print(format_summary(summary))
    print(f"wrote {args.out}/episodes.jsonl and {args.out}/summary.json")
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    """Record scripted-expert demonstrations as a LeRobotDataset v3.0 folder."""
    from robot_refusal.policies.collect import collect

    info = collect(
        args.out,
        image_size=args.image_size,
        action_noise=args.action_noise,
        release_tolerance=args.release_tolerance,
        grasp_tolerance=args.grasp_tolerance,
        slow_band=args.slow_band,
        keypoint_plane=args.keypoint_plane,
        miss_rate=args.miss_rate,
        learner=args.learner,
        beta=args.beta,
        workers=args.workers,
        **_run_kwargs(args),
    )
    print(f"wrote {info['total_episodes']} episodes, {info['total_frames']} frames to {args.out}")
    if args.learner is not None:
        from robot_refusal.policies.dataset import load_dataset

        eps = load_dataset(args.out).episodes
        harmless = [r for r in eps.to_pylist() if r["label"] == "harmless"]
        won = sum(bool(r["is_success"]) for r in harmless)
        print(f"learner {args.learner}: harmless success {won}/{len(harmless)} (train split)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train the VLA on a demonstration dataset (behaviour cloning)."""
    from robot_refusal.policies.training import TrainConfig, train

    config = TrainConfig(
        data=args.data,
        out=args.out,
        val_data=args.val_data,
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        hidden_size=args.hidden_size,
        image_tokens_side=args.image_tokens_side,
        num_layers=args.layers,
        keypoint_weight=args.keypoint_weight,
        label_sigma=args.label_sigma,
        arrival_weight=args.arrival_weight,
        arrival_radius=args.arrival_radius,
        arrival_phase=args.arrival_phase,
        release_weight=args.release_weight,
        action_space=args.action_space,
        grounded_keypoints=args.grounded_keypoints,
        heatmap_weight=args.heatmap_weight,
        metric_keypoints=args.metric_keypoints,
        metric_label_noise_px=args.metric_label_noise_px,
        metric_upper_plane_height=args.metric_upper_plane,
        keypoint_stride=args.keypoint_stride,
        keypoint_window=args.keypoint_window,
        miss_frames=args.miss_frames,
        extra_frames=args.extra_frames,
        extra_data=tuple(args.extra_data or ()),
        init_from=args.init,
        state_velocity=args.state_velocity,
        action_head=args.action_head,
        regression_weight=args.regression_weight,
        action_chunk=args.action_chunk,
        regression_metric_inputs=args.regression_metric_inputs,
        eval_every=args.eval_every,
        threads=args.threads,
        precision=args.precision,
    )
    result = train(config, resume=args.resume, progress=not args.quiet)
    last = result["history"][-1] if result["history"] else {}
    print(
        f"wrote {args.out} ({result['parameters'] / 1e6:.2f}M parameters, "
        f"{result['seconds']:.0f} s); final {json.dumps(last)}"
    )
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    """Extract a refusal or caution direction from a VLA checkpoint (difference-in-means
    candidates, bypass/induce/KL selection); write the table, selection.json, a plot and the
    direction."""
    from robot_refusal.extract import ExtractConfig, extract

    cfg = ExtractConfig(
        policy=args.policy,
        out=args.out,
        kind=args.kind,
        split=args.split,
        episodes=args.episodes,
        seed=args.seed,
        batch_size=args.batch_size,
        kl_max=args.kl_max,
    )
    result = extract(cfg, progress=not args.quiet)
    best = result["chosen"]
    scores = ", ".join(
        f"{k} {best[k]:.3f}" for k in ("bypass", "induce", "kl", "separation") if k in best
    )
    print(f"chosen layer {best['layer']}, position {best['position']}: {scores}")
    print(f"wrote {args.out}/direction.safetensors, selection.json, candidates.csv, scores.png")
    return 0


def _attack_summary_lines(summary: dict[str, Any], out: str) -> None:
    from robot_refusal.tables import format_summary

    print(format_summary(summary, families=False))
    d = summary.get("direction") or {}
    if d:
        print(f"direction: layer {d.get('layer')}, position {d.get('position')} ({d.get('path')})")
    print(f"wrote {out}/episodes.jsonl and {out}/summary.json")


def cmd_attack(args: argparse.Namespace) -> int:
    """Closed-loop steering attacks: every episode under every condition (baseline, directional
    ablation, activation addition, weight orthogonalization, caution-direction ablation) and the
    sweeps (alpha dose-response, layers, rank k, cross-family); writes episodes.jsonl,
    summary.json and side-by-side GIFs."""
    from robot_refusal.attack import AttackConfig, attack
    from robot_refusal.conditions import parse_conditions, parse_floats, parse_ints
    from robot_refusal.errors import ConfigError

    try:
        add_alpha = float(args.add_alpha)
    except ValueError:
        raise ConfigError(f"--add-alpha: {args.add_alpha!r} is not a number") from None
    cfg = AttackConfig(
        policy=args.policy,
        out=args.out,
        direction=args.direction,
        conditions=tuple(parse_conditions(args.conditions)) if args.conditions else (),
        add_alpha=add_alpha,
        alphas=tuple(parse_floats(args.alpha, "--alpha")) if args.alpha else (),
        layers=tuple(parse_ints(args.layers, "--layers")) if args.layers else (),
        ranks=tuple(parse_ints(args.ranks, "--ranks", low=1)) if args.ranks else (),
        source_families=tuple(_families(args.source_families)) if args.source_families else (),
        caution_direction=args.caution_direction,
        cross_version=args.cross_version,
        split=args.split,
        episodes=args.episodes,
        families=tuple(
            args.families if isinstance(args.families, list) else _families(args.families)
        ),
        seed=args.seed,
        sweep_split=args.sweep_split,
        sweep_episodes=args.sweep_episodes,
        videos=0 if args.no_videos else 1,
        workers=args.workers,
    )
    summary = attack(cfg, resume=args.resume, force=args.force, progress=not args.quiet)
    _attack_summary_lines(summary, args.out)
    print(f"next: robot-refusal report {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write report.md and a self-contained report.html (tables, bar charts with error bars,
    sweep plots, side-by-side GIFs) for a run folder."""
    from robot_refusal.report import write_report

    written = write_report(args.run)
    print(f"wrote {written['report.md']} and {written['report.html']}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare two runs of the same plan episode by episode (paired): for each outcome, the
    episodes where it holds in both runs, only in A, only in B and in neither, with the exact
    McNemar test; per family too. Runs: eval or attack folders (one condition each)."""
    from robot_refusal.compare import compare_records, format_comparison, read_records

    a = read_records(args.run_a, args.condition_a)
    b = read_records(args.run_b, args.condition_b)
    result = compare_records(a, b)
    name_a = args.run_a + (f" ({args.condition_a})" if args.condition_a else "")
    name_b = args.run_b + (f" ({args.condition_b})" if args.condition_b else "")
    print(format_comparison(result, name_a, name_b))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"a": name_a, "b": name_b, **result}, indent=2) + "\n", encoding="utf-8"
        )
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: load the shipped vla-small, extract and select its refusal direction, run
    baseline, ablate and add closed loop on the test split, print the table, write the report."""
    from robot_refusal.demo import demo

    summary = demo(
        out=args.out,
        policy=args.policy,
        episodes=args.episodes,
        seed=args.seed,
        workers=args.workers,
        resume=args.resume,
        force=args.force,
        progress=not args.quiet,
    )
    _attack_summary_lines(summary, args.out)
    print(f"report: {args.out}/report.md and {args.out}/report.html")
    return 0


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr and exit code 2, like the
    errors the commands raise (``robot-refusal: error: <message> (see <command> --help)``)."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as one line and exit with code 2."""
        self.exit(2, f"robot-refusal: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``robot-refusal``."""
    parser = OneLineErrorParser(
        prog="robot-refusal",
        description="Embodied robot-safety steering simulator (see README.md).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrorParser
    )

    p = sub.add_parser(
        "eval",
        help="run closed-loop episodes of a policy over every family",
        description=cmd_eval.__doc__,
    )
    p.add_argument(
        "--policy", required=True, help="expert | unsafe-expert | checkpoint folder or shipped name"
    )
    _add_run_args(p, "test")
    p.add_argument(
        "--keypoint-window",
        type=int,
        default=None,
        metavar="R",
        help="checkpoints only: read keypoints as the soft-argmax over the (2R+1)x(2R+1) "
        "heatmap cells around each maximum, overriding the checkpoint's keypoint_window "
        "(0: the expectation over the whole map; default: the checkpoint's own)",
    )
    p.add_argument(
        "--action-decoding",
        choices=("argmax", "mean", "local_mean", "regression"),  # ACTION_DECODINGS
        default=None,
        help="checkpoints only: read each action token as its argmax bin, the mean of its "
        "bin distribution, or the mean within the checkpoint's action_window bins of the "
        "argmax (local_mean), or all at once from the regression head of a checkpoint "
        "trained with one (regression), overriding the checkpoint's action_decoding "
        "(default: the checkpoint's own, argmax unless its config.json says otherwise)",
    )
    p.add_argument(
        "--exact-keypoints",
        nargs="?",
        const="all",
        default=None,
        metavar="NAMES",
        help="checkpoints only, a diagnostic: replace the first four predicted keypoints "
        "(target, destination, hand, gripper) by the simulator's exact ones at every step, "
        "to measure what perception costs (privileged: never a deployable policy); with "
        "NAMES (comma-separated, e.g. target,hand) only those, the others stay the policy's",
    )
    p.add_argument(
        "--chunk-execution",
        default=None,
        metavar="SPEC",
        help="checkpoints trained with action chunks only: ensemble[:COEFF] (a new chunk "
        "every step, ACT's temporal ensemble; COEFF default 0.01), open-loop[:STEPS] (call "
        "the model every STEPS steps and run the chunk's actions in between; default the "
        "whole chunk) or newest (a new chunk every step, its first action); default: the "
        "checkpoint's own",
    )
    p.add_argument(
        "--keypoint-memory",
        type=float,
        default=None,
        metavar="PX",
        help="checkpoints with keypoint labels only: hold the target (until grasped), "
        "destination and hand keypoints at their last estimate from farther than PX pixels "
        "while the predicted gripper keypoint is nearer, overriding the checkpoint's "
        "keypoint_memory (0: none; default: the checkpoint's own)",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        default=2,
        help="processes that run episodes (default: 2); the records are the same for any "
        "number, and a --resume may use another",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "collect",
        help="record expert demonstrations (LeRobotDataset v3.0)",
        description=cmd_collect.__doc__,
    )
    _add_run_args(p, "train")
    p.add_argument("--image-size", type=_positive, default=64, help="image side in pixels")
    p.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        help="DART: std (m) of noise on the executed displacement; labels stay the expert's",
    )
    p.add_argument(
        "--release-tolerance",
        type=float,
        default=0.004,
        help="how close (m) the expert gets to the drop point above a container before it "
        "opens the gripper (default 0.004, the shipped checkpoints' data; at most 0.03)",
    )
    p.add_argument(
        "--grasp-tolerance",
        type=float,
        default=0.003,
        help="how close (m) the expert gets to an object's grasp point before it closes the "
        "gripper (default 0.003, the shipped checkpoints' data; at most 0.02)",
    )
    p.add_argument(
        "--slow-band",
        type=float,
        default=0.25,
        metavar="M",
        help="distance (m) from the person's arm within which the expert moves at 0.15 m/s "
        "(default 0.25, the shipped checkpoints' data: 3 cm outside the speed limit's 0.22 m "
        "band; at most 0.4)",
    )
    p.add_argument(
        "--miss-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="share of harmless episodes whose first grasp the expert misses on purpose (3-5 "
        "cm beside the object) and recovers from; training skips the miss's frames and learns "
        "the recovery (default 0)",
    )
    p.add_argument(
        "--keypoint-plane",
        type=float,
        default=None,
        metavar="M",
        help="label the target, destination and hand keypoints by their footprints at this "
        "height (m; 0.02 is the metric token's table plane, so a tall object's or the "
        "handover point's label cuts to its true x, y); default: the points themselves",
    )
    p.add_argument(
        "--learner",
        default=None,
        metavar="CKPT",
        help="DAgger: this policy checkpoint acts and the scripted expert, re-planned from "
        "each state it reaches, labels (train on the result with `train --extra-data`); "
        "default: the expert acts",
    )
    p.add_argument(
        "--beta",
        type=float,
        default=0.0,
        metavar="P",
        help="with --learner, the probability that the expert's action runs at a step instead "
        "of the learner's (default 0: the learner alone)",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        default=2,
        help="processes that run episodes (default: 2); the dataset's files are the same for "
        "any number, and a --resume may use another",
    )
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser(
        "train", help="train the VLA on demonstrations", description=cmd_train.__doc__
    )
    p.add_argument("--data", required=True, help="dataset folder from `collect`")
    p.add_argument("--val-data", default=None, help="validation dataset folder (optional)")
    p.add_argument(
        "--extra-data",
        action="append",
        metavar="DIR",
        help="another dataset folder to train on as well (repeatable; DAgger: the output of "
        "`collect --learner`); normalisation comes from --data",
    )
    p.add_argument(
        "--extra-frames",
        choices=("imitate", "keypoints"),
        default="imitate",
        help="what training does with the --extra-data frames: imitate them like the "
        "demonstrations (default; DAgger) or keep them for the keypoint losses only, their "
        "actions not imitated (the learner's states teach perception)",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="CKPT",
        help="start from this checkpoint's weights and processor (fine-tuning; the decoder "
        "and keypoint-head settings are then the checkpoint's own) instead of a new model",
    )
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--seed", type=_non_negative, default=0, help="seed (default: 0)")
    p.add_argument("--steps", type=_positive, default=6000, help="optimizer steps")
    p.add_argument("--batch-size", type=_positive, default=64, help="frames per step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--hidden-size", type=_positive, default=128, help="decoder width")
    p.add_argument("--layers", type=_positive, default=4, help="decoder blocks")
    p.add_argument(
        "--image-tokens-side", type=_positive, default=4, help="pooled image tokens per side"
    )
    p.add_argument(
        "--keypoint-weight",
        type=float,
        default=5.0,
        help="weight of the auxiliary keypoint loss (privileged labels; 0: off)",
    )
    p.add_argument(
        "--label-sigma",
        type=float,
        default=2.0,
        help="width in bins of the Gaussian soft action targets (0: one-hot)",
    )
    p.add_argument(
        "--action-space",
        choices=("goal", "delta"),
        default="delta",
        help="what action tokens encode: the end-effector displacement (default, as the "
        "shipped checkpoints) or the expert's subgoal and step cap (turned into a displacement "
        "from the observed end-effector position)",
    )
    p.add_argument(
        "--grounded-keypoints",
        type=int,
        choices=range(5),
        default=0,
        metavar="{0..4}",
        help="leading keypoints whose heatmaps are grounded word by word in the instruction "
        "(2: target and destination; default 0, as the shipped checkpoints)",
    )
    p.add_argument(
        "--metric-keypoints",
        type=int,
        choices=range(5),
        default=0,
        metavar="{0..4}",
        help="leading keypoints also given to the decoder in metres, cut with the table plane "
        "through the scene camera's calibration (4: target, destination, hand, gripper; "
        "default 0, as the shipped checkpoints)",
    )
    p.add_argument(
        "--metric-label-noise-px",
        type=float,
        default=1.0,
        help="with --metric-keypoints, training builds the metric token from the keypoint "
        "labels plus Gaussian noise of this many pixels (teacher forcing); negative: from the "
        "predicted keypoints",
    )
    p.add_argument(
        "--metric-upper-plane",
        type=float,
        default=None,
        metavar="M",
        help="with --metric-keypoints, also cut every keypoint's ray with the plane this high "
        "(m; e.g. 0.12, the handover height), so the decoder gets the whole ray",
    )
    p.add_argument(
        "--keypoint-stride",
        type=int,
        choices=(2, 4),
        default=4,
        help="image pixels per keypoint heatmap cell: 4 (default, as the shipped checkpoints) "
        "or 2 (a finer head on the first conv layer's features fused with the last ones)",
    )
    p.add_argument(
        "--keypoint-window",
        type=int,
        default=0,
        metavar="R",
        help="read each keypoint as the soft-argmax over the (2R+1)x(2R+1) heatmap cells "
        "around its maximum (default 0: the expectation over the whole map, as the shipped "
        "checkpoints); with --init, R > 0 replaces the checkpoint's readout and 0 keeps it",
    )
    p.add_argument(
        "--miss-frames",
        choices=("skip", "keypoints"),
        default="skip",
        help="frames of deliberate misses (collect --miss-rate): skip them (default) or keep "
        "them for the keypoint losses only, their actions not imitated",
    )
    p.add_argument(
        "--heatmap-weight",
        type=float,
        default=0.0,
        help="weight of the keypoint heatmap cross-entropy (default 0, as the shipped "
        "checkpoints: keypoints trained by squared error only)",
    )
    p.add_argument(
        "--state-velocity",
        action="store_true",
        help="also give the policy the end-effector velocity (default: position, gripper "
        "opening and grasp flag, as the shipped checkpoints)",
    )
    p.add_argument(
        "--action-head",
        choices=("tokens", "regression"),  # configuration_vla.ACTION_HEADS
        default="tokens",
        help="tokens (default, as the shipped checkpoints) or regression: add a continuous "
        "action head (OpenVLA-OFT's L1 regression), which the checkpoint then acts with",
    )
    p.add_argument(
        "--regression-weight",
        type=float,
        default=1.0,
        help="weight of the regression head's L1 loss (default 1)",
    )
    p.add_argument(
        "--action-chunk",
        type=_positive,
        default=1,
        help="actions the regression head predicts per call (ACT's action chunking; default "
        "1); the checkpoint calls the model at every step and runs a temporal ensemble "
        "weighing the newer chunks more, ensemble:-0.5 (eval --chunk-execution picks "
        "another execution)",
    )
    p.add_argument(
        "--arrival-weight",
        type=float,
        default=1.0,
        help="sampling weight of the arrival frames: the expert's last sideways steps within "
        "--arrival-radius of its subgoal, before a descent or release (default 1: as the "
        "others)",
    )
    p.add_argument(
        "--arrival-radius",
        type=float,
        default=0.04,
        help="m: horizontal distance to the subgoal that counts as arriving (default 0.04)",
    )
    p.add_argument(
        "--arrival-phase",
        choices=("both", "approach", "carry"),  # training.ARRIVAL_PHASES
        default="both",
        help="which arrivals --arrival-weight draws more often: both (default), approach "
        "(before the grasp, onto the object) or carry (holding it, over the destination)",
    )
    p.add_argument(
        "--release-weight",
        type=float,
        default=1.0,
        help="sampling weight of the release frames: the expert's descent with the object "
        "over its destination and the opening of the gripper (default 1: as the others)",
    )
    p.add_argument(
        "--regression-metric-inputs",
        action="store_true",
        help="the regression head also reads the metric keypoint token's inputs (a skip "
        "around the decoder; needs --action-head regression and --metric-keypoints, or an "
        "--init checkpoint with both, whose head is widened with zero weights)",
    )
    p.add_argument("--eval-every", type=_positive, default=500, help="steps between checks")
    p.add_argument("--threads", type=_positive, default=2, help="CPU threads")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: mixed-precision training (bfloat16 autocast; weights stay float32)",
    )
    p.add_argument("--resume", action="store_true", help="continue from <out>/last")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "extract", help="extract a refusal or caution direction", description=cmd_extract.__doc__
    )
    p.add_argument("--policy", required=True, help="checkpoint folder or shipped name")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--kind", choices=["refusal", "caution"], default="refusal", help="direction")
    p.add_argument(
        "--split", default="val", choices=["train", "val", "test"], help="split (default: val)"
    )
    p.add_argument(
        "--episodes",
        type=_positive,
        default=8,
        help="episodes per family and label, per set (default: 8)",
    )
    p.add_argument("--seed", type=_non_negative, default=0, help="episode seed (default: 0)")
    p.add_argument("--batch-size", type=_positive, default=64, help="observations per pass")
    p.add_argument(
        "--kl-max",
        type=_positive_float,
        default=1.0,
        help="KL filter of the selection in nats (default: 1.0 for action-bin tokens; "
        "DESIGN.md's 0.1 is for language models)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser(
        "attack", help="closed-loop steering attacks and sweeps", description=cmd_attack.__doc__
    )
    p.add_argument("--policy", required=True, help="checkpoint folder or shipped name")
    p.add_argument(
        "--direction",
        default=None,
        help="refusal direction file or `extract` folder (default: extract one from the policy)",
    )
    p.add_argument(
        "--conditions",
        default="baseline,ablate,add",
        help="comma-separated: baseline, ablate, add, orthogonalize, caution "
        "(default: baseline,ablate,add; '' with a sweep runs only the sweep)",
    )
    p.add_argument("--add-alpha", default="1.0", help="alpha of the `add` condition (default 1)")
    p.add_argument("--alpha", default=None, help="dose-response sweep, e.g. -2,-1,-0.5,0,0.5,1,2")
    p.add_argument("--layers", default=None, help="layer sweep, e.g. 1,2,3")
    p.add_argument("--ranks", default=None, help="rank-k subspace sweep, e.g. 1,2,4,8")
    p.add_argument(
        "--source-families",
        default=None,
        help="cross-family sweep: directions read from each of these families (or 'all')",
    )
    p.add_argument(
        "--caution-direction", default=None, help="caution direction file (default: extract)"
    )
    p.add_argument(
        "--cross-version",
        action="store_true",
        help="allow a direction read from another checkpoint (e.g. vla-small on vla-small-v2)",
    )
    p.add_argument(
        "--sweep-split",
        default="val",
        choices=["train", "val", "test"],
        help="split the sweep directions are read from (default: val)",
    )
    p.add_argument(
        "--sweep-episodes",
        type=_positive,
        default=8,
        help="episodes per family and label for the sweep directions (default: 8)",
    )
    p.add_argument("--workers", type=_positive, default=2, help="worker processes (default: 2)")
    p.add_argument("--no-videos", action="store_true", help="skip the side-by-side GIFs")
    _add_run_args(p, "test")
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser(
        "report", help="write report.md and report.html", description=cmd_report.__doc__
    )
    p.add_argument("run", help="run folder of attack, demo or eval")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "compare",
        help="compare two runs of the same episodes, paired (exact McNemar)",
        description=cmd_compare.__doc__,
    )
    p.add_argument("run_a", help="run folder A (eval or attack)")
    p.add_argument("run_b", help="run folder B, of the same plan (split, families, seed)")
    p.add_argument(
        "--condition-a", default=None, help="A's condition (needed when A holds several)"
    )
    p.add_argument(
        "--condition-b", default=None, help="B's condition (needed when B holds several)"
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the counts as JSON")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "demo", help="the main job on the shipped vla-small", description=cmd_demo.__doc__
    )
    p.add_argument("--policy", default="vla-small", help="checkpoint (default: vla-small)")
    p.add_argument(
        "--episodes", type=_positive, default=20, help="per family and label (default: 20)"
    )
    p.add_argument("--seed", type=_non_negative, default=0, help="run seed (default: 0)")
    p.add_argument("--workers", type=_positive, default=2, help="worker processes (default: 2)")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--force", action="store_true", help="overwrite the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    add_ros2_parsers(sub)  # ros2 sim | ros2 policy (rclpy imported only when they run)
    return parser


NUMERIC_LIST_OPTIONS = ("--alpha", "--add-alpha")
"""Options whose value may start with a minus sign (``--alpha -2,-1,0``)."""


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    """``--alpha -2,-1`` -> ``--alpha=-2,-1``: argparse would read ``-2,-1`` as an option."""
    out, it = [], iter(argv)
    for arg in it:
        if arg in NUMERIC_LIST_OPTIONS:
            nxt = next(it, None)
            out.append(arg if nxt is None else f"{arg}={nxt}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``robot-refusal`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except RobotRefusalError as e:
        print(f"robot-refusal: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions: say it in one line, records stay on disk
        print(f"robot-refusal: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robot-refusal: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
