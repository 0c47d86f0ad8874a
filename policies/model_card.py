"""Write a checkpoint's model card (``README.md``) from its training log and an eval run.

Run: ``python -m robot_refusal.policies.model_card CKPT --eval RUN_DIR --command "..." ...``
(each ``--command`` is one exact command that made the checkpoint, in order).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robot_refusal.tables import format_summary


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def render_card(
    name: str,
    train_log: dict[str, Any],
    summary: dict[str, Any],
    commands: Sequence[str],
    notes: Sequence[str] = (),
    model_config: dict[str, Any] | None = None,
) -> str:
    """The Markdown text of a model card.

    Args:
        name: Checkpoint name.
        train_log: ``training_log.json`` of the checkpoint.
        summary: ``summary.json`` of a closed-loop ``robot-refusal eval`` of the checkpoint.
        commands: The exact commands that collected the data and trained the checkpoint.
        notes: Extra lines (measured times, caveats).
        model_config: The checkpoint's ``config.json``. Where given, the action head and the
            chunk length are read from it: a fine-tune (``train --init``) keeps its start
            checkpoint's architecture, which its own training flags need not name.
    """
    cfg = train_log["config"]
    arch = {**cfg, **(model_config or {})}
    last = train_log["history"][-1]
    labels = (
        "labels of the auxiliary keypoint loss (image coordinates of the target, the "
        "destination, the hand and the gripper)"
    )
    if cfg.get("action_space", "delta") == "goal":
        actions = (
            "five action tokens (the subgoal x, y, z it heads for, a step length cap and the "
            "gripper command, 256 bins each; the displacement is the step toward the subgoal "
            "from the observed end-effector position, capped and clipped to 5 cm per axis)"
        )
        labels += " and as the expert's subgoals, the targets of the action tokens"
    else:
        actions = (
            "four action tokens (end-effector displacement x, y, z and the gripper command, "
            "256 bins each)"
        )
    if arch.get("action_head", "tokens") == "regression":
        chunk = int(arch.get("action_chunk", 1))
        actions += (
            "; it acts with a continuous regression head on the same position (OpenVLA-OFT's "
            "L1 regression, all actions at once"
            + (
                f", a chunk of the next {chunk} actions per call (ACT's action chunking)"
                if chunk > 1
                else ""
            )
            + ")"
        )
    lines = [
        f"# {name}",
        "",
        "A small vision-language-action policy for the robot-refusal scenes: an "
        "instruction-conditioned (FiLM) conv vision encoder with spatial-softmax keypoints, a "
        "stock `transformers` `LlamaModel` decoder "
        f"({cfg['num_layers']} layers, width {cfg['hidden_size']}), "
        f"{train_log['parameters'] / 1e6:.2f}M parameters, trained by behaviour cloning on the "
        "scripted expert's demonstrations. It refuses with a `<refuse>` token at the first "
        f"generated position; otherwise it emits {actions}.",
        "",
        "## How it was made",
        "",
        "```bash",
        *commands,
        "```",
        "",
        f"- Seed {cfg['seed']}; {cfg['steps']} steps of batch {cfg['batch_size']}, AdamW "
        f"lr {cfg['lr']} with cosine decay; first frames drawn {cfg['first_frame_weight']}x; "
        f"auxiliary keypoint loss weight {cfg.get('keypoint_weight', 0.0)}.",
        f"- Data: {train_log['train_frames']} training frames, {train_log['val_frames']} "
        "validation frames.",
        f"- Training time: {train_log['seconds'] / 60:.1f} min on 2 CPU cores.",
        f"- Final validation: loss {last['val_loss']:.3f}, action-token accuracy "
        f"{last['val_token_acc']:.3f}, refuse/act accuracy at the first position "
        f"{last['val_refuse_acc']:.3f}.",
        *[f"- {n}" for n in notes],
        "",
        "## Closed-loop metrics",
        "",
        f"`robot-refusal eval --policy {name} --split {summary.get('split', 'test')} "
        f"--episodes {summary.get('episodes_per_family_label')}` (seed {summary['seed']}); "
        "rates with 95% Wilson intervals:",
        "",
        format_summary(summary, markdown=True),
        "",
        "## Limits",
        "",
        "- Trained and evaluated only in these simulated scenes, 64x64 images, one camera.",
        "- It sees the camera image, its proprioceptive state and the instruction; never object "
        f"or person positions. Those entered training only, as {labels}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Write ``CKPT/README.md``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--eval", required=True, help="eval run folder with summary.json")
    p.add_argument("--command", action="append", default=[], help="one exact command")
    p.add_argument("--note", action="append", default=[], help="one extra line")
    p.add_argument("--name", default=None, help="checkpoint name (default: folder name)")
    args = p.parse_args(argv)
    ckpt = Path(args.checkpoint)
    text = render_card(
        args.name or ckpt.name,
        _read(ckpt / "training_log.json"),
        _read(Path(args.eval) / "summary.json"),
        args.command,
        args.note,
        _read(ckpt / "config.json") if (ckpt / "config.json").is_file() else None,
    )
    (ckpt / "README.md").write_text(text, encoding="utf-8")
    print(f"wrote {ckpt / 'README.md'}")


if __name__ == "__main__":
    main()
