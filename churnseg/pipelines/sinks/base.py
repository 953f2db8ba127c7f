"""What every output database writer offers, and the retention rule they apply."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from churnseg.pipelines.sinks.schema import TableSpec

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


class Sink(Protocol):
    """An open connection to one output database.

    Every method is one transaction: it commits entirely or leaves the database as it was.
    """

    def ensure_schema(self) -> int:
        """Create or migrate the output tables; return the schema version reached."""
        ...

    def replace(
        self,
        spec: TableSpec,
        keys: pa.Array,
        batches: Iterable[pa.RecordBatch],
        retention: Retention | None,
        progress: Progress | None,
    ) -> int:
        """Replace the partitions ``keys`` of ``spec``'s table by ``batches``; return rows."""
        ...

    def upsert(self, spec: TableSpec, batch: pa.RecordBatch) -> None:
        """Insert the rows of ``batch``, replacing rows with the same primary key."""
        ...

    def close(self) -> None:
        """Close the connection (an open transaction is rolled back)."""
        ...
