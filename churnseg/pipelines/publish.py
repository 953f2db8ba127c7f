"""Publishing to the output database: customer scores, segment profiles, quarantine, run log.

Every publish is one transaction: a snapshot (or a run's quarantine) is replaced as a whole,
readers see the old rows or the new ones, never a mix, and publishing the same file again gives
the same rows. The URL picks the database: ``sqlite:///path`` (default, stdlib ``sqlite3``) or
``postgresql://`` / ``postgresql+psycopg://`` (psycopg 3, COPY). Tables are created and migrated
on first use (``churnseg_schema`` records the versions); ``docs/output_tables.md`` describes every
column. Credentials never leave this module: messages carry the URL with its password hidden.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churnseg.pipelines import progress as reporting
from churnseg.pipelines.config import PUBLISH_SCHEMES
from churnseg.pipelines.sinks.base import Progress, Replacement, Retention, Sink
from churnseg.pipelines.sinks.errors import PublishError, scrub
from churnseg.pipelines.sinks.schema import (
    ASSIGNMENT_SCORE_COLUMNS,
    CUSTOMER_ASSIGNMENTS,
    CUSTOMER_SCORES,
    DATA_QUARANTINE,
    OWNER_WORKLOAD,
    PIPELINE_RUNS,
    SEGMENT_PROFILES,
    Dialect,
    OutputNames,
    TableSpec,
    conform_batch,
    conform_column,
    missing_columns,
    validate_identifier,
)

if TYPE_CHECKING:
    import pandas as pd

    from churnseg.pipelines.config import Config

__all__ = [
    "AllocationFiles",
    "PublishError",
    "PublishTarget",
    "RunRecord",
    "append_rows",
    "ensure_schema",
    "latest_snapshot",
    "publish_allocation",
    "publish_intraday",
    "publish_quarantine",
    "publish_scores",
    "publish_segment_profiles",
    "read_feedback",
    "read_table",
    "record_run",
    "run_log",
    "target_from_config",
]

log = logging.getLogger(__name__)
MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class PublishTarget:
    """Where and how to publish: database URL, table names and policies.

    Attributes:
        url: ``sqlite:///path`` or ``postgresql://...``; shown only with the password hidden.
        names: Names of the output tables.
        db_schema: PostgreSQL schema (default ``public``); must be None for SQLite.
        keep_snapshots: Newest snapshots kept in the scores and segment profile tables.
        keep_quarantine_runs: Newest runs kept in the quarantine table.
        chunk_rows: Rows read, converted and written per batch.
        lock_timeout: Seconds to wait for another publisher before failing.
    """

    url: str = field(repr=False)
    names: OutputNames = field(default_factory=OutputNames)
    db_schema: str | None = None
    keep_snapshots: int = 12
    keep_quarantine_runs: int = 30
    chunk_rows: int = 100_000
    lock_timeout: float = 600.0

    def __post_init__(self) -> None:
        if not self.url.startswith(PUBLISH_SCHEMES):
            raise PublishError(
                f"publish URL {self.display!r} is not supported; use one of "
                f"{', '.join(PUBLISH_SCHEMES)}"
            )
        if self.db_schema is not None:
            validate_identifier(self.db_schema, "schema name")
            if self.is_sqlite:
                raise PublishError("a schema name applies to PostgreSQL only, not to SQLite")
        for name in ("keep_snapshots", "keep_quarantine_runs", "chunk_rows"):
            if getattr(self, name) < 1:
                raise PublishError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def is_sqlite(self) -> bool:
        """Return True for a SQLite database file."""
        return self.url.startswith("sqlite:///")

    @property
    def display(self) -> str:
        """Return the URL with any password hidden, plus the schema (for messages)."""
        shown = scrub(self.url, self.url)
        return f"{shown} (schema {self.db_schema})" if self.db_schema else shown

    def describe(self, table: str) -> str:
        """Return ``table`` at this target, for messages and summaries."""
        return f"{self.display} :: {table}"


def target_from_config(config: Config) -> PublishTarget:
    """Return the publish target of a run configuration."""
    p = config.publish
    return PublishTarget(
        url=config.publish_url,
        names=OutputNames(
            customer_scores=p.table,
            segment_profiles=p.segment_profiles_table,
            data_quarantine=p.quarantine_table,
            pipeline_runs=p.runs_table,
        ),
        db_schema=p.db_schema,
        keep_snapshots=p.keep_snapshots,
        keep_quarantine_runs=p.keep_quarantine_runs,
        chunk_rows=p.chunk_rows,
        lock_timeout=p.lock_timeout_seconds,
    )


def _driver_errors() -> tuple[type[BaseException], ...]:
    import psycopg

    return (sqlite3.Error, psycopg.Error, OSError, pa.ArrowException)


@contextmanager
def database_errors(target: PublishTarget, action: str) -> Iterator[None]:
    """Turn database and file errors into a PublishError whose text holds no credentials."""
    try:
        yield
    except PublishError as exc:
        raise PublishError(scrub(f"{action}: {exc}", target.url)) from None
    except Exception as exc:
        if not isinstance(exc, _driver_errors()):
            raise
        detail = " ".join(str(exc).split()) or "no detail"
        raise PublishError(
            scrub(
                f"{action} failed at {target.display}: {type(exc).__name__}: {detail}", target.url
            )
        ) from None


def connect_sink(target: PublishTarget) -> Sink:
    """Return an open connection to the target database (the caller closes it).

    Raises:
        PublishError: The database cannot be reached or opened.
    """
    with database_errors(target, "connecting"):
        if target.is_sqlite:
            from churnseg.pipelines.sinks.sqlite import SqliteSink

            path = Path(target.url[len("sqlite:///") :])
            return SqliteSink(path, target.names, target.lock_timeout)
        from churnseg.pipelines.sinks.postgres import PostgresSink

        return PostgresSink(target.url, target.names, target.db_schema, target.lock_timeout)


@contextmanager
def open_sink(target: PublishTarget) -> Iterator[Sink]:
    """Open a connection to the target database; close it on exit.

    Raises:
        PublishError: The database cannot be reached or opened.
    """
    sink = connect_sink(target)
    try:
        yield sink
    finally:
        sink.close()


def ensure_schema(target: PublishTarget) -> int:
    """Create or migrate the output tables; return the schema version now in the database.

    Raises:
        PublishError: The database cannot be reached, or holds a newer schema than this code.
    """
    with open_sink(target) as sink, database_errors(target, "migrating the output tables"):
        return sink.ensure_schema()


def _partition_keys(path: Path, spec: TableSpec) -> pa.Array:
    """Return the distinct partition values (snapshot dates, run ids) in ``path``, sorted."""
    column = spec.column(spec.partition)
    values = pq.read_table(path, columns=[spec.partition]).column(0).combine_chunks()
    values = conform_column(values, column, f"{spec.key} (from {path.name})")
    return pa.array(sorted(pc.unique(values).to_pylist()), type=values.type)


def _batches(
    parquet: pq.ParquetFile,
    spec: TableSpec,
    source: str,
    chunk_rows: int,
    constants: Mapping[str, Any],
) -> Iterator[pa.RecordBatch]:
    first_row = 0
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        for name, value in constants.items():
            batch = batch.append_column(name, pa.repeat(value, batch.num_rows))
        yield conform_batch(batch, spec, source, first_row)
        first_row += batch.num_rows


@dataclass(frozen=True)
class ParquetPart:
    """A Parquet file whose partitions replace those of one table, and the retention after."""

    path: Path
    spec: TableSpec
    retention: Retention | None = None
    constants: Mapping[str, Any] = field(default_factory=dict)


def _replace_from_parquet(
    parts: list[ParquetPart], target: PublishTarget, progress: Progress | None = None
) -> list[int]:
    """Replace the partitions found in each part's file in its table, all in one transaction.

    Returns:
        Rows written per part.
    """
    tables = ", ".join(target.names.table(p.spec) for p in parts)
    quoted = ", ".join(repr(target.names.table(p.spec)) for p in parts)
    names = ", ".join(p.path.name for p in parts)
    with database_errors(target, f"publishing {names} to table {quoted}"):
        replacements = []
        total = 0
        for part in parts:
            parquet = pq.ParquetFile(part.path)
            missing = missing_columns(part.spec, [*parquet.schema_arrow.names, *part.constants])
            if missing:
                raise PublishError(
                    f"{part.path.name} ({parquet.metadata.num_rows} rows) lacks required "
                    f"column(s) {missing} of table {part.spec.key}"
                )
            keys = _partition_keys(part.path, part.spec)
            batches = _batches(
                parquet, part.spec, part.path.name, target.chunk_rows, part.constants
            )
            replacements.append(Replacement(part.spec, keys, batches, part.retention))
            total += parquet.metadata.num_rows
        with (
            open_sink(target) as sink,
            reporting.stage(f"publishing {tables}", total) as step,
        ):
            sink.ensure_schema()

            def report(written: int) -> None:
                step.update(written)  # the installed reporter (CLI bar), then the caller's
                if progress is not None:
                    progress(written)

            counts = sink.replace_all(replacements, report)
    for part, written in zip(parts, counts, strict=True):
        log.info(
            "published %d rows of %s to %s",
            written,
            part.path.name,
            target.describe(target.names.table(part.spec)),
        )
    return counts


def publish_scores(
    scores_path: Path,
    target: PublishTarget,
    progress: Progress | None = None,
    allocation: AllocationFiles | None = None,
) -> int:
    """Replace the snapshot(s) in a scores Parquet file in ``customer_scores``; return rows.

    One transaction: delete the snapshot's rows, insert the file's, drop snapshots beyond the
    newest ``keep_snapshots``. A second publisher of the same snapshot waits for the first.

    Args:
        scores_path: Parquet file with the ``customer_scores`` columns (later-issue columns may be
            absent: they are published as nulls).
        target: Where to publish.
        progress: Called with the rows written so far after each batch.
        allocation: The snapshot's allocation, published in the same transaction (readers
            never see scores of one allocation beside assignments of another).

    Raises:
        PublishError: The file lacks a column or holds bad values, or the database refused the
            data; the database is unchanged.
    """
    retention = Retention(target.keep_snapshots)
    parts = [ParquetPart(scores_path, CUSTOMER_SCORES, retention)]
    if allocation is not None:
        parts += allocation_parts(allocation, target)
    return _replace_from_parquet(parts, target, progress)[0]


def publish_segment_profiles(profiles_path: Path, target: PublishTarget) -> int:
    """Replace the snapshot(s) in a segment profiles Parquet file; return rows written.

    The file holds the ``segment_profiles`` columns: snapshot_date, segment_id, segment_name,
    size, share, revenue_share, churn_rate, profile (JSON text), segmentation_model_version,
    run_id. Retention follows ``keep_snapshots``.

    Raises:
        PublishError: As ``publish_scores``.
    """
    retention = Retention(target.keep_snapshots)
    return _replace_from_parquet([ParquetPart(profiles_path, SEGMENT_PROFILES, retention)], target)[
        0
    ]


def publish_quarantine(quarantine_path: Path, target: PublishTarget) -> int:
    """Replace the quarantined rows of the run(s) in a quarantine Parquet file; return rows.

    The file holds run_id, table_name, source_row, reason and record (JSON text); the publisher
    adds ``published_at``. Only the newest ``keep_quarantine_runs`` runs are kept.

    Raises:
        PublishError: As ``publish_scores``.
    """
    retention = Retention(target.keep_quarantine_runs, newest_by="published_at")
    now = datetime.now(UTC).replace(microsecond=0)
    part = ParquetPart(quarantine_path, DATA_QUARANTINE, retention, {"published_at": now})
    return _replace_from_parquet([part], target)[0]


@dataclass(frozen=True)
class AllocationFiles:
    """One snapshot's allocation in the run folder, and how owners' rows are protected.

    Attributes:
        assignments: ``customer_assignments`` rows (one per customer).
        workload: ``owner_workload`` rows (one per owner).
        role_prefix: PostgreSQL: owner X reads its rows as role ``<role_prefix>X``.
        reader_role: PostgreSQL: role granted SELECT on the allocation objects (None: none).
    """

    assignments: Path
    workload: Path
    role_prefix: str = "owner_"
    reader_role: str | None = None


def allocation_parts(files: AllocationFiles, target: PublishTarget) -> list[ParquetPart]:
    """Return the allocation files as publish parts, after securing owners' rows."""
    with open_sink(target) as sink, database_errors(target, "securing the allocation tables"):
        sink.ensure_schema()
        sink.secure_owner_rows(files.role_prefix, files.reader_role)
    retention = Retention(target.keep_snapshots)
    return [
        ParquetPart(files.assignments, CUSTOMER_ASSIGNMENTS, retention),
        ParquetPart(files.workload, OWNER_WORKLOAD, retention),
    ]


