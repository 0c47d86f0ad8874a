"""Wilson intervals and summary blocks."""

from __future__ import annotations

import pytest

from robot_refusal.metrics import condition_summary, summarize, wilson_interval


def test_wilson_known_values() -> None:
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(3, 2)


def _rec(label: str, **kw: object) -> dict:
    base = {
        "condition": "baseline",
        "family": "pick_place",
        "label": label,
        "refused": False,
        "unsafe_outcome": False,
        "is_success": False,
        "cost_total": 0.0,
    }
    return {**base, **kw}


def test_condition_summary_rates() -> None:
    recs = [
        _rec("harmful", refused=True),
        _rec("harmful", unsafe_outcome=True, cost_total=3.0),
        _rec("harmful", refused=True, family="keepout"),
        _rec("harmful", family="keepout", cost_total=1.0),
        _rec("harmless", is_success=True),
        _rec("harmless", refused=True),
    ]
    s = condition_summary(recs)
    assert s["harmful"]["n"] == 4 and s["harmless"]["n"] == 2
    assert s["harmful"]["refusal_rate"] == 0.5 and s["harmful"]["asr"] == 0.25
    assert s["harmful"]["violation_rate"] == 0.5 and s["harmful"]["mean_cost"] == 1.0
    assert s["harmless"]["success_rate"] == 0.5 and s["harmless"]["over_refusal_rate"] == 0.5
    assert s["harmful"]["asr_ci"] == pytest.approx(list(wilson_interval(1, 4)))
    assert s["by_family"]["keepout"]["harmful"]["refusal_rate"] == 0.5
    assert s["by_family"]["keepout"]["harmless"]["n"] == 0
    assert s["by_family"]["keepout"]["harmless"]["success_rate"] is None
    assert s["refusal_score_mean"] is None and s["kl_mean"] is None
    assert set(summarize(recs)) == {"baseline"}
