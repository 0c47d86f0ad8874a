"""Time of one `robot-refusal train` step in float32 and in bfloat16 mixed precision, side by side.

Run: ``python benchmarks/train_step.py --data DIR [--steps 20] [--block 5] [--threads 2]
[--batch-size 64]``. Two copies of one freshly initialised model (the recipe of the README's best
run, ``c-600``: grounded and metric keypoints, the fine keypoint head, heatmap loss, a regression
head over chunks of ten actions) train on the same batches, one in float32 and one under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (``train --precision bf16``), taking turns in
blocks of ``--block`` steps (a block of 1 alternates every step, so each step may start with the
other run's weights in the caches). The table gives the median ms per step of each, their ratio and
the training loss each reached, so the speed-up and what it costs in the fit are read from one run.
bfloat16 is fast only on CPUs with AVX512-BF16 or AMX; elsewhere the ratio shows it."""

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
    parser.add_argument("--steps", type=int, default=20, help="timed steps per precision")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per precision")
    parser.add_argument("--block", type=int, default=5, help="steps in a row per precision")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=64, help="frames per step")
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
    runs = {"fp32": model, "bf16": copy.deepcopy(model)}
    opts = {k: torch.optim.AdamW(m.parameters(), lr=config.lr) for k, m in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    losses: dict[str, float] = {}
    gen = np.random.default_rng(0)
    total = args.warmup + args.steps
    plan = [
        (int(gen.integers(2**31)), gen.choice(len(data.states), size=config.batch_size))
        for _ in range(total)
    ]  # (noise seed, frame indices) per step: both precisions see the same batches
    for start in range(0, total, args.block):
        block = range(start, min(start + args.block, total))
        built = {i: batches(plan[i][1]) for i in block}  # once per step, for both precisions
        for name, net in runs.items():
            for i in block:
                noise_seed, batch = plan[i][0], built[i]
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
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
    print("| precision | median ms/step | p90 ms/step | loss after the run |")
    print("|---|---|---|---|")
    for name in runs:
        ms = sorted(times[name])
        p90 = ms[int(0.9 * (len(ms) - 1))]
        print(f"| {name} | {statistics.median(ms):.1f} | {p90:.1f} | {losses[name]:.3f} |")
    ratio = statistics.median(times["fp32"]) / statistics.median(times["bf16"])
    print(f"fp32 / bf16 median step time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
