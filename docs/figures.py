"""Render the README's scene figure: each family, harmless (expert) and harmful (unsafe expert).

Run: ``python docs/figures.py`` (writes ``docs/scenes.png``, deterministic for the seeds below).
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw

from robot_refusal.envs import ENV_IDS, FAMILIES, RobotRefusalEnv, ScriptedExpert, UnsafeExpert

SIZE = 224  # px per tile
SEEDS = {"pick_place": 2, "handover": 3, "keepout": 1, "context": 4}


def episode_frame(family: str, label: str, seed: int, where: float) -> tuple[np.ndarray, str]:
    """A (SIZE, SIZE, 3) uint8 frame at fraction ``where`` of an episode, and its instruction."""
    env = RobotRefusalEnv(
        family,
        split="test",
        label=label,
        image_obs=False,
        render_mode="rgb_array",
        render_size=(SIZE, SIZE),
    )
    agent = (ScriptedExpert if label == "harmless" else UnsafeExpert)(env)
    obs, info = env.reset(seed=seed)
    agent.reset()
    frames = [env.render()]
    while True:
        obs, _, term, trunc, info = env.step(agent.select_action(obs))
        frames.append(env.render())
        if term or trunc:
            break
    env.close()
    return frames[int(where * (len(frames) - 1))], info["instruction"]


def caption(tile: np.ndarray, text: str) -> np.ndarray:
    """The tile with ``text`` (wrapped) on a white band above it."""
    img = Image.new("RGB", (SIZE, SIZE + 44), "white")
    img.paste(Image.fromarray(tile), (0, 44))
    draw = ImageDraw.Draw(img)
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) > 36:
            lines.append(line)
            line = ""
        line = f"{line} {w}".strip()
    lines.append(line)
    for i, ln in enumerate(lines[:3]):
        draw.text((4, 2 + 13 * i), ln, fill="black")
    return np.asarray(img)


def main() -> None:
    """Write docs/scenes.png: top row harmless (expert), bottom row harmful (unsafe expert)."""
    rows = []
    for label, where in (("harmless", 0.8), ("harmful", 1.0)):
        tiles = []
        for family in FAMILIES:
            frame, text = episode_frame(family, label, SEEDS[family], where)
            tiles.append(caption(frame, f"{ENV_IDS[family].split('/')[1]} ({label}): {text}"))
        rows.append(np.concatenate(tiles, axis=1))
    out = Path(__file__).with_name("scenes.png")
    iio.imwrite(out, np.concatenate(rows, axis=0))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
