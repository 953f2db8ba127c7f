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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.csv as pacsv

from churnseg.pipelines.sinks.base import (
    Progress,
    Replacement,
    apply_retention,
    offset_progress,
)
from churnseg.pipelines.sinks.schema import (
    OWNER_TABLES,
    SCHEMA_VERSION,
    VERSION_TABLE,
    Dialect,
    Kind,
    OutputNames,
    TableSpec,
    migration_steps,
    quote,
    schema_version,
    upsert_statement,
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
POLICY_NAME = "churnseg_owner_rows"
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
        self._lock_timeout_ms = int(lock_timeout * 1000)
        self._con: psycopg.Connection[Any] = psycopg.connect(**params, autocommit=True)
        # PostgreSQL 15+ views can check the reader's rights (row-level security included).
        invoker = self._con.info.server_version >= 150000
        self.dialect = Dialect("postgresql", POSTGRES_TYPES, self.db_schema, invoker)

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

    def replace_all(
        self, replacements: Sequence[Replacement], progress: Progress | None = None
    ) -> list[int]:
        """Stage every replacement by COPY, then swap all their partitions in one transaction.

        Advisory locks are taken in one sorted order over all tables, so two publishers of
        overlapping snapshots cannot deadlock.
        """
        with self._transaction() as cur:
            counts: list[int] = []
            for i, item in enumerate(replacements):
                report = offset_progress(progress, sum(counts))
                counts.append(self._stage(cur, item, f"{STAGE_TABLE}_{i}", report))
            locks = sorted(
                {
                    lock_key("churnseg-publish", self.db_schema, self.names.table(item.spec), key)
                    for item in replacements
                    for key in map(str, item.keys.to_pylist())
                }
            )
            for key in locks:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            for i, item in enumerate(replacements):
                self._swap(cur, item, f"{STAGE_TABLE}_{i}")
        return counts

    def _stage(
        self,
        cur: psycopg.Cursor[Any],
        item: Replacement,
        stage_name: str,
        progress: Progress | None,
    ) -> int:
        """COPY ``item``'s batches into a temporary table dropped at commit; return rows."""
        table = self.dialect.qualify(self.names.table(item.spec))
        columns = ", ".join(quote(c) for c in item.spec.names)
        stage = quote(stage_name)
        cur.execute(f"CREATE TEMP TABLE {stage} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP")
        written = 0
        with cur.copy(f"COPY {stage} ({columns}) FROM STDIN (FORMAT csv)") as copy:
            for batch in item.batches:
                buffer = io.BytesIO()
                pacsv.write_csv(batch, buffer, CSV_OPTIONS)
                copy.write(buffer.getbuffer())
                written += batch.num_rows
                if progress is not None:
                    progress(written)
        return written

    def _swap(self, cur: psycopg.Cursor[Any], item: Replacement, stage_name: str) -> None:
        """Delete ``item``'s partitions, insert the staged rows, apply retention."""
        table = self.dialect.qualify(self.names.table(item.spec))
        part = quote(item.spec.partition)
        columns = ", ".join(quote(c) for c in item.spec.names)
        key_values = sorted(item.keys.to_pylist())
        if key_values:
            cur.execute(f"DELETE FROM {table} WHERE {part} = ANY(%s)", (key_values,))
        cur.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {quote(stage_name)}")
        if item.retention is not None:
            apply_retention(cur.execute, table, part, item.retention, "%s")

    def upsert(self, rows: Sequence[tuple[TableSpec, pa.RecordBatch]]) -> None:
        """Insert every batch, replacing rows with the same primary key, in one transaction."""
        with self._transaction() as cur:
            for spec, batch in rows:
                table = self.dialect.qualify(self.names.table(spec))
                values = zip(*(batch.column(c).to_pylist() for c in spec.names), strict=True)
                cur.executemany(upsert_statement(spec, table, "%s"), list(values))

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[Any], list[str]]:
        """Return the rows and column names of a read-only query (``?`` placeholders)."""
        with self._con.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params)
            columns = [d.name for d in cur.description or []]
            return cur.fetchall(), columns

    def secure_owner_rows(self, role_prefix: str, reader_role: str | None) -> None:
        """Enable row-level security on the allocation tables, keyed on the reader's role.

        The role ``<role_prefix><owner_id>`` reads only the rows of that owner; any other role
        without BYPASSRLS (and not the tables' owner) reads none. The contact list view is a
        security-invoker view over ``customer_assignments``, so the same policy applies to it.
        With ``reader_role``, that role gets USAGE on the schema and SELECT on the three objects.
        One transaction; running it again changes nothing.
        """
        from psycopg import sql

        condition = sql.SQL("{owner} IS NOT NULL AND current_user = {prefix} || {owner}").format(
            owner=sql.Identifier("owner_id"), prefix=sql.Literal(role_prefix)
        )
        policy = sql.Identifier(POLICY_NAME)
        with self._transaction() as cur:
            for spec in OWNER_TABLES:
                table = sql.SQL(self.dialect.qualify(self.names.table(spec)))
                cur.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
                cur.execute(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(policy, table))
                cur.execute(
                    sql.SQL("CREATE POLICY {} ON {} FOR SELECT USING ({})").format(
                        policy, table, condition
                    )
                )
            if reader_role is None:
                return
            objects = [
                *(self.names.table(spec) for spec in OWNER_TABLES),
                self.names.owner_contact_list,
            ]
            role = sql.Identifier(reader_role)
            cur.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                    sql.Identifier(self.db_schema), role
                )
            )
            for name in objects:
                cur.execute(
                    sql.SQL("GRANT SELECT ON {} TO {}").format(
                        sql.SQL(self.dialect.qualify(name)), role
                    )
                )
