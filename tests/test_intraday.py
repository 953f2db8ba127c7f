"""Intra-day updates: which customers change, and that an update equals a full build for them."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from churnseg.pipelines.config import load_config
from churnseg.pipelines.keyed_files import KeyedSources
from churnseg.pipelines.publish import append_rows, target_from_config
from churnseg.pipelines.sinks.schema import CUSTOMER_FEEDBACK
from churnseg.pipelines.stages import RunPaths, configure_mlflow
from churnseg.pipelines.stages.intraday import load_rescorer, rescore_stage
from churnseg.pipelines.stages.run_folder import CLEAN_ORDER
from churnseg.pipelines.warm_engine import connect_warm
from tests.conftest import copy_state


def read(config_path: Path, sql: str) -> pd.DataFrame:
    state = yaml.safe_load(config_path.read_text())["state_dir"]
    with sqlite3.connect(Path(state) / "scores.db") as con:
        return pd.read_sql(sql, con)


@pytest.fixture(scope="module")
def published(
    trained_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, date]:
    """A copy of the trained sample state: the config, the data folder, the snapshot."""
    path = copy_state(trained_state, tmp_path_factory.mktemp("intraday") / "state")
    snapshot = read(path, "SELECT MAX(snapshot_date) AS s FROM customer_scores")["s"].iloc[0]
    return path, path.parent / "data", date.fromisoformat(snapshot)


def add_rows(data: Path, table: str, rows: list[dict[str, object]]) -> None:
    frame = pd.read_parquet(data / f"{table}.parquet")
    extra = pd.DataFrame(rows).astype({c: frame[c].dtype for c in rows[0]})
    pd.concat([frame, extra], ignore_index=True).to_parquet(data / f"{table}.parquet")


@pytest.fixture(scope="module")
def updated(
    published: tuple[Path, Path, date],
) -> tuple[Path, dict[str, object], set[str], datetime, pd.DataFrame]:
    """New rows after the snapshot for a few customers, a new customer, then score --changed.

    Returns the config, the update's summary, the customers that changed, the update's moment
    and the published rows before the update.
    """
    from churnseg.pipelines.flows import score_changed_flow

    path, data, snapshot = published
    before = read(path, "SELECT * FROM customer_scores")
    start = datetime.combine(snapshot, datetime.min.time())
    customers = pd.read_parquet(data / "customers.parquet")
    known = set(customers["customer_id"].dropna())
    transactions = pd.read_parquet(data / "transactions.parquet")
    clean = transactions[
        transactions["customer_id"].isin(known)
        & transactions["amount"].between(1, 1000)
        & ~transactions["is_return"].astype(bool)
    ]
    buyers = sorted(clean["customer_id"].unique())[:4]
    template = clean.iloc[0].to_dict()
    new_orders = [
        {**template, "order_id": f"N{i}", "customer_id": c, "timestamp": start + timedelta(days=i)}
        for i, c in enumerate(buyers, start=1)
    ]
    events = pd.read_parquet(data / "events.parquet")
    good_events = events[events["customer_id"].isin(known)]
    loggers = sorted(set(good_events["customer_id"]) - set(buyers))[:2]
    event = good_events.iloc[0].to_dict()
    new_events = [
        {**event, "customer_id": c, "timestamp": start + timedelta(hours=30)} for c in loggers
    ]
    newcomer = {**customers.iloc[0].to_dict(), "customer_id": "NEW-1"}
    newcomer |= {"signup_date": start + timedelta(days=2), "churn_date": pd.NaT}
    add_rows(data, "transactions", new_orders)
    add_rows(data, "events", new_events)
    add_rows(data, "customers", [newcomer])
    # A row after the update's moment, and one before the snapshot: neither is a change.
    late = {**template, "order_id": "LATE", "customer_id": loggers[0]}
    add_rows(data, "transactions", [late | {"timestamp": start + timedelta(days=30)}])
    old = sorted(known - set(buyers) - set(loggers))[-1]
    add_rows(data, "transactions", [{**template, "order_id": "OLD", "customer_id": old}])
    as_of = start + timedelta(days=6, hours=12)
    summary = score_changed_flow(config_path=str(path), as_of=as_of.isoformat())
    changed = {*buyers, *loggers, "NEW-1"}
    return path, summary, changed, as_of, before


def test_the_update_rescores_exactly_the_customers_with_newer_rows(
    updated: tuple[Path, dict[str, object], set[str], datetime, pd.DataFrame],
) -> None:
    path, summary, changed, as_of, before = updated
    assert summary["customers_changed"] == len(changed) == summary["rows_published"], summary
    after = read(path, "SELECT * FROM customer_scores")
    intraday = after[after["update_kind"] == "intraday"]
    assert set(intraday["customer_id"]) == changed
    assert set(intraday["snapshot_date"]) == {summary["snapshot"]}, "updates stay in the snapshot"
    assert set(intraday["features_as_of"]) == {as_of.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert len(after) == len(before) + 1, "one new customer, everyone else replaced in place"
    untouched = after[after["update_kind"] == "snapshot"].set_index("customer_id")
    kept = before.set_index("customer_id").loc[untouched.index]
    pd.testing.assert_frame_equal(untouched, kept, check_like=True)
    # The buyers bought after the snapshot: their recency fell, and so did their churn risk.
    old = before.set_index("customer_id")["churn_probability"]
    new = intraday.set_index("customer_id")["churn_probability"]
    buyers = sorted(changed - {"NEW-1"})[:4]
    assert (new.loc[buyers] != old.loc[buyers]).all()
    runs = read(path, "SELECT * FROM pipeline_runs WHERE flow = 'score-changed'")
    assert runs[["status", "snapshot_date", "rows_published"]].values.tolist() == [
        ["succeeded", summary["snapshot"], len(changed)]
    ]


def test_an_update_equals_a_full_build_of_every_customer_at_the_same_moment(
    updated: tuple[Path, dict[str, object], set[str], datetime, pd.DataFrame],
) -> None:
    path, _, changed, as_of, _ = updated
    config = load_config(str(path))
    configure_mlflow(config)
    target = target_from_config(config)
    full = RunPaths(config.state_dir / "runs" / "full-build")
    scores = rescore_stage(config, target, load_rescorer(config, target), None, as_of, full, "x")
    assert scores is not None
    everyone = pd.read_parquet(scores).set_index("customer_id")
    assert len(everyone) > 10 * len(changed), "the reference scored every customer"
    published = read(path, "SELECT * FROM customer_scores WHERE update_kind = 'intraday'")
    published = published.set_index("customer_id").sort_index()
    reference = everyone.loc[published.index]
    for column in ["segment_id", "segment_name", "value_tier", "lifecycle_stage", "risk_band"]:
        assert list(published[column]) == list(reference[column]), column
    assert list(published["top_reasons"].fillna("")) == list(reference["top_reasons"].fillna(""))
    for column in ["churn_probability", "expected_value", "value_at_risk"]:
        assert published[column].to_numpy() == pytest.approx(
            reference[column].to_numpy(), rel=1e-12, nan_ok=True
        ), column


def test_the_api_s_fast_paths_give_the_scores_a_plain_rescore_gives(
    updated: tuple[Path, dict[str, object], set[str], datetime, pd.DataFrame],
) -> None:
    """Keyed copies of the sources and a warm connection (queries compiled once, the scoring
    query filled in with each cutoff) change nothing in what is published, run after run."""
    path, _, changed, as_of, _ = updated
    config = load_config(str(path))
    configure_mlflow(config)
    target = target_from_config(config)
    rescorer = load_rescorer(config, target)
    data = path.parent / "data"
    transactions = pd.read_parquet(data / "transactions.parquet")
    # Customers with a quarantined row (a NaN amount, a duplicate) besides the changed ones.
    dirty = transactions[transactions["amount"].isna() | transactions.duplicated(keep=False)]
    customers = sorted(changed | set(dirty["customer_id"].dropna().head(20)))
    keyed = KeyedSources(config, CLEAN_ORDER)
    warm = connect_warm(config.engine)

    def rescore(kind: str, moment: datetime, **fast: object) -> pd.DataFrame:
        paths = RunPaths(config.state_dir / "runs" / f"rescore-{kind}")
        out = rescore_stage(config, target, rescorer, customers, moment, paths, kind, **fast)  # type: ignore[arg-type]
        assert out is not None
        return pd.read_parquet(out).drop(columns=["run_id", "scored_at"])

    # Three moments: the second and third fill the warm connection's scoring template.
    for moment in (as_of, as_of + timedelta(hours=5, seconds=17), as_of + timedelta(days=40)):
        plain = rescore("plain", moment)
        assert len(plain) == len(customers)
        pd.testing.assert_frame_equal(rescore("keyed", moment, keyed=keyed), plain)
        pd.testing.assert_frame_equal(rescore("warm", moment, keyed=keyed, con=warm), plain)
    assert any(sql is not None for sql, _ in warm._templates.values()), "a template was used"
    warm.disconnect()


def test_the_update_refreshes_the_classes_copied_into_the_allocation(
    updated: tuple[Path, dict[str, object], set[str], datetime, pd.DataFrame],
) -> None:
    path, _, changed, _, _ = updated
    rows = read(
        path,
        "SELECT a.customer_id, a.churn_probability AS copied, s.churn_probability AS scored, "
        "a.risk_band AS copied_band, s.risk_band AS band FROM customer_assignments a "
        "JOIN customer_scores s USING (snapshot_date, customer_id) "
        "WHERE s.update_kind = 'intraday'",
    )
    assert set(rows["customer_id"]) == changed - {"NEW-1"}, "a new customer has no owner yet"
    assert (rows["copied"] == rows["scored"]).all() and (rows["copied_band"] == rows["band"]).all()


def test_a_correction_overrides_the_class_on_the_next_update(
    updated: tuple[Path, dict[str, object], set[str], datetime, pd.DataFrame],
) -> None:
    from churnseg.pipelines.flows import score_changed_flow

    path, _, changed, as_of, _ = updated
    config = load_config(str(path))
    customer = sorted(changed - {"NEW-1"})[0]
    tier = read(
        path, f"SELECT value_tier FROM customer_scores_latest WHERE customer_id = '{customer}'"
    )
    wanted = "A" if tier["value_tier"].iloc[0] != "A" else "B"
    feedback = {
        "kind": "correction",
        "customer_id": customer,
        "author": "test",
        "field": "value_tier",
        "value": wanted,
        "reason": "signed a framework contract",
    }
    at = datetime(2026, 1, 1)
    append_rows(
        target_from_config(config),
        CUSTOMER_FEEDBACK,
        [feedback | {"feedback_id": "f1", "received_at": at}],
    )
    score_changed_flow(config_path=str(path), as_of=as_of.isoformat())
    latest = read(
        path, f"SELECT value_tier FROM customer_scores_latest WHERE customer_id = '{customer}'"
    )
    assert latest["value_tier"].iloc[0] == wanted


def test_score_changed_without_a_published_snapshot_is_a_usage_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from churnseg.pipelines.cli import app

    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "sources": {"transactions": {"path": str(tmp_path / "t.parquet")}},
            }
        )
    )
    result = CliRunner().invoke(app, ["score", "-c", str(path), "--changed"])
    assert result.exit_code == 2, result.output
    assert "no published snapshot" in result.output
    result = CliRunner().invoke(app, ["score", "-c", str(path), "--changed", "--as-of", "soon"])
    assert result.exit_code == 2 and "not an ISO date-time" in result.output, result.output


def test_the_monitor_counts_corrections_and_those_not_published_yet(
    updated: tuple[Path, dict[str, object], set[str], datetime, pd.DataFrame],
) -> None:
    from churnseg.pipelines.flows import monitor_flow

    path, _, _, _, _ = updated
    config = load_config(str(path))
    row = read(path, "SELECT customer_id, lifecycle_stage FROM customer_scores_latest LIMIT 1")
    wanted = "growing" if row["lifecycle_stage"].iloc[0] != "growing" else "stable"
    feedback = {
        "feedback_id": "f-lifecycle",
        "received_at": datetime(2026, 1, 2),
        "kind": "correction",
        "customer_id": row["customer_id"].iloc[0],
        "author": "test",
        "field": "lifecycle_stage",
        "value": wanted,
        "reason": "ordered again by phone",
    }
    append_rows(target_from_config(config), CUSTOMER_FEEDBACK, [feedback])
    summary = monitor_flow(config_path=str(path))
    lifecycle = [c for c in summary["corrections"] if c["field"] == "lifecycle_stage"]
    assert lifecycle == [{"field": "lifecycle_stage", "corrected": 1, "pending": 1}], summary
