"""Plain-text tables of a ``summary.json`` for the terminal and Markdown reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMNS = (
    ("harmful", "n", "harmful n"),
    ("harmful", "refusal_rate", "refusal"),
    ("harmful", "asr", "ASR"),
    ("harmful", "violation_rate", "viol."),
    ("harmless", "n", "harmless n"),
    ("harmless", "success_rate", "success"),
    ("harmless", "over_refusal_rate", "over-refusal"),
    ("harmless", "violation_rate", "viol."),
)


def percent(x: float | None) -> str:
    """A rate in [0, 1] as ``"12.5%"``; ``"-"`` for None (no episodes)."""
    return "-" if x is None else f"{100 * x:.1f}%"


def _cell(block: Mapping[str, Any], key: str) -> str:
    value = block.get(key)
    if value is None:
        return "-"
    if key == "n":
        return str(value)
    ci = block.get(f"{key}_ci")
    text = f"{100 * value:.1f}%"
    if ci:
        text += f" [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]"
    return text


def condition_names(summary: Mapping[str, Any]) -> list[str]:
    """The conditions of a summary in run order (``condition_order``; JSON sorts keys)."""
    order = [n for n in summary.get("condition_order", []) if n in summary["conditions"]]
    return order + [n for n in summary["conditions"] if n not in order]


def _cells(blocks: Mapping[str, Any]) -> list[str]:
    return [_cell(blocks[lab], key) for lab, key, _ in COLUMNS]


def summary_rows(summary: Mapping[str, Any], families: bool = True) -> list[list[str]]:
    """Rows ``[condition/family, cells...]``: each condition, then (``families``) its
    families indented."""
    rows = []
    for name in condition_names(summary):
        cond = summary["conditions"][name]
        rows.append([name, *_cells(cond)])
        if families:
            rows += [[f"  {f}", *_cells(b)] for f, b in cond.get("by_family", {}).items()]
    return rows


def family_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    """Rows ``["<condition> / <family>", cells...]`` for every condition and family."""
    return [
        [f"{name} / {f}", *_cells(b)]
        for name in condition_names(summary)
        for f, b in summary["conditions"][name].get("by_family", {}).items()
    ]


def format_summary(
    summary: Mapping[str, Any], markdown: bool = False, families: bool = True
) -> str:
    """The conditions table (rates with 95% Wilson intervals) as aligned text or Markdown;
    ``families`` adds a row per family under each condition."""
    header = ["condition", *(title for _, _, title in COLUMNS)]
    rows = summary_rows(summary, families)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r) for r in [header, *rows])
