from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

import ibis
import pandas as pd
import pytest

from churnseg.features.behaviour import rfm_features
from churnseg.features.build import build_features
from churnseg.features.cleaning import DataContractError
from churnseg.features.labels import churn_labels, inactivity_labels, label_days
from churnseg.features.snapshots import build_training_set, labelled_snapshot, plan_cutoffs
from churnseg.pipelines.config import FeatureConfig, load_config
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
AS_OF_TYPES = [date(2024, 4, 1), datetime(2024, 4, 1), pd.Timestamp("2024-04-01").to_pydatetime()]


def con_tables() -> tuple[ibis.Table, ibis.Table]:
    con = ibis.duckdb.connect()
    return con.create_table("tx", TX), con.create_table("cu", CUSTOMERS)


@pytest.mark.parametrize("as_of", AS_OF_TYPES)
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


def test_cutoff_plan_keeps_training_labels_before_validation() -> None:
    plan = plan_cutoffs(date(2026, 1, 1), horizon_days=90, train_cutoffs=3)
    assert plan.validation == date(2025, 10, 3)
    assert plan.training == (date(2025, 1, 6), date(2025, 4, 6), date(2025, 7, 5))
    assert all((plan.validation - t).days >= 90 for t in plan.training)


def test_cutoff_plan_makes_room_for_the_grace_gap() -> None:
    span = label_days(FeatureConfig(label="contract", grace_days=30), 90, has_subscriptions=True)
    assert span == 120, "a contract label reads horizon + grace days"
    plan = plan_cutoffs(date(2026, 1, 1), 90, 2, label_days=span)
    assert plan.validation == date(2025, 9, 3), "120 days before scoring"
    assert plan.training == (date(2025, 2, 5), date(2025, 5, 6)), "step stays the horizon"
    assert label_days(FeatureConfig(label="contract"), 90, has_subscriptions=False) == 90


# --------------------------------------------------------------------------------------------
# The whole feature table, by hand. Lines: (order, customer, time, amount, quantity, category,
# channel, is_return). Cutoff 2024-04-01 00:00, windows 30 and 90 days.

LINES = [
    ("a1", "A", "2024-01-01 09:00", 10.0, 2, "grocery", "web", False),  # 90.625 days back
    ("a2", "A", "2024-02-01 12:00", 10.0, 1, "grocery", "web", False),  # 59.5
    ("a2", "A", "2024-02-01 12:00", 20.0, 1, "books", "web", False),
    ("a3", "A", "2024-03-01 00:00", -5.0, 1, "grocery", "web", True),  # 31.0, a return
    ("a4", "A", "2024-03-20 08:00", 30.0, 3, "toys", "app", False),  # 11.667
    ("a5", "A", "2024-04-10 10:00", 100.0, 1, "toys", "app", False),  # after the cutoff
    ("c1", "C", "2024-05-02 10:00", 50.0, 1, "books", "web", False),  # after the cutoff
    ("d1", "D", "2024-03-31 23:59", 7.0, None, None, "store", False),  # 1 minute back
]
EVENTS = [
    ("A", "2024-03-30 10:00", "login", None),  # 1.583 days back
    ("A", "2024-02-15 00:00", "login", None),  # 46
    ("A", "2024-03-25 00:00", "complaint", 2.5),  # 7
    ("A", "2024-04-02 00:00", "login", None),  # after the cutoff
    ("B", "2024-03-20 00:00", "email_open", 1.0),  # 12
    ("E", "2024-03-01 00:00", "login", None),  # 31: E is known by this event only
]
SUBSCRIPTIONS = [
    ("A", "2024-01-01", "2024-02-01", "basic", 9.99),
    ("A", "2024-02-01", "2024-04-10", "plus", 19.99),  # ends after the cutoff: end unread
    ("A", "2024-04-05", None, "premium", 39.99),  # starts after the cutoff
    ("B", "2024-03-15", "2024-04-20", "basic", 9.99),
    ("D", "2023-06-01", "2024-03-01", "premium", 39.99),  # lapsed 31 days before the cutoff
]
PEOPLE = [  # customer, signup, region, key account, score, churn date
    ("A", "2023-12-01", "north", True, 0.5, None),
    ("B", "2024-03-15", "south", False, None, "2024-04-15"),
    ("C", "2024-05-01", "north", False, 1.0, None),
    ("D", None, None, None, 2.0, "2024-02-01"),
    ("G", None, "east", False, None, None),  # no date and no activity: not placed in time
]
CONFIG = FeatureConfig(
    windows=(30, 90),
    channels=["web", "app", "store"],
    event_types=["login", "complaint", "email_open"],
)


