"""The output tables, defined once: columns, keys, Arrow types, DDL and versioned migrations.

Every column carries the schema version that introduced it (``since``), so the shape of any table
at any version can be rebuilt and a migration is derived, never hand-written twice: version ``v``
creates the tables introduced in ``v`` with their columns as of ``v``, and adds the columns
introduced in ``v`` to older tables. ``churnseg_schema`` records, per table or view, each version
applied; a database last touched by an older churnseg is brought forward on the next publish.

Arrow is the interchange form: publish functions read Parquet in record batches, cast each batch
to the canonical Arrow types here (``conform_batch``), and each database writer renders those.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum

import pyarrow as pa
import pyarrow.compute as pc

from churnseg.pipelines.sinks.errors import PublishError

SCHEMA_VERSION = 4
VERSION_TABLE = "churnseg_schema"
VERSION_NOTES: Mapping[int, str] = {
    1: "customer_scores as first released",
    2: "output contract: tiers, lifecycle, risk band, reasons, value columns; latest view; "
    "segment profiles; data quarantine; pipeline run log",
    3: "allocation: customer_assignments, owner_workload, view owner_contact_list",
    4: "intra-day updates: customer_scores.features_as_of and update_kind; customer_feedback; "
    "api_audit",
}
# Lower-case only, so ops can write names unquoted in PostgreSQL; at most 48 characters so the
# derived view and index names stay within PostgreSQL's 63-byte identifier limit.
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
LATEST_VIEW_SUFFIX = "_latest"


class Kind(StrEnum):
    """Logical column types; each database maps them to its own type names."""

    TEXT = "text"
    INTEGER = "integer"
    REAL = "real"
    DATE = "date"
    TIMESTAMP = "timestamp"
    JSON = "json"


ARROW_TYPES: Mapping[Kind, pa.DataType] = {
    Kind.TEXT: pa.string(),
    Kind.INTEGER: pa.int64(),
    Kind.REAL: pa.float64(),
    Kind.DATE: pa.date32(),
    # Whole seconds: every sink stores the same value, and re-publishing compares equal.
    Kind.TIMESTAMP: pa.timestamp("s", tz="UTC"),
    Kind.JSON: pa.string(),
}


@dataclass(frozen=True)
class Column:
    """One column of an output table."""

    name: str
    kind: Kind
    nullable: bool = False
    since: int = 1


@dataclass(frozen=True)
class Index:
    """A secondary index, named ``<table>_<suffix>``, created at schema version ``since``.

    ``since`` None: with the table.
    """

    suffix: str
    columns: tuple[str, ...]
    since: int | None = None


@dataclass(frozen=True)
class TableSpec:
    """One output table.

    Attributes:
        key: Logical name; also the ``OutputNames`` field holding the configured name.
        columns: Every column, in contract order.
        primary_key: Columns that identify a row.
        partition: The column whose values one publish replaces as a whole.
        created: Schema version that introduced the table.
        indexes: Secondary indexes, created with the table.
    """

    key: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    partition: str
    created: int
    indexes: tuple[Index, ...] = ()

    @property
    def names(self) -> list[str]:
        """Return the column names in contract order."""
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        """Return the column called ``name``."""
        return next(c for c in self.columns if c.name == name)

    def columns_at(self, version: int) -> tuple[Column, ...]:
        """Return the columns the table has at schema ``version``."""
        return tuple(c for c in self.columns if c.since <= version)

    def arrow_schema(self) -> pa.Schema:
        """Return the canonical Arrow schema of the table."""
        return pa.schema(
            [pa.field(c.name, ARROW_TYPES[c.kind], nullable=c.nullable) for c in self.columns]
        )


CUSTOMER_SCORES = TableSpec(
    key="customer_scores",
    columns=(
        Column("customer_id", Kind.TEXT),
        Column("snapshot_date", Kind.DATE),
        Column("segment_id", Kind.INTEGER),
        Column("segment_name", Kind.TEXT),
        Column("value_tier", Kind.TEXT, nullable=True, since=2),
        Column("lifecycle_stage", Kind.TEXT, nullable=True, since=2),
        Column("churn_probability", Kind.REAL),
        Column("risk_band", Kind.TEXT, nullable=True, since=2),
        Column("top_reasons", Kind.TEXT, nullable=True, since=2),
        Column("expected_value", Kind.REAL, nullable=True, since=2),
        Column("value_at_risk", Kind.REAL, nullable=True, since=2),
        Column("segmentation_model_version", Kind.INTEGER),
        Column("churn_model_version", Kind.INTEGER),
        Column("run_id", Kind.TEXT),
        Column("scored_at", Kind.TIMESTAMP),
        # When the features were taken: the snapshot's midnight for a full snapshot, the
        # moment of the update for an intra-day row (``score --changed``, the API's rescore).
        Column("features_as_of", Kind.TIMESTAMP, nullable=True, since=4),
        # 'snapshot' (a full scoring run) or 'intraday' (null in rows published before v4).
        Column("update_kind", Kind.TEXT, nullable=True, since=4),
    ),
    primary_key=("snapshot_date", "customer_id"),
    partition="snapshot_date",
    created=1,
    indexes=(Index("by_customer", ("customer_id", "snapshot_date")),),
)

SEGMENT_PROFILES = TableSpec(
    key="segment_profiles",
    columns=(
        Column("snapshot_date", Kind.DATE, since=2),
        Column("segment_id", Kind.INTEGER, since=2),
        Column("segment_name", Kind.TEXT, since=2),
        Column("size", Kind.INTEGER, since=2),
        Column("share", Kind.REAL, since=2),
        Column("revenue_share", Kind.REAL, nullable=True, since=2),
        Column("churn_rate", Kind.REAL, nullable=True, since=2),
        Column("profile", Kind.JSON, since=2),
        Column("segmentation_model_version", Kind.INTEGER, since=2),
        Column("run_id", Kind.TEXT, since=2),
    ),
    primary_key=("snapshot_date", "segment_id"),
    partition="snapshot_date",
    created=2,
)

DATA_QUARANTINE = TableSpec(
    key="data_quarantine",
    columns=(
        Column("run_id", Kind.TEXT, since=2),
        Column("table_name", Kind.TEXT, since=2),
        Column("source_row", Kind.INTEGER, nullable=True, since=2),
        Column("reason", Kind.TEXT, since=2),
        Column("record", Kind.JSON, nullable=True, since=2),
        # Filled by the publisher: orders runs for retention.
        Column("published_at", Kind.TIMESTAMP, since=2),
    ),
    primary_key=(),
    partition="run_id",
    created=2,
    indexes=(Index("by_run", ("run_id", "table_name", "reason")),),
)

PIPELINE_RUNS = TableSpec(
    key="pipeline_runs",
    columns=(
        Column("run_id", Kind.TEXT, since=2),
        Column("flow", Kind.TEXT, since=2),
        Column("snapshot_date", Kind.DATE, nullable=True, since=2),
        Column("started_at", Kind.TIMESTAMP, since=2),
        Column("finished_at", Kind.TIMESTAMP, nullable=True, since=2),
        Column("status", Kind.TEXT, since=2),
        Column("rows_read", Kind.INTEGER, nullable=True, since=2),
        Column("rows_quarantined", Kind.INTEGER, nullable=True, since=2),
        Column("rows_published", Kind.INTEGER, nullable=True, since=2),
        Column("message", Kind.TEXT, nullable=True, since=2),
    ),
    primary_key=("run_id",),
    partition="run_id",
    created=2,
)

CUSTOMER_ASSIGNMENTS = TableSpec(
    key="customer_assignments",
    columns=(
        Column("snapshot_date", Kind.DATE, since=3),
        Column("customer_id", Kind.TEXT, since=3),
        Column("owner_id", Kind.TEXT, nullable=True, since=3),
        Column("previous_owner_id", Kind.TEXT, nullable=True, since=3),
        Column("reason", Kind.TEXT, since=3),
        Column("mismatch", Kind.TEXT, nullable=True, since=3),
        # The customer's classes, so an owner's rows hold all they need (row-level security
        # on this table alone then covers the contact list).
        Column("value_tier", Kind.TEXT, nullable=True, since=3),
        Column("risk_band", Kind.TEXT, nullable=True, since=3),
        Column("churn_probability", Kind.REAL, nullable=True, since=3),
        Column("value_at_risk", Kind.REAL, nullable=True, since=3),
        Column("top_reasons", Kind.TEXT, nullable=True, since=3),
        Column("run_id", Kind.TEXT, since=3),
    ),
    primary_key=("snapshot_date", "customer_id"),
    partition="snapshot_date",
    created=3,
    indexes=(
        Index("by_owner", ("owner_id", "snapshot_date")),
        # The API looks up one customer's owner.
        Index("by_customer", ("customer_id", "snapshot_date"), since=4),
    ),
)

# The customer's classes an allocation row copies from its score row (allocation writes them,
# an intra-day update refreshes them).
ASSIGNMENT_SCORE_COLUMNS = (
    "value_tier",
    "risk_band",
    "churn_probability",
    "value_at_risk",
    "top_reasons",
)

OWNER_WORKLOAD = TableSpec(
    key="owner_workload",
    columns=(
        Column("snapshot_date", Kind.DATE, since=3),
        Column("owner_id", Kind.TEXT, since=3),
        Column("name", Kind.TEXT, nullable=True, since=3),
        Column("active", Kind.INTEGER, since=3),
        Column("capacity", Kind.INTEGER, since=3),
        Column("accounts", Kind.INTEGER, since=3),
        Column("a_tier_accounts", Kind.INTEGER, since=3),
        Column("high_risk_accounts", Kind.INTEGER, since=3),
        Column("value_at_risk", Kind.REAL, since=3),
        Column("capacity_used", Kind.REAL, nullable=True, since=3),
        Column("moved_in", Kind.INTEGER, since=3),
        Column("moved_out", Kind.INTEGER, since=3),
        Column("run_id", Kind.TEXT, since=3),
    ),
    primary_key=("snapshot_date", "owner_id"),
    partition="snapshot_date",
    created=3,
)

CUSTOMER_FEEDBACK = TableSpec(
    key="customer_feedback",
    columns=(
        Column("feedback_id", Kind.TEXT, since=4),
        Column("received_at", Kind.TIMESTAMP, since=4),
        # 'correction' (a person's class for a customer) or 'contact' (a contact outcome).
        Column("kind", Kind.TEXT, since=4),
        Column("customer_id", Kind.TEXT, since=4),
        Column("author", Kind.TEXT, since=4),
        Column("field", Kind.TEXT, nullable=True, since=4),
        Column("value", Kind.TEXT, nullable=True, since=4),
        Column("reason", Kind.TEXT, nullable=True, since=4),
        Column("contacted_at", Kind.TIMESTAMP, nullable=True, since=4),
        Column("channel", Kind.TEXT, nullable=True, since=4),
        Column("outcome", Kind.TEXT, nullable=True, since=4),
    ),
    primary_key=("feedback_id",),
    partition="feedback_id",
    created=4,
    indexes=(Index("by_customer", ("customer_id", "received_at")),),
)

API_AUDIT = TableSpec(
    key="api_audit",
    columns=(
        Column("audit_id", Kind.TEXT, since=4),
        Column("at", Kind.TIMESTAMP, since=4),
        Column("actor", Kind.TEXT, nullable=True, since=4),
        Column("method", Kind.TEXT, since=4),
        Column("path", Kind.TEXT, since=4),
        Column("customer_id", Kind.TEXT, nullable=True, since=4),
        Column("status", Kind.INTEGER, since=4),
        Column("detail", Kind.TEXT, nullable=True, since=4),
    ),
    primary_key=("audit_id",),
    partition="audit_id",
    created=4,
    indexes=(Index("by_time", ("at",)),),
)

TABLES: tuple[TableSpec, ...] = (
    CUSTOMER_SCORES,
    SEGMENT_PROFILES,
    DATA_QUARANTINE,
    PIPELINE_RUNS,
    CUSTOMER_ASSIGNMENTS,
    OWNER_WORKLOAD,
    CUSTOMER_FEEDBACK,
    API_AUDIT,
)
# Tables whose rows belong to one owner: row-level security on PostgreSQL.
OWNER_TABLES: tuple[TableSpec, ...] = (CUSTOMER_ASSIGNMENTS, OWNER_WORKLOAD)
LATEST_VIEW_SINCE = 2
CONTACT_LIST_SINCE = 3


def validate_identifier(name: str, what: str) -> str:
    """Return ``name`` when it is a plain lower-case SQL identifier.

    Raises:
        PublishError: ``name`` could carry SQL or would need quoting to be typed by ops.
    """
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise PublishError(
            f"{what} {name!r} is not a plain identifier "
            f"(lower-case letters, digits and _, at most 48 characters, not starting with a digit)"
        )
    return name


def quote(name: str) -> str:
    """Return a validated identifier in double quotes (the SQL standard, SQLite and PostgreSQL)."""
    return '"' + validate_identifier(name, "identifier") + '"'


@dataclass(frozen=True)
class OutputNames:
    """Configured names of the output tables (validated on creation)."""

    customer_scores: str = "customer_scores"
    segment_profiles: str = "segment_profiles"
    data_quarantine: str = "data_quarantine"
    pipeline_runs: str = "pipeline_runs"
    customer_assignments: str = "customer_assignments"
    owner_workload: str = "owner_workload"
    owner_contact_list: str = "owner_contact_list"
    customer_feedback: str = "customer_feedback"
    api_audit: str = "api_audit"

    def __post_init__(self) -> None:
        for f in fields(self):
            validate_identifier(getattr(self, f.name), f"table name ({f.name})")
        if len(set(self.all_objects())) != len(self.all_objects()):
            raise PublishError(f"output table names must be distinct, got {self.all_objects()}")

    def table(self, spec: TableSpec) -> str:
        """Return the configured name of ``spec``'s table."""
        name: str = getattr(self, spec.key)
        return name

    @property
    def latest_view(self) -> str:
        """Return the name of the view on the newest snapshot of customer scores."""
        return self.customer_scores + LATEST_VIEW_SUFFIX

    def all_objects(self) -> list[str]:
        """Return every table and view name, plus the version table."""
        views = [self.latest_view, self.owner_contact_list]
        return [*(self.table(t) for t in TABLES), *views, VERSION_TABLE]


