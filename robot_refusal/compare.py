"""Paired comparison of two runs on the same episodes (``robot-refusal compare``).

Two runs of one plan (the same split, families, seed and episode count) meet the same scenes:
an episode's id fixes its seed, so ``eval`` of two checkpoints, or of one checkpoint read two
ways, or two conditions of one ``attack`` run, can be compared episode by episode. For each
outcome (harmless success, over-refusal and violation; harmful refusal, ASR and violation) the
comparison counts the pairs where it holds in both runs, only in A, only in B and in neither,
and tests the difference with the exact McNemar test: under the null hypothesis that A and B
are exchangeable, the "only A" count among the discordant pairs is Binomial(b + c, 1/2)
(McNemar 1947, Psychometrika 12(2); the exact form as in Fagerland, Lydersen & Laake 2013,
BMC Medical Research Methodology 13:91). Paired, a difference of a few points is visible that
two independent Wilson intervals would hide, because most episodes end the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from robot_refusal.errors import ConfigError, RunFolderError
from robot_refusal.metrics import HARMFUL_RATES, HARMLESS_RATES
from robot_refusal.runs import EPISODES, read_episode_records
from robot_refusal.tables import percent

OUTCOMES: dict[str, dict[str, Callable[[Mapping[str, Any]], Any]]] = {
    "harmless": {
        "success": HARMLESS_RATES["success_rate"],
        "over_refusal": HARMLESS_RATES["over_refusal_rate"],
        "violation": HARMLESS_RATES["violation_rate"],
    },
    "harmful": {
        "refusal": HARMFUL_RATES["refusal_rate"],
        "asr": HARMFUL_RATES["asr"],
        "violation": HARMFUL_RATES["violation_rate"],
    },
}
"""Label -> outcome name -> predicate on an episode record (the same as ``metrics``)."""

MATCH_FIELDS = ("family", "label", "seed", "split", "instruction")
"""Record fields two runs must agree on for an episode to count as the same episode."""


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value of ``only_a`` against ``only_b`` discordant pairs.

    ``p = min(1, 2 * P[X <= min(b, c)])`` for ``X ~ Binomial(b + c, 1/2)``; 1.0 with no
    discordant pair.

    Raises:
        ValueError: A negative count.

    Source: McNemar (1947), Psychometrika 12(2), 153-157; exact conditional form.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def read_records(folder: str | Path, condition: str | None = None) -> list[dict[str, Any]]:
    """The episode records of a run folder, read-only, for one condition.

    Args:
        folder: A run folder of ``eval`` or ``attack`` (holds ``episodes.jsonl``).
        condition: The records' ``condition`` to keep; None: the folder must hold exactly one
            condition (an ``eval`` run holds ``baseline``).

    Returns:
        The records in file order; a partial last line (a killed writer) is skipped.

    Raises:
        RunFolderError: No ``episodes.jsonl``, a line that is not an episode record (naming
            ``file:line``), no records of ``condition``, or several conditions and none
            chosen (listing them).
    """
    path = Path(folder) / EPISODES
    if not path.is_file():
        raise RunFolderError(f"{path} does not exist; is {folder} an eval or attack run folder?")
    records = read_episode_records(path, ("condition", "episode_id"))
    names = sorted({r["condition"] for r in records})
    if condition is None:
        if len(names) > 1:
            raise RunFolderError(
                f"{folder} holds the conditions {', '.join(names)}; choose one with "
                "--condition-a/--condition-b"
            )
        return records
    chosen = [r for r in records if r.get("condition") == condition]
    if not chosen:
        raise RunFolderError(
            f"{folder} has no episodes of condition {condition!r}; it holds "
            f"{', '.join(names) or 'none'}"
        )
    return chosen


def _pair(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    by_id = {r["episode_id"]: r for r in b}
    pairs = []
    for ra in a:
        rb = by_id.get(ra["episode_id"])
        if rb is None:
            continue
        for field in MATCH_FIELDS:
            if field in ra and field in rb and ra[field] != rb[field]:
                raise ConfigError(
                    f"episode {ra['episode_id']} differs in {field} ({ra[field]!r} in A, "
                    f"{rb[field]!r} in B): the two runs are not of the same plan"
                )
        pairs.append((ra, rb))
    return pairs


def _counts(
    pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
    pred: Callable[[Mapping[str, Any]], Any],
) -> dict[str, Any]:
    both = only_a = only_b = neither = 0
    for ra, rb in pairs:
        x, y = bool(pred(ra)), bool(pred(rb))
        both += x and y
        only_a += x and not y
        only_b += y and not x
        neither += not (x or y)
    n = len(pairs)
    return {
        "n": n,
        "a": (both + only_a) / n if n else None,
        "b": (both + only_b) / n if n else None,
        "both": both,
        "only_a": only_a,
        "only_b": only_b,
        "neither": neither,
        "p_value": mcnemar_exact(only_a, only_b),
    }


def compare_records(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Pair two runs' records by ``episode_id`` and compare every outcome.

    Args:
        a, b: Episode records (``episodes.jsonl`` lines) of one condition each.

    Returns:
        ``{"paired": n, "only_in_a": k, "only_in_b": k, "outcomes": {label: {outcome:
        counts}}, "by_family": {label: {family: {outcome: counts}}}}``; ``counts`` holds
        ``n``, the rates ``a`` and ``b``, ``both``, ``only_a``, ``only_b``, ``neither`` and
        the exact McNemar ``p_value``.

    Raises:
        ConfigError: No episode in common, or a shared episode id whose family, label, seed,
            split or instruction differ between the runs (not the same plan).
    """
    pairs = _pair(a, b)
    if not pairs:
        raise ConfigError(
            "the two runs share no episode id: compare runs of the same plan (split, families, "
            "seed and episodes)"
        )
    out: dict[str, Any] = {
        "paired": len(pairs),
        "only_in_a": len(a) - len(pairs),
        "only_in_b": len(b) - len(pairs),
        "outcomes": {},
        "by_family": {},
    }
    for label, outcomes in OUTCOMES.items():
        sub = [p for p in pairs if p[0]["label"] == label]
        if not sub:
            continue
        out["outcomes"][label] = {name: _counts(sub, f) for name, f in outcomes.items()}
        families = sorted({p[0]["family"] for p in sub})
        out["by_family"][label] = {
            fam: {
                name: _counts([p for p in sub if p[0]["family"] == fam], f)
                for name, f in outcomes.items()
            }
            for fam in families
        }
    return out


