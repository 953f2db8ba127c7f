"""Prefect tasks: one stage function each, passing configs and paths, never frames."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from prefect import State, Task, task
from prefect.cache_policies import NONE, CacheKeyFnPolicy
from prefect.client.schemas.objects import TaskRun
from prefect.tasks import StateHookCallable, exponential_backoff

from churnseg.features.snapshots import CutoffPlan
from churnseg.pipelines import stages
from churnseg.pipelines.config import Config
from churnseg.pipelines.frames import release_arrow_memory
from churnseg.pipelines.publish import (
    AllocationFiles,
    publish_allocation,
    publish_intraday,
    publish_scores,
    publish_segment_profiles,
    target_from_config,
)
from churnseg.pipelines.quality import TableQuality
from churnseg.pipelines.stages import RunPaths, intraday
from churnseg.pipelines.stages.allocating import AllocationOutcome, allocation_stage
from churnseg.pipelines.stages.intraday import PublishedSnapshot, Rescorer

if TYPE_CHECKING:
    from churnseg.pipelines.monitor import MonitorOutcome, Reference

P = ParamSpec("P")
R = TypeVar("R")

# Every task is defined uncached (``cache_policy=NONE``): Prefect's default policy hashes the
# inputs, and ours are configs and paths whose files change underneath them. The retrain flow
# opts its compute tasks in per run with ``cached``: keyed on the run fingerprint (config +
# input content + code, see ``resume.py``), never on the arguments. I/O tasks (extract,
# publish) are never cached: sources must be read and the table written on every run.

# Only I/O tasks retry: reading sources and writing the database can fail transiently (a network
# blip, a lock), while a deterministic computation that failed once fails again. Delays grow
# 10 s, 20 s, 40 s (with jitter) so a briefly unavailable database gets time to recover. Bad data
# or a missing file is not transient: ``retry_on_transient`` stops those at the first failure.
IO_RETRIES = 3
IO_RETRY_DELAYS = exponential_backoff(backoff_factor=10)
# Timeouts are generous ceilings (several times the 1M-customer figures), meant to stop a hung
# run, not to police a slow one.
MINUTE = 60.0
TIMEOUT_IO = 30 * MINUTE
TIMEOUT_COMPUTE = 60 * MINUTE
TIMEOUT_TRAIN = 120 * MINUTE
TIMEOUT_LIGHT = 10 * MINUTE


def release_memory(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> None:
    """Hand the memory Arrow keeps for reuse back to the system (a hook after a compute task).

    Arrow's allocator (mimalloc) keeps what frames freed for later allocations. A flow runs
    every stage in one process, so what one stage's frames held stayed resident under the next
    one's peak: the 5M retrain flow's process held 10.5 GB while scoring, a stage that peaks at
    4.9 GB on its own. Reading the 3M-row training sample and dropping it left 3.96 GB
    resident; released, 0.54 GB.
    """
    release_arrow_memory()


# Run after every compute task, whether it completed or failed.
RELEASE: list[StateHookCallable] = [release_memory]


def compute_task(name: str, timeout_seconds: float) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Return the decorator of a compute task: uncached, timed out, Arrow memory released."""
    return task(
        name=name,
        cache_policy=NONE,
        timeout_seconds=timeout_seconds,
        on_completion=RELEASE,
        on_failure=RELEASE,
    )