@dataclass(frozen=True)
class Dialect:
    """How one database spells types and table names."""

    name: str
    types: Mapping[Kind, str]
    db_schema: str | None = None
    # PostgreSQL 15+: a view checks the reader's rights (and row-level security), not its owner's.
    security_invoker: bool = False

    def qualify(self, name: str) -> str:
        """Return the quoted, schema-qualified name of a table or view."""
        return f"{quote(self.db_schema)}.{quote(name)}" if self.db_schema else quote(name)


@dataclass(frozen=True)
class Step:
    """The statements that bring one table or view to one schema version."""

    object_name: str
    version: int
    statements: tuple[str, ...] = field(default_factory=tuple)

    @property
    def description(self) -> str:
        """Return what the version introduced."""
        return VERSION_NOTES[self.version]


def upsert_statement(spec: TableSpec, table: str, placeholder: str) -> str:
    """Return the INSERT that replaces rows with the same primary key (SQLite and PostgreSQL).

    Args:
        spec: The table.
        table: Its quoted (and qualified) name.
        placeholder: The driver's parameter marker (``?`` or ``%s``), one per column.
    """
    columns = ", ".join(quote(c) for c in spec.names)
    keys = ", ".join(quote(c) for c in spec.primary_key)
    updates = ", ".join(
        f"{quote(c)} = EXCLUDED.{quote(c)}" for c in spec.names if c not in spec.primary_key
    )
    markers = ", ".join([placeholder] * len(spec.names))
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({markers}) "
        f"ON CONFLICT ({keys}) DO UPDATE SET {updates}"
    )