def _ts(values: list[Any]) -> pd.Series:
    return pd.to_datetime(pd.Series(values, dtype="object")).astype("datetime64[us]")


def hand_tables(
    con: Any, people: list[tuple[Any, ...]] | None = None, **extra: list[Any]
) -> dict[str, ibis.Table]:
    lines = pd.DataFrame(
        LINES,
        columns=[
            "order_id",
            "customer_id",
            "timestamp",
            "amount",
            "quantity",
            "category",
            "channel",
            "is_return",
        ],
    )
    lines["timestamp"] = _ts(list(lines.timestamp))
    lines["quantity"] = lines["quantity"].astype("Int64")
    events = pd.DataFrame(EVENTS, columns=["customer_id", "timestamp", "event_type", "value"])
    events["timestamp"] = _ts(list(events.timestamp))
    events["value"] = events["value"].astype("float64")
    subs = pd.DataFrame(
        SUBSCRIPTIONS,
        columns=["customer_id", "start_date", "end_date", "plan", "recurring_revenue"],
    )
    subs["start_date"] = _ts(list(subs.start_date))
    subs["end_date"] = _ts(list(subs.end_date))
    people_frame = pd.DataFrame(
        people or PEOPLE,
        columns=["customer_id", "signup_date", "region", "is_key_account", "score", "churn_date"],
    )
    people_frame["signup_date"] = _ts(list(people_frame.signup_date))
    people_frame["churn_date"] = _ts(list(people_frame.churn_date))
    people_frame["is_key_account"] = people_frame["is_key_account"].astype("boolean")
    people_frame["score"] = people_frame["score"].astype("float64")
    for name, values in extra.items():
        people_frame[name] = pd.Series(values, dtype="object").astype("string")
    return {
        "transactions": con.create_table("tx", lines, overwrite=True),
        "events": con.create_table("ev", events, overwrite=True),
        "subscriptions": con.create_table("su", subs, overwrite=True),
        "customers": con.create_table("cu", people_frame, overwrite=True),
    }


def check(row: pd.Series, expected: dict[str, Any], who: str) -> None:
    for column, value in expected.items():
        got = row[column]
        if value is None:
            assert pd.isna(got), f"{who}.{column}: expected null, got {got!r}"
        elif isinstance(value, str):
            assert got == value, f"{who}.{column}: expected {value!r}, got {got!r}"
        else:
            assert got == pytest.approx(value, rel=1e-9, abs=1e-9), f"{who}.{column}: {got!r}"


