from __future__ import annotations

from datetime import date, datetime

import ibis
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnseg.features import cleaning as c
from churnseg.features.contract import CUSTOMERS, TRANSACTIONS

MAPPING = {"customer_id": "cust", "timestamp": "ts"}
RULES = c.CleaningRules(min_date=date(2020, 1, 1), now=datetime(2025, 1, 1))


def raw_transactions(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["order_id", "cust", "ts", "amount", "is_return", "product", "quantity"]
    )
    frame["_row"] = np.arange(len(frame), dtype="int64")
    return frame.astype({"is_return": "bool", "product": "string", "quantity": "int64"})


def clean(frame: pd.DataFrame, known: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    con = ibis.duckdb.connect()
    raw = con.create_table("raw", frame)
    conformed = c.conform(raw, TRANSACTIONS, MAPPING)
    ids = None
    if known is not None:
        ids = con.create_table("ids", pd.DataFrame({"customer_id": known}))
    result = c.clean_transactions(conformed, ids, RULES)
    return (
        result.clean.execute().sort_values("_row").reset_index(drop=True),
        result.quarantine.execute().sort_values("_row").reset_index(drop=True),
    )


def test_each_rule_gives_its_reason() -> None:
    frame = raw_transactions(
        [
            ("o1", "A", "2024-01-01 10:00", "10.0", False, "p1", 1),  # clean
            ("o1", "A", "2024-01-01 10:00", "10.0", False, "p1", 1),  # exact duplicate
            ("o1", "A", "2024-01-01 10:05", "10.0", False, "p1", 1),  # repeated order line
            ("o2", None, "2024-01-02", "5", False, "p1", 1),  # null id
            ("o3", "  ", "2024-01-02", "5", False, "p1", 1),  # blank id is null
            ("o4", "A", "not a date", "5", False, "p1", 1),
            ("o5", "A", "1999-12-31", "5", False, "p1", 1),
            ("o6", "A", "2030-01-01", "5", False, "p1", 1),
            ("o7", "A", "2024-01-03", "abc", False, "p1", 1),
            ("o8", "A", "2024-01-03", "0", False, "p1", 1),
            ("o9", "Z", "2024-01-03", "5", False, "p1", 1),  # not in customers
            ("o10", "A", "2024-01-04", "-4", False, "p1", 1),  # a return, kept
        ]
    )
    kept, quarantined = clean(frame, known=["A"])
    assert list(kept._row) == [0, 11]
    assert bool(kept.is_return.iloc[1]), "a negative amount is a return even when unflagged"
    assert dict(zip(quarantined._row, quarantined.reason, strict=True)) == {
        1: c.DUPLICATE_ROW,
        2: c.DUPLICATE_ORDER_LINE,
        3: c.NULL_CUSTOMER_ID,
        4: c.NULL_CUSTOMER_ID,
        5: c.BAD_TIMESTAMP,
        6: c.BEFORE_MIN_DATE,
        7: c.FUTURE_TIMESTAMP,
        8: c.BAD_AMOUNT,
        9: c.ZERO_AMOUNT,
        10: c.UNKNOWN_CUSTOMER,
    }


def test_missing_required_column_names_table_and_column() -> None:
    frame = raw_transactions([("o1", "A", "2024-01-01", 1.0, False, "p", 1)]).drop(columns="ts")
    con = ibis.duckdb.connect()
    with pytest.raises(
        c.DataContractError, match=r"'transactions'.*'timestamp' \(source column 'ts'\)"
    ):
        c.conform(con.create_table("raw", frame), TRANSACTIONS, MAPPING)


def test_duplicate_customers_merge_with_the_last_row_winning() -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ["A", "B", "A", None],
            "signup_date": ["2024-01-01", "2024-02-01", "2024-01-01", "2024-03-01"],
            "region": ["north", "east", "south", "west"],
            "_row": [0, 1, 2, 3],
        }
    )
    con = ibis.duckdb.connect()
    result = c.clean_customers(c.conform(con.create_table("cu", frame), CUSTOMERS, {}))
    kept = result.clean.execute().sort_values("_row")
    assert kept.set_index("customer_id").region.to_dict() == {"B": "east", "A": "south"}
    reasons = result.quarantine.execute().set_index("_row").reason.to_dict()
    assert reasons == {0: c.MERGED_CUSTOMER, 3: c.NULL_CUSTOMER_ID}


_value = st.one_of(st.none(), st.sampled_from(["A", "B", " ", "C"]))
_stamp = st.one_of(
    st.none(),
    st.sampled_from(["2024-01-01", "2024-01-01 10:00", "garbage", "1990-01-01", "2031-05-05"]),
)
_amount = st.one_of(st.none(), st.sampled_from(["1", "0", "-3", "nan", "x", "1e9"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["o1", "o2", None]),
            _value,
            _stamp,
            _amount,
            st.booleans(),
            st.sampled_from(["p1", "p2"]),
            st.integers(1, 2),
        ),
        min_size=0,
        max_size=25,
    )
)
def test_rows_in_equal_clean_plus_quarantined(rows: list[tuple[object, ...]]) -> None:
    frame = raw_transactions(rows)
    frame["ts"] = frame["ts"].astype("string")
    frame["amount"] = frame["amount"].astype("string")
    frame["order_id"] = frame["order_id"].astype("string")
    frame["cust"] = frame["cust"].astype("string")
    kept, quarantined = clean(frame, known=["A", "B"])
    assert len(kept) + len(quarantined) == len(frame), "every row is clean or quarantined"
    assert sorted([*kept._row, *quarantined._row]) == list(range(len(frame))), "each row once"
    assert quarantined.reason.notna().all()