def _column_sql(column: Column, dialect: Dialect) -> str:
    null = "" if column.nullable else " NOT NULL"
    return f"{quote(column.name)} {dialect.types[column.kind]}{null}"


def _table_steps(spec: TableSpec, dialect: Dialect, names: OutputNames, version: int) -> list[str]:
    table = names.table(spec)
    target = dialect.qualify(table)
    if version == spec.created:
        columns = [_column_sql(c, dialect) for c in spec.columns_at(version)]
        if spec.primary_key:
            columns.append(f"PRIMARY KEY ({', '.join(quote(c) for c in spec.primary_key)})")
        statements = [f"CREATE TABLE IF NOT EXISTS {target} ({', '.join(columns)})"]
        return statements + _index_steps(spec, target, table, version)
    added = [c for c in spec.columns if c.since == version]
    if any(not c.nullable for c in added):
        raise AssertionError(f"{spec.key}: a column added by a migration must be nullable")
    alters = [f"ALTER TABLE {target} ADD COLUMN {_column_sql(c, dialect)}" for c in added]
    return alters + _index_steps(spec, target, table, version)


def _index_steps(spec: TableSpec, target: str, table: str, version: int) -> list[str]:
    """Return the statements creating the indexes of ``spec`` that belong to ``version``."""
    return [
        f"CREATE INDEX IF NOT EXISTS {quote(f'{table}_{ix.suffix}')} ON {target} "
        f"({', '.join(quote(c) for c in ix.columns)})"
        for ix in spec.indexes
        if (ix.since or spec.created) == version
    ]


