"""Allocation wired in: owners' cleaning, the score flow and ``churnseg assign``, row security."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pytest
import yaml

from churnseg.features import cleaning as c
from churnseg.features.contract import ASSIGNMENTS, OWNERS
from churnseg.pipelines.publish import AllocationFiles, PublishTarget, publish_scores
from tests.conftest import copy_state
from tests.test_publish import PG_URL, drop_schema, postgres_reason

RULES = c.CleaningRules(min_date=date(2020, 1, 1), now=datetime(2025, 1, 1))


def tagged(
    name: str, frame: pd.DataFrame, known: list[str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Clean a raw frame as the clean stage does; return (clean, quarantined) by source row."""
    con = ibis.duckdb.connect()
    frame = frame.assign(_row=np.arange(len(frame), dtype="int64"))
    contract = {"owners": OWNERS, "assignments": ASSIGNMENTS}[name]
    conformed = c.conform(con.create_table("raw", frame), contract, {})
    ids = con.create_table("ids", pd.DataFrame({"customer_id": known})) if known else None
    result = c.split_tagged(name, c.tag_table(name, conformed, ids, RULES), RULES)
    return (
        result.clean.execute().sort_values("_row").reset_index(drop=True),
        result.quarantine.execute().sort_values("_row").reset_index(drop=True),
    )


def test_owner_rows_without_an_id_or_a_usable_capacity_are_quarantined() -> None:
    raw = pd.DataFrame(
        {
            "owner_id": ["o1", None, "o2", "o3", "o3", "o4"],
            "regions": ["North;South", "north", "east", "west", "west", "x"],
            "capacity": ["10", "5", "-1", "7", "7", "many"],
        }
    )
    kept, quarantined = tagged("owners", raw)
    assert list(kept["owner_id"]) == ["o1", "o3"]
    assert kept.loc[0, "regions"] == "north;south", "regions are folded to lower case"
    assert dict(zip(quarantined["_row"], quarantined["reason"], strict=True)) == {
        1: c.NULL_OWNER_ID,
        2: c.BAD_CAPACITY,
        4: c.DUPLICATE_ROW,
        5: c.BAD_CAPACITY,
    }


def test_owner_ids_repeating_with_different_values_stop_the_run_with_one_line() -> None:
    raw = pd.DataFrame({"owner_id": ["o1", "o1", "o2"], "capacity": ["10", "20", "5"]})
    kept, _ = tagged("owners", raw)
    with pytest.raises(c.DataContractError) as caught:
        c.check_unique_owners(ibis.memtable(kept))
    message = str(caught.value)
    assert "table 'owners': column 'owner_id'" in message and "2 rows" in message, message
    assert "\n" not in message


def test_the_latest_crm_assignment_of_a_customer_wins() -> None:
    raw = pd.DataFrame(
        {
            "customer_id": ["a", "a", "b", "zz", "c"],
            "owner_id": ["o1", "o2", "o1", "o1", None],
            "since": ["2024-01-01", "2024-06-01", "2024-01-01", "2024-01-01", "2024-01-01"],
        }
    )
    kept, quarantined = tagged("assignments", raw, known=["a", "b", "c"])
    assert dict(zip(kept["customer_id"], kept["owner_id"], strict=True)) == {"a": "o2", "b": "o1"}
    assert dict(zip(quarantined["_row"], quarantined["reason"], strict=True)) == {
        0: c.SUPERSEDED_ASSIGNMENT,
        3: c.UNKNOWN_CUSTOMER,
        4: c.NULL_OWNER_ID,
    }


@pytest.fixture(scope="module")
def allocated(
    trained_run: tuple[Path, dict[str, object]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, object]]:
    """A copy of the shared retrain's state (allocation on, as the default config), its summary.

    The tests below publish into the copy; the summary's run folder stays the shared one's.
    """
    state, summary = trained_run
    return copy_state(state, tmp_path_factory.mktemp("alloc") / "state"), summary


def read(config_path: Path, sql: str) -> pd.DataFrame:
    state = yaml.safe_load(config_path.read_text())["state_dir"]
    with sqlite3.connect(Path(state) / "scores.db") as con:
        return pd.read_sql(sql, con)


def test_the_score_flow_publishes_an_owner_for_every_scored_customer_within_capacity(
    allocated: tuple[Path, dict[str, object]], small_sample: Path
) -> None:
    path, summary = allocated
    scores = read(path, "SELECT customer_id FROM customer_scores_latest")
    assignments = read(path, "SELECT * FROM customer_assignments")
    assert sorted(assignments["customer_id"]) == sorted(scores["customer_id"]), "one row each"
    workload = read(path, "SELECT * FROM owner_workload")
    assert (workload["accounts"] <= workload["capacity"]).all(), workload
    owners = pd.read_parquet(small_sample / "owners.parquet")
    gone = owners.loc[~owners["active"], "owner_id"]
    assert not assignments["owner_id"].isin(gone).any(), "an inactive owner kept customers"
    held = assignments[assignments["previous_owner_id"].isin(gone)]
    assert len(held) and set(held["reason"]) == {"owner_inactive"}, held["reason"].value_counts()
    allocation = summary["allocation"]
    assert isinstance(allocation, dict)
    assert allocation["moves_for_rules"] <= allocation["budget"], allocation
    assert allocation["current_from"] == "assignments"
    contacts = read(path, "SELECT * FROM owner_contact_list")
    high = assignments[(assignments["risk_band"] == "high") & assignments["owner_id"].notna()]
    assert len(contacts) == len(high) > 0
    first = contacts.sort_values(["owner_id", "contact_rank"]).groupby("owner_id").head(2)
    for _, pair in first.groupby("owner_id"):
        assert list(pair["value_at_risk"]) == sorted(pair["value_at_risk"], reverse=True)


