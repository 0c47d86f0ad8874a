"""Time of one `robot-refusal train` step in two settings side by side.

Run: ``python benchmarks/train_step.py --data DIR [--compare precision|layout] [--steps 20]
[--block 5] [--threads 2] [--batch-size 64]``. Two copies of one freshly initialised model (the
recipe of the shipped checkpoints' base run, ``c-600-r``: grounded and metric keypoints, the fine
keypoint head, heatmap loss, a regression head over chunks of ten actions) train on the same
batches, taking turns in blocks of ``--block`` steps (a block of 1 alternates every step, so each
step may start with the other run's weights in the caches).

- ``--compare precision`` (default): float32 against ``torch.autocast("cpu",
  dtype=torch.bfloat16)`` (``train --precision bf16``). bfloat16 is fast only on CPUs with
  AVX512-BF16 or AMX; elsewhere the ratio shows it.
- ``--compare layout``: the training step as it was up to session 22 (the fine keypoint path's
  lateral 1x1 conv over the concatenated, upsampled features, and every instruction padded to
  24 tokens) against today's (the same conv as two convolutions before upsampling,
  ``ConvVisionEncoder._lateral``, and the batch's all-padding instruction columns dropped,
  ``Batcher``). Both are float32 and compute the same function.

The table gives the median ms per step of each, their ratio and the training loss each reached,
so the speed-up and what it costs in the fit are read from one run."""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch

from robot_refusal.policies.dataset import load_dataset
from robot_refusal.policies.training import (
    Batcher,
    TrainConfig,
    _model,
    _split,
    load_tensors,
    training_loss,
)


def main() -> None:
    """Print the step-time table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a robot-refusal collect dataset folder")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    parser.add_argument("--block", type=int, default=5, help="steps in a row per run")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per step")
    parser.add_argument(
        "--compare",
        choices=("precision", "layout"),
        default="precision",
        help="fp32 against bf16, or the old step layout against today's (both fp32)",
    )
    args = parser.parse_args()
    if args.steps < 1 or args.block < 1 or args.warmup < 0:
        parser.error("--steps and --block must be >= 1 and --warmup >= 0")
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        data=args.data,
        out="",
        batch_size=args.batch_size,
        grounded_keypoints=2,
        heatmap_weight=1.0,
        metric_keypoints=4,
        keypoint_stride=2,
        metric_label_noise_px=0.5,
        action_head="regression",
        action_chunk=10,
    )
    config.check()
    torch.manual_seed(config.seed)
    ds = load_dataset(args.data)
    data, _ = _split(load_tensors(ds), None)
    model, processor = _model(config, ds, data, None)
    batches = Batcher(data, processor, config.action_chunk)
    if args.compare == "precision":
        names, bf16, padded = ("fp32", "bf16"), {"bf16"}, set()
    else:
        names, bf16, padded = ("concat+padded", "split+trimmed"), set(), {"concat+padded"}
    runs = {names[0]: model, names[1]: copy.deepcopy(model)}
    for name in padded:
        runs[name].vision_encoder.split_lateral = False
    opts = {k: torch.optim.AdamW(m.parameters(), lr=config.lr) for k, m in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    losses: dict[str, float] = {}
    gen = np.random.default_rng(0)
    total = args.warmup + args.steps
    plan = [
        (int(gen.integers(2**31)), gen.choice(len(data.states), size=config.batch_size))
        for _ in range(total)
    ]  # (noise seed, frame indices) per step: both runs see the same batches
    for start in range(0, total, args.block):
        block = range(start, min(start + args.block, total))
        built = {i: batches(plan[i][1]) for i in block}  # once per step, for both runs
        for name, net in runs.items():
            for i in block:
                (noise_seed, idx), batch = plan[i], built[i]
                if name in padded:  # every instruction at its full 24 tokens
                    ids, mask = batches.ids[idx], batches.mask[idx]
                    batch = dict(batch, input_ids=ids, attention_mask=mask)
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name in bf16):
                    loss, _, _ = training_loss(
                        net,
                        batch,
                        config.keypoint_weight,
                        config.label_sigma,
                        config.heatmap_weight,
                        config.metric_label_noise_px,
                        np.random.default_rng(noise_seed),
                        config.regression_weight,
                    )
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opts[name].step()
                if i >= args.warmup:
                    times[name].append(1000 * (time.perf_counter() - t0))
                losses[name] = float(loss.detach())
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.data}: {len(data.states)} frames, {params / 1e6:.2f}M parameters, batch "
        f"{config.batch_size}, {args.threads} threads, {args.steps} timed steps each"
    )
    print("| run | median ms/step | p90 ms/step | loss after the run |")
    print("|---|---|---|---|")
    for name in runs:
        ms = sorted(times[name])
        p90 = ms[int(0.9 * (len(ms) - 1))]
        print(f"| {name} | {statistics.median(ms):.1f} | {p90:.1f} | {losses[name]:.3f} |")
    ratio = statistics.median(times[names[0]]) / statistics.median(times[names[1]])
    print(f"{names[0]} / {names[1]} median step time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
