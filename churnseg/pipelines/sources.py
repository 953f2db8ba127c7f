"""Extraction: copy each configured source into the run folder as Parquet with a row number."""

from __future__ import annotations

import glob
from pathlib import Path

import ibis
import ibis.expr.types as ir
from ibis.backends.duckdb import Backend as DuckDBBackend

from churnseg.features.cleaning import ROW
from churnseg.pipelines.config import Config, SourceConfig


class SourceError(RuntimeError):
    """A source that cannot be read; the message names the table and the location."""


def connect_engine() -> DuckDBBackend:
    """Return a fresh embedded DuckDB connection for one stage."""
    return ibis.duckdb.connect()


def read_source(con: DuckDBBackend, name: str, source: SourceConfig, config: Config) -> ir.Table:
    """Return the source of logical table ``name`` as an Ibis table on ``con``.

    Raises:
        SourceError: The file is missing, empty or unreadable.
    """
    if source.path is None:
        raise SourceError(f"table {name!r}: database sources arrive with the extraction stage")
    path = config.resolve(source.path)
    if not glob.glob(path):
        raise SourceError(f"table {name!r}: no file matches {path}")
    try:
        if source.file_format == "csv":
            return con.read_csv(path)
        return con.read_parquet(path)
    except Exception as exc:  # DuckDB raises several unrelated types for unreadable files.
        raise SourceError(f"table {name!r}: cannot read {path}: {exc}") from None


def extract_sources(config: Config, out_dir: Path) -> dict[str, int]:
    """Copy every configured source to ``out_dir/<table>.parquet`` and return row counts.

    Each copy gains ``_row``, the row's position in the source, so quarantine can point back to
    it and "latest row wins" rules have an order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    con = connect_engine()
    counts: dict[str, int] = {}
    for name, source in sorted(config.sources.items()):
        table = read_source(con, name, source, config)
        numbered = table.mutate(**{ROW: ibis.row_number()})
        target = out_dir / f"{name}.parquet"
        con.to_parquet(numbered, target)
        counts[name] = int(con.read_parquet(target).count().execute())
    return counts