def test_scoring_a_given_table_outside_its_run_folder_fails_before_scoring(
    allocated: tuple[Path, dict[str, object]],
) -> None:
    """Allocation reads the owners the building run cleaned: without its folder, say so first."""
    from churnseg.pipelines.flows import score_flow
    from churnseg.pipelines.stages.allocating import AllocationUnavailableError

    path, summary = allocated
    features = Path(str(summary["run_folder"])) / "features" / "scoring.parquet"
    runs = read(path, "SELECT count(*) AS n FROM pipeline_runs")["n"].iloc[0]
    with pytest.raises(AllocationUnavailableError, match="pass its run_folder"):
        score_flow(config_path=str(path), features_path=str(features))
    assert read(path, "SELECT count(*) AS n FROM pipeline_runs")["n"].iloc[0] == runs, "no run"


def test_assign_moves_the_customers_of_an_owner_who_left_and_keeps_the_rest(
    allocated: tuple[Path, dict[str, object]], small_sample: Path, tmp_path: Path
) -> None:
    from churnseg.pipelines.flows import assign_flow

    path, _ = allocated
    before = read(path, "SELECT customer_id, owner_id FROM customer_assignments")
    owners = pd.read_parquet(small_sample / "owners.parquet")
    leaving = str(before["owner_id"].value_counts().index[0])
    owners.loc[owners["owner_id"] == leaving, "active"] = False
    owners.to_parquet(tmp_path / "owners.parquet")
    crm = before.dropna()  # the CRM now holds the published allocation
    crm.to_parquet(tmp_path / "assignments.parquet")
    config = yaml.safe_load(path.read_text())
    config["sources"]["owners"] = {"path": str(tmp_path / "owners.parquet")}
    config["sources"]["assignments"] = {"path": str(tmp_path / "assignments.parquet")}
    changed = tmp_path / "config.yaml"
    changed.write_text(yaml.safe_dump(config))
    summary = assign_flow(config_path=str(changed))
    after = read(path, "SELECT * FROM customer_assignments").set_index("customer_id")
    theirs = crm.loc[crm["owner_id"] == leaving, "customer_id"]
    assert (after.loc[theirs, "owner_id"] != leaving).all()
    assert set(after.loc[theirs, "reason"]) <= {"owner_inactive", "no_capacity"}
    # Everyone else keeps their owner, except moves within the budget and customers displaced
    # by more valuable ones once capacity ran short (this small book loses a fifth of it).
    others = crm.loc[crm["owner_id"] != leaving].set_index("customer_id")["owner_id"]
    now = after.loc[others.index]
    moved = now["owner_id"].notna() & (now["owner_id"] != others)
    allocation = summary["allocation"]
    assert moved.sum() <= allocation["budget"], now[moved]
    displaced = now["owner_id"].isna()
    assert set(now.loc[displaced, "reason"]) <= {"no_capacity"}
    placed = after[after["owner_id"].notna()]
    assert after.loc[displaced[displaced].index, "value_at_risk"].max() <= placed[
        "value_at_risk"
    ].quantile(0.5), "capacity went to customers with less value at risk"


def test_assign_without_owners_is_a_usage_error(tmp_path: Path) -> None:
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
    result = CliRunner().invoke(app, ["assign", "-c", str(path)])
    assert result.exit_code == 2, result.output
    assert "churnseg assign needs sources.owners" in result.output


@pytest.fixture()
def pg_target() -> Iterator[PublishTarget]:
    reason = postgres_reason()
    if reason:
        pytest.skip(reason)
    schema = f"churnseg_rls_{uuid.uuid4().hex[:8]}"
    yield PublishTarget(PG_URL, db_schema=schema)
    drop_schema(schema)