EXPECTED_A = {
    "tenure_days": 122.0,
    "recency_days": 12 - 8 / 24,
    "frequency": 3,
    "monetary_total": 65.0,  # 10 + 30 - 5 + 30
    "monetary_mean": 65.0 / 3,
    "monetary_max": 30.0,
    "return_rate": 0.25,
    "orders_30d": 1,  # a4; the return a3 is 31 days back
    "spend_30d": 30.0,
    "orders_90d": 2,  # a2, a4; a1 is 90.625 days back
    "spend_90d": 55.0,
    "orders_trend_30d": (1 + 1) / (1 + 1),  # a2 is in (30, 60]
    "orders_trend_90d": (2 + 1) / (1 + 1),  # a1 is in (90, 180]
    # buckets of 30 days: a1 -> 3 (10), a2 -> 1 (30), a3 -> 1 (-5), a4 -> 0 (30)
    "spend_slope": (5.5 * 65 - (3 * 10 + 30 - 5)) / 143,
    "channel_share_web": 3 / 4,  # purchase lines: a1, a2 (two lines) on the web, a4 in the app
    "channel_share_app": 1 / 4,
    "channel_share_store": 0.0,
    "purchase_units": 7,  # 2 + 1 + 1 + 3; the returned unit does not count
    "basket_size": 7 / 3,  # over 3 purchase orders
    "gap_mean_days": 39.5,  # purchase days 90, 59, 11 back
    "gap_std_days": 17 / math.sqrt(2),  # gaps 31 and 48
    "overdue_ratio": (12 - 8 / 24) / 39.5,
    "overdue_z": (12 - 8 / 24 - 39.5) / (17 / math.sqrt(2)),
    "btyd_frequency": 2,  # weeks back: 12, 8, 1
    "btyd_recency": 11,
    "btyd_t": 12,
    "btyd_monetary_value": 30.0,  # a2 (30) and a4 (30); the first week (a1) is not a repeat
    "n_categories": 3,
    "top_category_share": 0.5,  # grocery 2 of 4 purchase lines
    "category_entropy": -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)),
    "events_login_30d": 1,
    "events_login_90d": 2,
    "events_login_trend_30d": 1.0,  # 1 in 30 days, the Feb 15 login in (30, 60]
    "events_login_trend_90d": 3.0,
    "events_login_value_90d": 0.0,
    "days_since_login": 1 + 14 / 24,
    "events_complaint_30d": 1,
    "events_complaint_trend_30d": 2.0,
    "events_complaint_value_30d": 2.5,
    "days_since_complaint": 7.0,
    "events_email_open_90d": 0,
    "days_since_email_open": 122.0,  # never: days since known
    "sub_count": 2,
    "sub_active": 1,
    "sub_plan": "plus",
    "sub_days_on_plan": 60.0,
    "sub_recurring_revenue": 19.99,
    "sub_upgrades": 1,
    "sub_downgrades": 0,
    "sub_days_to_end": 30.0,  # 60 days in: a new 30-day term starts at the cutoff
    "sub_days_since_end": None,
    "region": "north",
    "is_key_account": 1,
    "score": 0.5,
}
EXPECTED_B = {
    "tenure_days": 17.0,
    "recency_days": 17.0,
    "frequency": 0,
    "orders_trend_30d": 1.0,
    "spend_slope": 0.0,
    "gap_mean_days": None,
    "overdue_ratio": None,
    "btyd_frequency": 0,
    "btyd_t": None,
    "n_categories": 0,
    "category_entropy": 0.0,
    "events_email_open_30d": 1,
    "events_email_open_value_30d": 1.0,
    "days_since_email_open": 12.0,
    "days_since_login": 17.0,
    "sub_active": 1,
    "sub_plan": "basic",
    "sub_days_on_plan": 17.0,
    "sub_days_to_end": 13.0,  # the 2024-04-20 end is after the cutoff and not read
    "region": "south",
    "is_key_account": 0,
    "score": None,
}
EXPECTED_D = {
    "tenure_days": 305.0,  # known from the subscription start 2023-06-01
    "recency_days": 1 / 1440,
    "frequency": 1,
    "channel_share_store": 1.0,
    "basket_size": 1.0,  # no quantity: one unit per line
    "gap_mean_days": None,
    "btyd_frequency": 0,
    "btyd_recency": 0,
    "btyd_t": 0,
    "btyd_monetary_value": 0.0,
    "n_categories": 0,  # the only line has no category
    "sub_count": 1,
    "sub_active": 0,
    "sub_plan": None,
    "sub_days_to_end": None,
    "sub_days_since_end": 31.0,
    "region": None,
}
EXPECTED_E = {"tenure_days": 31.0, "recency_days": 31.0, "days_since_login": 31.0, "sub_count": 0}


@pytest.mark.parametrize("as_of", AS_OF_TYPES)
def test_build_features_by_hand(as_of: date) -> None:
    tables = hand_tables(ibis.duckdb.connect())
    out = run(build_features(tables, as_of, CONFIG)).set_index("customer_id")
    assert list(out.index) == ["A", "B", "D", "E"], "C joins later; G cannot be placed in time"
    for who, expected in [("A", EXPECTED_A), ("B", EXPECTED_B), ("D", EXPECTED_D)]:
        check(out.loc[who], expected, who)
    check(out.loc["E"], EXPECTED_E, "E")
    assert "churn_date" not in out and "signup_date" not in out, "dates are not attributes"


def test_feature_types_are_model_ready() -> None:
    out = build_features(hand_tables(ibis.duckdb.connect()), date(2024, 4, 1), CONFIG)
    schema = out.schema()
    assert schema["frequency"].is_int64() and schema["events_login_30d"].is_int64()
    assert schema["is_key_account"].is_float64() and schema["score"].is_float64(), "0/1, NaN"
    assert schema["btyd_t"].is_float64(), "null without a purchase, whatever the snapshot"
    assert schema["monetary_total"].is_float64() and schema["sub_recurring_revenue"].is_float64()
    assert schema["region"].is_string() and schema["sub_plan"].is_string()