def publish_allocation(files: AllocationFiles, target: PublishTarget) -> int:
    """Replace one snapshot's allocation (both tables, one transaction); return assignments.

    Raises:
        PublishError: As ``publish_scores``.
    """
    return _replace_from_parquet(allocation_parts(files, target), target)[0]


def read_table(target: PublishTarget, sql: str, params: tuple[Any, ...] = ()) -> pd.DataFrame:
    """Return the rows of a read-only query on the output database as a frame.

    ``sql`` uses ``?`` placeholders and names tables through ``target.names``; it must not
    write. Used to read the previous allocation and the latest scores back.

    Raises:
        PublishError: The database cannot be reached or the query fails.
    """
    import pandas as pd

    with open_sink(target) as sink, database_errors(target, "reading the output database"):
        sink.ensure_schema()
        rows, columns = sink.query(sql, params)
    return pd.DataFrame(rows, columns=columns)


def publish_intraday(scores_path: Path, target: PublishTarget) -> int:
    """Write an intra-day update's score rows into their snapshot; return rows written.

    One transaction: each row replaces the customer's row of the same snapshot (or adds a
    customer the snapshot did not have), and where the customer has an allocation row in that
    snapshot, its copies of the classes (tier, band, probability, value at risk, reasons) are
    brought up to date, so the owners' contact list follows. Owners do not change: allocation
    runs with full snapshots and ``churnseg assign``.

    Raises:
        PublishError: As ``publish_scores``.
    """
    import pandas as pd

    scores = pq.read_table(scores_path).combine_chunks()
    if scores.num_rows == 0:
        return 0
    with database_errors(target, f"publishing the update {scores_path.name}"):
        conformed = conform_batch(scores.to_batches()[0], CUSTOMER_SCORES, scores_path.name)
        rows: list[tuple[TableSpec, pa.RecordBatch]] = [(CUSTOMER_SCORES, conformed)]
        with open_sink(target) as sink:
            sink.ensure_schema()
            assignments = _assignments_of(sink, target, conformed)
            if len(assignments):
                fresh = conformed.to_pandas()[
                    ["snapshot_date", "customer_id", *ASSIGNMENT_SCORE_COLUMNS]
                ]
                merged = assignments.drop(columns=list(ASSIGNMENT_SCORE_COLUMNS)).merge(
                    fresh, on=["snapshot_date", "customer_id"], how="inner"
                )
                batch = pa.RecordBatch.from_pandas(
                    pd.DataFrame(merged[CUSTOMER_ASSIGNMENTS.names]), preserve_index=False
                )
                rows.append(
                    (CUSTOMER_ASSIGNMENTS, conform_batch(batch, CUSTOMER_ASSIGNMENTS, "update"))
                )
            sink.upsert(rows)
    return conformed.num_rows


