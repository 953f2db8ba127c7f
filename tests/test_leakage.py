"""Point-in-time guards: features never read data on or after the cutoff; labels read only
their label window."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import ibis
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnseg.features.build import build_features
from churnseg.features.labels import contract_rule, inactivity_labels
from churnseg.pipelines.config import FeatureConfig
from tests.helpers import run

CUTOFF = datetime(2024, 6, 1)
HORIZON = 30
GRACE = 10
START, END = datetime(2023, 6, 1), datetime(2024, 10, 1)
IDS = ["A", "B", "C", "D"]
# Levels are resolved from the data (most frequent before the cutoff), so the guard covers that.
CONFIG = FeatureConfig(windows=(30, 90), max_levels=2, channels=None, event_types=None)
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stamps(lo: datetime, hi: datetime) -> st.SearchStrategy[datetime]:
    return st.datetimes(min_value=lo, max_value=hi - timedelta(seconds=1)).map(
        lambda d: d.replace(microsecond=0)
    )


def line(lo: datetime, hi: datetime) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(
        st.sampled_from(["o1", "o2", "o3", "o4", "o5", "o6"]),
        st.sampled_from(IDS),
        stamps(lo, hi),
        st.floats(-50, 500, allow_nan=False).filter(lambda v: abs(v) > 0.01),
        st.none() | st.integers(1, 4),
        st.none() | st.sampled_from(["grocery", "books", "toys"]),
        st.sampled_from(["web", "app", "store"]),
    )


def event(lo: datetime, hi: datetime) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(
        st.sampled_from(IDS),
        stamps(lo, hi),
        st.sampled_from(["login", "complaint", "email_open"]),
        st.none() | st.floats(0, 10, allow_nan=False),
    )


def subscription(lo: datetime, hi: datetime) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(
        st.sampled_from(IDS),
        stamps(lo, hi),
        st.none() | st.integers(1, 400),  # days until the end, or still open
        st.sampled_from(["basic", "plus", "premium"]),
        st.sampled_from([9.99, 19.99, 39.99]),
    )


def _ts(values: list[Any]) -> pd.Series:
    return pd.Series(pd.to_datetime(pd.Series(values, dtype="object"))).astype("datetime64[us]")


def frames(
    lines: list[tuple[Any, ...]],
    events: list[tuple[Any, ...]],
    subs: list[tuple[Any, ...]],
    churn_days: list[int | None],
) -> dict[str, pd.DataFrame]:
    tx = pd.DataFrame(
        lines,
        columns=[
            "order_id",
            "customer_id",
            "timestamp",
            "amount",
            "quantity",
            "category",
            "channel",
        ],
    )
    tx["timestamp"] = _ts(list(tx.timestamp))
    tx["amount"] = tx["amount"].astype("float64")
    tx["quantity"] = tx["quantity"].astype("Int64")
    tx["is_return"] = tx["amount"] < 0
    for col in ("order_id", "customer_id", "category", "channel"):
        tx[col] = tx[col].astype("string")
    ev = pd.DataFrame(events, columns=["customer_id", "timestamp", "event_type", "value"])
    ev["timestamp"] = _ts(list(ev.timestamp))
    ev["value"] = ev["value"].astype("float64")
    for col in ("customer_id", "event_type"):
        ev[col] = ev[col].astype("string")
    rows = [(c, s, None if d is None else s + timedelta(days=d), p, r) for c, s, d, p, r in subs]
    su = pd.DataFrame(
        rows, columns=["customer_id", "start_date", "end_date", "plan", "recurring_revenue"]
    )
    su["start_date"] = _ts(list(su.start_date))
    su["end_date"] = _ts(list(su.end_date))
    su["recurring_revenue"] = su["recurring_revenue"].astype("float64")
    for col in ("customer_id", "plan"):
        su[col] = su[col].astype("string")
    cu = pd.DataFrame(
        {
            "customer_id": pd.Series(IDS, dtype="string"),
            "signup_date": _ts(["2023-05-01", "2024-02-01", "2024-07-01", None]),
            "region": pd.Series(["north", "south", "east", None], dtype="string"),
            # churn_date is future information: it may change freely without touching features
            "churn_date": _ts(
                [None if d is None else CUTOFF + timedelta(days=d) for d in churn_days]
            ),
        }
    )
    return {"transactions": tx, "events": ev, "subscriptions": su, "customers": cu}


def features(data: dict[str, pd.DataFrame]) -> pd.DataFrame:
    con = ibis.duckdb.connect()
    tables = {name: con.create_table(name, frame) for name, frame in data.items()}
    return run(build_features(tables, CUTOFF, CONFIG))


past_lines = st.lists(line(START, CUTOFF), max_size=12)
future_lines = st.lists(line(CUTOFF, END), max_size=6)
past_events = st.lists(event(START, CUTOFF), max_size=10)
future_events = st.lists(event(CUTOFF, END), max_size=6)
past_subs = st.lists(subscription(START, CUTOFF), max_size=4)
future_subs = st.lists(subscription(CUTOFF, END), max_size=3)
churn = st.lists(st.none() | st.integers(-300, 300), min_size=4, max_size=4)
# Days after the cutoff an open subscription ends: often soon after it, where a leak would show.
open_end = st.none() | st.sampled_from([0, 1, 7, 30]) | st.integers(0, 300)


def reopen(subs: list[tuple[Any, ...]], ends: list[int | None]) -> list[tuple[Any, ...]]:
    """Give every subscription still open at the cutoff another end on or after it (or none)."""
    out = []
    for (c, s, d, p, r), e in zip(subs, ends, strict=True):
        ended = d is not None and s + timedelta(days=d) < CUTOFF
        if ended:
            out.append((c, s, d, p, r))
        else:
            out.append((c, s, None if e is None else (CUTOFF - s).days + 1 + e, p, r))
    return out


@SETTINGS
@given(
    lines=past_lines,
    lines_a=future_lines,
    lines_b=future_lines,
    events=past_events,
    events_a=future_events,
    events_b=future_events,
    subs=past_subs,
    subs_a=future_subs,
    subs_b=future_subs,
    ends=st.lists(open_end, min_size=4, max_size=4),
    churn_a=churn,
    churn_b=churn,
)
def test_features_ignore_everything_on_or_after_the_cutoff(
    lines: list[Any],
    lines_a: list[Any],
    lines_b: list[Any],
    events: list[Any],
    events_a: list[Any],
    events_b: list[Any],
    subs: list[Any],
    subs_a: list[Any],
    subs_b: list[Any],
    ends: list[int | None],
    churn_a: list[int | None],
    churn_b: list[int | None],
) -> None:
    # Two worlds with the same past: future rows added, deleted or changed in every table,
    # open subscriptions ending at other times after the cutoff, churn dates anywhere.
    world_a = frames(lines + lines_a, events + events_a, subs + subs_a, churn_a)
    world_b = frames(
        lines_b + lines, events_b + events, reopen(subs, ends[: len(subs)]) + subs_b, churn_b
    )
    pd.testing.assert_frame_equal(features(world_a), features(world_b))


def window_lines(lo: datetime, hi: datetime) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    return st.lists(line(lo, hi), max_size=6)


LABEL_END = CUTOFF + timedelta(days=HORIZON)


@SETTINGS
@given(
    inside=window_lines(CUTOFF, LABEL_END),
    before_a=window_lines(START, CUTOFF),
    before_b=window_lines(START, CUTOFF),
    after_a=window_lines(LABEL_END, END),
    after_b=window_lines(LABEL_END, END),
    logins=st.lists(event(CUTOFF, LABEL_END), max_size=4),
    other_a=st.lists(event(START, END), max_size=4),
    other_b=st.lists(event(START, END), max_size=4),
)
def test_inactivity_labels_read_the_horizon_window_only(
    inside: list[Any],
    before_a: list[Any],
    before_b: list[Any],
    after_a: list[Any],
    after_b: list[Any],
    logins: list[Any],
    other_a: list[Any],
    other_b: list[Any],
) -> None:
    def labels(lines: list[Any], events: list[Any]) -> pd.DataFrame:
        data = frames(lines, events, [], [None] * 4)
        con = ibis.duckdb.connect()
        tx = con.create_table("tx", data["transactions"])
        ev = con.create_table("ev", data["events"])
        population = con.create_table("pop", data["customers"][["customer_id"]])
        return run(inactivity_labels(tx, population, CUTOFF, HORIZON, ev, ["login"]))

    def outside(events: list[Any]) -> list[Any]:
        # events that are not logins inside the window can change freely
        return [e for e in events if e[2] != "login" or not CUTOFF <= e[1] < LABEL_END]

    base = labels(before_a + inside + after_a, logins + outside(other_a))
    other = labels(after_b + inside + before_b, outside(other_b) + logins)
    pd.testing.assert_frame_equal(base, other)


@SETTINGS
@given(
    relevant=st.lists(subscription(START, LABEL_END + timedelta(days=GRACE)), max_size=5),
    noise_a=st.lists(subscription(START, END), max_size=4),
    noise_b=st.lists(subscription(START, END), max_size=4),
    lines_a=window_lines(START, END),
    lines_b=window_lines(START, END),
)
def test_contract_labels_read_coverage_in_the_label_window_only(
    relevant: list[Any],
    noise_a: list[Any],
    noise_b: list[Any],
    lines_a: list[Any],
    lines_b: list[Any],
) -> None:
    last = LABEL_END + timedelta(days=GRACE)

    def irrelevant(subs: list[Any]) -> list[Any]:
        # ended before the cutoff, or started after the label window and its grace gap
        ends = [(c, s, d, p, r) for c, s, d, p, r in subs if d is not None]
        return [x for x in ends if x[1] + timedelta(days=x[2]) < CUTOFF] + [
            x for x in subs if x[1] >= last
        ]

    def labels(subs: list[Any], lines: list[Any]) -> pd.DataFrame:
        data = frames(lines, [], subs, [None] * 4)
        con = ibis.duckdb.connect()
        su = con.create_table("su", data["subscriptions"])
        population = con.create_table("pop", data["customers"][["customer_id"]])
        return run(contract_rule(su, CUTOFF, HORIZON, GRACE).attach(population))

    relevant = [x for x in relevant if x not in irrelevant([x])]
    pd.testing.assert_frame_equal(
        labels(relevant + irrelevant(noise_a), lines_a),
        labels(irrelevant(noise_b) + relevant, lines_b),
    )