def test_btyd_summary_in_days() -> None:
    config = CONFIG.model_copy(update={"btyd_period_days": 1})
    out = run(build_features(hand_tables(ibis.duckdb.connect()), date(2024, 4, 1), config))
    a = out.set_index("customer_id").loc["A"]
    assert (a.btyd_frequency, a.btyd_recency, a.btyd_t) == (2, 79, 90), "days 90, 59, 11 back"


def test_optional_tables_add_their_families_only() -> None:
    tables = hand_tables(ibis.duckdb.connect())
    full = build_features(tables, date(2024, 4, 1), CONFIG).columns
    only = {k: tables[k] for k in ("transactions", "customers")}
    lean = build_features(only, date(2024, 4, 1), CONFIG).columns
    assert not [c for c in lean if c.startswith(("events_", "days_since_", "sub_"))]
    assert set(lean) < set(full)
    out = run(build_features(only, date(2024, 4, 1), CONFIG))
    assert list(out.customer_id) == ["A", "B", "D"], "E was known by an event only"


def test_levels_default_to_the_most_frequent_before_the_cutoff() -> None:
    tables = hand_tables(ibis.duckdb.connect())
    config = FeatureConfig(windows=(30,), max_levels=2)
    cols = build_features(tables, date(2024, 4, 1), config).columns
    assert [c for c in cols if c.startswith("channel_share_")] == [
        "channel_share_web",
        "channel_share_app",
    ], "web: 4 lines, then app and store 1 each (ties by name)"
    assert [c for c in cols if c.startswith("days_since_")] == [
        "days_since_event",  # any type: how active at all
        "days_since_login",
        "days_since_complaint",
    ], "login: 3 events, then complaint and email_open 1 each (ties by name)"


def test_clashing_level_names_are_refused() -> None:
    config = FeatureConfig(windows=(30,), channels=["Web", "web "], event_types=[])
    with pytest.raises(DataContractError, match="'Web' and 'web ' both give column name 'web'"):
        build_features(hand_tables(ibis.duckdb.connect()), date(2024, 4, 1), config)


def test_end_dates_known_in_advance_give_days_to_end() -> None:
    config = CONFIG.model_copy(update={"subscription_end_known": True})
    out = run(build_features(hand_tables(ibis.duckdb.connect()), date(2024, 4, 1), config))
    days = out.set_index("customer_id").sub_days_to_end
    assert days["A"] == pytest.approx(9.0) and days["B"] == pytest.approx(19.0), "Apr 10, Apr 20"


def labels_in(mode: dict[str, Any], horizon: int = 30, **people: list[Any]) -> dict[str, int]:
    con = ibis.duckdb.connect()
    tables = hand_tables(con, **people)
    config = CONFIG.model_copy(update=mode)
    out = run(labelled_snapshot(tables, date(2024, 4, 1), config, horizon))
    return dict(zip(out.customer_id, out.churned.astype(int), strict=True))


def test_inactivity_labels_can_count_events_as_activity() -> None:
    assert labels_in({"label": "inactivity"}) == {"A": 0, "B": 1, "D": 1, "E": 1}
    assert labels_in({"label": "inactivity", "activity_event_types": ["email_open"]}) == {
        "A": 0,
        "B": 1,
        "D": 1,
        "E": 1,
    }, "B's email_open is before the cutoff"
    assert labels_in({"label": "inactivity"}, horizon=9) == {"A": 1, "B": 1, "D": 1, "E": 1}
    assert (
        labels_in({"label": "inactivity", "activity_event_types": ["login"]}, horizon=9)["A"] == 0
    ), "A logs in on 2024-04-02"


def test_contract_labels_follow_subscription_coverage() -> None:
    # A's plan ends Apr 10 but the premium plan started Apr 5: covered, no churn. B's ends Apr 20
    # with nothing after: churn. D lapsed before the cutoff and E never subscribed: not at risk.
    assert labels_in({"label": "contract", "grace_days": 30}) == {"A": 0, "B": 1}
    assert labels_in({"label": "contract"}, horizon=19) == {"A": 0, "B": 0}, "Apr 20 is day 19"


def test_contract_labels_from_churn_date_without_subscriptions() -> None:
    con = ibis.duckdb.connect()
    tables = hand_tables(con)
    del tables["subscriptions"]
    config = CONFIG.model_copy(update={"label": "contract"})
    out = run(labelled_snapshot(tables, date(2024, 4, 1), config, 30))
    labels = dict(zip(out.customer_id, out.churned.astype(int), strict=True))
    assert labels == {"A": 0, "B": 1, "E": 0}, "B leaves Apr 15; D left Feb 1: not at risk"