def is_transient(exc: BaseException) -> bool:
    """Return whether an error (or the error it was raised from) may pass if tried again.

    Connection drops, timeouts and database ``OperationalError``s (locks, restarts) qualify; the
    project's errors about bad data or a missing file do not. Our error types re-raise database
    errors ``from None`` to keep messages short, so the original is found in ``__context__``.
    """
    from sqlalchemy.exc import InterfaceError, OperationalError

    seen: BaseException | None = exc
    for _ in range(5):  # a short chain: ours -> driver's -> socket's
        if seen is None:
            return False
        if isinstance(seen, ConnectionError | TimeoutError | OperationalError | InterfaceError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_on_transient(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry an I/O task only after a transient error."""
    error = state.data
    return isinstance(error, BaseException) and is_transient(error)


@task(
    name="extract",
    cache_policy=NONE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_on_transient,
    timeout_seconds=TIMEOUT_IO,
)
def extract(config: Config, paths: RunPaths) -> dict[str, int]:
    """Copy the sources into the run folder."""
    return stages.extract_stage(config, paths)


@compute_task("clean", TIMEOUT_COMPUTE)
def clean(config: Config, paths: RunPaths) -> dict[str, TableQuality]:
    """Clean and quarantine every table."""
    return stages.clean_stage(config, paths)


@task(name="data-lineage", cache_policy=NONE, timeout_seconds=TIMEOUT_LIGHT)
def lineage(paths: RunPaths, rows_read: dict[str, int]) -> dict[str, Any]:
    """Log input fingerprints, row counts and the data's date range."""
    return stages.data_lineage_stage(paths, rows_read)


@task(name="plan-cutoffs", cache_policy=NONE, timeout_seconds=TIMEOUT_LIGHT)
def plan(config: Config, paths: RunPaths) -> CutoffPlan:
    """Resolve the scoring, validation and training cutoffs."""
    return stages.resolve_plan(config, paths)


@compute_task("build-features", TIMEOUT_COMPUTE)
def features(
    config: Config,
    paths: RunPaths,
    cutoffs: CutoffPlan,
    only: tuple[str, ...] = stages.FEATURE_TABLES,
) -> dict[str, int]:
    """Build the feature tables named in ``only`` (default: training, validation and scoring)."""
    return stages.feature_stage(config, paths, cutoffs, only)


@compute_task("train-segmentation", TIMEOUT_TRAIN)
def segmentation(config: Config, paths: RunPaths, run_id: str) -> stages.SegmentationOutcome:
    """Fit, match to the champion, name, register and promote the segmentation model."""
    return stages.segmentation_stage(config, paths, run_id)


@compute_task("train-churn", TIMEOUT_TRAIN)
def churn(config: Config, paths: RunPaths) -> stages.ChurnOutcome:
    """Fit, validate, register and promote the churn model."""
    return stages.churn_stage(config, paths)


@compute_task("score", TIMEOUT_COMPUTE)
def score(config: Config, features_path: Path, out_path: Path, run_id: str) -> int:
    """Score a feature table with the champion models."""
    return stages.score_stage(config, features_path, out_path, run_id)


@compute_task("score-partition", TIMEOUT_COMPUTE)
def score_partition(
    features_path: Path,
    rows: tuple[int, int],
    context: stages.ScoringContext,
    part_path: Path,
    batch_rows: int,
) -> tuple[int, float]:
    """Score one row range of a feature table into a part file (runs on a Dask worker)."""
    from churnseg.pipelines.dask_scoring import score_rows

    return score_rows(features_path, rows, context, part_path, batch_rows)


@task(
    name="publish",
    cache_policy=NONE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_on_transient,
    timeout_seconds=TIMEOUT_IO,
)
def publish(config: Config, scores_path: Path, allocation: AllocationFiles | None = None) -> int:
    """Publish a scores file (and its allocation) in one transaction."""
    return publish_scores(scores_path, target_from_config(config), allocation=allocation)


@compute_task("allocate", TIMEOUT_COMPUTE)
def allocate(config: Config, paths: RunPaths, scores_path: Path, run_id: str) -> AllocationOutcome:
    """Allocate the scored customers to owners; write the allocation files."""
    return allocation_stage(config, paths, scores_path, target_from_config(config), run_id)


@task(
    name="publish-allocation",
    cache_policy=NONE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_on_transient,
    timeout_seconds=TIMEOUT_IO,
)
def publish_assignments(config: Config, files: AllocationFiles) -> int:
    """Publish an allocation alone (both tables, one transaction)."""
    return publish_allocation(files, target_from_config(config))


@task(
    name="find-changed-customers",
    cache_policy=NONE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_on_transient,
    timeout_seconds=TIMEOUT_IO,
)
def changed_customers(config: Config, snapshot: PublishedSnapshot, as_of: datetime) -> list[str]:
    """Return the customers with rows newer than the snapshot (or missing from it)."""
    return intraday.changed_customers(config, target_from_config(config), snapshot, as_of)


@compute_task("rescore-customers", TIMEOUT_COMPUTE)
def rescore(
    config: Config,
    rescorer: Rescorer,
    customer_ids: list[str],
    as_of: datetime,
    paths: RunPaths,
    run_id: str,
) -> Path | None:
    """Re-score some customers as of a moment into the run folder's scores file."""
    target = target_from_config(config)
    return intraday.rescore_stage(config, target, rescorer, customer_ids, as_of, paths, run_id)


@task(
    name="publish-update",
    cache_policy=NONE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_on_transient,
    timeout_seconds=TIMEOUT_IO,
)
def publish_update(config: Config, scores_path: Path) -> int:
    """Write an intra-day update's rows into their snapshot in one transaction."""
    return publish_intraday(scores_path, target_from_config(config))


@task(
    name="publish-segment-profiles",
    cache_policy=NONE,
    retries=IO_RETRIES,
    retry_delay_seconds=IO_RETRY_DELAYS,
    retry_condition_fn=retry_on_transient,
    timeout_seconds=TIMEOUT_IO,
)
def publish_profiles(config: Config, profiles_path: Path) -> int:
    """Publish a segment profiles file to the segment profiles table in one transaction."""
    return publish_segment_profiles(profiles_path, target_from_config(config))


@compute_task("monitor-drift", TIMEOUT_COMPUTE)
def monitor(
    config: Config, reference: Reference, paths: RunPaths, data_end: date
) -> MonitorOutcome:
    """Measure feature, score and segment drift and calibration against the champion's run."""
    from churnseg.pipelines import monitor as monitoring

    return monitoring.monitor_stage(config, reference, paths, data_end)


def cached(stage: Task[P, R], fingerprint: str, storage: Path, refresh: bool) -> Task[P, R]:
    """Return ``stage`` with its result persisted and cached under (task name, fingerprint).

    The key ignores the arguments on purpose: the fingerprint already covers what the stage
    reads, and arguments such as the MLflow run id differ on every attempt. Results are pickled
    into ``storage`` (the run folder's ``task-results/``), so deleting a run folder deletes its
    cache too.

    Args:
        stage: A compute task of this module.
        fingerprint: The run fingerprint (``resume.Fingerprint.key``).
        storage: Folder of the persisted results.
        refresh: Recompute and overwrite the cached result (``--fresh``, missing outputs).
    """
    key = f"{stage.name}-{fingerprint}"
    return stage.with_options(
        cache_policy=CacheKeyFnPolicy(cache_key_fn=lambda _context, _parameters: key),
        persist_result=True,
        result_storage=storage,
        refresh_cache=refresh,
    )
