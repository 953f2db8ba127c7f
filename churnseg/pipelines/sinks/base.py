"""What every output database writer offers, and the retention rule they apply."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from churnseg.pipelines.sinks.schema import TableSpec, quote

Progress = Callable[[int], None]
"""Called with the number of rows written so far, after each batch."""


@dataclass(frozen=True)
class Retention:
    """Which partitions of a table survive a publish.

    Attributes:
        keep: Number of partitions (snapshots, runs) kept, newest first.
        newest_by: Column whose largest value orders partitions; None orders them by the
            partition value itself (snapshot dates), which an index answers without a scan.
    """

    keep: int
    newest_by: str | None = None


def apply_retention(
    execute: Callable[[str, tuple[Any, ...]], Any],
    table: str,
    part: str,
    retention: Retention,
    mark: str,
) -> None:
    """Delete all but the newest ``retention.keep`` partitions, inside the caller's transaction.

    Args:
        execute: Runs one statement with parameters and returns a cursor (``sqlite3``
            connection's or psycopg cursor's ``execute``).
        table: Quoted (and qualified) table name.
        part: Quoted partition column.
        retention: How many partitions to keep and how to order them.
        mark: The driver's parameter placeholder (``?`` or ``%s``).
    """
    if retention.newest_by is None:
        # Walk the partition index from the top: one seek per snapshot, no table scan.
        newest = execute(
            f"WITH RECURSIVE newest(k) AS (SELECT MAX({part}) FROM {table} UNION ALL "
            f"SELECT (SELECT MAX({part}) FROM {table} WHERE {part} < newest.k) "
            f"FROM newest WHERE newest.k IS NOT NULL) "
            f"SELECT k FROM newest WHERE k IS NOT NULL LIMIT {mark}",
            (retention.keep,),
        ).fetchall()
        if len(newest) == retention.keep:
            execute(f"DELETE FROM {table} WHERE {part} < {mark}", (newest[-1][0],))
        return
    order = quote(retention.newest_by)
    execute(
        f"DELETE FROM {table} WHERE {part} NOT IN (SELECT {part} FROM {table} "
        f"GROUP BY {part} ORDER BY MAX({order}) DESC LIMIT {mark})",
        (retention.keep,),
    )


@dataclass(frozen=True)
class Replacement:
    """The partitions ``keys`` of ``spec``'s table, replaced by ``batches``."""

    spec: TableSpec
    keys: pa.Array
    batches: Iterable[pa.RecordBatch]
    retention: Retention | None = None


def offset_progress(progress: Progress | None, before: int) -> Progress | None:
    """Return ``progress`` counting on from ``before`` rows (one count over several tables)."""
    if progress is None:
        return None
    report = progress
    return lambda written: report(before + written)


class Sink(Protocol):
    """An open connection to one output database.

    Every method is one transaction: it commits entirely or leaves the database as it was.
    """

    def ensure_schema(self) -> int:
        """Create or migrate the output tables; return the schema version reached."""
        ...

    def replace_all(
        self, replacements: Sequence[Replacement], progress: Progress | None
    ) -> list[int]:
        """Make several replacements in one transaction; return rows written per replacement.

        ``progress`` gets the rows written over all replacements so far.
        """
        ...

    def upsert(self, rows: Sequence[tuple[TableSpec, pa.RecordBatch]]) -> None:
        """Insert the rows of every batch into its table in one transaction.

        A row replaces the row with the same primary key (the intra-day update of a customer's
        score, a run log entry written again).
        """
        ...

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[Any], list[str]]:
        """Return the rows and column names of a read-only query (``?`` placeholders)."""
        ...

    def secure_owner_rows(self, role_prefix: str, reader_role: str | None) -> None:
        """Let each owner's database role read only its own allocation rows (PostgreSQL)."""
        ...

    def close(self) -> None:
        """Close the connection (an open transaction is rolled back)."""
        ...
