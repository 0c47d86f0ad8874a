"""Open-loop diagnostics of a policy on a demonstration dataset.

The headline is the **first-frame heading cosine**: on the first frame of every harmless
episode the end-effector is at its home pose, so the only way to move toward the named object
is to find it in the image. The cosine between the policy's displacement and the expert's there
measures visual grounding directly; mid-motion cosines can be high by continuing the current
motion instead (the copycat shortcut; Wen et al. 2020).

The keypoint report (:func:`keypoint_report`) measures the target keypoint where it is used:
before the grasp, with the gripper far from or near the target in the image, and on the frames
of deliberate misses (``collect --miss-rate``), together with how far the gripper pulls the
estimate toward itself. Open-loop figures, so unlike closed-loop success they do not flip with
small perturbations.

Run: ``python -m robot_refusal.policies.diagnostics CKPT DATASET``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from robot_refusal.errors import RobotRefusalError
from robot_refusal.policies.dataset import load_dataset
from robot_refusal.policies.keypoint_memory import GRIPPER, TARGET
from robot_refusal.policies.policy import VLAPolicy
from robot_refusal.policies.training import Tensors, load_tensors

FAST = 0.02  # m per step: expert displacements above this count as "moving"
NEAR_PX = 3.0  # px: the gripper keypoint label this close to the target's counts as "near"


def frame_observations(data: Tensors, idx: np.ndarray) -> list[dict[str, Any]]:
    """Env-style observations (image, state, instruction) of dataset frames ``idx``."""
    return [
        {
            "image": data.images[i],
            "state": data.states[i],
            "instruction": data.texts[int(data.instructions[i])],
        }
        for i in idx
    ]


def predicted_deltas(
    policy: VLAPolicy, data: Tensors, idx: np.ndarray, batch: int = 256
) -> np.ndarray:
    """The policy's displacement (len(idx), 3), m, on dataset frames ``idx``."""
    out = []
    for s in range(0, len(idx), batch):
        actions, _ = policy.select_actions(frame_observations(data, idx[s : s + batch]))
        out += [a["delta"] for a in actions]
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)


def heading_report(policy: VLAPolicy, data: Tensors) -> dict[str, float]:
    """Mean cosine between policy and expert displacements on harmless frames.

    Returns:
        ``first_frame`` (episode starts), ``moving_before_grasp``, ``moving_holding`` (frames
        where the expert moves faster than :data:`FAST`), and ``refusal_accuracy`` on first
        frames (refused iff the expert refused); NaN where no frame qualifies (the first
        frames of deliberate misses carry no action label).
    """
    idx = np.flatnonzero(~data.refuse & data.labelled)
    pred, label = predicted_deltas(policy, data, idx), data.actions[idx, :3].astype(np.float64)
    cos = (pred * label).sum(1) / (
        np.linalg.norm(pred, axis=1) * np.linalg.norm(label, axis=1) + 1e-9
    )
    fast = np.linalg.norm(label, axis=1) > FAST
    held = data.states[idx, 7] > 0.5
    firsts = np.flatnonzero(data.first)
    actions = policy.select_actions(frame_observations(data, firsts))[0]
    refused = np.array([a["refuse"] for a in actions], dtype=bool)

    def mean(mask: np.ndarray) -> float:
        return float(cos[mask].mean()) if mask.any() else float("nan")

    return {
        "first_frame": mean(data.first[idx]),
        "moving_before_grasp": mean(fast & ~held),
        "moving_holding": mean(fast & held),
        "refusal_accuracy": float(np.mean(refused == data.refuse[firsts])),
    }


def predicted_keypoints(
    policy: VLAPolicy, data: Tensors, idx: np.ndarray, batch: int = 256
) -> np.ndarray:
    """The policy's keypoints (len(idx), K, 2) on dataset frames ``idx``, (x, y) in [-1, 1]."""
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            obs = frame_observations(data, idx[s : s + batch])
            result = policy.model(**policy.processor(obs))
            assert result.keypoints is not None
            out.append(result.keypoints.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0, 2), np.float32)


def keypoint_report(policy: VLAPolicy, data: Tensors) -> dict[str, dict[str, float]]:
    """Target-keypoint error before the grasp and its pull toward the gripper, in pixels.

    Frames are harmless, not holding, and split into ``far`` (gripper label at least
    :data:`NEAR_PX` from the target label in the image), ``near`` (closer) and ``miss`` (the
    frames of a deliberate miss, when ``data`` keeps them: ``load_tensors(ds, "keypoints")``).
    For each: ``n``, ``median_px`` and ``p90_px`` of the target error, ``gap_px`` (median
    gripper-target distance of the labels) and ``pull`` (median over frames of the error's
    component toward the gripper divided by the gap: 0 is no pull, 1 is the estimate sitting
    on the gripper).

    Raises:
        ValueError: The data has no keypoint labels.
    """
    if data.keypoints is None:
        raise ValueError("the dataset has no keypoint labels (annotation.keypoints_uv)")
    idx = np.flatnonzero(~data.refuse & (data.states[:, 7] <= 0.5))
    half = (policy.image_size[1] - 1) / 2
    kp = predicted_keypoints(policy, data, idx)[:, TARGET] * half  # (N, 2) px
    target = data.keypoints[idx, TARGET] * half
    gap = data.keypoints[idx, GRIPPER] * half - target  # (N, 2) px, target -> gripper
    dist = np.linalg.norm(gap, axis=1)
    err = kp - target
    toward = (err * gap).sum(1) / np.maximum(dist, 1e-6) ** 2
    labelled = data.labelled[idx]
    groups = {
        "far": labelled & (dist >= NEAR_PX),
        "near": labelled & (dist < NEAR_PX),
        "miss": ~labelled,
    }
    report = {}
    for name, mask in groups.items():
        if not mask.any():
            continue
        e = np.linalg.norm(err[mask], axis=1)
        report[name] = {
            "n": int(mask.sum()),
            "median_px": float(np.median(e)),
            "p90_px": float(np.percentile(e, 90)),
            "gap_px": float(np.median(dist[mask])),
            "pull": float(np.median(toward[mask & (dist > 1.0)]))
            if (mask & (dist > 1.0)).any()
            else float("nan"),
        }
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """Print the heading report and, with keypoint labels, the keypoint report of a checkpoint
    on a dataset as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("dataset")
    p.add_argument(
        "--keypoint-window",
        type=int,
        default=None,
        metavar="R",
        help="read the checkpoint's keypoints with this window (VLAConfig.keypoint_window)",
    )
    args = p.parse_args(argv)
    try:
        policy = VLAPolicy.from_pretrained(args.checkpoint, keypoint_window=args.keypoint_window)
        data = load_tensors(load_dataset(args.dataset), miss_frames="keypoints")
    except RobotRefusalError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    report: dict[str, object] = {"heading": heading_report(policy, data)}
    if data.keypoints is not None:
        report["target_keypoint"] = keypoint_report(policy, data)
    print(json.dumps(_nan_to_null(report), indent=2))


def _nan_to_null(value: object) -> object:
    """``value`` with every float NaN replaced by None (JSON null: a figure with no frames,
    e.g. ``first_frame`` on data whose first frames are all deliberate misses)."""
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


if __name__ == "__main__":
    main()
