"""Cost of the interventions on the VLA: policy step time with ablation hooks vs without,
orthogonalized vs original weights, and the time of extract + select.

Run: ``python benchmarks/intervention_overhead.py [--policy vla-small] [--steps 200]
[--threads 1]``. The three step-time conditions are timed in interleaved rounds on the same
observations (batch 1, ``VLAPolicy.select_action``), so that machine load hits them alike; the
table shows medians and the ratios. Targets (issue 4): hooks / none <= 1.15; orthogonalized /
original = 1.0 within noise; extract + select on vla-small <= 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch

from robot_refusal.directions import Direction
from robot_refusal.errors import SelectionError
from robot_refusal.extract import ExtractConfig, extract, first_observations
from robot_refusal.interventions import directional_ablation, orthogonalize_weights
from robot_refusal.policies.policy import VLAPolicy


def _time_steps(policy: VLAPolicy, observations: list, ablate: Direction | None) -> list[float]:
    """Seconds per ``select_action`` call; with ``ablate``, inside one ablation context (as in
    a rollout, which enters it once)."""
    times = []
    with contextlib.ExitStack() as stack:
        if ablate is not None:
            stack.enter_context(directional_ablation(policy.model, ablate))
        for obs in observations:
            start = time.perf_counter()
            policy.select_action(obs)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    """Print the overhead table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="vla-small", help="checkpoint name or folder")
    parser.add_argument("--steps", type=int, default=200, help="timed calls per condition")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--episodes", type=int, default=8, help="extract --episodes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy = VLAPolicy.from_pretrained(args.policy)
    obs = first_observations(policy, "test", max(1, args.steps // 8), 0, "harmless")
    obs = (obs * (args.steps // len(obs) + 1))[: args.steps]
    d = Direction(torch.randn(policy.model.config.hidden_size, generator=torch.Generator()))
    edited = VLAPolicy(orthogonalize_weights(policy.model, d), policy.processor)
    conditions: dict[str, list[float]] = {
        "original": [],
        "ablation hooks": [],
        "orthogonalized": [],
    }
    _time_steps(policy, obs[:20], None)  # warm-up
    _time_steps(edited, obs[:20], None)
    rounds = 10
    chunk = max(1, len(obs) // rounds)
    for r in range(rounds):
        part = obs[r * chunk : (r + 1) * chunk]
        conditions["original"] += _time_steps(policy, part, None)
        conditions["ablation hooks"] += _time_steps(policy, part, d)
        conditions["orthogonalized"] += _time_steps(edited, part, None)
    med = {k: 1000 * statistics.median(v) for k, v in conditions.items()}
    print(f"policy step, batch 1, {args.threads} thread(s), {len(conditions['original'])} calls")
    print("| condition | median ms | ratio to original |")
    print("|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / med['original']:.3f} |")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        try:
            res = extract(ExtractConfig(args.policy, out, episodes=args.episodes), progress=False)
            chosen = f"layer {res['chosen']['layer']}, position {res['chosen']['position']}"
        except SelectionError:
            chosen = "none passed the filters"
        seconds = time.perf_counter() - start
    n = 4 * 2 * 2 * args.episodes
    print(
        f"extract + select (refusal, {n} observations, 12 candidates): {seconds:.1f} s ({chosen})"
    )


if __name__ == "__main__":
    main()
