"""The model card: written from a real training log and a real eval run."""

from __future__ import annotations

import json
from pathlib import Path

from robot_refusal.policies.model_card import render_card
from robot_refusal.policies.policy import CHECKPOINTS
from robot_refusal.rollout import evaluate
from robot_refusal.tables import format_summary


def test_card_names_the_action_head_and_its_chunks(tmp_path: Path) -> None:
    """A token-head checkpoint's card describes its action tokens and the eval's table; a
    regression head, chunked or not, is named as what the checkpoint acts with; vla-small, a
    fine-tune whose training flags do not name its chunks, is described from its config."""
    shipped = json.loads((CHECKPOINTS / "vla-small" / "training_log.json").read_text())
    log = {**shipped, "config": {**shipped["config"], "action_head": "tokens"}}
    summary = evaluate("expert", tmp_path / "run", episodes=1, families=["context"])
    text = render_card("vla-small", log, summary, ["robot-refusal train ..."], ["a note"])
    assert "four action tokens" in text and "regression head" not in text
    assert format_summary(summary, markdown=True) in text
    assert "robot-refusal train ..." in text and "- a note" in text
    reg = {**log, "config": {**log["config"], "action_head": "regression"}}
    text = render_card("r", reg, summary, [])
    assert "continuous regression head" in text and "chunk" not in text
    chunked = {**log, "config": {**reg["config"], "action_chunk": 10}}
    text = render_card("c", chunked, summary, [])
    assert "a chunk of the next 10 actions per call (ACT's action chunking)" in text
    assert shipped["config"]["init_from"] and shipped["config"]["action_chunk"] == 1
    model_config = json.loads((CHECKPOINTS / "vla-small" / "config.json").read_text())
    text = render_card("vla-small", shipped, summary, [], model_config=model_config)
    assert "a chunk of the next 10 actions per call" in text
