"""``collect`` and ``eval`` with 1 and 2 worker processes: wall time and its ratio.

Run: ``python benchmarks/workers.py [--episodes 6] [--policy vla-small] [--rounds 2]
[--commands collect,eval]``.

Times :func:`robot_refusal.policies.collect.collect` (the scripted expert, images on) and
:func:`robot_refusal.rollout.evaluate` (a checkpoint) end to end into fresh folders, families
``keepout`` and ``context``, ``--episodes`` per family and label, with ``workers`` 1 and 2
interleaved in rounds so that machine load hits both alike; checks that the two give the same
dataset files and the same episode records. Spawning a worker costs its imports and its envs
(a few seconds), so the ratio grows with the number of episodes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from robot_refusal.policies.collect import collect
from robot_refusal.rollout import evaluate

FAMILIES = ["keepout", "context"]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "config.json"
    }


def _records(root: Path) -> dict[str, str]:
    lines = (root / "episodes.jsonl").read_text().splitlines()
    return {json.loads(x)["episode_id"]: x for x in lines}


def main() -> None:
    """Print one markdown table: median wall time per command and workers, and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=6, help="per family and label")
    ap.add_argument("--policy", default="vla-small", help="checkpoint for eval")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--commands", default="collect,eval", help="comma-separated subset")
    args = ap.parse_args()
    commands = [c for c in ("collect", "eval") if c in args.commands.split(",")]
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for workers in (1, 2):
                for cmd in commands:
                    out = Path(tmp) / f"{cmd}-{r}-{workers}"
                    kw = {"episodes": args.episodes, "families": FAMILIES, "workers": workers}
                    start = time.perf_counter()
                    if cmd == "collect":
                        collect(out, progress=False, **kw)
                    else:
                        evaluate(args.policy, out, progress=False, **kw)
                    times.setdefault((cmd, workers), []).append(time.perf_counter() - start)
            run = {c: [Path(tmp) / f"{c}-{r}-{w}" for w in (1, 2)] for c in commands}
            if "collect" in run:
                same = _files(run["collect"][0]) == _files(run["collect"][1])
                print(f"round {r}: same dataset files {same}")
            if "eval" in run:
                same = _records(run["eval"][0]) == _records(run["eval"][1])
                print(f"round {r}: same eval records {same}")
    n = 2 * len(FAMILIES) * args.episodes
    print(
        f"{n} episodes per run ({args.episodes} per family and label, {', '.join(FAMILIES)}), "
        f"{args.rounds} rounds, median wall time"
    )
    print("| command | 1 worker s | 2 workers s | speed-up |")
    print("|---|---|---|---|")
    for cmd in commands:
        one, two = (statistics.median(times[(cmd, w)]) for w in (1, 2))
        print(f"| {cmd} | {one:.1f} | {two:.1f} | {one / two:.2f}x |")


if __name__ == "__main__":
    main()