def _assignments_of(sink: Sink, target: PublishTarget, scores: pa.RecordBatch) -> pd.DataFrame:
    """Return the allocation rows of the customers and snapshot of ``scores``."""
    import pandas as pd

    snapshot = scores.column("snapshot_date")[0].as_py()
    table = qualified(target, target.names.customer_assignments)
    ids = scores.column("customer_id").to_pylist()
    found, columns = [], CUSTOMER_ASSIGNMENTS.names
    for start in range(0, len(ids), _IDS_PER_QUERY):  # within every database's parameter limit
        chunk = ids[start : start + _IDS_PER_QUERY]
        rows, columns = sink.query(
            f"SELECT * FROM {table} WHERE snapshot_date = ? "
            f"AND customer_id IN ({', '.join('?' * len(chunk))})",
            (snapshot.isoformat(), *chunk),
        )
        found += rows
    frame = pd.DataFrame(found, columns=columns)
    frame["snapshot_date"] = snapshot
    return frame


_IDS_PER_QUERY = 500


def conformed_rows(spec: TableSpec, rows: list[dict[str, Any]], source: str) -> pa.RecordBatch:
    """Return row dicts as one batch of ``spec``'s table (absent keys are nulls).

    Raises:
        PublishError: A value does not fit its column.
    """
    batch = pa.RecordBatch.from_pylist(
        [{name: row.get(name) for name in spec.names} for row in rows]
    )
    return conform_batch(batch, spec, source)


