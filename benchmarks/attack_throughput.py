"""Attack throughput: closed-loop episodes per minute under ``baseline`` and ``ablate``, images
on, and their ratio; then the whole runner with 1 and 2 worker processes.

Run: ``python benchmarks/attack_throughput.py [--policy vla-small] [--episodes 3] [--rounds 2]``.

Part 1 runs the same harmless episodes (KeepOut and ContextPlace, which the shipped policies
run to the time limit under both conditions, so both do the same number of steps) in one
process with one torch thread, the two conditions interleaved in rounds so that machine load
hits them alike. Part 2 times :func:`robot_refusal.attack.attack` end to end (``baseline`` and
``ablate``, every family, 2 episodes per family and label, no videos) with ``--workers 1`` and
``--workers 2``. Target (issue 5): ``demo`` under 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from robot_refusal.attack import AttackConfig, EpisodeRunner, attack
from robot_refusal.conditions import ConditionSpec
from robot_refusal.policies.policy import CHECKPOINTS
from robot_refusal.pool import one_thread
from robot_refusal.rollout import plan_episodes


def part1(policy: str, direction: str, episodes: int, rounds: int) -> None:
    specs = [ConditionSpec("baseline"), ConditionSpec("ablate", "ablate", direction)]
    families = ["keepout", "context"]
    plan = plan_episodes(families, episodes, 0, labels=["harmless"])
    times: dict[str, list[float]] = {"baseline": [], "ablate": []}
    steps: dict[str, int] = {"baseline": 0, "ablate": 0}
    with one_thread():
        runner = EpisodeRunner(policy, specs, "test", families)
        try:
            for _ in range(rounds):
                for name in times:
                    for ep in plan:
                        start = time.perf_counter()
                        rec = runner.run(name, ep)
                        times[name].append(time.perf_counter() - start)
                        steps[name] += rec["steps"]
        finally:
            runner.close()
    print(f"part 1: {len(plan)} harmless episodes x {rounds} rounds per condition, 1 thread")
    print("| condition | episodes/min | steps/s | median s/episode |")
    print("|---|---|---|---|")
    rate = {}
    for name, ts in times.items():
        rate[name] = 60 * len(ts) / sum(ts)
        print(
            f"| {name} | {rate[name]:.1f} | {steps[name] / sum(ts):.1f} "
            f"| {statistics.median(ts):.2f} |"
        )
    print(f"ratio ablate / baseline episodes per minute: {rate['ablate'] / rate['baseline']:.3f}")


def part2(policy: str, direction: str) -> None:
    print("part 2: attack(), baseline + ablate, 4 families x 2 labels x 2 episodes, no videos")
    print("| workers | wall s | episodes | episodes/min |")
    print("|---|---|---|---|")
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = AttackConfig(
                policy,
                f"{tmp}/run",
                direction=direction,
                conditions=("baseline", "ablate"),
                episodes=2,
                videos=0,
                workers=workers,
            )
            start = time.perf_counter()
            s = attack(cfg, progress=False)
            wall = time.perf_counter() - start
            n = sum(c["harmful"]["n"] + c["harmless"]["n"] for c in s["conditions"].values())
            print(f"| {workers} | {wall:.1f} | {n} | {60 * n / wall:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="vla-small")
    ap.add_argument("--direction", default=None, help="default: <policy>/direction")
    ap.add_argument("--episodes", type=int, default=3, help="per family (part 1)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    direction = args.direction or str(CHECKPOINTS / args.policy / "direction")
    part1(args.policy, direction, args.episodes, args.rounds)
    part2(args.policy, direction)


if __name__ == "__main__":
    main()