def test_column_labels_are_read_as_given() -> None:
    mode = {"label": "column", "label_column": "churn_flag"}
    labels = labels_in(mode, churn_flag=["Yes", "no", "1", None, "0"])
    assert labels == {"A": 1, "B": 0, "G": 0}, "D has no flag; E no customers row"
    con = ibis.duckdb.connect()
    tables = hand_tables(con, churn_flag=["Yes", "no", "1", None, "0"])
    config = CONFIG.model_copy(update=mode)
    features = build_features(tables, date(2024, 4, 1), config)
    assert "churn_flag" not in features.columns, "the label is never a feature"
    g = run(features).set_index("customer_id").loc["G"]
    assert pd.isna(g.tenure_days), "in a snapshot without dates G is known, since unknown"


def test_column_labels_need_the_column() -> None:
    config = CONFIG.model_copy(update={"label": "column", "label_column": "flag"})
    tables = hand_tables(ibis.duckdb.connect())
    with pytest.raises(DataContractError, match="label column 'flag' missing"):
        churn_labels(tables, tables["customers"], date(2024, 4, 1), config, 30)


def test_training_set_excludes_customers_not_yet_known() -> None:
    con = ibis.duckdb.connect()
    tables = {
        "transactions": con.create_table("tx", TX),
        "customers": con.create_table("cu", CUSTOMERS),
    }
    stacked = build_training_set(tables, [date(2024, 1, 15), date(2024, 4, 1)], CONFIG, 30)
    out = stacked.execute()
    out["cutoff"] = pd.to_datetime(out.snapshot_date).dt.strftime("%Y-%m-%d")
    by_cutoff = out.groupby("cutoff").customer_id.apply(sorted).to_dict()
    assert by_cutoff == {"2024-01-15": ["A"], "2024-04-01": ["A", "B", "D"]}
    first = out[out.cutoff == "2024-01-15"].set_index("customer_id").loc["A"]
    assert first.frequency == 1 and first.churned == 0, "o2 on Feb 1 is inside [Jan 15, Feb 14)"


def test_training_set_columns_do_not_depend_on_the_cutoff() -> None:
    tables = hand_tables(ibis.duckdb.connect())
    config = FeatureConfig(windows=(30,))  # levels resolved from the data
    stacked = build_training_set(tables, [date(2024, 2, 1), date(2024, 4, 1)], config, 30)
    cols = stacked.columns
    assert "channel_share_app" in cols, "app first appears in March, after the early cutoff"
    assert "events_complaint_30d" in cols
    out = stacked.execute()
    early = out[pd.to_datetime(out.snapshot_date) == pd.Timestamp("2024-02-01")]
    assert (early.channel_share_app == 0).all()


def test_lines_without_order_id_form_one_order_per_timestamp() -> None:
    tx = transactions(
        [
            (None, "F", "2024-03-01 10:00", 5.0, False),
            (None, "F", "2024-03-01 10:00", 7.0, False),  # same moment: the same order
            (None, "F", "2024-03-02 10:00", 4.0, False),
        ]
    )
    out = run(rfm_features(ibis.duckdb.connect().create_table("tx", tx), None, date(2024, 4, 1)))
    f = out.set_index("customer_id").loc["F"]
    assert f.frequency == 2 and f.monetary_max == pytest.approx(12.0)


def test_feature_config_refuses_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="ascending, distinct"):
        FeatureConfig(windows=(90, 30))
    with pytest.raises(ValueError, match="label 'column' needs label_column"):
        FeatureConfig(label="column")
    assert load_config(environ={}).features == FeatureConfig(), "default.yaml spells the defaults"


def test_an_unflagged_line_is_a_return_when_its_amount_is_negative() -> None:
    tx = TX.assign(is_return=pd.Series([None] * len(TX), dtype="boolean"))
    con = ibis.duckdb.connect()
    flagged = run(rfm_features(con.create_table("a", TX), None, date(2024, 4, 1)))
    unflagged = run(rfm_features(con.create_table("b", tx), None, date(2024, 4, 1)))
    pd.testing.assert_frame_equal(flagged, unflagged)
    assert flagged.set_index("customer_id").loc["A"].return_rate == pytest.approx(1 / 3)