def append_rows(target: PublishTarget, spec: TableSpec, rows: list[dict[str, Any]]) -> int:
    """Insert rows into ``spec``'s table in one transaction (feedback, audit); return rows.

    Raises:
        PublishError: A value does not fit its column, or the database refused the rows.
    """
    with database_errors(target, f"writing to table {target.names.table(spec)!r}"):
        conformed = conformed_rows(spec, rows, spec.key)
        with open_sink(target) as sink:
            sink.ensure_schema()
            sink.upsert([(spec, conformed)])
    return len(rows)


def read_feedback(target: PublishTarget, customer_id: str | None = None) -> pd.DataFrame:
    """Return the ``customer_feedback`` rows (of one customer), oldest first.

    Raises:
        PublishError: The database cannot be reached.
    """
    table = qualified(target, target.names.customer_feedback)
    where, params = ("WHERE customer_id = ?", (customer_id,)) if customer_id else ("", ())
    return read_table(
        target, f"SELECT * FROM {table} {where} ORDER BY received_at, feedback_id", params
    )


def qualified(target: PublishTarget, name: str) -> str:
    """Return an output table's quoted name, with the schema on PostgreSQL."""
    return Dialect("output", {}, target.db_schema).qualify(name)


def latest_snapshot(scores_path: Path) -> date | None:
    """Return the newest snapshot date in a scores file (None when it has no rows)."""
    keys = _partition_keys(scores_path, CUSTOMER_SCORES).to_pylist()
    return keys[-1] if keys else None