def _latest_view_steps(dialect: Dialect, names: OutputNames, version: int) -> list[str]:
    """Return the statements that (re)create the latest-snapshot view at ``version``."""
    source = dialect.qualify(names.customer_scores)
    columns = ", ".join(quote(c.name) for c in CUSTOMER_SCORES.columns_at(version))
    view = dialect.qualify(names.latest_view)
    return [
        f"DROP VIEW IF EXISTS {view}",
        f"CREATE VIEW {view} AS SELECT {columns} FROM {source} "
        f"WHERE {quote('snapshot_date')} = (SELECT MAX({quote('snapshot_date')}) FROM {source})",
    ]


def _contact_list_steps(dialect: Dialect, names: OutputNames) -> list[str]:
    """Return the statements that (re)create the per-owner contact list view.

    Each owner's customers at high risk in the newest allocation, ranked by value at risk.
    """
    source = dialect.qualify(names.customer_assignments)
    view = dialect.qualify(names.owner_contact_list)
    snapshot, owner = quote("snapshot_date"), quote("owner_id")
    options = " WITH (security_invoker = true)" if dialect.security_invoker else ""
    return [
        f"DROP VIEW IF EXISTS {view}",
        f"CREATE VIEW {view}{options} AS SELECT {owner}, "
        f"ROW_NUMBER() OVER (PARTITION BY {owner} ORDER BY {quote('value_at_risk')} DESC, "
        f"{quote('churn_probability')} DESC, {quote('customer_id')}) AS {quote('contact_rank')}, "
        f"{quote('customer_id')}, {snapshot}, {quote('value_tier')}, {quote('churn_probability')}, "
        f"{quote('value_at_risk')}, {quote('top_reasons')} FROM {source} "
        f"WHERE {quote('risk_band')} = 'high' AND {owner} IS NOT NULL "
        f"AND {snapshot} = (SELECT MAX({snapshot}) FROM {source})",
    ]


