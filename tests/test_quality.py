"""The data-quality report: counts, nulls, date range, Markdown page, fail-safe message."""

from __future__ import annotations

import json
from datetime import datetime

import ibis
import pandas as pd
import pytest

from churnseg.pipelines import quality as q
from churnseg.pipelines.stages.extract_clean import DataQualityError, _check_quarantine_share


def clean_table() -> ibis.Table:
    frame = pd.DataFrame(
        {
            "customer_id": ["A", "B", None],
            "timestamp": [datetime(2024, 1, 5), datetime(2024, 3, 1, 12), datetime(2024, 2, 1)],
            "amount": [1.0, None, None],
            "is_extreme": [False, True, False],
        }
    )
    return ibis.duckdb.connect().create_table("clean", frame)


def test_profile_counts_rows_nulls_flags_and_dates() -> None:
    report = q.profile_table(
        rows=6,
        clean=clean_table(),
        by_reason={"zero_amount": 1, "bad_timestamp": 2},
        date_column="timestamp",
    )
    assert (report.rows, report.clean, report.quarantined) == (6, 3, 3)
    assert report.rows == report.clean + report.quarantined
    assert report.quarantined_share == pytest.approx(0.5)
    assert report.by_reason == {"bad_timestamp": 2, "zero_amount": 1}, "sorted by code"
    assert report.nulls == {"customer_id": 1, "timestamp": 0, "amount": 2, "is_extreme": 0}
    assert report.flagged == {"is_extreme": 1}
    assert (report.first, report.last) == ("2024-01-05 00:00:00", "2024-03-01 12:00:00")
    assert report.top_reasons(1) == [("bad_timestamp", 2)]


def test_stub_rows_are_not_counted_as_clean_source_rows() -> None:
    frame = pd.DataFrame({"customer_id": ["A", "S"], "is_stub": [False, True]})
    table = ibis.duckdb.connect().create_table("cu", frame)
    report = q.profile_table(rows=1, clean=table, by_reason={}, date_column=None, stubs=1)
    assert (report.rows, report.clean, report.stubs) == (1, 1, 1)
    assert report.flagged == {"is_stub": 1}
    assert report.first is None and report.date_column is None


def test_json_and_markdown_pages() -> None:
    table = q.profile_table(6, clean_table(), {"zero_amount": 1, "bad_timestamp": 2}, "timestamp")
    report = {"transactions": table}
    data = json.loads(json.dumps(q.quality_dict(report, {"region": "categorical"})))
    assert data["tables"]["transactions"]["quarantined_share"] == 0.5
    assert data["tables"]["transactions"]["by_reason"] == {"bad_timestamp": 2, "zero_amount": 1}
    assert set(data["reasons"]) == {"bad_timestamp", "zero_amount"}
    assert data["customer_attributes"] == {"region": "categorical"}
    page = q.quality_markdown(report, {"region": "categorical"})
    assert "| transactions | 6 | 3 | 3 | 50.00% | 0 | 2024-01-05 00:00:00 .. 2024-03-01" in page
    assert page.index("| bad_timestamp | 2 |") < page.index("| zero_amount | 1 |"), "by count"
    assert "`customer_id` 1, `amount` 2" in page and "| region | categorical |" in page


def test_empty_table_share_is_zero() -> None:
    assert q.TableQuality(rows=0, clean=0, quarantined=0).quarantined_share == 0.0


def test_fail_safe_names_the_table_share_and_top_reasons() -> None:
    report = {
        "customers": q.TableQuality(rows=10, clean=10, quarantined=0),
        "transactions": q.TableQuality(
            rows=100,
            clean=70,
            quarantined=30,
            by_reason={"bad_timestamp": 20, "zero_amount": 6, "duplicate_row": 3, "x": 1},
        ),
    }
    with pytest.raises(DataQualityError) as error:
        _check_quarantine_share(report, 0.2)
    text = str(error.value)
    assert "table 'transactions': 30 of 100 rows quarantined (30.0% > 20%)" in text
    assert "top reasons: bad_timestamp: 20, zero_amount: 6, duplicate_row: 3" in text
    assert "sources.transactions.date_formats" in text, "a hint for the top reason"
    assert "customers" not in text and "published scores are unchanged" in text
    _check_quarantine_share(report, 0.3)  # exactly at the limit passes
