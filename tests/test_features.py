from __future__ import annotations

from datetime import date, datetime

import ibis
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnseg.features.behaviour import rfm_features
from churnseg.features.labels import inactivity_labels
from churnseg.features.snapshots import build_training_set, plan_cutoffs
from tests.helpers import customers, run, transactions

TX = transactions(
    [
        ("o1", "A", "2024-01-01 09:00", 10.0, False),
        ("o2", "A", "2024-02-01 12:00", 10.0, False),
        ("o2", "A", "2024-02-01 12:00", 20.0, False),
        ("o3", "A", "2024-03-01 00:00", -5.0, True),
        ("o4", "A", "2024-04-10 10:00", 100.0, False),  # on/after the cutoff: invisible
        ("o5", "D", "2024-03-31 23:59", 7.0, False),  # no customers row: known by first order
    ]
)
CUSTOMERS = customers([("A", "2023-12-01"), ("B", "2024-03-15"), ("C", "2024-05-01"), ("D", None)])


def con_tables() -> tuple[ibis.Table, ibis.Table]:
    con = ibis.duckdb.connect()
    return con.create_table("tx", TX), con.create_table("cu", CUSTOMERS)


@pytest.mark.parametrize(
    "as_of", [date(2024, 4, 1), datetime(2024, 4, 1), pd.Timestamp("2024-04-01").to_pydatetime()]
)
def test_rfm_by_hand(as_of: date) -> None:
    tx, cu = con_tables()
    out = run(rfm_features(tx, cu, as_of, windows=(30, 90))).set_index("customer_id")
    assert list(out.index) == ["A", "B", "D"], "C signs up after the cutoff and is unknown"
    a = out.loc["A"]
    assert a.frequency == 2, "o1 and o2 are purchases; o3 is a return; o4 is after as_of"
    assert a.monetary_total == pytest.approx(35.0), "10 + 30 - 5, net of the return"
    assert a.monetary_mean == pytest.approx(17.5)
    assert a.monetary_max == pytest.approx(30.0), "o2's two lines form one order"
    assert a.recency_days == pytest.approx(60 - 0.5), "2024-02-01 12:00 to 2024-04-01"
    assert a.tenure_days == pytest.approx(122.0), "signup 2023-12-01, leap February"
    assert a.return_rate == pytest.approx(1 / 3)
    assert a.orders_30d == 0 and a.orders_90d == 1, "Jan 1 is 91 days back"
    assert a.spend_90d == pytest.approx(25.0), "o2 (30) and the return (-5) are in 90 days"
    b = out.loc["B"]
    assert b.frequency == 0 and b.monetary_total == 0.0 and b.monetary_mean == 0.0
    assert b.recency_days == pytest.approx(17.0), "no purchase: recency is time known"
    d = out.loc["D"]
    assert d.frequency == 1 and d.tenure_days == pytest.approx(1 / 1440)


def test_rfm_without_customers_table_uses_first_order() -> None:
    tx, _ = con_tables()
    out = run(rfm_features(tx, None, date(2024, 4, 1), windows=(30,)))
    assert list(out.customer_id) == ["A", "D"]
    assert out.set_index("customer_id").loc["A"].tenure_days == pytest.approx(91 - 9 / 24)


def test_inactivity_labels_use_the_horizon_window_only() -> None:
    tx, cu = con_tables()
    pop = rfm_features(tx, cu, date(2024, 4, 1), windows=(30,))
    short = run(inactivity_labels(tx, pop, date(2024, 4, 1), 9)).set_index("customer_id")
    long = run(inactivity_labels(tx, pop, date(2024, 4, 1), 10)).set_index("customer_id")
    assert short.churned.to_dict() == {"A": 1, "B": 1, "D": 1}, "o4 is on day 9, outside [0, 9)"
    assert long.churned.to_dict() == {"A": 0, "B": 1, "D": 1}


def test_training_set_excludes_customers_not_yet_known() -> None:
    tx, cu = con_tables()
    stacked = build_training_set(tx, cu, [date(2024, 1, 15), date(2024, 4, 1)], 30, (30,))
    out = stacked.execute()
    out["cutoff"] = pd.to_datetime(out.snapshot_date).dt.strftime("%Y-%m-%d")
    by_cutoff = out.groupby("cutoff").customer_id.apply(sorted).to_dict()
    assert by_cutoff == {"2024-01-15": ["A"], "2024-04-01": ["A", "B", "D"]}


def test_cutoff_plan_keeps_training_labels_before_validation() -> None:
    plan = plan_cutoffs(date(2026, 1, 1), horizon_days=90, train_cutoffs=3)
    assert plan.validation == date(2025, 10, 3)
    assert plan.training == (date(2025, 1, 6), date(2025, 4, 6), date(2025, 7, 5))
    assert all((plan.validation - t).days >= 90 for t in plan.training)


CUTOFF = datetime(2024, 6, 1)
_stamp = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2024, 9, 1))
_row = st.tuples(
    st.sampled_from(["o1", "o2", "o3", "o4", "o5"]),
    st.sampled_from(["A", "B", "C"]),
    _stamp,
    st.floats(min_value=-50, max_value=500, allow_nan=False).filter(lambda v: v != 0),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_row, min_size=1, max_size=12), later=st.lists(_row, max_size=6))
def test_features_ignore_everything_on_or_after_the_cutoff(
    rows: list[tuple[str, str, datetime, float]], later: list[tuple[str, str, datetime, float]]
) -> None:
    def frame(items: list[tuple[str, str, datetime, float]]) -> pd.DataFrame:
        return transactions([(o, c, ts, amt, amt < 0) for o, c, ts, amt in items])

    past = [r for r in rows if r[2] < CUTOFF]
    future = [(o, c, max(ts, CUTOFF), amt) for o, c, ts, amt in later]
    con = ibis.duckdb.connect()
    cu = con.create_table("cu", customers([("A", "2023-01-01"), ("B", "2024-02-01")]))
    base = run(rfm_features(con.create_table("a", frame(past)), cu, CUTOFF))
    with_future = run(rfm_features(con.create_table("b", frame(past + future)), cu, CUTOFF))
    pd.testing.assert_frame_equal(base, with_future)
