"""Scoring scaled out: row-range partitions of the scoring features as tasks on a Dask cluster.

The scoring context (champion models, population-wide tier and risk thresholds) is built once,
in the flow's process, exactly as ``stages.score_stage`` builds it; each partition task applies
``stages.score_batch`` to its rows and writes a part file beside the scores file; the parts are
then concatenated in row order into the scores file, which appears complete or not at all. The
result equals the in-process path row for row (only ``scored_at`` and ``run_id`` differ between
two runs). On a remote cluster the workers must read the features and write the parts in the
run folder, so it has to be on storage every worker mounts at the same path.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from churnseg.pipelines.config import Config
from churnseg.pipelines.sinks.schema import CUSTOMER_SCORES

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner

    from churnseg.pipelines.stages import ScoringContext


def row_ranges(n_rows: int, partition_rows: int) -> list[tuple[int, int]]:
    """Return ``[start, stop)`` row ranges of at most ``partition_rows`` covering ``n_rows``."""
    return [
        (start, min(start + partition_rows, n_rows)) for start in range(0, n_rows, partition_rows)
    ]


def read_rows(path: Path, start: int, stop: int, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Yield rows ``[start, stop)`` of a Parquet file in batches of at most ``batch_rows``.

    Only the row groups overlapping the range are read.
    """
    parquet = pq.ParquetFile(path)
    group_start = 0
    for index in range(parquet.num_row_groups):
        group_rows = parquet.metadata.row_group(index).num_rows
        group_stop = group_start + group_rows
        if group_stop > start and group_start < stop:
            table = parquet.read_row_group(index)
            lo, hi = max(start, group_start) - group_start, min(stop, group_stop) - group_start
            yield from table.slice(lo, hi - lo).to_batches(max_chunksize=batch_rows)
        group_start = group_stop
        if group_start >= stop:
            break


def score_rows(
    features_path: Path,
    rows: tuple[int, int],
    context: ScoringContext,
    part_path: Path,
    batch_rows: int,
) -> tuple[int, float]:
    """Score rows ``[start, stop)`` of a feature table into a part file of conformed scores.

    Returns:
        Rows scored and the sum of their churn probabilities.
    """
    from churnseg.pipelines.stages import score_batches_to_file

    batches = read_rows(features_path, rows[0], rows[1], batch_rows)
    return score_batches_to_file(batches, context, part_path, features_path.name, rows[0])


def dask_task_runner(config: Config) -> DaskTaskRunner:
    """Return the task runner ``scoring`` asks for: a running cluster, or a local one."""
    from prefect_dask import DaskTaskRunner

    if config.scoring.dask_address is not None:
        return DaskTaskRunner(address=config.scoring.dask_address)
    # One thread per worker process: scikit-learn predictions are CPU-bound and hold the GIL
    # in parts; no dashboard, so parallel runs do not fight over port 8787.
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": config.scoring.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


def score_stage_on_dask(config: Config, features_path: Path, out_path: Path, run_id: str) -> int:
    """Score a feature table in partitions on a Dask cluster; write the scores file.

    Same output and MLflow metrics as ``stages.score_stage``; call it inside a flow run.

    Returns:
        Rows scored.
    """
    from churnseg.pipelines import tasks
    from churnseg.pipelines.stages import log_scoring_metrics, scoring_context
    from churnseg.pipelines.stages.scoring import published_corrections

    context = scoring_context(
        config, run_id, features_path, corrections=published_corrections(config)
    )
    n_rows = pq.ParquetFile(features_path).metadata.num_rows
    ranges = row_ranges(n_rows, config.scoring.partition_rows)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    parts_dir = out_path.with_name(out_path.name + ".parts")
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir()
    parts = [parts_dir / f"part-{i:05d}.parquet" for i in range(len(ranges))]
    try:
        with dask_task_runner(config) as runner:
            futures = [
                runner.submit(
                    tasks.score_partition,
                    parameters=_partition_parameters(features_path, rows, context, part, config),
                )
                for rows, part in zip(ranges, parts, strict=True)
            ]
            results = [future.result() for future in futures]
        _concatenate(parts, out_path)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    rows = sum(r for r, _ in results)
    log_scoring_metrics(rows, sum(p for _, p in results), score_partitions=float(len(ranges)))
    return rows


def _partition_parameters(
    features_path: Path,
    rows: tuple[int, int],
    context: ScoringContext,
    part: Path,
    config: Config,
) -> dict[str, Any]:
    return {
        "features_path": features_path,
        "rows": rows,
        "context": context,
        "part_path": part,
        "batch_rows": config.publish.chunk_rows,
    }


def _concatenate(parts: list[Path], out_path: Path) -> None:
    """Write the part files, in order, into ``out_path`` (beside it first, then renamed)."""
    partial = out_path.with_name(out_path.name + ".partial")
    schema = CUSTOMER_SCORES.arrow_schema()
    with pq.ParquetWriter(partial, schema) as writer:
        for part in parts:
            for batch in pq.ParquetFile(part).iter_batches():
                # Parquet has no second-resolution timestamps: parts read back in ms.
                writer.write_batch(batch.cast(schema))
    partial.replace(out_path)
