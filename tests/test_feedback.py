"""People's corrections: validation, the newest one wins, overrides, the monitor's counts."""

from __future__ import annotations

import pandas as pd

from churnseg.models.classification import Override, apply_overrides
from churnseg.models.feedback import (
    check_correction,
    correction_summary,
    corrections_as_overrides,
    latest_corrections,
)


def feedback(rows: list[tuple[str, str, str, str, str]]) -> pd.DataFrame:
    """(kind, customer, field, value, received_at) rows as ``customer_feedback``."""
    frame = pd.DataFrame(rows, columns=["kind", "customer_id", "field", "value", "received_at"])
    return frame.assign(received_at=pd.to_datetime(frame["received_at"]), author="x")


ROWS = [
    ("correction", "c1", "value_tier", "B", "2026-01-02"),
    ("correction", "c1", "value_tier", "A", "2026-01-03"),  # newer: wins
    ("correction", "c2", "value_tier", "A", "2026-01-01"),
    ("correction", "c2", "lifecycle_stage", "declining", "2026-01-01"),
    ("contact", "c3", "value_tier", "A", "2026-01-05"),  # not a correction
    ("correction", "c4", "risk_band", "low", "2026-01-05"),  # not correctable
]


def test_only_known_classes_and_values_are_accepted() -> None:
    assert check_correction("value_tier", "A") is None
    assert check_correction("segment_name", "Whales") is None, "segment names are free text"
    assert "must be one of A, B, C" in str(check_correction("value_tier", "D"))
    assert "field must be one of" in str(check_correction("churn_probability", "0"))
    assert "must not be empty" in str(check_correction("segment_name", " "))


def test_the_newest_correction_of_a_customer_and_class_wins() -> None:
    latest = latest_corrections(feedback(ROWS))
    got = sorted(zip(latest["customer_id"], latest["field"], latest["value"], strict=True))
    assert got == [
        ("c1", "value_tier", "A"),
        ("c2", "lifecycle_stage", "declining"),
        ("c2", "value_tier", "A"),
    ]


def test_corrections_override_the_model_after_the_configured_rules() -> None:
    rules = corrections_as_overrides(feedback(ROWS))
    assert rules == (
        Override("customer_id", "in", ("c2",), {"lifecycle_stage": "declining"}),
        Override("customer_id", "in", ("c1", "c2"), {"value_tier": "A"}),
    )
    classes = pd.DataFrame(
        {"value_tier": ["C", "C", "C"], "lifecycle_stage": ["stable"] * 3}, index=[0, 1, 2]
    )
    attributes = pd.DataFrame({"customer_id": ["c1", "c2", "c9"], "key": [True] * 3})
    configured = Override("key", "eq", True, {"value_tier": "B"})
    out, changed = apply_overrides(classes, attributes, (configured, *rules))
    assert list(out["value_tier"]) == ["A", "A", "B"], "a person's word wins over the rule"
    assert list(out["lifecycle_stage"]) == ["stable", "declining", "stable"]
    assert changed == {0: 3, 1: 1, 2: 2}


def test_the_summary_counts_corrections_the_published_rows_do_not_show() -> None:
    published = pd.DataFrame(
        {"customer_id": ["c1", "c2"], "value_tier": ["A", "C"], "lifecycle_stage": ["x", "x"]}
    )
    summary = correction_summary(feedback(ROWS), published)
    assert summary.to_dict("records") == [
        {"field": "lifecycle_stage", "corrected": 1, "pending": 1},
        {"field": "value_tier", "corrected": 2, "pending": 1},
    ]
    assert correction_summary(feedback([]), published).empty
