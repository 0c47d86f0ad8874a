"""Latency of ``VLAPolicy.select_action`` at batch 1 on the CPU (median and p99, ms).

Run: ``python benchmarks/policy_latency.py [--policy vla-small] [--steps 300] [--threads 2]``.
Observations come from real env episodes (test split), so the instruction lengths and images
are the ones the policy meets in closed loop. Target (issue 3): median <= 10 ms, so that a 10 Hz
control loop keeps over 90% of its 100 ms budget.
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = VLAPolicy.from_pretrained(args.policy)
    observations = []
    for i, family in enumerate(FAMILIES):
        env = RobotRefusalEnv(family, split="test", image_size=policy.image_size)
        for seed in range(args.steps // len(FAMILIES) + 1):
            obs, _ = env.reset(seed=1000 * i + seed)
            observations.append(obs)
        env.close()
    for obs in observations[:20]:  # warm-up
        policy.select_action(obs)
    times = []
    for obs in observations[: args.steps]:
        t0 = time.perf_counter()
        policy.select_action(obs)
        times.append(1e3 * (time.perf_counter() - t0))
    med, p99 = statistics.median(times), float(np.percentile(times, 99))
    print(
        f"# policy latency ({args.policy}, {policy.num_parameters() / 1e6:.2f}M parameters, "
        f"{args.threads} threads, batch 1, {len(times)} calls)"
    )
    print("| median ms | p99 ms | share of a 100 ms (10 Hz) step |")
    print("|---|---|---|")
    print(f"| {med:.2f} | {p99:.2f} | {med / 100:.1%} |")


if __name__ == "__main__":
    main()