@pytest.mark.postgres
def test_on_postgres_each_owner_reads_only_its_rows_and_a_plain_reader_none(
    pg_target: PublishTarget, tmp_path: Path
) -> None:
    import psycopg

    suffix = uuid.uuid4().hex[:6]
    owners = [f"a{suffix}", f"b{suffix}"]
    reader = f"churnseg_readers_{suffix}"
    snapshot = date(2026, 1, 1)
    scores = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c3"],
            "snapshot_date": snapshot,
            "segment_id": 0,
            "segment_name": "all",
            "churn_probability": [0.9, 0.8, 0.1],
            "risk_band": ["high", "high", "low"],
            "value_at_risk": [5.0, 3.0, 1.0],
            "segmentation_model_version": 1,
            "churn_model_version": 1,
            "run_id": "r1",
            "scored_at": datetime(2026, 1, 1),
        }
    )
    scores.to_parquet(tmp_path / "scores.parquet")
    assignments = scores[["customer_id", "snapshot_date", "risk_band", "value_at_risk"]].assign(
        owner_id=[owners[0], owners[1], owners[0]],
        previous_owner_id=None,
        reason="new",
        run_id="r1",
    )
    assignments.to_parquet(tmp_path / "assignments.parquet")
    workload = pd.DataFrame(
        {
            "snapshot_date": snapshot,
            "owner_id": owners,
            "active": 1,
            "capacity": 5,
            "accounts": [2, 1],
            "a_tier_accounts": 0,
            "high_risk_accounts": 1,
            "value_at_risk": [6.0, 3.0],
            "moved_in": 0,
            "moved_out": 0,
            "run_id": "r1",
        }
    )
    workload.to_parquet(tmp_path / "workload.parquet")
    roles = [f"owner_{o}" for o in owners]
    with psycopg.connect(PG_URL, autocommit=True) as con:
        for role in [reader, *roles, f"plain_{suffix}"]:
            con.execute(f'CREATE ROLE "{role}"')
        for role in [*roles, f"plain_{suffix}"]:
            con.execute(f'GRANT "{reader}" TO "{role}"')
    try:
        files = AllocationFiles(
            tmp_path / "assignments.parquet", tmp_path / "workload.parquet", "owner_", reader
        )
        publish_scores(tmp_path / "scores.parquet", pg_target, allocation=files)
        schema = pg_target.db_schema

        def visible(role: str, table: str) -> list[str]:
            with psycopg.connect(PG_URL) as con:
                con.execute(f'SET ROLE "{role}"')
                rows = con.execute(f'SELECT customer_id FROM "{schema}"."{table}"').fetchall()
                return sorted(r[0] for r in rows)

        def workload_rows(role: str) -> list[str]:
            with psycopg.connect(PG_URL) as con:
                con.execute(f'SET ROLE "{role}"')
                rows = con.execute(f'SELECT owner_id FROM "{schema}".owner_workload').fetchall()
                return sorted(r[0] for r in rows)

        assert visible(roles[0], "customer_assignments") == ["c1", "c3"]
        assert visible(roles[1], "customer_assignments") == ["c2"]
        assert visible(f"plain_{suffix}", "customer_assignments") == []
        assert visible(roles[0], "owner_contact_list") == ["c1"]
        assert visible(f"plain_{suffix}", "owner_contact_list") == []
        assert workload_rows(roles[1]) == [owners[1]]
        assert workload_rows(f"plain_{suffix}") == []
        with psycopg.connect(PG_URL) as con:  # the publisher (table owner) sees everything
            count = con.execute(f'SELECT COUNT(*) FROM "{schema}".customer_assignments')
            assert count.fetchone() == (3,)
    finally:
        drop_schema(pg_target.db_schema or "")
        with psycopg.connect(PG_URL, autocommit=True) as con:
            for role in [*roles, f"plain_{suffix}", reader]:
                con.execute(f'DROP OWNED BY "{role}"')
                con.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_monitor_reads_contact_outcomes_and_leaves_churned_customers_out(
    tmp_path: Path,
) -> None:
    from churnseg.features.labels import LABEL
    from churnseg.pipelines.config import load_config
    from churnseg.pipelines.monitor import contacts_stage
    from churnseg.pipelines.stages import RunPaths

    paths = RunPaths(tmp_path)
    paths.clean.mkdir(parents=True)
    config = load_config(environ={})
    labelled = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "snapshot_date": date(2026, 1, 1),
            "churn_probability": 0.5,
            "risk_band": ["high", "high", "churned", None],
            LABEL: [0, 1, 1, 1],
        }
    )
    none = pd.DataFrame(columns=["kind", "customer_id", "contacted_at"])
    assert contacts_stage(labelled, config, paths, none).empty, "no contacts at all: nothing"
    pd.DataFrame(
        {"customer_id": ["a", "c"], "contacted_at": pd.to_datetime(["2026-01-10", "2026-01-10"])}
    ).to_parquet(paths.clean / "contact_outcomes.parquet")
    out = contacts_stage(labelled, config, paths, none)
    assert out[["risk_band", "customers", "contacted"]].values.tolist() == [["high", 2, 1]]
    # A contact a person sent through the API counts like a row of the source.
    sent = pd.DataFrame(
        {
            "kind": ["contact", "correction"],
            "customer_id": ["b", "b"],
            "contacted_at": ["2026-01-15T10:00:00+00:00", None],
        }
    )
    out = contacts_stage(labelled, config, paths, sent)
    assert out[["risk_band", "customers", "contacted"]].values.tolist() == [["high", 2, 2]]
