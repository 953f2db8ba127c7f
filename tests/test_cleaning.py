"""Cleaning rules on hand-checkable tables: one reason per rule, conservation, conversions."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from datetime import date, datetime

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnseg.features import cleaning as c
from churnseg.features.contract import CUSTOMERS, EVENTS, SUBSCRIPTIONS, TRANSACTIONS
from churnseg.pipelines.config import CleaningConfig

MAPPING = {"customer_id": "cust", "timestamp": "ts"}
# Zero amounts are kept as activity by default; quarantined here so each rule shows its reason.
RULES = c.CleaningRules(
    min_date=date(2020, 1, 1), now=datetime(2025, 1, 1), zero_amounts="quarantine"
)


def raw_transactions(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["order_id", "cust", "ts", "amount", "is_return", "product", "quantity"]
    )
    frame["_row"] = np.arange(len(frame), dtype="int64")
    return frame.astype({"is_return": "bool", "product": "string", "quantity": "int64"})


def clean(
    frame: pd.DataFrame,
    known: list[str] | None = None,
    rules: c.CleaningRules = RULES,
    options: c.ReadOptions | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    con = ibis.duckdb.connect()
    raw = con.create_table("raw", frame)
    conformed = c.conform(raw, TRANSACTIONS, MAPPING, options)
    ids = None
    if known is not None:
        ids = con.create_table("ids", pd.DataFrame({"customer_id": known}))
    result = c.clean_transactions(conformed, ids, rules)
    return (
        result.clean.execute().sort_values("_row").reset_index(drop=True),
        result.quarantine.execute().sort_values("_row").reset_index(drop=True),
    )


def reasons(quarantined: pd.DataFrame) -> dict[int, str]:
    return dict(zip(quarantined._row, quarantined.reason, strict=True))


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
            ("o11", "Unknown", "2024-01-04", "4", False, "p1", 1),  # placeholder id
            ("o12", "A", "2024-01-04", "1e9", False, "p1", 1),  # impossible amount
            ("o13", "A", "2024-01-04", "1e400", False, "p1", 1),  # overflows to infinity
        ]
    )
    kept, quarantined = clean(frame, known=["A"])
    assert list(kept._row) == [0, 11]
    assert bool(kept.is_return.iloc[1]), "a negative amount is a return even when unflagged"
    assert reasons(quarantined) == {
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
        12: c.NULL_CUSTOMER_ID,
        13: c.AMOUNT_ABOVE_MAX,
        14: c.BAD_AMOUNT,
    }
    assert set(quarantined.reason) <= set(c.REASONS), "every reason code is documented"


def test_policies_switch_rules_off() -> None:
    frame = raw_transactions(
        [
            ("o1", "A", "2024-01-01", "0", False, "p1", 1),
            ("o2", "Z", "2024-01-01", "1e9", False, "p1", 1),
            ("o3", "A", "2024-01-02", "5", False, "p1", 1),
            ("o3", "A", "2024-01-03", "5", False, "p1", 1),  # same line, later
        ]
    )
    rules = c.CleaningRules(
        min_date=date(2020, 1, 1),
        now=datetime(2025, 1, 1),
        unknown_customers="stub",
        zero_amounts="keep",
        max_abs_amount=None,
        dedupe_order_lines=False,
    )
    kept, quarantined = clean(frame, known=["A"], rules=rules)
    assert list(kept._row) == [0, 1, 2, 3] and quarantined.empty


def test_returns_are_stored_negative_whatever_the_source_sign() -> None:
    frame = raw_transactions(
        [
            ("o1", "A", "2024-01-01", "10", False, "p1", 1),
            ("r1", "A", "2024-01-02", "4", True, "p1", 1),  # flagged, positive in the source
            ("r2", "A", "2024-01-03", "-3", False, "p1", 1),  # unflagged, negative
        ]
    )
    kept, quarantined = clean(frame)
    assert quarantined.empty
    assert kept.amount.tolist() == [10.0, -4.0, -3.0]
    assert kept.is_return.tolist() == [False, True, True]


def test_a_copy_of_a_quarantined_row_is_kept_not_called_duplicate() -> None:
    frame = raw_transactions(
        [
            ("o1", "A", "2031-01-01", "10", False, "p1", 1),  # future: quarantined
            ("o1", "A", "2024-01-01", "10", False, "p1", 1),  # the same line at a valid time
        ]
    )
    kept, quarantined = clean(frame)
    assert list(kept._row) == [1], "the only valid copy of the line survives"
    assert reasons(quarantined) == {0: c.FUTURE_TIMESTAMP}


def test_extreme_amounts_are_flagged_not_dropped() -> None:
    rows = [(f"o{i}", "A", "2024-01-01", str(10 + i), False, "p1", 1) for i in range(9)]
    rows.append(("o99", "A", "2024-01-01", "-5000", False, "p1", 1))  # a huge return
    frame = raw_transactions(rows)
    kept, quarantined = clean(frame)
    assert quarantined.empty and len(kept) == 10
    assert kept.set_index("_row").is_extreme.to_dict() == {i: i == 9 for i in range(10)}
    kept, _ = clean(frame, rules=replace(RULES, extreme_quantile=None))
    assert not kept.is_extreme.any()


def test_categories_are_trimmed_and_folded() -> None:
    frame = raw_transactions([(f"o{i}", "A", "2024-01-01", "1", False, "p1", 1) for i in range(3)])
    frame["category"] = [" Grocery ", "GROCERY  ", "grocery"]
    kept, _ = clean(frame)
    assert kept.category.tolist() == ["grocery"] * 3


_EDGES = " \t\n\r\x0b\x0c"


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.text(alphabet=st.sampled_from([*_EDGES, "a", "Z", "é", "\x1f", "\xa0", "-"])),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_text_is_stripped_of_edge_whitespace_and_blank_text_is_null(
    values: list[str | None],
) -> None:
    # Values whose first and last characters are visible skip the trim: the same text either
    # way. Other control characters and the no-break space are kept, as strip() keeps them.
    values = ["a ", " a", "\ta\n", "é\x0c", "\x1fa", "a\xa0", "", "  ", None, "a b", *values]
    con = ibis.duckdb.connect()
    table = con.create_table("t", pa.table({"v": pa.array(values, pa.string())}))
    got = con.execute(table.select(v=c._blank_to_null(table.v)))["v"].tolist()
    stripped = [None if v is None else v.strip(_EDGES) for v in values]
    assert [None if pd.isna(g) else g for g in got] == [s or None for s in stripped]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-31 10:00:00", datetime(2024, 1, 31, 10)),
        ("31/01/2024 10:00", datetime(2024, 1, 31, 10)),
        ("2024-01-31T10:00:00+02:00", datetime(2024, 1, 31, 8)),  # offsets are honoured
        ("2024-01-31 10:00:00Z", datetime(2024, 1, 31, 10)),
        ("2024-02-30 10:00:00", None),
        ("31.01.2024", None),
    ],
)
def test_date_formats_are_tried_in_order(text: str, expected: datetime | None) -> None:
    frame = raw_transactions([("o1", "A", text, "1", False, "p1", 1)])
    options = c.ReadOptions(date_formats=("%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M"))
    kept, quarantined = clean(frame, options=options)
    if expected is None:
        assert reasons(quarantined) == {0: c.BAD_TIMESTAMP}
    else:
        assert kept.timestamp.tolist() == [pd.Timestamp(expected)]


def test_naive_timestamps_are_read_in_the_configured_zone() -> None:
    frame = raw_transactions(
        [
            ("o1", "A", "2024-01-15 12:00:00", "1", False, "p1", 1),  # CET, UTC+1
            ("o2", "A", "2024-07-15 12:00:00", "1", False, "p1", 1),  # CEST, UTC+2
            ("o3", "A", "2024-07-15T12:00:00+00:00", "1", False, "p1", 1),  # has its own zone
        ]
    )
    kept, _ = clean(frame, options=c.ReadOptions(time_zone="Europe/Paris"))
    assert kept.timestamp.tolist() == [
        pd.Timestamp("2024-01-15 11:00"),
        pd.Timestamp("2024-07-15 10:00"),
        pd.Timestamp("2024-07-15 12:00"),
    ]


def test_zoned_timestamp_columns_become_naive_utc() -> None:
    stamps = pa.array([datetime(2024, 1, 1, 8)], type=pa.timestamp("us", tz="UTC"))
    table = pa.table({"cust": ["A"], "ts": stamps, "amount": [1.0], "_row": [0]})
    table = table.cast(table.schema.set(1, pa.field("ts", pa.timestamp("us", tz="Asia/Tokyo"))))
    con = ibis.duckdb.connect()
    conformed = c.conform(con.create_table("t", table), TRANSACTIONS, MAPPING)
    assert str(conformed.timestamp.type()) == "timestamp"
    assert conformed.timestamp.execute().tolist() == [pd.Timestamp("2024-01-01 08:00")]


def test_missing_required_column_names_table_and_column() -> None:
    frame = raw_transactions([("o1", "A", "2024-01-01", 1.0, False, "p", 1)]).drop(columns="ts")
    con = ibis.duckdb.connect()
    with pytest.raises(
        c.DataContractError, match=r"'transactions'.*'timestamp' \(source column 'ts'\)"
    ):
        c.conform(con.create_table("raw", frame), TRANSACTIONS, MAPPING)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("cust", [None, " ", None], r"column 'customer_id' \(source column 'cust'\): all 3 values"),
        ("amount", ["abc", "x1", "abc"], r"'amount'.*none of 3 values converts to float.*'abc'"),
        ("ts", ["soon", "later", "never"], r"'timestamp'.*none of 3 values converts to timestamp"),
    ],
)
def test_unusable_columns_raise_one_clear_error(
    column: str, values: list[object], message: str
) -> None:
    frame = raw_transactions([("o1", "A", "2024-01-01", "1", False, "p", 1)] * 3)
    frame[column] = pd.Series(values, dtype="object")
    con = ibis.duckdb.connect()
    raw = con.create_table("raw", frame)
    conformed = c.conform(raw, TRANSACTIONS, MAPPING)
    with pytest.raises(c.DataContractError, match=message):
        c.check_usable(raw, conformed, TRANSACTIONS, MAPPING)


def test_a_table_without_rows_is_unusable() -> None:
    frame = raw_transactions([]).astype(
        {"order_id": "string", "cust": "string", "ts": "string", "amount": "float64"}
    )
    con = ibis.duckdb.connect()
    raw = con.create_table("raw", frame)
    with pytest.raises(c.DataContractError, match="'transactions': the source has no rows"):
        c.check_usable(raw, c.conform(raw, TRANSACTIONS, MAPPING), TRANSACTIONS, MAPPING)


def test_a_few_bad_values_pass_the_boundary_check() -> None:
    frame = raw_transactions([("o1", "A", "2024-01-01", "1", False, "p", 1)] * 3)
    frame["amount"] = ["1", "abc", "2"]
    con = ibis.duckdb.connect()
    raw = con.create_table("raw", frame)
    rows = c.check_usable(raw, c.conform(raw, TRANSACTIONS, MAPPING), TRANSACTIONS, MAPPING)
    assert rows == 3, "dirty rows are quarantined later, one by one"


def test_a_column_good_only_beyond_the_first_rows_is_usable_and_nowhere_good_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first rows settle most tables; when they show no good value, every row is read.
    monkeypatch.setattr(c, "_USABLE_PREFIX_ROWS", 2)
    frame = raw_transactions([("o1", "A", "2024-01-01", "1", False, "p", 1)] * 5)
    frame["amount"] = ["abc", "abc", "abc", "1", "abc"]
    con = ibis.duckdb.connect()
    raw = con.create_table("raw", frame)
    assert c.check_usable(raw, c.conform(raw, TRANSACTIONS, MAPPING), TRANSACTIONS, MAPPING) == 5
    raw = con.create_table("raw_bad", frame.assign(amount="abc"))
    with pytest.raises(c.DataContractError, match="none of 5 values converts"):
        c.check_usable(raw, c.conform(raw, TRANSACTIONS, MAPPING), TRANSACTIONS, MAPPING)


def customers_table(frame: pd.DataFrame) -> ibis.Table:
    frame = frame.assign(_row=np.arange(len(frame), dtype="int64"))
    return c.conform(ibis.duckdb.connect().create_table("cu", frame), CUSTOMERS, {})


def test_duplicate_customers_merge_with_the_last_row_winning() -> None:
    conformed = customers_table(
        pd.DataFrame(
            {
                "customer_id": ["A", "B", "A", None, "B"],
                "signup_date": ["2024-01-01", "2024-02-01", "2024-01-01", "2024-03-01", None],
                "region": ["north", "east", "south", "west", "east"],
            }
        )
    )
    result = c.clean_customers(conformed)
    kept = result.clean.execute().sort_values("_row")
    assert kept.set_index("customer_id").region.to_dict() == {"A": "south", "B": "east"}
    assert not kept.is_stub.any()
    reasons = result.quarantine.execute().set_index("_row").reason.to_dict()
    assert reasons == {0: c.MERGED_CUSTOMER, 3: c.NULL_CUSTOMER_ID, 1: c.MERGED_CUSTOMER}


def test_latest_by_column_picks_the_winner_and_exact_copies_are_duplicates() -> None:
    conformed = customers_table(
        pd.DataFrame(
            {
                "customer_id": ["A", "A", "A", "A"],
                "updated_at": ["2024-05-01", "2024-01-01", "2024-05-01", None],
                "region": ["north", "south", "north", "west"],
            }
        )
    )
    result = c.clean_customers(conformed, options=c.CustomerOptions(latest_by="updated_at"))
    kept = result.clean.execute()
    assert kept[["_row", "region"]].values.tolist() == [[2, "north"]], "latest, then last read"
    reasons = result.quarantine.execute().set_index("_row").reason.to_dict()
    assert reasons == {0: c.DUPLICATE_ROW, 1: c.MERGED_CUSTOMER, 3: c.MERGED_CUSTOMER}


def test_attribute_kinds_are_inferred_and_applied() -> None:
    n = 30
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i}" for i in range(n)],
            "region": [" North", "SOUTH "] * (n // 2),
            "employees": [str(10 + i) for i in range(n)],  # many distinct numbers
            "seats": [str(i % 3) for i in range(n)],  # few distinct: a code
            "zip": [f"0{1000 + i}" for i in range(n)],  # leading zero: a code
            "vip": ["yes", "no"] * (n // 2),
            "score": np.linspace(0, 1, n),  # a float column
            "updated_at": pd.date_range("2024-01-01", periods=n),
        }
    )
    conformed = customers_table(frame)
    attrs = c.infer_attributes(conformed, {"seats": "numeric"}, exclude={"updated_at"})
    assert attrs.kinds == {
        "region": "categorical",
        "employees": "numeric",
        "seats": "numeric",  # declared wins
        "zip": "categorical",
        "vip": "categorical",
        "score": "numeric",
    }
    assert attrs.boolean_text == {"vip"}
    kept = c.clean_customers(conformed, options=c.CustomerOptions(attributes=attrs)).clean
    out = kept.execute().sort_values("_row")
    assert out.region.tolist()[:2] == ["north", "south"]
    assert out.employees.tolist()[:2] == [10.0, 11.0] and out.seats.tolist()[:3] == [0.0, 1.0, 2.0]
    assert out.zip.iloc[0] == "01000" and out.vip.tolist()[:2] == [True, False]


def test_an_update_reads_booleans_as_the_full_run_did_not_from_its_few_rows() -> None:
    # The full data: "newsletter" also says "unknown", so it is text; "vip" spells booleans.
    full = pd.DataFrame(
        {
            "customer_id": ["C1", "C2", "C3"],
            "newsletter": ["yes", "no", "unknown"],
            "vip": ["yes", "no", "no"],
        }
    )
    kinds: dict[str, c.AttributeKind] = {"newsletter": "categorical", "vip": "categorical"}
    found = c.infer_attributes(customers_table(full), kinds, exclude=set())
    assert found.boolean_text == {"vip"}
    # An update of C1 alone sees "yes" in both columns.
    one = customers_table(full.iloc[:1])
    assert c.infer_attributes(one, kinds, exclude=set()).boolean_text == {"newsletter", "vip"}
    again = c.infer_attributes(one, kinds, exclude=set(), boolean_text=found.boolean_text)
    assert again.boolean_text == {"vip"}
    kept = c.clean_customers(one, options=c.CustomerOptions(attributes=again)).clean.execute()
    assert kept[["newsletter", "vip"]].values.tolist() == [["yes", True]]


def test_stub_customers_cover_ids_only_other_tables_know() -> None:
    con = ibis.duckdb.connect()
    customers = con.create_table(
        "cu",
        pd.DataFrame({"customer_id": ["A"], "region": ["north"], "is_stub": [False]}),
    )
    tx = con.create_table("tx", pd.DataFrame({"customer_id": ["A", "B", "B"]}))
    ev = con.create_table("ev", pd.DataFrame({"customer_id": ["C", "A"]}))
    stubs = c.stub_customers(customers, tx, ev).execute().sort_values("customer_id")
    assert stubs.customer_id.tolist() == ["B", "C"]
    assert stubs.is_stub.all() and stubs.region.isna().all()


def conformed_table(frame: pd.DataFrame, contract: c.TableContract) -> ibis.Table:
    frame = frame.assign(_row=np.arange(len(frame), dtype="int64"))
    return c.conform(ibis.duckdb.connect().create_table("t", frame), contract, {})


def test_event_and_subscription_rules() -> None:
    events = conformed_table(
        pd.DataFrame(
            {
                "customer_id": ["A", "A", "A", "B"],
                "timestamp": ["2024-01-01", "2024-01-01", "2024-01-02", "2024-01-02"],
                "event_type": [" Login", "login", None, "login"],
            }
        ),
        EVENTS,
    )
    ids = ibis.memtable({"customer_id": ["A"]})
    result = c.clean_events(events, ids, RULES)
    assert result.clean.execute().event_type.tolist() == ["login"]
    assert result.quarantine.execute().set_index("_row").reason.to_dict() == {
        1: c.DUPLICATE_ROW,
        2: c.NULL_EVENT_TYPE,
        3: c.UNKNOWN_CUSTOMER,
    }
    subscriptions = conformed_table(
        pd.DataFrame(
            {
                "customer_id": ["A", "A", "A"],
                "start_date": ["2024-01-01", "2024-02-01", "2024-03-01"],
                "end_date": [None, "2024-01-15", "someday"],
                "plan": ["Basic", "basic", "basic"],
            }
        ),
        SUBSCRIPTIONS,
    )
    result = c.clean_subscriptions(subscriptions, ids, RULES)
    assert result.clean.execute().plan.tolist() == ["basic"]
    assert result.quarantine.execute().set_index("_row").reason.to_dict() == {
        1: c.END_BEFORE_START,
        2: c.BAD_TIMESTAMP,
    }


def test_quarantine_records_keep_the_raw_text() -> None:
    frame = raw_transactions([("o1", "A", "31/13/2024", "12,5", False, "p1", 1)])
    con = ibis.duckdb.connect()
    raw = con.create_table("raw", frame)
    result = c.clean_transactions(c.conform(raw, TRANSACTIONS, MAPPING), None, RULES)
    records = c.quarantine_records(c.raw_rows(raw, result.quarantine), "transactions", "run-1")
    out = records.execute()
    assert out[["run_id", "table_name", "source_row", "reason"]].values.tolist() == [
        ["run-1", "transactions", 0, c.BAD_TIMESTAMP]
    ]
    record = json.loads(out.record.iloc[0])
    assert record["ts"] == "31/13/2024" and record["amount"] == "12,5", "raw text, unconverted"


def test_library_defaults_match_the_config_defaults() -> None:
    config = CleaningConfig()
    rules = c.CleaningRules(min_date=config.min_date, now=datetime(2025, 1, 1))
    for f in fields(rules):
        if f.name in ("min_date", "now"):
            continue
        expected = getattr(config, {"missing_ids": "missing_id_values"}.get(f.name, f.name))
        got = getattr(rules, f.name)
        assert (list(got) if isinstance(got, tuple) else got) == expected, f.name


_value = st.one_of(st.none(), st.sampled_from(["A", "B", " ", "C", "n/a"]))
_stamp = st.one_of(
    st.none(),
    st.sampled_from(["2024-01-01", "2024-01-01 10:00", "garbage", "1990-01-01", "2031-05-05"]),
)
_amount = st.one_of(st.none(), st.sampled_from(["1", "0", "-3", "nan", "x", "1e9", "1e400"]))


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


def _key(values: pd.Series) -> tuple[object, ...]:
    return tuple(None if pd.isna(v) else v for v in values)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["o1", None]),
            st.sampled_from(["A", "B", None]),
            st.sampled_from(["2024-01-01", "2024-01-02 10:00", "2031-01-01"]),
            st.sampled_from(["10", "-10", "5"]),
            st.booleans(),
            st.sampled_from(["p1", None]),
            st.integers(1, 2),
        ),
        max_size=30,
    ),
    notes=st.lists(st.sampled_from(["x", None]), min_size=30, max_size=30),
)
def test_duplicates_are_later_passing_copies_in_row_order(
    rows: list[tuple[object, ...]], notes: list[str | None]
) -> None:
    # The clean stage sends only rows whose key hash repeats through the duplicate windows;
    # the tags must be exactly the rule's: a passing row is a duplicate row when an earlier
    # passing row has the same content (a source column outside the contract included), else
    # a repeated order line when it has an order id and an earlier passing row has the same
    # customer, order, product, quantity, amount and return flag.
    frame = raw_transactions(rows)
    for col in ("order_id", "cust", "ts", "amount"):
        frame[col] = frame[col].astype("string")
    frame["note"] = pd.Series(notes[: len(frame)], dtype="string")
    kept, quarantined = clean(frame, known=["A", "B"])
    tagged = pd.concat([kept.drop(columns="is_extreme"), quarantined]).sort_values("_row")
    duplicate_reasons = (c.DUPLICATE_ROW, c.DUPLICATE_ORDER_LINE)
    content = [col for col in tagged.columns if col not in ("_row", "reason")]
    line = ["customer_id", "order_id", "product", "quantity", "amount", "is_return"]
    seen_content: set[tuple[object, ...]] = set()
    seen_line: set[tuple[object, ...]] = set()
    expected = {}
    for _, row in tagged.iterrows():
        if pd.notna(row.reason) and row.reason not in duplicate_reasons:
            expected[row._row] = row.reason  # a row rule failed first: never a duplicate
            continue
        whole, order_line = _key(row[content]), _key(row[line])
        if whole in seen_content:
            expected[row._row] = c.DUPLICATE_ROW
        elif pd.notna(row.order_id) and order_line in seen_line:
            expected[row._row] = c.DUPLICATE_ORDER_LINE
        seen_content.add(whole)
        seen_line.add(order_line)
    assert reasons(quarantined) == expected


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(_value, st.sampled_from(["north", " North", None]), st.integers(0, 3)),
        max_size=20,
    )
)
def test_customers_conserve_rows_and_keep_one_row_per_id(
    rows: list[tuple[object, ...]],
) -> None:
    frame = pd.DataFrame(rows, columns=["customer_id", "region", "version"])
    frame = frame.astype({"customer_id": "string", "region": "string", "version": "int64"})
    conformed = customers_table(frame)
    attrs = c.infer_attributes(conformed, {}, exclude={"version"})
    options = c.CustomerOptions(latest_by="version", attributes=attrs)
    result = c.clean_customers(conformed, options=options)
    kept, quarantined = result.clean.execute(), result.quarantine.execute()
    assert sorted([*kept._row, *quarantined._row]) == list(range(len(frame))), "each row once"
    assert kept.customer_id.is_unique, "one clean row per customer id"
    ids = {str(v).strip() for v in frame.customer_id.dropna() if str(v).strip() not in ("", "n/a")}
    assert set(kept.customer_id) == ids, "every real id keeps exactly one row"