def format_comparison(result: Mapping[str, Any], name_a: str, name_b: str) -> str:
    """Markdown tables of :func:`compare_records`: every outcome, then per family the first
    outcome of each label (harmless success, harmful refusal)."""
    lines = [
        f"A = {name_a}, B = {name_b}: {result['paired']} paired episodes"
        + (
            f" ({result['only_in_a']} only in A, {result['only_in_b']} only in B, left out)"
            if result["only_in_a"] or result["only_in_b"]
            else ""
        ),
        "",
        "| label | outcome | n | A | B | both | only A | only B | neither | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(c: Mapping[str, Any]) -> str:
        return (
            f"{c['n']} | {percent(c['a'])} | {percent(c['b'])} | {c['both']} | {c['only_a']} | "
            f"{c['only_b']} | {c['neither']} | {c['p_value']:.2g} |"
        )

    for label, outcomes in result["outcomes"].items():
        lines += [f"| {label} | {name} | {cells(c)}" for name, c in outcomes.items()]
    for label, families in result["by_family"].items():
        first = next(iter(OUTCOMES[label]))
        lines += [
            "",
            f"{label} {first} by family:",
            "",
            "| family | n | A | B | both | only A | only B | neither | McNemar p |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {fam} | {cells(outcomes[first])}" for fam, outcomes in families.items()]
    return "\n".join(lines)
