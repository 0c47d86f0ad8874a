"""Latency of ``VLAPolicy.select_action`` at batch 1 on the CPU (median and p99, ms).

Run: ``python benchmarks/policy_latency.py [--policy vla-small] [--steps 300] [--threads 2]
[--keypoint-window R] [--action-decoding mean] [--chunk-execution open-loop:5]``.
Observations come from real env episodes (test split), so the instruction lengths and images
are the ones the policy meets in closed loop. Target (issue 3): median <= 10 ms, so that a
10 Hz control loop keeps over 90% of its 100 ms budget. With ``--keypoint-window R`` the same
weights are also timed with that keypoint readout (``VLAConfig.keypoint_window``), call by
call alternating with the checkpoint's own, and the table gets a row for each and their
ratio; ``--action-decoding`` does the same for an action token reading
(``VLAConfig.action_decoding``: ``argmax``, ``mean``, ``local_mean`` or, for a checkpoint
trained with ``--action-head regression``, ``regression``), and ``--chunk-execution SPEC``
for a checkpoint trained with ``--action-chunk`` (``ensemble[:COEFF]``,
``open-loop[:STEPS]``, ``newest``). Open loop, most calls return the next action of a stored
chunk without running the model: the median is then the time of those calls, the mean the
cost per step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from robot_refusal.envs import FAMILIES, RobotRefusalEnv
from robot_refusal.policies.policy import VLAPolicy


def main() -> None:
    """Print the latency table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="vla-small", help="checkpoint name or folder")
    parser.add_argument("--steps", type=int, default=300, help="timed calls")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--keypoint-window", type=int, default=None, help="also time this keypoint readout"
    )
    parser.add_argument(
        "--action-decoding",
        choices=("argmax", "mean", "local_mean", "regression"),
        default=None,
        help="also time this action-token reading",
    )
    parser.add_argument("--chunk-execution", default=None, help="also time this chunk execution")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = VLAPolicy.from_pretrained(args.policy)
    own = f"own readout (window {policy.model.config.keypoint_window}, {policy.action_decoding})"
    policies = {own: policy}
    if args.keypoint_window is not None:
        other = VLAPolicy.from_pretrained(args.policy, keypoint_window=args.keypoint_window)
        policies[f"keypoint window {args.keypoint_window}"] = other
    if args.action_decoding is not None:
        other = VLAPolicy.from_pretrained(args.policy, action_decoding=args.action_decoding)
        policies[f"action decoding {args.action_decoding}"] = other
    if args.chunk_execution is not None:
        other = VLAPolicy.from_pretrained(args.policy, chunk_execution=args.chunk_execution)
        policies[f"chunk execution {other.chunk_execution}"] = other
    observations = []
    for i, family in enumerate(FAMILIES):
        env = RobotRefusalEnv(family, split="test", image_size=policy.image_size)
        for seed in range(args.steps // len(FAMILIES) + 1):
            obs, _ = env.reset(seed=1000 * i + seed)
            observations.append(obs)
        env.close()
    for obs in observations[:20]:  # warm-up
        for p in policies.values():
            p.select_action(obs)
    times: dict[str, list[float]] = {name: [] for name in policies}
    for obs in observations[: args.steps]:
        for name, p in policies.items():  # alternating, so drifts in machine load hit both
            t0 = time.perf_counter()
            p.select_action(obs)
            times[name].append(1e3 * (time.perf_counter() - t0))
    n = len(next(iter(times.values())))
    print(
        f"# policy latency ({args.policy}, {policy.num_parameters() / 1e6:.2f}M parameters, "
        f"{args.threads} threads, batch 1, {n} calls each)"
    )
    print(
        "| readout | median ms | p99 ms | mean ms | share of a 100 ms (10 Hz) step "
        "| median vs own |"
    )
    print("|---|---|---|---|---|---|")
    base = statistics.median(next(iter(times.values())))
    for name, t in times.items():
        med, p99, mean = statistics.median(t), float(np.percentile(t, 99)), statistics.mean(t)
        print(
            f"| {name} | {med:.2f} | {p99:.2f} | {mean:.2f} | {med / 100:.1%} | {med / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
