"""PostgreSQL writer (psycopg 3): COPY into a staging table, then delete + insert, one transaction.

The rows stream into a temporary staging table with ``COPY ... (FORMAT csv)`` (Arrow writes the
CSV, so no Python loop touches a row). Only then does the publisher take a transaction-scoped
advisory lock per (schema, table, partition), delete the partition and insert it from the
stage: two publishers of the same snapshot serialise, readers see the old rows until the commit,
and a publisher that dies mid-way leaves an aborted transaction the server rolls back.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv

from churnseg.pipelines.sinks.base import Progress, Retention, apply_retention
from churnseg.pipelines.sinks.schema import (
    SCHEMA_VERSION,
    VERSION_TABLE,
    Dialect,
    Kind,
    OutputNames,
    TableSpec,
    migration_steps,
    quote,
    schema_version,
)

if TYPE_CHECKING:
    import psycopg

POSTGRES_TYPES = {
    Kind.TEXT: "text",
    Kind.INTEGER: "bigint",
    Kind.REAL: "double precision",
    Kind.DATE: "date",
    Kind.TIMESTAMP: "timestamptz",
    Kind.JSON: "text",
}
STAGE_TABLE = "churnseg_stage"
# Every value quoted, nulls left bare: COPY then tells an empty string from a null.
CSV_OPTIONS = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
URL_SCHEMES = ("postgresql+psycopg://", "postgres://")


def libpq_url(url: str) -> str:
    """Return ``url`` in the ``postgresql://`` form libpq reads (SQLAlchemy prefixes removed)."""
    for scheme in URL_SCHEMES:
        if url.startswith(scheme):
            return "postgresql://" + url[len(scheme) :]
    return url


def lock_key(*parts: str) -> int:
    """Return a signed 64-bit advisory lock key for ``parts`` (stable across processes)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresSink:
    """The output tables in one PostgreSQL schema."""

    def __init__(
        self,
        url: str,
        names: OutputNames,
        db_schema: str | None = None,
        lock_timeout: float = 600.0,
    ) -> None:
        """Connect; ``application_name`` is ``churnseg`` unless the URL sets one."""
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        params: dict[str, Any] = conninfo_to_dict(libpq_url(url))
        params.setdefault("application_name", "churnseg")
        params.setdefault("connect_timeout", 10)
        self.names = names
        self.db_schema = db_schema or "public"
        self.dialect = Dialect("postgresql", POSTGRES_TYPES, self.db_schema)
        self._lock_timeout_ms = int(lock_timeout * 1000)
        self._con: psycopg.Connection[Any] = psycopg.connect(**params, autocommit=True)

    def close(self) -> None:
        """Close the connection; an open transaction is rolled back."""
        self._con.close()

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._con.transaction(), self._con.cursor() as cur:
            cur.execute(
                "SELECT set_config('lock_timeout', %s, true)", (f"{self._lock_timeout_ms}",)
            )
            yield cur

    def _applied(self, cur: psycopg.Cursor[Any]) -> dict[str, int]:
        version_table = self.dialect.qualify(VERSION_TABLE)
        cur.execute("SELECT to_regclass(%s)", (version_table,))
        row = cur.fetchone()
        if row is None or row[0] is None:
            return {}
        cur.execute(f"SELECT object_name, MAX(version) FROM {version_table} GROUP BY object_name")
        return {str(name): int(version) for name, version in cur.fetchall()}

    def ensure_schema(self) -> int:
        """Create or migrate the schema's output tables in one locked transaction."""
        with self._con.cursor() as cur:
            if not migration_steps(self.dialect, self.names, self._applied(cur)):
                return SCHEMA_VERSION
        version_table = self.dialect.qualify(VERSION_TABLE)
        with self._transaction() as cur:
            # Concurrent CREATE SCHEMA IF NOT EXISTS can still collide: serialise migrations.
            cur.execute(
                "SELECT pg_advisory_xact_lock(%s)", (lock_key("churnseg-schema", self.db_schema),)
            )
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self.db_schema)}")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {version_table} ("
                "object_name text NOT NULL, version bigint NOT NULL, description text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (object_name, version))"
            )
            applied = self._applied(cur)
            for step in migration_steps(self.dialect, self.names, applied):
                for statement in step.statements:
                    cur.execute(statement)
                cur.execute(
                    f"INSERT INTO {version_table} (object_name, version, description) "
                    "VALUES (%s, %s, %s)",
                    (step.object_name, step.version, step.description),
                )
            return schema_version(self._applied(cur), self.names)

    def replace(
        self,
        spec: TableSpec,
        keys: pa.Array,
        batches: Iterable[pa.RecordBatch],
        retention: Retention | None,
        progress: Progress | None = None,
    ) -> int:
        """Stage ``batches`` by COPY, then swap the partitions ``keys`` in one transaction."""
        name = self.names.table(spec)
        table = self.dialect.qualify(name)
        part = quote(spec.partition)
        columns = ", ".join(quote(c) for c in spec.names)
        stage = quote(STAGE_TABLE)
        written = 0
        with self._transaction() as cur:
            cur.execute(
                f"CREATE TEMP TABLE {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            with cur.copy(f"COPY {stage} ({columns}) FROM STDIN (FORMAT csv)") as copy:
                for batch in batches:
                    buffer = io.BytesIO()
                    pacsv.write_csv(batch, buffer, CSV_OPTIONS)
                    copy.write(buffer.getbuffer())
                    written += batch.num_rows
                    if progress is not None:
                        progress(written)
            key_values = sorted(keys.to_pylist())
            for key in key_values:  # sorted: two multi-snapshot publishers cannot deadlock
                cur.execute(
                    "SELECT pg_advisory_xact_lock(%s)",
                    (lock_key("churnseg-publish", self.db_schema, name, str(key)),),
                )
            if key_values:
                cur.execute(f"DELETE FROM {table} WHERE {part} = ANY(%s)", (key_values,))
            cur.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage}")
            if retention is not None:
                apply_retention(cur.execute, table, part, retention, "%s")
        return written

    def upsert(self, spec: TableSpec, batch: pa.RecordBatch) -> None:
        """Insert ``batch``, replacing rows with the same primary key, in one transaction."""
        table = self.dialect.qualify(self.names.table(spec))
        columns = ", ".join(quote(c) for c in spec.names)
        keys = ", ".join(quote(c) for c in spec.primary_key)
        updates = ", ".join(
            f"{quote(c)} = EXCLUDED.{quote(c)}" for c in spec.names if c not in spec.primary_key
        )
        placeholders = ", ".join(["%s"] * len(spec.names))
        rows = list(zip(*(batch.column(c).to_pylist() for c in spec.names), strict=True))
        with self._transaction() as cur:
            cur.executemany(
                f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) "
                f"ON CONFLICT ({keys}) DO UPDATE SET {updates}",
                rows,
            )
