"""Customer-ordered copies of file sources, so a few customers' rows are read in milliseconds.

A rescore needs every row of a handful of customers. A database finds them through its index
on the customer column; a Parquet or CSV file has none, and filtering it reads every row (1.5 s
per rescore at 1M customers: 23M transaction lines and 10M events, whatever the filter). The
API therefore keeps, per source file, a copy sorted by customer id as an uncompressed Arrow IPC
file read through a memory map, plus a directory of where each customer's rows start. Reading
32 customers is then 32 slices of mapped memory.

A copy belongs to one file as it was: its key is the file's path, size and modification time
(and the reader settings), so a rewritten file gets a new copy on the next read and a file
added to a glob (the usual way to append) gets one of its own while the others are reused.
Copies live under ``<state_dir>/keyed`` and outlive the process; stale ones are deleted when
their table is next read.

Rows come out as ``sources.extract_table`` copies them for ``customers``: the source columns,
then ``_row`` (the row's position among the source's files).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ibis.backends.duckdb import Backend as DuckDBBackend
from numpy.typing import NDArray

from churnseg.features.cleaning import ROW
from churnseg.pipelines.config import Config, SourceConfig
from churnseg.pipelines.sources import (
    REJECTS_SUFFIX,
    EnginePool,
    SourceError,
    _csv_options,
    _customer_column,
    _first_line,
    _source_files,
    _trim_spaces,
    connect_engine,
    extract_table,
    next_offset,
    numbered_by_position,
)

KEY = "_key"
_VERSION = 1  # bump when the layout of a copy changes: old copies are then rebuilt
_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class KeyedFile:
    """One source file's customer-ordered copy: its rows and where each customer's start."""

    rows: pa.Table
    keys: NDArray[np.str_]
    starts: NDArray[np.int64]
    counts: NDArray[np.int64]

    def take(self, customers: Sequence[str]) -> pa.Table:
        """Return the rows of ``customers`` (ids as text without surrounding spaces)."""
        wanted = np.asarray(sorted(set(customers)), dtype=self.keys.dtype.kind)
        at = np.searchsorted(self.keys, wanted)
        inside = at < len(self.keys)
        found = at[inside][self.keys[at[inside]] == wanted[inside]]
        pieces = [self.rows.slice(self.starts[i], self.counts[i]) for i in found]
        return pa.concat_tables(pieces) if pieces else self.rows.slice(0, 0)


def _fingerprint(file: str, name: str, source: SourceConfig) -> str:
    """Return the key of a file's copy: the file as it is now and how it is read."""
    stat = os.stat(file)
    reader = source.model_dump(
        include={"format", "columns", "delimiter", "encoding", "header"}, mode="json"
    )
    text = json.dumps(
        [_VERSION, name, os.path.abspath(file), stat.st_size, stat.st_mtime_ns, reader],
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_copy(
    con: DuckDBBackend, file: str, source: SourceConfig, folder: Path, stem: str
) -> None:
    """Write ``<stem>.arrow`` (rows by customer, then position) and ``<stem>.keys.parquet``."""
    if source.file_format == "csv":
        # Lines the reader cannot split belong to no customer (as in a scoped extract).
        raw = con.read_csv(file, **_csv_options(source, ignore_errors=True))
        numbered = raw.mutate(**{ROW: ibis.row_number()})
    else:
        numbered = numbered_by_position(con.read_parquet(file, file_row_number=True))
    column = _customer_column(source)
    if column not in numbered.columns:
        raise SourceError(f"{file}: no customer column {column!r} to order rows by")
    keyed = numbered.mutate(**{KEY: _trim_spaces(numbered[column].cast("string"))})
    # Rows without an id last: never asked for, but counted as the file's rows.
    ordered = keyed.order_by([ibis.asc(KEY, nulls_first=False), ROW])
    temp = f"{stem}.{os.getpid()}.{threading.get_ident()}"
    try:
        _write_files(con, ordered, folder, temp)
    except BaseException:
        for leftover in folder.glob(f"{temp}.*"):
            leftover.unlink(missing_ok=True)
        raise
    # The directory last: a copy counts as written once its keys file exists.
    os.replace(folder / f"{temp}.arrow.tmp", folder / f"{stem}.arrow")
    os.replace(folder / f"{temp}.keys.tmp", folder / f"{stem}.keys.parquet")


def _write_files(con: DuckDBBackend, ordered: ir.Table, folder: Path, temp: str) -> None:
    """Write ``ordered`` as ``<temp>.arrow.tmp`` and its directory as ``<temp>.keys.tmp``."""
    staged = folder / f"{temp}.staged.parquet"
    con.to_parquet(ordered, staged)
    directory = con.read_parquet(staged, file_row_number=True)
    directory = directory.filter(directory[KEY].notnull())
    starts = directory.group_by(KEY).aggregate(
        start=directory.file_row_number.min().cast("int64"), count=directory.count()
    )
    con.to_parquet(starts.order_by(KEY), folder / f"{temp}.keys.tmp")
    parquet = pq.ParquetFile(staged)
    with (
        pa.OSFile(str(folder / f"{temp}.arrow.tmp"), "wb") as sink,
        pa.ipc.new_file(sink, parquet.schema_arrow) as writer,
    ):
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
            writer.write_batch(batch)
    staged.unlink()


def _open_copy(folder: Path, stem: str) -> KeyedFile:
    """Return a written copy, its rows memory-mapped."""
    mapped = pa.memory_map(str(folder / f"{stem}.arrow"))
    rows = pa.ipc.open_file(mapped).read_all()
    keys = pq.read_table(folder / f"{stem}.keys.parquet")
    return KeyedFile(
        rows=rows,
        keys=keys.column(KEY).to_numpy(zero_copy_only=False).astype(str),
        starts=keys.column("start").to_numpy(),
        counts=keys.column("count").to_numpy().astype(np.int64),
    )


class KeyedSources:
    """Customer-ordered copies of the file sources, rebuilt when a file changes.

    Thread-safe; one instance per process (the API holds one). Database sources are read
    through ``sources.extract_table``: their own index on the customer column does this job.
    """

    def __init__(self, config: Config, tables: Sequence[str], folder: Path | None = None) -> None:
        """Serve ``tables`` of ``config`` (those configured), copies under ``folder``.

        ``folder`` defaults to ``<state_dir>/keyed``.
        """
        self._config = config
        self._sources = {t: s for t, s in sorted(config.sources.items()) if t in tables}
        self._folder = folder if folder is not None else config.state_dir / "keyed"
        self._open: dict[str, KeyedFile] = {}
        self._lock = threading.Lock()
        # Database sources: their connections stay open between rescores (opening four took
        # about 0.1 s of a run). The pool has its own lock: database reads run side by side.
        self._engines = EnginePool()

    def refresh(self) -> None:
        """Bring the copies of every file source up to date (build those missing or stale)."""
        with self._lock:
            for name, source in self._sources.items():
                if source.path is not None:
                    self._copies(name, source)

    def extract(self, out_dir: Path, customers: Sequence[str]) -> dict[str, int]:
        """Copy the rows of ``customers`` of every table to ``out_dir/<table>.parquet``.

        What ``sources.extract_sources`` writes for these tables and ``customers``; returns the
        rows copied per table.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        copied: dict[str, int] = {}
        con: DuckDBBackend | None = None
        try:
            for name, source in self._sources.items():
                if source.path is None:
                    con = con if con is not None else connect_engine(self._config.engine)
                    extracted = extract_table(
                        con, name, source, self._config, out_dir, customers, self._engines
                    )
                    copied[name] = extracted.rows
                    continue
                (out_dir / f"{name}{REJECTS_SUFFIX}").unlink(missing_ok=True)
                with self._lock:
                    rows = self.rows(name, source, customers)
                # No statistics: pyarrow's leave NaN out of min/max, and DuckDB 2.0 then takes
                # isnan() for false on every row, so cleaning would keep NaN amounts.
                pq.write_table(rows, out_dir / f"{name}.parquet", write_statistics=False)
                copied[name] = rows.num_rows
        finally:
            if con is not None:
                con.disconnect()
        return copied

    def close(self) -> None:
        """Close the database connections kept open (the service stops)."""
        self._engines.close()

    def rows(self, name: str, source: SourceConfig, customers: Sequence[str]) -> pa.Table:
        """Return the rows of ``customers`` in file source ``name`` (source columns, ``_row``)."""
        parts: list[pa.Table] = []
        offset = 0
        for copy in self._copies(name, source):
            part = copy.take(customers)
            row = pc.add(part.column(ROW), pa.scalar(offset, pa.int64()))
            parts.append(part.drop_columns([KEY, ROW]).append_column(ROW, row))
            # As a scoped extract numbers them: a Parquet copy holds every row of its file (ids
            # missing included); CSV by the last line copied (``sources.next_offset``).
            csv = source.file_format == "csv"
            offset += next_offset(row, offset) if csv else copy.rows.num_rows
        schemas = {p.schema for p in parts}
        if len(schemas) > 1:  # files of one glob whose types differ, as DuckDB unifies them
            return pa.concat_tables(parts, promote_options="permissive")
        return pa.concat_tables(parts)

    def _copies(self, name: str, source: SourceConfig) -> list[KeyedFile]:
        """Return the current copies of a source's files, in file order (building new ones)."""
        files = _source_files(name, source, self._config)
        folder = self._folder / name
        folder.mkdir(parents=True, exist_ok=True)
        stems = [_fingerprint(file, name, source) for file in files]
        con: DuckDBBackend | None = None
        try:
            for file, stem in zip(files, stems, strict=True):
                if stem in self._open:
                    continue
                if not (folder / f"{stem}.keys.parquet").exists():
                    con = con if con is not None else connect_engine(self._config.engine)
                    try:
                        _write_copy(con, file, source, folder, stem)
                    except Exception as exc:
                        raise SourceError(
                            f"table {name!r}: cannot read {file}: {_first_line(exc, None)}"
                        ) from None
                self._open[stem] = _open_copy(folder, stem)
        finally:
            if con is not None:
                con.disconnect()
        self._forget(folder, set(stems))
        return [self._open[stem] for stem in stems]

    def _forget(self, folder: Path, current: set[str]) -> None:
        """Delete the copies in ``folder`` of files that changed or left the source."""
        for path in folder.glob("*.keys.parquet"):
            stem = path.name.removesuffix(".keys.parquet")
            if stem not in current:
                self._open.pop(stem, None)
                path.unlink(missing_ok=True)
                (folder / f"{stem}.arrow").unlink(missing_ok=True)
