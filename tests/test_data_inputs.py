"""Bad inputs through the extract and clean stages, each with its documented outcome.

The matrix mirrors the table in docs/data_in.md. Also: the sample generator's injected dirt is
found reason by reason, and the fail-safe stops a run with the published table untouched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from churnseg.features import cleaning as c
from churnseg.pipelines import stages
from churnseg.pipelines.config import Config
from churnseg.pipelines.quality import QUARANTINE_FILE, QUARANTINE_SCHEMA, TableQuality
from churnseg.pipelines.sample import SampleSpec, write_sample
from churnseg.pipelines.sources import SourceError

HEADER = b"customer_id,timestamp,amount\n"
GOOD = b"A,2024-01-01,10\nB,2024-01-02,20\nC,2024-01-03,30\n"


def run_stages(
    tmp_path: Path, data: bytes, source: dict[str, Any] | None = None, **cleaning: Any
) -> tuple[TableQuality, pd.DataFrame, pd.DataFrame]:
    """Extract and clean one transactions CSV; return its quality, quarantine and clean rows."""
    path = tmp_path / "transactions.csv"
    path.write_bytes(data)
    config = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "sample": {"enabled": False},
            "sources": {"transactions": {"path": str(path), **(source or {})}},
            "cleaning": {"now": "2025-12-31", "max_quarantine_share": 1.0, **cleaning},
        }
    )
    paths = stages.run_paths(config, "run")
    read = stages.extract_stage(config, paths)
    report = stages.clean_stage(config, paths)
    quality = report["transactions"]
    quarantine = pd.read_parquet(paths.root / QUARANTINE_FILE)
    assert quality.rows == read["transactions"] == quality.clean + quality.quarantined
    assert len(quarantine) == quality.quarantined, "the combined file holds every rejected row"
    clean = pd.read_parquet(paths.clean / "transactions.parquet")
    assert len(clean) == quality.clean
    return quality, quarantine, clean


def record_of(quarantine: pd.DataFrame, reason: str) -> dict[str, Any]:
    rows = quarantine[quarantine.reason == reason]
    assert len(rows) == 1, f"one {reason} row"
    return dict(json.loads(rows.record.iloc[0]))


Raises = tuple[type[Exception], str]

MATRIX: list[Any] = [
    pytest.param(b"", {}, (SourceError, r"is empty \(0 bytes\)"), id="empty file"),
    pytest.param(HEADER, {}, (c.DataContractError, "the source has no rows"), id="header only"),
    pytest.param(
        b"customer_id,amount\nA,1\n",
        {},
        (c.DataContractError, r"required column\(s\) missing: 'timestamp'"),
        id="missing required column",
    ),
    pytest.param(
        HEADER + b"A,2024-01-01,ten\nB,2024-01-02,n/a\n",
        {},
        (c.DataContractError, r"'amount'.*none of 2 values converts to float; examples: "),
        id="wrong type in every row",
    ),
    pytest.param(
        HEADER + GOOD + b"D,2024-01-04,ten\n", {}, {c.BAD_AMOUNT: 1}, id="wrong type in one row"
    ),
    pytest.param(
        HEADER + b",2024-01-01,1\n  ,2024-01-02,2\n",
        {},
        (c.DataContractError, r"'customer_id'.*all 2 values are null or blank"),
        id="all ids null",
    ),
    pytest.param(
        HEADER + GOOD + b"D,2024-01-04,caf\xe9\n", {}, {c.BAD_ENCODING: 1}, id="non-UTF-8 bytes"
    ),
    pytest.param(
        HEADER + GOOD + b"A,2024-01-01,10\n", {}, {c.DUPLICATE_ROW: 1}, id="duplicated row"
    ),
    pytest.param(
        HEADER + GOOD + b"D,2031-01-01,5\n", {}, {c.FUTURE_TIMESTAMP: 1}, id="future date"
    ),
    pytest.param(
        HEADER + GOOD + b"D,1900-01-01,5\n", {}, {c.BEFORE_MIN_DATE: 1}, id="before start date"
    ),
    pytest.param(
        HEADER + GOOD + b"D,31/01/2024 10:00,5\n",
        {"date_formats": ["%Y-%m-%d", "%d/%m/%Y %H:%M"]},
        {},
        id="mixed date formats, both configured",
    ),
    pytest.param(
        HEADER + GOOD + b"D,31/01/2024 10:00,5\n",
        {},
        {c.BAD_TIMESTAMP: 1},
        id="mixed date formats, ISO only",
    ),
    pytest.param(
        HEADER + GOOD + b"D,2024-13-45,5\n", {}, {c.BAD_TIMESTAMP: 1}, id="malformed date"
    ),
    pytest.param(
        HEADER + GOOD + b"D,2024-01-05,1e9\nE,2024-01-05,1e400\nF,2024-01-05,0\n",
        {},
        {c.AMOUNT_ABOVE_MAX: 1, c.BAD_AMOUNT: 1},  # a zero amount is kept as activity
        id="huge values",
    ),
    pytest.param(
        HEADER + GOOD + b"D,2024-01-05,5,extra\nE\n",
        {},
        {c.MALFORMED_LINE: 2},
        id="too many or too few fields",
    ),
    pytest.param(
        HEADER.replace(b",", b";") + GOOD.replace(b",", b";"), {}, {}, id="another delimiter"
    ),
    pytest.param(
        HEADER.replace(b",", b"|") + GOOD.replace(b",", b"|"),
        {"delimiter": "|"},
        {},
        id="declared delimiter",
    ),
]


@pytest.mark.parametrize(("data", "source", "outcome"), MATRIX)
def test_bad_input_matrix(
    tmp_path: Path, data: bytes, source: dict[str, Any], outcome: Raises | dict[str, int]
) -> None:
    if isinstance(outcome, tuple):
        error, message = outcome
        with pytest.raises(error, match=rf"table 'transactions'.*{message}"):
            run_stages(tmp_path, data, source)
        return
    quality, _, clean = run_stages(tmp_path, data, source)
    assert quality.by_reason == outcome
    assert quality.clean == quality.rows - sum(outcome.values())
    assert set(clean.customer_id) >= {"A", "B", "C"}, "the good rows are all kept"


def test_quarantine_record_keeps_the_raw_text(tmp_path: Path) -> None:
    _, quarantine, _ = run_stages(tmp_path, HEADER + GOOD + b"D,2024-13-45,5\nE,2024-01-04,\xff\n")
    assert record_of(quarantine, c.BAD_TIMESTAMP) == {
        "customer_id": "D",
        "timestamp": "2024-13-45",
        "amount": "5",
    }
    bad_bytes = record_of(quarantine, c.BAD_ENCODING)
    assert bad_bytes["line"] == 6 and bad_bytes["text"].startswith("E,2024-01-04,")
    assert dict(zip(quarantine.reason, quarantine.source_row, strict=True)) == {
        c.BAD_TIMESTAMP: 3,
        c.BAD_ENCODING: 4,
    }


def test_declared_encoding_reads_every_line(tmp_path: Path) -> None:
    data = (HEADER[:-1] + b",city\n") + "A,2024-01-01,10,München\n".encode("latin-1")
    quality, _, clean = run_stages(tmp_path, data, {"encoding": "latin-1"})
    assert quality.quarantined == 0 and clean.city.tolist() == ["München"]


def test_huge_values_below_the_cap_are_flagged_not_dropped(tmp_path: Path) -> None:
    rows = b"".join(f"C{i},2024-01-{i + 1:02d},{10 + i}\n".encode() for i in range(20))
    quality, _, clean = run_stages(tmp_path, HEADER + rows + b"Z,2024-02-01,5e7\n")
    assert quality.quarantined == 0
    assert clean.loc[clean.is_extreme, "customer_id"].tolist() == ["Z"]
    assert quality.flagged == {"is_extreme": 1, "is_return": 0}
    quality, _, _ = run_stages(tmp_path, HEADER + rows + b"Z,2024-02-01,5e7\n", max_abs_amount=1e6)
    assert quality.by_reason == {c.AMOUNT_ABOVE_MAX: 1}, "a lower cap quarantines it"


def test_quarantine_file_has_the_fixed_schema(tmp_path: Path) -> None:
    run_stages(tmp_path, HEADER + GOOD + b"D,2031-01-01,5\n")
    schema = pq.read_schema(tmp_path / "state" / "runs" / "run" / QUARANTINE_FILE)
    assert schema.equals(QUARANTINE_SCHEMA), schema


# --- the sample generator's dirt, found reason by reason ------------------------------------

_INJECTED = {
    "transactions": {
        "amount_absurd": c.AMOUNT_ABOVE_MAX,
        "amount_nan": c.BAD_AMOUNT,
        "amount_zero": c.ZERO_AMOUNT,
        "duplicate_row": c.DUPLICATE_ROW,
        "repeated_order_line": c.DUPLICATE_ORDER_LINE,
        "future_timestamp": c.FUTURE_TIMESTAMP,
        "null_customer_id": c.NULL_CUSTOMER_ID,
        "unknown_customer_id": c.UNKNOWN_CUSTOMER,
        "sentinel_date": c.BEFORE_MIN_DATE,
        "malformed_date_string": c.BAD_TIMESTAMP,
    },
    "events": {
        "duplicate_row": c.DUPLICATE_ROW,
        "future_timestamp": c.FUTURE_TIMESTAMP,
        "null_customer_id": c.NULL_CUSTOMER_ID,
        "unknown_customer_id": c.UNKNOWN_CUSTOMER,
    },
    "customers": {"duplicate_customer_row": c.MERGED_CUSTOMER},
}


def sample_config(tmp_path: Path, file_format: str, **cleaning: Any) -> Config:
    spec = SampleSpec(customers=400, seed=3, dirty_fraction=0.05, file_format=file_format)  # type: ignore[arg-type]
    write_sample(spec, tmp_path / "sample")
    formats = ["%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M"]
    sources = {
        t: {"path": str(tmp_path / "sample" / f"{t}.{file_format}")}
        for t in ("customers", "transactions", "events", "subscriptions")
    }
    sources["transactions"]["date_formats"] = formats  # type: ignore[assignment]
    return Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "sample": {"enabled": False},
            "sources": sources,
            "cleaning": {"now": "2026-01-01", **cleaning},
        }
    )


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_every_injected_dirty_row_is_found_with_its_reason(
    tmp_path: Path, file_format: str
) -> None:
    # The generator's zero amounts count as dirt here; by default they are kept as activity.
    config = sample_config(tmp_path, file_format, zero_amounts="quarantine")
    manifest = json.loads((tmp_path / "sample" / "manifest.json").read_text())
    paths = stages.run_paths(config, "run")
    read = stages.extract_stage(config, paths)
    report = stages.clean_stage(config, paths)
    for table, kinds in _INJECTED.items():
        expected: dict[str, int] = {}
        for kind, n in manifest["dirty_rows"][table].items():
            if n and kind in kinds:
                expected[kinds[kind]] = expected.get(kinds[kind], 0) + n
        got = report[table].by_reason
        if file_format == "csv" and table == "transactions":
            # A day-first copy loses its seconds, so an exact copy of it can count as a
            # repeated line instead: the pair is compared as one.
            pair = (c.DUPLICATE_ROW, c.DUPLICATE_ORDER_LINE)
            assert sum(got.get(r, 0) for r in pair) == sum(expected.get(r, 0) for r in pair)
            got = {r: n for r, n in got.items() if r not in pair}
            expected = {r: n for r, n in expected.items() if r not in pair}
        assert got == expected, table
        assert report[table].rows == read[table] == report[table].clean + report[table].quarantined
    assert report["subscriptions"].quarantined == 0
    clean = pd.read_parquet(paths.clean / "transactions.parquet")
    assert set(clean.category) <= {
        "grocery",
        "electronics",
        "fashion",
        "home",
        "beauty",
        "sports",
        "toys",
        "books",
    }, "padded categories folded"


def test_stub_policy_keeps_rows_of_unknown_customers(tmp_path: Path) -> None:
    config = sample_config(tmp_path, "parquet", unknown_customers="stub")
    paths = stages.run_paths(config, "run")
    stages.extract_stage(config, paths)
    report = stages.clean_stage(config, paths)
    customers = pd.read_parquet(paths.clean / "customers.parquet")
    known = set(customers.loc[~customers.is_stub, "customer_id"])
    used = set(pd.read_parquet(paths.clean / "transactions.parquet").customer_id)
    used |= set(pd.read_parquet(paths.clean / "events.parquet").customer_id)
    assert report["customers"].stubs == len(used - known) > 0
    assert set(customers.loc[customers.is_stub, "customer_id"]) == used - known
    assert all(c.UNKNOWN_CUSTOMER not in q.by_reason for q in report.values())
    q = report["customers"]
    assert q.rows == q.clean + q.quarantined, "stubs are not source rows"


# --- fail safe ------------------------------------------------------------------------------


def test_fail_safe_stops_before_training_and_leaves_published_scores(tmp_path: Path) -> None:
    from churnseg.pipelines.publish import PublishTarget, publish_scores

    db = tmp_path / "scores.db"
    prior = pd.DataFrame(
        {
            "customer_id": ["A", "B"],
            "snapshot_date": pd.to_datetime(["2024-06-01"] * 2).date,
            "segment_id": [0, 1],
            "segment_name": ["Loyal", "Dormant"],
            "churn_probability": [0.1, 0.8],
            "segmentation_model_version": [1, 1],
            "churn_model_version": [1, 1],
            "run_id": ["prior-run"] * 2,
            "scored_at": pd.to_datetime(["2024-06-02 10:00"] * 2),
        }
    )
    prior.to_parquet(tmp_path / "prior.parquet", index=False)
    assert publish_scores(tmp_path / "prior.parquet", PublishTarget(url=f"sqlite:///{db}")) == 2
    before = db.read_bytes()

    data = HEADER + GOOD + b"D,2031-01-01,1\nE,2032-01-01,1\nF,2024-01-04,0\n"
    path = tmp_path / "transactions.csv"
    path.write_bytes(data)
    config = Config.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "sample": {"enabled": False},
            "sources": {"transactions": {"path": str(path)}},
            "cleaning": {"now": "2025-12-31"},
            "publish": {"url": f"sqlite:///{db}"},
        }
    )
    paths = stages.run_paths(config, "run")
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        # An explicit experiment: other tests may leave a global active experiment id behind.
        experiment_id = MlflowClient().create_experiment(
            "data-in-fail-safe", artifact_location=(tmp_path / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment_id) as run:
            stages.extract_stage(config, paths)
            with pytest.raises(stages.DataQualityError) as error:
                stages.clean_stage(config, paths)
        client = MlflowClient()
        metrics = client.get_run(run.info.run_id).data.metrics
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        page = client.download_artifacts(run.info.run_id, "data_quality.md", str(tmp_path))
    finally:
        mlflow.set_tracking_uri(previous_uri)
    text = str(error.value)
    assert re.search(r"table 'transactions': 2 of 6 rows quarantined \(33\.3% > 20%\)", text)
    assert "top reasons: future_timestamp: 2" in text, "the zero amount is kept as activity"
    assert db.read_bytes() == before, "the published table is byte for byte as it was"
    assert not paths.features.exists(), "nothing after cleaning ran"
    assert metrics["quarantine_transactions_future_timestamp"] == 2
    assert metrics["rows_read_transactions"] == 6
    assert {"data_quality.json", "data_quality.md"} <= artifacts
    assert "| future_timestamp | 2 |" in Path(page).read_text()
    quarantine = pd.read_parquet(paths.root / QUARANTINE_FILE)
    assert set(quarantine.run_id) == {run.info.run_id}, "rows name the run that rejected them"


# --- conservation through the stages, on random CSV lines ----------------------------------

READER_REASONS = (c.BAD_ENCODING, c.MALFORMED_LINE)

_LINES = st.sampled_from(
    [
        b"A,2024-01-01,10",
        b"B,2024-01-02,-3",
        b"B,2024-01-02,-3",
        b"C,2031-01-01,5",
        b",2024-01-01,5",
        b"D,garbage,5",
        b"E,2024-01-03,0",
        b"F,2024-01-03,1e9",
        b"G,2024-01-03,caf\xe9",
        b"H,2024-01-03,1,extra",
        b"I",
    ]
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(_LINES, min_size=1, max_size=30))
def test_every_source_line_is_clean_or_quarantined_once(tmp_path: Path, lines: list[bytes]) -> None:
    lines = [b"A,2024-01-01,1", *lines]  # one good row keeps the table usable
    quality, quarantine, clean = run_stages(tmp_path, HEADER + b"\n".join(lines) + b"\n")
    assert quality.rows == len(lines) == quality.clean + quality.quarantined
    rejected = quarantine.source_row.tolist()
    assert len(set(rejected)) == len(rejected), "no row quarantined twice"
    raw = pd.read_parquet(tmp_path / "state" / "runs" / "run" / "raw" / "transactions.parquet")
    assert set(raw._row).isdisjoint(quarantine[quarantine.reason.isin(READER_REASONS)].source_row)
    first_fields = [line.split(b",")[0].decode("latin-1") or None for line in lines]
    for row, customer in zip(raw._row, raw.customer_id.astype(object), strict=True):
        got = None if pd.isna(customer) else customer
        assert got == first_fields[row], f"row {row} is the source's line {row}"
    assert len(clean) + len(rejected) == len(lines)
