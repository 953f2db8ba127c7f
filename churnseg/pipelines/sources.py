"""Extraction: copy each configured source into the run folder as Parquet with a row number.

Files (CSV or Parquet, one path or a glob, read in sorted name order) are read by DuckDB one
file at a time; databases are read through SQLAlchemy in batches of ``batch_rows``, each batch
written as a Parquet part, so memory stays bounded whatever the table size. DuckDB then joins the
parts, unifying types that differ between batches (an integer column with a text value becomes
text). Every copied row gains ``_row``, its position in the source, so quarantine can point back
to it and "latest row wins" rules have an order; a source of one Parquet file is copied byte for
byte instead, and ``read_extracted`` numbers its rows when cleaning reads the copy.

CSV files are read as text (conversion happens in cleaning, where failures get a reason); lines
the reader cannot split into fields (bad bytes for the encoding, too many or too few fields)
are not copied but written to ``<table>.rejects.parquet`` with their reason and text, so the
row accounting still covers them.
"""

from __future__ import annotations

import glob
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from ibis.backends import BaseBackend
from ibis.backends.duckdb import Backend as DuckDBBackend

from churnseg.features.cleaning import (
    BAD_ENCODING,
    MALFORMED_LINE,
    REASON,
    ROW,
    ReadOptions,
    parse_timestamp,
)
from churnseg.pipelines.config import Config, ConfigError, EngineConfig, SourceConfig, redact_url

REJECTS_SUFFIX = ".rejects.parquet"
REJECT_COLUMNS = {"source_row": pa.int64(), REASON: pa.string(), "record": pa.string()}
_ENCODING_ERRORS = ("INVALID ENCODING", "INVALID UNICODE")
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


class SourceError(RuntimeError):
    """A source that cannot be read; the message names the table and the location."""


@dataclass(frozen=True)
class Extracted:
    """One table's copy: rows in the source, rows the reader rejected, and the files."""

    rows: int
    rejected: int
    path: Path
    rejects_path: Path | None


def connect_engine(engine: EngineConfig | None = None) -> DuckDBBackend:
    """Return a fresh embedded DuckDB connection for one stage (session time zone UTC).

    Args:
        engine: Its ``duckdb_memory_limit`` caps DuckDB's memory; beyond it DuckDB spills to
            a temporary folder. Default: DuckDB's own limit (80% of the machine's memory).
    """
    con = ibis.duckdb.connect()
    configure_duckdb(con, engine)
    return con


def configure_duckdb(con: DuckDBBackend, engine: EngineConfig | None = None) -> None:
    """Set a new DuckDB connection up: UTC session, ``engine``'s memory limit and spill folder."""
    # Timestamps are naive UTC everywhere; casts from zoned values must not use the host zone.
    con.raw_sql("SET TimeZone = 'UTC'")
    if engine is not None and engine.duckdb_memory_limit is not None:
        spill = Path(tempfile.gettempdir()) / "churnseg-duckdb-spill"
        con.raw_sql(f"SET memory_limit = '{engine.duckdb_memory_limit}'")
        con.raw_sql(f"SET temp_directory = '{spill}'")


_BYTE_UNITS = {
    "byte": 1,
    "bytes": 1,
    **{f"{p}B": 1000 ** (i + 1) for i, p in enumerate("KMGTPE")},
    **{f"{p}iB": 1024 ** (i + 1) for i, p in enumerate("KMGTPE")},
}


def duckdb_memory_limit(con: DuckDBBackend) -> int:
    """Return the DuckDB connection's memory limit in bytes (set, or DuckDB's default)."""
    # DuckDB reports it cut to a tenth for people: "7.4 GiB", "667.5 MiB"; no limit is
    # "16383.9 PiB" (the figure is at most 7% low; it only steers a choice of plan).
    [(text,)] = con.con.execute("SELECT current_setting('memory_limit')").fetchall()
    number, unit = str(text).split()
    return int(float(number) * _BYTE_UNITS[unit])


class EngineError(ConfigError):
    """The configured feature engine cannot start (pyspark missing, no Java, bad master)."""


