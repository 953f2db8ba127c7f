"""A history prepared once gives every cutoff the rows and features a build from lines gives."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import ibis
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from churnseg.features.behaviour import orders_before, purchase_days
from churnseg.features.build import build_features, resolve_levels
from churnseg.features.history import prepare_history
from churnseg.features.settings import FeatureConfig
from churnseg.pipelines.sample import SampleSpec, generate_sample
from tests.helpers import transactions

LATEST = date(2024, 7, 1)
# The latest cutoff, one a day before, whole horizons before, and one that is not a midnight.
CUTOFFS = [LATEST, LATEST - timedelta(days=1), LATEST - timedelta(days=90), date(2024, 1, 3)]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


# Moments that sit on the edges: the cutoffs' own midnights, a microsecond either side, and
# the middle of their days; orders drawn from few ids so that some span several moments.
_EDGES = [datetime.combine(c, datetime.min.time()) for c in CUTOFFS]
_MOMENTS = [m + d for m in _EDGES for d in (timedelta(0), timedelta(microseconds=1))]
_MOMENTS += [m - timedelta(microseconds=1) for m in _EDGES]
_MOMENTS += [m - timedelta(hours=12) for m in _EDGES] + [m - timedelta(days=40) for m in _EDGES]
_LINE = st.tuples(
    st.sampled_from(["o1", "o2", "o3", None]),
    st.sampled_from(["a", "b"]),
    st.sampled_from(_MOMENTS),
    st.sampled_from([-5.25, 0.0, 3.1, 10.0, 99.99]),
    st.booleans(),
)


# Every edge at once: an order straddling the latest cutoff and one straddling a day before it,
# loose lines at a cutoff's midnight and a microsecond before, a day holding both a midnight
# line and later lines, a return-only order.
_EDGE_CASE = [
    ("o1", "a", _EDGES[0] - timedelta(hours=12), 10.0, False),
    ("o1", "a", _EDGES[0], 3.1, False),
    ("o2", "a", _EDGES[1] - timedelta(microseconds=1), 99.99, False),
    ("o2", "a", _EDGES[1] + timedelta(microseconds=1), -5.25, True),
    (None, "b", _EDGES[1], 3.1, False),
    (None, "b", _EDGES[1] - timedelta(microseconds=1), 10.0, False),
    (None, "b", _EDGES[2], 0.0, False),
    ("o3", "b", _EDGES[2] + timedelta(hours=12), 3.1, False),
    ("o1", "b", _EDGES[3] - timedelta(days=40), -5.25, True),
]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(_EDGE_CASE)
@given(st.lists(_LINE, min_size=1, max_size=14))
def test_history_cuts_orders_and_purchase_days_as_the_lines_do(
    lines: list[tuple[object, ...]],
) -> None:
    frame = transactions(lines)
    frame.loc[frame.amount < 0, "is_return"] = True
    tx = ibis.duckdb.connect().create_table("tx", frame)
    history = prepare_history(tx, LATEST)
    for cutoff in CUTOFFS[:3]:
        assert history.serves(cutoff)
        want = _sorted(orders_before(tx, cutoff).execute())
        got = _sorted(history.orders_before(cutoff).execute())
        pd.testing.assert_frame_equal(got, want, check_exact=True, check_dtype=False)
        want = _sorted(purchase_days(tx, cutoff).execute())
        got = _sorted(history.purchase_days(cutoff).execute())
        pd.testing.assert_frame_equal(got, want, check_exact=True, check_dtype=False)


def test_history_serves_only_whole_days_up_to_its_latest_cutoff() -> None:
    tx = ibis.duckdb.connect().create_table("tx", transactions([("o1", "a", "2024-01-01", 1.0, 0)]))
    history = prepare_history(tx, LATEST)
    assert history.serves(LATEST - timedelta(days=400))
    assert not history.serves(LATEST + timedelta(days=1))
    assert not history.serves(datetime(2024, 6, 1, 12))
    with pytest.raises(ValueError, match="midnight"):
        prepare_history(tx, datetime(2024, 6, 1, 12))
    with pytest.raises(ValueError, match="not a midnight"):
        history.orders_before(datetime(2024, 6, 1, 12))


def test_feature_tables_from_a_prepared_history_equal_those_from_lines() -> None:
    """The whole feature table of the generator's sample, at a retrain's cutoffs, cell for cell."""
    con = ibis.duckdb.connect()
    sample = generate_sample(SampleSpec(customers=300, seed=5, dirty_fraction=0.0))
    names = ("customers", "transactions", "events", "subscriptions")
    tables = {n: con.create_table(n, sample[n]) for n in names}
    scoring = tables["transactions"].timestamp.max().execute().date() + timedelta(days=1)
    cutoffs = [scoring - timedelta(days=90 * i) for i in range(3)]
    config = resolve_levels(tables, scoring, FeatureConfig())
    # Materialised, as the feature stage does: the point of preparing it.
    history = prepare_history(
        tables["transactions"],
        scoring,
        lambda name, expr: con.create_table(f"h_{name}", expr.to_pyarrow()),
    )
    for cutoff in cutoffs:
        want = build_features(tables, cutoff, config).execute()
        got = build_features(tables, cutoff, config, history=history).execute()
        assert len(want) > 100
        pd.testing.assert_frame_equal(
            got.sort_values("customer_id").reset_index(drop=True),
            want.sort_values("customer_id").reset_index(drop=True),
            check_exact=True,
        )
