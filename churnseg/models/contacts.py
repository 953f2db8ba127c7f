"""Retention contacts: churn among contacted customers against comparable uncontacted ones.

A first, honest look at whether contacts help. Customers are compared within one published
snapshot and one risk band, so both groups had a similar predicted risk; a contact counts when
it happened inside the snapshot's label window. What this cannot prove: owners choose whom to
contact (the ones they can still reach, or the ones they worry about most), so the groups may
differ in ways the risk band does not hold constant; the difference is an association, not the
effect of a contact. Only a randomised hold-out (contact a random part of a band) measures that.
Groups smaller than ``min_group`` are reported without a difference.

Pure library code: frames in, frames out.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

CONTACT_COLUMNS = (
    "snapshot_date",
    "risk_band",
    "customers",
    "contacted",
    "churn_rate_contacted",
    "churn_rate_uncontacted",
    "difference",
)


def contact_effect(
    labelled: pd.DataFrame,
    contacts: pd.DataFrame,
    window_days: int,
    label: str = "churned",
    min_group: int = 30,
) -> pd.DataFrame:
    """Return churn among contacted and uncontacted customers per snapshot and risk band.

    Args:
        labelled: Published rows with their realised label: customer_id, snapshot_date (date),
            risk_band and ``label`` (1 churned, 0 stayed).
        contacts: Contact outcomes: customer_id, contacted_at (timestamp).
        window_days: A contact counts for a snapshot when it falls in
            ``[snapshot, snapshot + window_days)`` (the label window).
        label: The label column of ``labelled``.
        min_group: Smallest group (contacted or not) whose churn rate is compared.

    Returns:
        One row per snapshot and band (``CONTACT_COLUMNS``); ``difference`` is the contacted
        rate minus the uncontacted one, null when a group is smaller than ``min_group``.
    """
    if labelled.empty:
        return pd.DataFrame(columns=list(CONTACT_COLUMNS))
    rows = labelled[["customer_id", "snapshot_date", "risk_band", label]].copy()
    rows["customer_id"] = rows["customer_id"].astype(str)
    touched = contacts[["customer_id", "contacted_at"]].copy()
    touched["customer_id"] = touched["customer_id"].astype(str)
    touched["contacted_at"] = pd.to_datetime(touched["contacted_at"])
    pairs = (
        rows[["customer_id", "snapshot_date"]].drop_duplicates().merge(touched, on="customer_id")
    )
    start = pd.to_datetime(pairs["snapshot_date"])
    inside = (pairs["contacted_at"] >= start) & (
        pairs["contacted_at"] < start + timedelta(days=window_days)
    )
    hit = pairs.loc[inside, ["customer_id", "snapshot_date"]].drop_duplicates()
    rows = rows.merge(hit.assign(contacted=True), on=["customer_id", "snapshot_date"], how="left")
    rows["contacted"] = rows["contacted"].fillna(False).astype(bool)
    out = []
    for (snapshot, band), group in rows.groupby(["snapshot_date", "risk_band"], sort=True):
        yes, no = group[group["contacted"]], group[~group["contacted"]]
        rate_yes = float(yes[label].mean()) if len(yes) else np.nan
        rate_no = float(no[label].mean()) if len(no) else np.nan
        enough = len(yes) >= min_group and len(no) >= min_group
        out.append(
            {
                "snapshot_date": snapshot,
                "risk_band": band,
                "customers": len(group),
                "contacted": len(yes),
                "churn_rate_contacted": rate_yes,
                "churn_rate_uncontacted": rate_no,
                "difference": rate_yes - rate_no if enough else np.nan,
            }
        )
    return pd.DataFrame(out, columns=list(CONTACT_COLUMNS))