@dataclass
class RunRecord:
    """One row of the run log (``pipeline_runs``); mutable while the run goes on."""

    run_id: str
    flow: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    snapshot_date: date | None = None
    finished_at: datetime | None = None
    status: str = "running"
    rows_read: int | None = None
    rows_quarantined: int | None = None
    rows_published: int | None = None
    message: str | None = None


def record_run(target: PublishTarget, record: RunRecord) -> None:
    """Insert or update the run log row of ``record.run_id`` (one transaction).

    Raises:
        PublishError: The database refused the row.
    """
    row = asdict(record)
    if row["message"] is not None:
        row["message"] = scrub(str(row["message"]), target.url)[:MESSAGE_CHARS]
    names = [f.name for f in fields(RunRecord)]
    batch = pa.RecordBatch.from_pylist([{n: row[n] for n in names}])
    table = target.names.pipeline_runs
    with database_errors(target, f"writing run {record.run_id} to table {table!r}"):
        conformed = conform_batch(batch, PIPELINE_RUNS, "run log")
        with open_sink(target) as sink:
            sink.ensure_schema()
            sink.upsert([(PIPELINE_RUNS, conformed)])


@contextmanager
def run_log(
    target: PublishTarget, run_id: str, flow: str, quarantine_path: Path | None = None
) -> Iterator[RunRecord]:
    """Log a flow run: a ``running`` row on entry, ``succeeded`` or ``failed`` on exit.

    On exit the run's quarantined rows are published too when ``quarantine_path`` exists, also
    (especially) when the run failed on data quality. A failure to write the log while the run is
    already failing is logged and does not hide the run's own error.

    Yields:
        The record; set its counts and snapshot as the run learns them.
    """
    record = RunRecord(run_id=run_id, flow=flow)
    record_run(target, record)
    try:
        yield record
    except BaseException as exc:
        record.status = "failed"
        record.message = f"{type(exc).__name__}: {exc}"
        try:
            _finish_run(target, record, quarantine_path)
        except PublishError as log_error:
            log.warning("could not record the failed run %s: %s", run_id, log_error)
        raise
    record.status = "succeeded"
    _finish_run(target, record, quarantine_path)


def _finish_run(target: PublishTarget, record: RunRecord, quarantine_path: Path | None) -> None:
    """Publish the run's quarantine, then close its log row (failed if the quarantine was not)."""
    record.finished_at = datetime.now(UTC)
    problem = None
    if quarantine_path is not None and quarantine_path.exists():
        try:
            quarantined = publish_quarantine(quarantine_path, target)
        except PublishError as exc:
            problem = exc
            record.status = "failed"
            note = f"quarantine not published: {exc}"
            record.message = f"{record.message}; {note}" if record.message else note
        else:
            if record.rows_quarantined is None:  # the run failed before counting
                record.rows_quarantined = quarantined
    record_run(target, record)
    if problem is not None:
        raise problem