def spark_session(engine: EngineConfig) -> Any:
    """Return the process's Spark session for ``engine``, starting it on first use.

    pyspark is imported here, never at module import. A session already running in this
    process is reused (Spark allows one per process); its modifiable settings are updated.

    Raises:
        EngineError: pyspark is not installed or Spark cannot start (no Java, bad master).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise EngineError(
            "engine.backend is 'pyspark' but pyspark is not installed "
            "(pip install 'churnseg[spark]')"
        ) from None
    builder = SparkSession.builder.master(engine.spark_master).appName("churnseg")
    settings = {
        # Quiet by default, like the rest of the CLI; spark_conf can set it back.
        "spark.log.level": "ERROR",
        # Only temporary views are used: keep Spark's ./spark-warehouse out of the working dir.
        "spark.sql.warehouse.dir": str(Path(tempfile.gettempdir()) / "churnseg-spark-warehouse"),
        **engine.spark_settings(),
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        return builder.getOrCreate()
    except Exception as exc:  # the JVM gateway raises plain RuntimeErrors and Py4J errors
        raise EngineError(
            f"engine.backend pyspark: cannot start Spark (master {engine.spark_master!r}): "
            f"{_first_line(exc, None)}; is Java installed (java -version, JAVA_HOME)?"
        ) from None


# Distinct values a Parquet column chunk may collect in its dictionary before it is written
# plain. DuckDB's writer fills up to a fifth of a row group (24,576) before giving up, and
# ids, amounts and timestamps never fit: stopping at 8,192 wrote the 1M sample's 23M clean
# transaction lines in 5.4 s instead of 6.6 s (444 MB instead of 410 MB). Columns with few
# values keep their dictionaries.
DICTIONARY_VALUES = 8192
PARQUET_WRITE_OPTIONS: dict[str, int] = {"dictionary_size_limit": DICTIONARY_VALUES}


def _copy_cast(files: list[Path], target: Path, schema: pa.Schema) -> None:
    """Stream the row groups of Parquet ``files`` into one file ``target``, cast to ``schema``.

    One row group at a time, so memory stays bounded; a cast that would lose data raises.
    """
    with pq.ParquetWriter(target, schema) as writer:
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches():
                columns = [batch.column(f.name).cast(f.type) for f in schema]
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))


def declared_schema(declared: pa.Schema, written: pa.Schema) -> pa.Schema:
    """Return ``written`` (a file's schema) with the column types a query declares in Ibis.

    Engines widen some types on write: DuckDB sums integers into HUGEINT and stores that as
    DOUBLE, Spark keeps BIGINT. The declared types are the contract both are brought to.
    """
    return pa.schema([written.field(f.name).with_type(f.type) for f in declared])


class FeatureEngine:
    """The Ibis backend the feature build runs on, reading and writing run-folder Parquet.

    With DuckDB this is the embedded connection. With PySpark, tables are read and written by
    Spark through ``file://`` URIs (so a cluster whose default file system is HDFS still finds
    the run folder) and every written table ends as one Parquet file, the form DuckDB writes,
    so every reader downstream (pyarrow, pandas, DuckDB) is unchanged. Use it as a context
    manager: leaving releases what it registered; the Spark session stays up for reuse.
    """

    def __init__(self, con: BaseBackend, session: Any = None) -> None:
        self.con = con
        self._session = session
        self._views: list[str] = []

    @property
    def backend(self) -> str:
        """Return the Ibis backend name: ``duckdb`` or ``pyspark``."""
        return str(self.con.name)

    def read_parquet(self, path: Path) -> ir.Table:
        """Return the Parquet file (or folder of parts) at ``path`` as a table."""
        if self._session is None:
            return self.con.read_parquet(path)
        view = f"churnseg_{path.name.split('.')[0]}_{uuid.uuid4().hex[:12]}"
        self._session.read.parquet(path.resolve().as_uri()).createOrReplaceTempView(view)
        self._views.append(view)
        return self.con.table(view)

    def write_parquet(self, expr: ir.Table, path: Path) -> None:
        """Execute ``expr`` and write it to the single Parquet file ``path``, typed as declared.

        Column types are the ones ``expr`` declares in Ibis on every engine (``declared_schema``),
        so DuckDB and Spark write the same file.
        """
        if self._session is None:
            self.write_sql(self.con.compile(expr), expr.schema().to_pyarrow(), path)
            return
        parts = path.with_name(path.name + ".parts")
        shutil.rmtree(parts, ignore_errors=True)
        try:
            self.con.to_parquet(expr, parts.resolve().as_uri(), mode="overwrite")
            # Spark also writes _SUCCESS and .crc files; only part-*.parquet hold rows.
            files = sorted(parts.glob("part-*.parquet"))
            nullable = pa.schema([f.with_nullable(True) for f in expr.schema().to_pyarrow()])
            _copy_cast(files, path, nullable)
        finally:
            shutil.rmtree(parts, ignore_errors=True)

    def write_sql(self, sql: str, declared: pa.Schema, path: Path) -> None:
        """Run DuckDB ``sql`` into the Parquet file ``path``, typed as ``declared``."""
        options = "".join(f", {k.upper()} {v}" for k, v in PARQUET_WRITE_OPTIONS.items())
        with self.con._safe_raw_sql(f"COPY ({sql}) TO {str(path)!r} (FORMAT 'parquet'{options})"):
            pass
        written = pq.read_schema(path)
        schema = declared_schema(declared, written)
        if schema != written:
            wide = path.with_name(path.name + ".wide")
            path.replace(wide)
            _copy_cast([wide], path, schema)
            wide.unlink()

    def close(self) -> None:
        """Drop the Spark views this engine registered, or close the DuckDB connection."""
        if self._session is None:
            self.con.disconnect()
            return
        for view in self._views:
            self._session.catalog.dropTempView(view)
        self._views.clear()

    def __enter__(self) -> FeatureEngine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def connect_feature_engine(engine: EngineConfig) -> FeatureEngine:
    """Return the feature engine ``engine`` configures: embedded DuckDB or PySpark.

    Raises:
        EngineError: ``pyspark`` is configured but Spark cannot start.
    """
    if engine.backend == "duckdb":
        return FeatureEngine(connect_engine(engine))
    session = spark_session(engine)
    return FeatureEngine(ibis.pyspark.connect(session), session)


def database_url(url: str) -> sa.URL:
    """Return ``url`` parsed, with ``postgresql://`` pointed at the psycopg 3 driver.

    Raises:
        SourceError: The URL cannot be parsed (the message hides the password).
    """
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise SourceError(f"not a database URL: {redact_url(url)}") from None
    driver = _DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def _first_line(exc: BaseException, secret: str | None) -> str:
    """Return the first line of an error message with ``secret`` blanked out."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if secret:
        from urllib.parse import quote

        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, "***")
    return text