def migration_steps(dialect: Dialect, names: OutputNames, applied: Mapping[str, int]) -> list[Step]:
    """Return the steps that bring every object from its applied version to ``SCHEMA_VERSION``.

    Args:
        dialect: Target database.
        names: Configured table names.
        applied: Highest version applied per object name (absent: never created by churnseg).

    Raises:
        PublishError: The database holds a newer schema than this churnseg knows.
    """
    newer = {name: v for name, v in applied.items() if v > SCHEMA_VERSION}
    if newer:
        raise PublishError(
            f"the output database has schema version(s) {newer}, newer than this churnseg's "
            f"{SCHEMA_VERSION}; upgrade churnseg before publishing"
        )
    steps = []
    for version in range(1, SCHEMA_VERSION + 1):
        for spec in TABLES:
            table = names.table(spec)
            if applied.get(table, 0) < version and version >= spec.created:
                statements = _table_steps(spec, dialect, names, version)
                steps.append(Step(table, version, tuple(statements)))
        view = names.latest_view
        scores_changed = any(c.since == version for c in CUSTOMER_SCORES.columns)
        if applied.get(view, 0) < version and version >= LATEST_VIEW_SINCE:
            # Recreated when the scores' columns change; recorded at every version regardless.
            rebuild = version == LATEST_VIEW_SINCE or scores_changed
            statements = _latest_view_steps(dialect, names, version) if rebuild else []
            steps.append(Step(view, version, tuple(statements)))
        contacts = names.owner_contact_list
        if applied.get(contacts, 0) < version and version >= CONTACT_LIST_SINCE:
            # Built once; recorded at every later version, like the latest view.
            rebuild = version == CONTACT_LIST_SINCE
            statements = _contact_list_steps(dialect, names) if rebuild else []
            steps.append(Step(contacts, version, tuple(statements)))
    return steps


