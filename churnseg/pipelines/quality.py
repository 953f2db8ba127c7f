"""Data-quality report of a run: per table rows, rejects by reason, nulls per column, date range.

The functions compute on Ibis tables and return plain data; the clean stage logs the result to
MLflow as ``data_quality.json`` and ``data_quality.md`` and the command line prints the counts.
The combined quarantine file's name and schema live here too, for the publisher.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import ibis.expr.types as ir
import pandas as pd
import pyarrow as pa

from churnseg.features.cleaning import IS_EXTREME, IS_STUB, REASON, REASONS

QUARANTINE_FILE = "quarantine.parquet"
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("table_name", pa.string()),
        pa.field("source_row", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("record", pa.string()),
    ]
)
# The column a table's date range is reported on.
DATE_COLUMNS = {
    "customers": "signup_date",
    "transactions": "timestamp",
    "events": "timestamp",
    "subscriptions": "start_date",
}
_FLAGS = (IS_EXTREME, IS_STUB, "is_return")


@dataclass(frozen=True)
class TableQuality:
    """Row accounting and profile of one cleaned table: ``rows = clean + quarantined``.

    Attributes:
        rows: Rows in the source (CSV lines the reader rejected included).
        clean: Source rows kept (stub customers not included).
        quarantined: Source rows rejected, each with one reason.
        by_reason: Quarantined rows per reason code.
        stubs: Stub customers added for ids found only in other tables.
        nulls: Null values per column of the clean table.
        flagged: True values of flag columns in the clean table: ``is_extreme`` (amounts
            flagged as extreme, kept), ``is_stub`` and ``is_return`` (returns kept, flagged or
            read from negative amounts).
        date_column: Column of the date range.
        first: Earliest clean date (ISO), or None.
        last: Latest clean date (ISO), or None.
    """

    rows: int
    clean: int
    quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)
    stubs: int = 0
    nulls: dict[str, int] = field(default_factory=dict)
    flagged: dict[str, int] = field(default_factory=dict)
    date_column: str | None = None
    first: str | None = None
    last: str | None = None

    @property
    def quarantined_share(self) -> float:
        """Return the share of rows quarantined (0 for an empty table)."""
        return self.quarantined / self.rows if self.rows else 0.0

    def top_reasons(self, n: int = 3) -> list[tuple[str, int]]:
        """Return the ``n`` most frequent reasons with their counts, largest first."""
        return Counter(self.by_reason).most_common(n)


def reason_counts(quarantine: ir.Table) -> dict[str, int]:
    """Return quarantined rows per reason code of a table with a ``reason`` column."""
    counts = quarantine.group_by(REASON).aggregate(n=quarantine.count()).execute()
    return {str(r): int(n) for r, n in zip(counts[REASON], counts["n"], strict=True)}


def _iso(value: Any) -> str | None:
    if value is None or pd.isna(value):
        return None
    return pd.Timestamp(value).isoformat(sep=" ")


def profile_table(
    rows: int,
    clean: ir.Table,
    by_reason: dict[str, int],
    date_column: str | None,
    stubs: int = 0,
) -> TableQuality:
    """Return the quality of one table from its source row count, clean rows and rejects.

    Args:
        rows: Rows in the source.
        clean: The clean table (stub rows included, flagged ``is_stub``).
        by_reason: Quarantined rows per reason.
        date_column: Column to report the date range of, when the table has it.
        stubs: Stub rows included in ``clean``.
    """
    aggs: dict[str, ir.Scalar] = {"__rows": clean.count()}
    for col in clean.columns:
        aggs[f"null:{col}"] = clean[col].isnull().sum()
    flags = [c for c in _FLAGS if c in clean.columns]
    for col in flags:
        aggs[f"flag:{col}"] = clean[col].fill_null(False).sum()
    has_dates = date_column is not None and date_column in clean.columns
    if has_dates:
        aggs["__first"] = clean[date_column].min()
        aggs["__last"] = clean[date_column].max()
    stats = clean.aggregate(**aggs).execute().iloc[0]
    return TableQuality(
        rows=rows,
        clean=int(stats["__rows"]) - stubs,
        quarantined=sum(by_reason.values()),
        by_reason=dict(sorted(by_reason.items())),
        stubs=stubs,
        nulls={c: int(stats[f"null:{c}"] or 0) for c in clean.columns},
        flagged={c: int(stats[f"flag:{c}"] or 0) for c in flags},
        date_column=date_column if has_dates else None,
        first=_iso(stats["__first"]) if has_dates else None,
        last=_iso(stats["__last"]) if has_dates else None,
    )


def quality_dict(
    report: dict[str, TableQuality], attributes: dict[str, str] | None = None
) -> dict[str, Any]:
    """Return the report as JSON-ready data: tables, reason code meanings, attribute kinds."""
    tables = {
        name: {**asdict(q), "quarantined_share": round(q.quarantined_share, 6)}
        for name, q in report.items()
    }
    used = sorted({r for q in report.values() for r in q.by_reason})
    return {
        "tables": tables,
        "reasons": {r: REASONS.get(r, "") for r in used},
        "customer_attributes": dict(attributes or {}),
    }


def quality_markdown(
    report: dict[str, TableQuality],
    attributes: dict[str, str] | None = None,
    title: str = "Data quality",
) -> str:
    """Return the report as a Markdown page for people: one section per table."""
    lines = [f"# {title}", "", "| table | rows | clean | quarantined | share | stubs | dates |"]
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for name, q in report.items():
        dates = f"{q.first} .. {q.last}" if q.first else ""
        lines.append(
            f"| {name} | {q.rows:,} | {q.clean:,} | {q.quarantined:,} | "
            f"{q.quarantined_share:.2%} | {q.stubs:,} | {dates} |"
        )
    for name, q in report.items():
        lines += ["", f"## {name}", ""]
        if q.by_reason:
            lines += ["| reason | rows | meaning |", "|---|---:|---|"]
            lines += [
                f"| {r} | {n:,} | {REASONS.get(r, '')} |"
                for r, n in sorted(q.by_reason.items(), key=lambda item: -item[1])
            ]
        else:
            lines.append("No rows quarantined.")
        with_nulls = {c: n for c, n in q.nulls.items() if n}
        lines += ["", "Nulls per column (clean rows): "]
        lines[-1] += ", ".join(f"`{c}` {n:,}" for c, n in with_nulls.items()) or "none."
        if q.flagged:
            lines += ["", "Flags: " + ", ".join(f"`{c}` {n:,}" for c, n in q.flagged.items())]
    if attributes:
        lines += ["", "## customer attributes", "", "| column | kind |", "|---|---|"]
        lines += [f"| {c} | {k} |" for c, k in attributes.items()]
    return "\n".join(lines) + "\n"