def _write_part(parts: Path, index: int, table: pa.Table) -> Path:
    parts.mkdir(parents=True, exist_ok=True)
    path = parts / f"part-{index:06d}.parquet"
    pq.write_table(table, path)
    return path


def _arrow_column(values: list[Any]) -> pa.Array | None:
    """Return ``values`` as an Arrow array, as text when their types mix; None when all null."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        array = pa.array([None if v is None else str(v) for v in values], type=pa.string())
    return None if pa.types.is_null(array.type) else array


class EnginePool:
    """Database connection pools by URL, kept open across reads; safe to share between threads.

    Only looking an engine up or creating it takes the lock, never a read: SQLAlchemy engines
    are themselves thread-safe, so concurrent reads of the same database run side by side.
    """

    def __init__(self) -> None:
        self._engines: dict[str, sa.Engine] = {}
        self._lock = threading.Lock()

    def get(self, key: str, create: Callable[[], sa.Engine]) -> sa.Engine:
        """Return the engine kept for ``key``, created with ``create`` when there is none."""
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = self._engines[key] = create()
            return engine

    def kept(self) -> list[sa.Engine]:
        """Return the engines kept open."""
        with self._lock:
            return list(self._engines.values())

    def discard(self, key: str, engine: sa.Engine) -> None:
        """Forget ``engine`` (a failed one is opened anew next time) and dispose of it."""
        with self._lock:
            if self._engines.get(key) is engine:
                del self._engines[key]
        engine.dispose()

    def close(self) -> None:
        """Dispose of every engine kept."""
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.dispose()


def _sql_parts(
    name: str,
    source: SourceConfig,
    config: Config,
    parts: Path,
    customers: Sequence[str] | None = None,
    engines: EnginePool | None = None,
) -> list[str]:
    """Stream a database table or query (the rows of ``customers``) into Parquet parts.

    ``engines``: connection pools kept by the caller across calls (the API's rescores);
    without it the connection is closed after the read.

    Returns:
        The column names.
    """
    url = database_url(config.resolve(source.url or ""))
    shown = url.render_as_string(hide_password=True)
    where = f"table {name!r} ({shown})"
    pool_key = url.render_as_string(hide_password=False)

    def create() -> sa.Engine:
        try:
            return sa.create_engine(url, pool_pre_ping=engines is not None)
        except (sa.exc.SQLAlchemyError, ImportError) as exc:
            raise SourceError(
                f"{where}: cannot use this URL: {_first_line(exc, url.password)}"
            ) from None

    engine = engines.get(pool_key, create) if engines is not None else create()
    failed = True
    try:
        with engine.connect() as conn:
            stmt: Any = _source_select(conn, source, where, customers is not None)
            if customers is not None:
                # The database compares its own id type with the ids given as text, and uses
                # an index on it (``_untyped``).
                column: Any = sa.column(_customer_column(source))
                stmt = stmt.where(column.in_(_untyped(list(customers))))
            result = conn.execution_options(
                stream_results=True, max_row_buffer=source.batch_rows
            ).execute(stmt)
            columns = list(result.keys())
            if len(set(columns)) != len(columns) or ROW in columns:
                raise SourceError(
                    f"{where}: column names must be unique and not {ROW!r}; got {columns}"
                )
            offset = 0
            for index, batch in enumerate(result.partitions(source.batch_rows)):
                values = zip(*batch, strict=True)  # rows to columns
                arrays = {c: _arrow_column(list(v)) for c, v in zip(columns, values, strict=True)}
                kept = {c: a for c, a in arrays.items() if a is not None}
                kept[ROW] = pa.array(np.arange(offset, offset + len(batch)), type=pa.int64())
                _write_part(parts, index, pa.table(kept))
                offset += len(batch)
            if offset == 0:
                empty = {c: pa.array([], type=pa.string()) for c in columns}
                _write_part(parts, 0, pa.table({**empty, ROW: pa.array([], type=pa.int64())}))
        failed = False
    except SourceError:
        raise
    except sa.exc.SQLAlchemyError as exc:
        reason = _first_line(getattr(exc, "orig", None) or exc, url.password)
        raise SourceError(f"{where}: cannot read: {reason}") from None
    finally:
        if engines is None:
            engine.dispose()
        elif failed:  # a failed pool is opened anew next time
            engines.discard(pool_key, engine)
    return columns


def _untyped(value: Any) -> Any:
    """Return a bound parameter the database reads as the type of what it is compared with.

    SQLAlchemy's psycopg dialect casts text parameters to VARCHAR, which PostgreSQL cannot
    compare with a timestamp or an integer column; untyped, psycopg sends text as 'unknown'.
    """
    return sa.bindparam(None, value, type_=sa.types.NullType(), expanding=isinstance(value, list))


def _source_from(conn: sa.Connection, source: SourceConfig, where: str) -> tuple[Any, list[str]]:
    """Return a database source as a FROM clause, and its column names."""
    stmt = _source_select(conn, source, where, wrap=True)
    columns = list(conn.execute(stmt.limit(0)).keys())
    return stmt.subquery("churnseg_rows"), columns


def _source_select(conn: sa.Connection, source: SourceConfig, where: str, wrap: bool) -> Any:
    """Return a SELECT of every row of a database source (its table, or its query).

    ``wrap``: a query source becomes a subquery, so a WHERE clause can be added to it.
    """
    if source.table is not None:
        schema, _, table = source.table.rpartition(".")
        if not sa.inspect(conn).has_table(table, schema=schema or None):
            raise SourceError(f"{where}: no table {source.table!r} in the database")
        return sa.select(sa.text("*")).select_from(sa.table(table, schema=schema or None))
    if wrap:
        return sa.select(sa.text("*")).select_from(sa.text(f"({source.query}) AS churnseg_query"))
    return sa.text(source.query or "")


def _rejected_lines(con: DuckDBBackend, rejects: str, header: bool, offset: int) -> ir.Table:
    """Return the reader's rejected lines as ``source_row``, ``reason``, ``record`` (JSON)."""
    errors = con.table(rejects)
    per_line = errors.group_by("line").aggregate(
        error_type=errors.error_type.arbitrary(),
        text=errors.csv_line.arbitrary(),
        message=errors.error_message.arbitrary(),
    )
    source_row = per_line.line - (2 if header else 1) + offset
    record = ibis.struct(
        {"line": per_line.line, "text": per_line.text, "error": per_line.message}
    ).cast("json")
    return per_line.select(
        source_row=source_row.cast("int64"),
        **{
            REASON: ibis.ifelse(
                per_line.error_type.isin(_ENCODING_ERRORS), BAD_ENCODING, MALFORMED_LINE
            )
        },
        record=record.cast("string"),
    )


def _with_source_rows(numbered: ir.Table, rejected: pa.Table, offset: int) -> ir.Table:
    """Return ``numbered`` (``_row`` = offset + read position) shifted past rejected lines."""
    # The k-th accepted row sits after every rejected line whose index minus the rejected lines
    # before it is <= k: an as-of join on that threshold counts them without sorting the table.
    skipped = np.sort(rejected.column("source_row").to_numpy()) - offset
    thresholds = ibis.memtable(
        {"threshold": skipped - np.arange(skipped.size), "before": np.arange(1, skipped.size + 1)}
    )
    thresholds = thresholds.group_by("threshold").aggregate(before=thresholds.before.max())
    joined = numbered.asof_join(thresholds, on=(numbered[ROW] - offset) >= thresholds.threshold)
    row = joined[ROW] + joined.before.fill_null(0)
    return joined.mutate(**{ROW: row.cast("int64")}).drop("threshold", "before")


def _customer_column(source: SourceConfig) -> str:
    """Return the source's name of the customer id column."""
    return source.columns.get("customer_id", "customer_id")


@ibis.udf.scalar.builtin(name="trim", signature=((dt.string,), dt.string))
def _trim_spaces(text: str) -> str:  # DuckDB built-in: spaces only, 3x faster than .strip()
    raise NotImplementedError


def _only_customers(
    table: ir.Table, source: SourceConfig, customers: Sequence[str] | None
) -> ir.Table:
    """Return the rows of ``table`` whose customer id is one of ``customers`` (all when None).

    Ids are compared as text without surrounding spaces, as cleaning reads them. (Ibis's
    ``strip`` also removes tabs and line breaks, and took 1.4 s instead of 0.5 s on 10M
    events; an id padded with those is not found by an intra-day update.)
    """
    if customers is None:
        return table
    column = _customer_column(source)
    if column not in table.columns:
        return table
    return table.filter(_trim_spaces(table[column].cast("string")).isin(list(customers)))


def _csv_options(source: SourceConfig, **extra: Any) -> dict[str, Any]:
    """Return DuckDB's CSV reader options for a source: every field as text, plus ``extra``."""
    options: dict[str, Any] = {
        "header": source.header,
        "all_varchar": True,
        "encoding": source.encoding,
        **extra,
    }
    if source.delimiter is not None:
        options["delim"] = source.delimiter
    return options


def _csv_part(
    con: DuckDBBackend,
    name: str,
    file: str,
    source: SourceConfig,
    offset: int,
    target: Path,
    customers: Sequence[str] | None = None,
) -> tuple[int, pa.Table]:
    """Copy one CSV file to ``target``; return its source rows and its rejected lines.

    With ``customers``, only their rows are copied (``_row`` is their line) and the rows copied
    are returned with no rejected line: a line the reader could not split has no customer.
    """
    rejects = f"rejects_{name}_{target.stem.replace('-', '_')}"
    options = _csv_options(
        source, store_rejects=True, rejects_table=rejects, rejects_scan=f"{rejects}_scan"
    )
    try:
        table = con.read_csv(file, **options)
        _refuse_row_column(name, file, table.columns)
        numbered = table.mutate(**{ROW: ibis.row_number() + offset})
        con.to_parquet(
            _only_customers(numbered, source, customers), target, **PARQUET_WRITE_OPTIONS
        )
        if customers is not None:
            # ``_row`` positions past rejected lines are not corrected: a scoped copy is never
            # quarantined by position, and its rejected lines belong to no customer.
            return int(pq.ParquetFile(target).metadata.num_rows), _no_rejects()
        rejected = con.to_pyarrow(_rejected_lines(con, rejects, source.header, offset))
        if rejected.num_rows:
            shifted = target.with_suffix(".shifted.parquet")
            con.to_parquet(_with_source_rows(con.read_parquet(target), rejected, offset), shifted)
            shifted.replace(target)
    except duckdb.Error as exc:
        raise SourceError(f"table {name!r}: cannot read {file}: {_first_line(exc, None)}") from None
    accepted = int(pq.ParquetFile(target).metadata.num_rows)
    return accepted + rejected.num_rows, rejected


# DuckDB reads a Parquet file in parallel by row group: a file with larger groups is rewritten
# (DuckDB's own groups), not copied, so cleaning does not read it on one thread.
VERBATIM_MAX_GROUP_ROWS = 1 << 20
# The column DuckDB's ``file_row_number`` option adds; a source holding it is rewritten.
_FILE_ROW_NUMBER = "file_row_number"


def _verbatim_copy(name: str, file: str, target: Path) -> int | None:
    """Copy one Parquet file byte for byte to ``target``; return its rows, or None if it cannot.

    The copy has no ``_row``: ``read_extracted`` numbers its rows on read, the same numbers
    a rewrite stores (rewriting 23M transaction lines cost 7 s of the extract at 1M customers,
    copying them 0.3 s). None when the file has large row groups or a ``file_row_number``
    column; the caller then rewrites it. Only the footer is read here: a page DuckDB cannot
    decode fails when cleaning reads it, not here.

    Raises:
        SourceError: The file is not Parquet, or it has a column named ``_row``.
    """
    try:
        metadata = pq.ParquetFile(file).metadata
        names = metadata.schema.to_arrow_schema().names
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"table {name!r}: cannot read {file}: {_first_line(exc, None)}") from None
    _refuse_row_column(name, file, names)
    groups = (metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    if _FILE_ROW_NUMBER in names or max(groups, default=0) > VERBATIM_MAX_GROUP_ROWS:
        return None
    shutil.copyfile(file, target)
    return int(metadata.num_rows)


def read_extracted(con: DuckDBBackend, path: Path) -> ir.Table:
    """Return an extracted table (``extract_table``'s output) with its ``_row`` column.

    A verbatim copy of one Parquet file has no ``_row``: its rows are numbered by position,
    which is what ``_row`` holds in a rewritten copy.
    """
    # Writers other than DuckDB (pyarrow) leave NaN out of a float column's min and max, and
    # DuckDB 2.0 then folds isnan() to false on every row: cleaning would keep NaN amounts.
    if ROW in pq.read_schema(path).names:
        return con.read_parquet(path, can_have_nan=True)
    return numbered_by_position(con.read_parquet(path, file_row_number=True, can_have_nan=True))


def numbered_by_position(table: ir.Table, offset: int = 0) -> ir.Table:
    """Return ``table``, read with ``file_row_number``, with ``_row`` = ``offset`` + position."""
    row = (table[_FILE_ROW_NUMBER] + offset).cast("int64")
    return table.mutate(**{ROW: row}).drop(_FILE_ROW_NUMBER)


def _refuse_row_column(name: str, file: str, columns: Sequence[str]) -> None:
    """Raise ``SourceError`` when a source file has a column named ``_row`` (reserved)."""
    if ROW in columns:
        raise SourceError(f"table {name!r}: {file} has a column named {ROW!r} (reserved)")


def _parquet_part(
    con: DuckDBBackend,
    name: str,
    file: str,
    offset: int,
    target: Path,
    source: SourceConfig,
    customers: Sequence[str] | None = None,
) -> int:
    """Copy one Parquet file (the rows of ``customers``) to ``target`` with ``_row``.

    Returns:
        The file's rows, copied or not: where the next file's positions start.
    """
    try:
        table = con.read_parquet(file, file_row_number=True)
        _refuse_row_column(name, file, table.columns)
        numbered = numbered_by_position(table, offset)
        con.to_parquet(
            _only_customers(numbered, source, customers), target, **PARQUET_WRITE_OPTIONS
        )
    except duckdb.Error as exc:
        raise SourceError(f"table {name!r}: cannot read {file}: {_first_line(exc, None)}") from None
    return int(pq.ParquetFile(file).metadata.num_rows)


def _source_files(name: str, source: SourceConfig, config: Config) -> list[str]:
    """Return the files of a file source, in sorted name order (at least one)."""
    pattern = config.resolve(source.path or "")
    files = sorted(glob.glob(pattern))
    if not files:
        raise SourceError(f"table {name!r}: no file matches {pattern}")
    return files


def _file_parts(
    con: DuckDBBackend,
    name: str,
    source: SourceConfig,
    config: Config,
    parts: Path,
    customers: Sequence[str] | None = None,
) -> pa.Table:
    """Copy every file of a file source to ``parts``; return the rejected CSV lines."""
    files = _source_files(name, source, config)
    parts.mkdir(parents=True, exist_ok=True)
    offset = 0
    rejected: list[pa.Table] = []
    for index, file in enumerate(files):
        if Path(file).stat().st_size == 0:
            raise SourceError(
                f"table {name!r}: {file} is empty (0 bytes); a file needs at least its header"
            )
        target = parts / f"part-{index:06d}.parquet"
        copied = None
        if source.file_format != "csv" and len(files) == 1 and customers is None:
            copied = _verbatim_copy(name, file, target)
        if copied is not None:
            rows = copied
        elif source.file_format == "csv":
            rows, bad = _csv_part(con, name, file, source, offset, target, customers)
            rejected.append(bad)
            if customers is not None:  # the lines before the last one copied
                rows = next_offset(pq.read_table(target, columns=[ROW]).column(ROW), offset)
        else:
            rows = _parquet_part(con, name, file, offset, target, source, customers)
        offset += rows
    empty = _no_rejects()
    return pa.concat_tables([empty, *(t.cast(empty.schema) for t in rejected)])


def next_offset(rows: pa.ChunkedArray | pa.Array, offset: int) -> int:
    """Return how far the next file's ``_row`` starts after a scoped CSV part's positions.

    A scoped copy of a CSV file does not count its lines; the next file's rows only need to
    come after every row copied from it, so "latest row wins" rules order them as a full
    extract does (Parquet files are counted exactly from their metadata).
    """
    highest = pc.max(rows).as_py()
    return 0 if highest is None else int(highest) + 1 - offset


def _no_rejects() -> pa.Table:
    """Return an empty table of rejected lines."""
    return pa.table({c: pa.array([], type=t) for c, t in REJECT_COLUMNS.items()})


def extract_table(
    con: DuckDBBackend,
    name: str,
    source: SourceConfig,
    config: Config,
    out_dir: Path,
    customers: Sequence[str] | None = None,
    engines: EnginePool | None = None,
) -> Extracted:
    """Copy the source of logical table ``name`` to ``out_dir/<name>.parquet``.

    With ``customers`` (ids as text), only the rows of those customers are copied: an
    intra-day update reads a few customers' history, filtered in the database or by DuckDB.
    ``engines``: database connection pools the caller keeps open across calls.

    Raises:
        SourceError: A file is missing, empty or unreadable, the database cannot be reached,
            the table does not exist or the query fails (messages never show the password).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.parquet"
    parts = out_dir / f"{name}.parts"
    shutil.rmtree(parts, ignore_errors=True)
    rejects_path = out_dir / f"{name}{REJECTS_SUFFIX}"
    rejects_path.unlink(missing_ok=True)
    try:
        columns: list[str] | None = None
        if source.path is not None:
            rejected = _file_parts(con, name, source, config, parts, customers)
        else:
            columns = _sql_parts(name, source, config, parts, customers, engines)
            rejected = _no_rejects()
        files = sorted(str(p) for p in parts.glob("part-*.parquet"))
        if len(files) == 1 and columns is None:
            # One source file: its part already is the table (copying it again cost 10 s
            # on 23M transaction lines).
            Path(files[0]).replace(target)
        else:
            combined = con.read_parquet(files, union_by_name=True)
            if columns is not None:  # a column null in every batch is absent from every part
                combined = combined.select(
                    *[
                        combined[c] if c in combined.columns else ibis.null("string").name(c)
                        for c in [*columns, ROW]
                    ]
                )
            con.to_parquet(combined, target, **PARQUET_WRITE_OPTIONS)
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    copied = int(pq.ParquetFile(target).metadata.num_rows)
    if rejected.num_rows:
        pq.write_table(rejected, rejects_path)
    return Extracted(
        rows=copied + rejected.num_rows,
        rejected=rejected.num_rows,
        path=target,
        rejects_path=rejects_path if rejected.num_rows else None,
    )


def extract_sources(
    config: Config, out_dir: Path, customers: Sequence[str] | None = None
) -> dict[str, int]:
    """Copy every configured source to ``out_dir/<table>.parquet``; return source rows per table.

    Source rows count the CSV lines the reader rejected (``<table>.rejects.parquet``) too.
    With ``customers``, only their rows are copied (``extract_table``).
    """
    con = connect_engine(config.engine)
    try:
        return {
            name: extract_table(con, name, source, config, out_dir, customers).rows
            for name, source in sorted(config.sources.items())
        }
    finally:
        con.disconnect()


# Where each table records that something happened to a customer: what makes a customer
# "changed" since a snapshot (``customers_changed_since``).
DATED_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "customers": ("signup_date", "churn_date"),
    "transactions": ("timestamp",),
    "events": ("timestamp",),
    "subscriptions": ("start_date", "end_date"),
}


def _file_relation(con: DuckDBBackend, name: str, source: SourceConfig, config: Config) -> ir.Table:
    """Return every file of a file source as one DuckDB relation (CSV as text)."""
    files = _source_files(name, source, config)
    if source.file_format != "csv":
        return con.read_parquet(files, union_by_name=True)
    # Lines the reader cannot split have no customer to find.
    return con.read_csv(files, **_csv_options(source, ignore_errors=True))


def _changed_in_file(
    con: DuckDBBackend,
    name: str,
    source: SourceConfig,
    config: Config,
    since: datetime,
    until: datetime,
) -> set[str]:
    """Return the ids of a file source with a dated row in ``[since, until]``."""
    try:
        raw = _file_relation(con, name, source, config)
        id_column = _customer_column(source)
        dated = [source.columns.get(c, c) for c in DATED_COLUMNS[name]]
        dated = [c for c in dated if c in raw.columns]
        if id_column not in raw.columns or not dated:
            return set()
        options = ReadOptions(tuple(source.date_formats), source.time_zone)
        start = ibis.literal(since.replace(tzinfo=None), "timestamp")
        end = ibis.literal(until.replace(tzinfo=None), "timestamp")
        newer = [parse_timestamp(raw[c], options).between(start, end) for c in dated]
        condition = newer[0] if len(newer) == 1 else ibis.or_(*newer)
        ids = raw.filter(condition.fill_null(False)).select(
            customer_id=raw[id_column].cast("string").strip()
        )
        found = con.to_pyarrow(ids.distinct()).column("customer_id").to_pylist()
    except duckdb.Error as exc:
        raise SourceError(f"table {name!r}: cannot read: {_first_line(exc, None)}") from None
    return {i for i in found if i}


def _database_ids(
    name: str,
    source: SourceConfig,
    config: Config,
    dated: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> set[str]:
    """Return the distinct customer ids of a database source, as text.

    With ``dated`` columns, only ids with a value of one of them in ``[since, until]``. The
    moments go to the database as untyped text (``_untyped``), so they compare with a
    timestamp, a date or an ISO text column alike, in the database's own types.
    """
    url = database_url(config.resolve(source.url or ""))
    where = f"table {name!r} ({url.render_as_string(hide_password=True)})"
    id_column = _customer_column(source)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows, columns = _source_from(conn, source, where)
            if id_column not in columns:
                return set()
            stmt: Any = sa.select(sa.column(id_column)).select_from(rows).distinct()
            if dated is not None and since is not None and until is not None:
                present = [c for c in dated if c in columns]
                if not present:
                    return set()
                start, end = (
                    _untyped(m.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S"))
                    for m in (since, until)
                )
                stmt = stmt.where(sa.or_(*(sa.column(c).between(start, end) for c in present)))
            found = conn.execute(stmt).scalars().all()
    except sa.exc.SQLAlchemyError as exc:
        reason = _first_line(getattr(exc, "orig", None) or exc, url.password)
        raise SourceError(f"{where}: cannot read: {reason}") from None
    finally:
        engine.dispose()
    return {str(i).strip() for i in found if i is not None and str(i).strip()}


def customers_changed_since(
    config: Config, since: datetime, until: datetime
) -> dict[str, set[str]]:
    """Return, per source table, the ids of customers with a dated row in ``[since, until]``.

    A dated row is a transaction or event, a subscription start or end, or a customer's
    signup or churn date (``DATED_COLUMNS``). Dates are read as cleaning reads them (formats,
    time zone). A row whose date does not parse is not a change, nor is one after ``until``
    (the update's moment): cleaning would quarantine the first, features cannot see the second.
    """
    found: dict[str, set[str]] = {}
    con = connect_engine(config.engine)
    try:
        for name in DATED_COLUMNS:
            source = config.sources.get(name)
            if source is None:
                continue
            if source.path is not None:
                found[name] = _changed_in_file(con, name, source, config, since, until)
            else:
                dated = [source.columns.get(c, c) for c in DATED_COLUMNS[name]]
                found[name] = _database_ids(name, source, config, dated, since, until)
    finally:
        con.disconnect()
    return found


def source_customer_ids(config: Config) -> set[str]:
    """Return every customer id of the ``customers`` source, as text (empty without one)."""
    source = config.sources.get("customers")
    if source is None:
        return set()
    id_column = _customer_column(source)
    if source.path is not None:
        con = connect_engine(config.engine)
        try:
            raw = _file_relation(con, "customers", source, config)
            ids = raw.select(customer_id=raw[id_column].cast("string").strip()).distinct()
            found = con.to_pyarrow(ids).column("customer_id").to_pylist()
        except duckdb.Error as exc:
            raise SourceError(f"table 'customers': cannot read: {_first_line(exc, None)}") from None
        finally:
            con.disconnect()
        return {i for i in found if i}
    return _database_ids("customers", source, config)
