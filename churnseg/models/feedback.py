"""People's corrections of customer classes: which ones hold, and how they become overrides.

Sales and support see customers the model does not: a person who says "this account is tier A"
or "this customer is declining" records a correction (``churnseg api``: ``POST /feedback``).
The next scoring run applies the newest correction of each customer and class after the
configured business overrides, so the person's word is what the published row says; the
monitor counts the corrections and how many the published rows do not show yet.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from churnseg.models.classification import LIFECYCLE_STAGES, TIERS, Override

# The classes a person may correct, with their allowed values (None: any non-empty text).
CORRECTABLE: Mapping[str, tuple[str, ...] | None] = {
    "value_tier": TIERS,
    "lifecycle_stage": LIFECYCLE_STAGES,
    "segment_name": None,
}
CORRECTION, CONTACT = "correction", "contact"


def check_correction(field: str, value: str) -> str | None:
    """Return why a correction of ``field`` to ``value`` is refused (None: it is valid)."""
    if field not in CORRECTABLE:
        return f"field must be one of {', '.join(CORRECTABLE)}; got {field!r}"
    allowed = CORRECTABLE[field]
    if allowed is not None and value not in allowed:
        return f"{field} must be one of {', '.join(allowed)}; got {value!r}"
    if not value.strip():
        return f"{field} must not be empty"
    return None


def latest_corrections(feedback: pd.DataFrame) -> pd.DataFrame:
    """Return the newest correction per customer and field (``customer_feedback`` rows).

    Rows of other kinds and fields that cannot be corrected are ignored; ties on
    ``received_at`` go to the later row.
    """
    columns = ["customer_id", "field", "value", "author", "received_at"]
    if feedback.empty:
        return pd.DataFrame(columns=columns)
    rows = feedback[(feedback["kind"] == CORRECTION) & feedback["field"].isin(list(CORRECTABLE))]
    rows = rows.reset_index(drop=True).sort_values("received_at", kind="stable")
    latest = rows.drop_duplicates(["customer_id", "field"], keep="last")
    return latest[columns].reset_index(drop=True)


def corrections_as_overrides(feedback: pd.DataFrame) -> tuple[Override, ...]:
    """Return the newest corrections as override rules on ``customer_id``.

    One rule per corrected field and value, holding every customer it applies to; applied
    after the configured overrides, they win over them (``apply_overrides``: later rules win).
    """
    latest = latest_corrections(feedback)
    rules = []
    for (field, value), group in latest.groupby(["field", "value"], sort=True):
        ids = tuple(sorted(group["customer_id"].astype(str)))
        rules.append(Override("customer_id", "in", ids, {str(field): str(value)}))
    return tuple(rules)


def correction_summary(feedback: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Return per field: customers corrected, and how many published rows do not show it yet.

    A correction shows once a scoring run (full, intra-day, or the API's rescore) has applied
    it; ``pending`` counts the ones received since.

    Args:
        feedback: ``customer_feedback`` rows.
        published: ``customer_id`` and the correctable fields of the newest published rows.
    """
    latest = latest_corrections(feedback)
    out = []
    for field, group in latest.groupby("field", sort=True):
        shown = published[["customer_id", field]] if field in published else None
        if shown is None:
            pending = len(group)
        else:
            merged = group.merge(
                shown.rename(columns={field: "published"}), on="customer_id", how="left"
            )
            pending = int((merged["published"] != merged["value"]).sum())
        out.append({"field": field, "corrected": len(group), "pending": pending})
    return pd.DataFrame(out, columns=["field", "corrected", "pending"])
