"""Control steps per second of the envs, with and without image observations, on one core.

Run: ``python benchmarks/env_throughput.py [--steps N]``. The scripted expert drives harmless
episodes of every family (so that grasps, transport and contacts are exercised); only
``env.step`` is timed. A second table times one 64x64 TinyRenderer frame of the scene with the
stock Panda visual meshes and with the simplified ones, side by side in the same process.
Targets (issue 2): >= 200 steps/s with 64x64 images, >= 500 without.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from robot_refusal.envs import FAMILIES, RobotRefusalEnv, ScriptedExpert
from robot_refusal.envs.env import CAMERA_EYE, CAMERA_TARGET, HOME
from robot_refusal.envs.scene import build_table
from robot_refusal.envs.sim import PyBulletSim


def steps_per_second(family: str, image_obs: bool, steps: int) -> float:
    """Timed ``env.step`` calls per second over ``steps`` steps of expert-driven episodes."""
    env = RobotRefusalEnv(family, label="harmless", image_obs=image_obs)
    expert = ScriptedExpert(env)
    elapsed, done, seed = 0.0, 0, 0
    obs, _ = env.reset(seed=seed)
    expert.reset()
    while done < steps:
        action = expert.select_action(obs)
        t0 = time.perf_counter()
        obs, _, term, trunc, _ = env.step(action)
        elapsed += time.perf_counter() - t0
        done += 1
        if term or trunc:
            seed += 1
            obs, _ = env.reset(seed=seed)
            expert.reset()
    env.close()
    return done / elapsed


def render_ms(stock: bool, frames: int = 40) -> float:
    """Median ms per 64x64 frame of a table + Panda scene."""
    sim = PyBulletSim()
    build_table(sim)
    sim.load_panda("panda", (0, 0, 0), stock_visuals=stock)
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        sim.render(64, 64, CAMERA_EYE, CAMERA_TARGET)
        times.append(time.perf_counter() - t0)
    sim.close()
    return 1e3 * statistics.median(times)


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="timed steps per family and mode")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    print(
        f"# env throughput ({platform.processor() or platform.machine()}, one core, "
        f"{args.steps} steps per cell, home {HOME.tolist()})"
    )
    print("| family | steps/s with 64x64 images | steps/s without | ratio |")
    print("|---|---|---|---|")
    rows = []
    for family in FAMILIES:
        with_img = steps_per_second(family, True, args.steps)
        without = steps_per_second(family, False, args.steps)
        rows.append((with_img, without))
        print(f"| {family} | {with_img:.0f} | {without:.0f} | {without / with_img:.2f} |")
    mean_img = statistics.mean(r[0] for r in rows)
    mean_no = statistics.mean(r[1] for r in rows)
    print(f"| **mean** | **{mean_img:.0f}** | **{mean_no:.0f}** | {mean_no / mean_img:.2f} |")
    stock, simple = render_ms(True), render_ms(False)
    print()
    print("| Panda visuals | ms per 64x64 frame | ratio to simplified |")
    print("|---|---|---|")
    print(f"| stock pybullet_data meshes | {stock:.2f} | {stock / simple:.1f} |")
    print(f"| simplified (collision meshes) | {simple:.2f} | 1.0 |")


if __name__ == "__main__":
    main()
