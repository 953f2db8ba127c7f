"""Feature tables as pandas frames or batches, and handing Arrow's freed memory back.

A module of its own, light to import: the stages read their tables through it and the Prefect
tasks release memory through it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def read_feature_table(
    path: Path, filters: Any = None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Return a feature table as a DataFrame, optionally only some rows and columns.

    ``filters`` keeps rows (pyarrow DNF) and ``columns`` names the columns read; both default
    to all.

    The same frame as ``pd.read_parquet``, built column by column: each Arrow column is freed
    once converted and pandas skips its consolidation copy. At a million customers the
    at-risk training rows (2.2M x 107) read in 2.5 s at 3.5 GB peak instead of 8.4 s at 4.4 GB.
    The frame keeps one block per column: select the columns you need before adding one, or
    pandas copies the whole table and warns that it is fragmented.
    """
    table = pq.read_table(path, filters=filters, columns=None if columns is None else list(columns))
    return frame_of(table)


def batches_read_ahead(
    files: Sequence[pq.ParquetFile], batch_size: int
) -> Iterator[pa.RecordBatch]:
    """Yield the record batches of ``files`` in order, decoding the next while this one is used.

    The same batches as ``iter_batches`` file after file. Arrow decodes without the GIL, so a
    caller that spends its time encoding or writing each batch overlaps the two; at most two
    batches are in memory at once.
    """
    batches = itertools.chain.from_iterable(f.iter_batches(batch_size=batch_size) for f in files)
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch


def frame_of(table: pa.Table) -> pd.DataFrame:
    """Return ``table`` as a DataFrame (one block per column), consuming it.

    Arrow frees the table's buffers as each column is converted, and its allocator (mimalloc)
    keeps freed memory for reuse; numpy and scikit-learn allocate elsewhere and never reuse it.
    So that memory is handed back before the frame is returned: at 200k customers the training
    table left 0.43 GB so held beside its 0.42 GB frame (released: RSS 1.32 -> 0.90 GB).
    """
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    release_arrow_memory()
    return frame


def release_arrow_memory() -> None:
    """Hand the memory Arrow's allocator keeps for reuse back to the system."""
    pa.default_memory_pool().release_unused()
