"""Extraction: copy each configured source into the run folder as Parquet with a row number.

Files (CSV or Parquet, one path or a glob, read in sorted name order) are read by DuckDB one
file at a time; databases are read through SQLAlchemy in batches of ``batch_rows``, each batch
written as a Parquet part, so memory stays bounded whatever the table size. DuckDB then joins the
parts, unifying types that differ between batches (an integer column with a text value becomes
text). Every copied row gains ``_row``, its position in the source, so quarantine can point back
to it and "latest row wins" rules have an order.

CSV files are read as text (conversion happens in cleaning, where failures get a reason); lines
the reader cannot split into fields (bad bytes for the encoding, too many or too few fields)
are not copied but written to ``<table>.rejects.parquet`` with their reason and text, so the
row accounting still covers them.
"""

from __future__ import annotations

import glob
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from ibis.backends.duckdb import Backend as DuckDBBackend

from churnseg.features.cleaning import BAD_ENCODING, MALFORMED_LINE, REASON, ROW
from churnseg.pipelines.config import Config, SourceConfig, redact_url

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


def connect_engine() -> DuckDBBackend:
    """Return a fresh embedded DuckDB connection for one stage (session time zone UTC)."""
    con = ibis.duckdb.connect()
    # Timestamps are naive UTC everywhere; casts from zoned values must not use the host zone.
    con.raw_sql("SET TimeZone = 'UTC'")
    return con


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


def _sql_parts(name: str, source: SourceConfig, config: Config, parts: Path) -> list[str]:
    """Stream a database table or query into Parquet parts; return the column names."""
    url = database_url(config.resolve(source.url or ""))
    shown = url.render_as_string(hide_password=True)
    where = f"table {name!r} ({shown})"
    try:
        engine = sa.create_engine(url)
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        raise SourceError(
            f"{where}: cannot use this URL: {_first_line(exc, url.password)}"
        ) from None
    try:
        with engine.connect() as conn:
            if source.table is not None:
                schema, _, table = source.table.rpartition(".")
                if not sa.inspect(conn).has_table(table, schema=schema or None):
                    raise SourceError(f"{where}: no table {source.table!r} in the database")
                stmt: Any = sa.select(sa.text("*")).select_from(
                    sa.table(table, schema=schema or None)
                )
            else:
                stmt = sa.text(source.query or "")
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
    except SourceError:
        raise
    except sa.exc.SQLAlchemyError as exc:
        reason = _first_line(getattr(exc, "orig", None) or exc, url.password)
        raise SourceError(f"{where}: cannot read: {reason}") from None
    finally:
        engine.dispose()
    return columns


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


def _csv_part(
    con: DuckDBBackend, name: str, file: str, source: SourceConfig, offset: int, target: Path
) -> tuple[int, pa.Table]:
    """Copy one CSV file to ``target``; return its source rows and its rejected lines."""
    rejects = f"rejects_{name}_{target.stem.replace('-', '_')}"
    options: dict[str, Any] = {
        "header": source.header,
        "all_varchar": True,
        "encoding": source.encoding,
        "store_rejects": True,
        "rejects_table": rejects,
        "rejects_scan": f"{rejects}_scan",
    }
    if source.delimiter is not None:
        options["delim"] = source.delimiter
    try:
        table = con.read_csv(file, **options)
        if ROW in table.columns:
            raise SourceError(f"table {name!r}: {file} has a column named {ROW!r} (reserved)")
        con.to_parquet(table.mutate(**{ROW: ibis.row_number() + offset}), target)
        rejected = con.to_pyarrow(_rejected_lines(con, rejects, source.header, offset))
        if rejected.num_rows:
            shifted = target.with_suffix(".shifted.parquet")
            con.to_parquet(_with_source_rows(con.read_parquet(target), rejected, offset), shifted)
            shifted.replace(target)
    except duckdb.Error as exc:
        raise SourceError(f"table {name!r}: cannot read {file}: {_first_line(exc, None)}") from None
    accepted = int(pq.ParquetFile(target).metadata.num_rows)
    return accepted + rejected.num_rows, rejected


def _parquet_part(con: DuckDBBackend, name: str, file: str, offset: int, target: Path) -> int:
    """Copy one Parquet file to ``target`` with ``_row``; return its rows."""
    try:
        table = con.read_parquet(file, file_row_number=True)
        if ROW in table.columns:
            raise SourceError(f"table {name!r}: {file} has a column named {ROW!r} (reserved)")
        row = (table.file_row_number + offset).cast("int64")
        con.to_parquet(table.mutate(**{ROW: row}).drop("file_row_number"), target)
    except duckdb.Error as exc:
        raise SourceError(f"table {name!r}: cannot read {file}: {_first_line(exc, None)}") from None
    return int(pq.ParquetFile(target).metadata.num_rows)


def _file_parts(
    con: DuckDBBackend, name: str, source: SourceConfig, config: Config, parts: Path
) -> pa.Table:
    """Copy every file of a file source to ``parts``; return the rejected CSV lines."""
    pattern = config.resolve(source.path or "")
    files = sorted(glob.glob(pattern))
    if not files:
        raise SourceError(f"table {name!r}: no file matches {pattern}")
    parts.mkdir(parents=True, exist_ok=True)
    offset = 0
    rejected: list[pa.Table] = []
    for index, file in enumerate(files):
        if Path(file).stat().st_size == 0:
            raise SourceError(
                f"table {name!r}: {file} is empty (0 bytes); a file needs at least its header"
            )
        target = parts / f"part-{index:06d}.parquet"
        if source.file_format == "csv":
            rows, bad = _csv_part(con, name, file, source, offset, target)
            rejected.append(bad)
        else:
            rows = _parquet_part(con, name, file, offset, target)
        offset += rows
    empty = pa.table({c: pa.array([], type=t) for c, t in REJECT_COLUMNS.items()})
    return pa.concat_tables([empty, *(t.cast(empty.schema) for t in rejected)])


def extract_table(
    con: DuckDBBackend, name: str, source: SourceConfig, config: Config, out_dir: Path
) -> Extracted:
    """Copy the source of logical table ``name`` to ``out_dir/<name>.parquet``.

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
            rejected = _file_parts(con, name, source, config, parts)
        else:
            columns = _sql_parts(name, source, config, parts)
            rejected = pa.table({c: pa.array([], type=t) for c, t in REJECT_COLUMNS.items()})
        files = sorted(str(p) for p in parts.glob("part-*.parquet"))
        combined = con.read_parquet(files, union_by_name=True)
        if columns is not None:  # a column null in every batch is absent from every part
            combined = combined.select(
                *[
                    combined[c] if c in combined.columns else ibis.null("string").name(c)
                    for c in [*columns, ROW]
                ]
            )
        con.to_parquet(combined, target)
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


def extract_sources(config: Config, out_dir: Path) -> dict[str, int]:
    """Copy every configured source to ``out_dir/<table>.parquet``; return source rows per table.

    Source rows count the CSV lines the reader rejected (``<table>.rejects.parquet``) too.
    """
    con = connect_engine()
    return {
        name: extract_table(con, name, source, config, out_dir).rows
        for name, source in sorted(config.sources.items())
    }
