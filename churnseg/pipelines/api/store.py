"""The API's reads and writes on the output database, one connection per worker thread."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, date, datetime
from typing import Any

from churnseg.pipelines.publish import (
    PublishTarget,
    conformed_rows,
    connect_sink,
    database_errors,
    qualified,
)
from churnseg.pipelines.sinks.base import Sink
from churnseg.pipelines.sinks.schema import API_AUDIT, CUSTOMER_FEEDBACK, TableSpec


class Store:
    """Reads one customer's newest row and writes feedback and audit rows.

    Each request thread keeps its own connection (SQLite and psycopg connections are not
    shared between threads); a connection that failed is dropped and opened again next time.
    """

    def __init__(self, target: PublishTarget) -> None:
        """Migrate the output tables once, so requests never do.

        Raises:
            PublishError: The database cannot be reached, or holds a newer schema.
        """
        self.target = target
        self._local = threading.local()
        scores = qualified(target, target.names.customer_scores)
        assignments = qualified(target, target.names.customer_assignments)
        # Both lookups use the (customer_id, snapshot_date) indexes.
        self._customer_sql = (
            f"SELECT s.*, (SELECT a.owner_id FROM {assignments} a "
            "WHERE a.customer_id = s.customer_id AND a.snapshot_date = s.snapshot_date) "
            f"AS owner_id FROM {scores} s WHERE s.customer_id = ? "
            "ORDER BY s.snapshot_date DESC LIMIT 1"
        )
        self._snapshot_sql = f"SELECT MAX(snapshot_date) FROM {scores}"
        self.schema_version = self._run(lambda sink: sink.ensure_schema(), "migrating")

    def _sink(self) -> Sink:
        sink: Sink | None = getattr(self._local, "sink", None)
        if sink is None:
            sink = connect_sink(self.target)
            self._local.sink = sink
        return sink

    def _run(self, work: Any, action: str) -> Any:
        """Run ``work(sink)`` on this thread's connection; reconnect next time after a failure."""
        try:
            with database_errors(self.target, action):
                return work(self._sink())
        except Exception:
            sink = getattr(self._local, "sink", None)
            self._local.sink = None
            if sink is not None:
                with contextlib.suppress(Exception):  # already broken: nothing left to close
                    sink.close()
            raise

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        """Return the customer's newest published row with its owner (None: not published)."""
        rows, columns = self._run(
            lambda sink: sink.query(self._customer_sql, (customer_id,)), "reading a customer"
        )
        return dict(zip(columns, rows[0], strict=True)) if rows else None

    def latest_snapshot(self) -> date | None:
        """Return the newest published snapshot date (None: nothing published)."""
        rows, _ = self._run(lambda sink: sink.query(self._snapshot_sql), "reading the snapshot")
        value = rows[0][0] if rows else None
        return date.fromisoformat(str(value)[:10]) if value is not None else None

    def insert(self, spec: TableSpec, rows: list[dict[str, Any]]) -> None:
        """Insert rows into ``spec``'s table (feedback, audit) in one transaction."""
        conformed = conformed_rows(spec, rows, "api")
        self._run(lambda sink: sink.upsert([(spec, conformed)]), f"writing {spec.key}")

    def feedback(self, row: dict[str, Any]) -> None:
        """Store one feedback message."""
        self.insert(CUSTOMER_FEEDBACK, [row])

    def audit(self, rows: list[dict[str, Any]]) -> None:
        """Store audit rows, in one transaction."""
        self.insert(API_AUDIT, rows)


def now_utc() -> datetime:
    """Return the current moment in UTC, to the second."""
    return datetime.now(UTC).replace(microsecond=0)