def schema_version(applied: Mapping[str, int], names: OutputNames) -> int:
    """Return the version every output object has reached (0 when none exists yet)."""
    objects = [names.table(t) for t in TABLES] + [names.latest_view, names.owner_contact_list]
    return min(applied.get(o, 0) for o in objects)


def missing_columns(spec: TableSpec, present: Sequence[str]) -> list[str]:
    """Return the required columns of ``spec`` absent from ``present``."""
    return [c.name for c in spec.columns if not c.nullable and c.name not in present]


def conform_batch(
    batch: pa.RecordBatch, spec: TableSpec, source: str, first_row: int = 0
) -> pa.RecordBatch:
    """Return ``batch`` with exactly ``spec``'s columns, in order, in the canonical Arrow types.

    Absent nullable columns become nulls; other columns are ignored. Dates may come as dates,
    timestamps or ISO text; timestamps as timestamps (naive ones are taken as UTC) or ISO text.

    Raises:
        PublishError: A required column is absent, a value cannot be converted, or a required
            column holds nulls; the message names the table, the column and the count.
    """
    label = f"{spec.key} (from {source})"
    missing = missing_columns(spec, batch.schema.names)
    if missing:
        raise PublishError(
            f"table {label}: required column(s) {missing} missing; "
            f"the file has {batch.schema.names}"
        )
    arrays = []
    for column in spec.columns:
        if column.name not in batch.schema.names:
            arrays.append(pa.nulls(batch.num_rows, ARROW_TYPES[column.kind]))
        else:
            arrays.append(conform_column(batch.column(column.name), column, label, first_row))
    return pa.RecordBatch.from_arrays(arrays, schema=spec.arrow_schema())


def conform_column(array: pa.Array, column: Column, label: str, first_row: int = 0) -> pa.Array:
    """Return ``array`` in ``column``'s canonical Arrow type, checked for nulls.

    Raises:
        PublishError: A value cannot be converted, or a required column holds nulls.
    """
    last = first_row + len(array) - 1
    try:
        array = _cast(array, column.kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise PublishError(
            f"table {label}: column {column.name!r} cannot be read as {column.kind} "
            f"in rows {first_row}-{last}: {exc}"
        ) from None
    if not column.nullable and array.null_count:
        raise PublishError(
            f"table {label}: required column {column.name!r} has {array.null_count} null "
            f"value(s) in rows {first_row}-{last} ({len(array)} rows)"
        )
    return array


def _cast(array: pa.Array, kind: Kind) -> pa.Array:
    """Return ``array`` in the canonical Arrow type of ``kind``."""
    target = ARROW_TYPES[kind]
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if array.type == target:
        return array
    if kind is Kind.TIMESTAMP:
        if _is_text(array.type):
            try:
                array = array.cast(pa.timestamp("us", tz="UTC"))
            except pa.ArrowInvalid:
                array = array.cast(pa.timestamp("us"))
        if pa.types.is_timestamp(array.type) and array.type.tz is None:
            array = pc.assume_timezone(array, "UTC")
        # Truncate to whole seconds (see ARROW_TYPES).
        return array.cast(target, safe=False)
    if kind is Kind.DATE and _is_text(array.type):
        try:
            return array.cast(target)
        except pa.ArrowInvalid:  # '2026-01-01 00:00:00': a timestamp written as text
            array = array.cast(pa.timestamp("us"))
    if kind is Kind.DATE and pa.types.is_timestamp(array.type):
        return array.cast(target, safe=False)  # drops the time of day
    return array.cast(target)


def _is_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))
