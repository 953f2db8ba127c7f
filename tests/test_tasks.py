"""Task options: readable names, retries with backoff only on I/O, a timeout on every task."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from prefect import Task

from churnseg.pipelines import tasks
from churnseg.pipelines.config import load_config
from churnseg.pipelines.publish import PublishError

ALL_TASKS: dict[str, Task[Any, Any]] = {
    name: value for name, value in vars(tasks).items() if isinstance(value, Task)
}
IO_TASKS = {
    "extract",
    "publish",
    "publish_profiles",
    "publish_assignments",
    "changed_customers",
    "publish_update",
}


def test_every_task_has_a_readable_name_and_a_timeout() -> None:
    assert len(ALL_TASKS) >= 11, f"tasks found: {sorted(ALL_TASKS)}"
    for attr, task in ALL_TASKS.items():
        assert task.name and " " not in task.name and task.name.islower(), (attr, task.name)
        assert task.timeout_seconds and task.timeout_seconds >= 600, (attr, task.timeout_seconds)


def test_only_io_tasks_retry_with_growing_delays() -> None:
    for attr, task in ALL_TASKS.items():
        if attr in IO_TASKS:
            assert task.retries == 3, (attr, task.retries)
            delays = task.retry_delay_seconds
            assert isinstance(delays, list) and len(delays) == 3, (attr, delays)
            assert delays[0] < delays[1] < delays[2], f"{attr}: delays must grow, got {delays}"
            assert task.retry_condition_fn is tasks.retry_on_transient, attr
        else:
            assert task.retries == 0, f"{attr} is deterministic compute and must not retry"


def _wrapped(inner: BaseException) -> PublishError:
    """A PublishError raised ``from None`` inside ``except``, like publish.py does."""
    try:
        raise inner
    except BaseException:
        try:
            raise PublishError("insert: database is locked") from None
        except PublishError as exc:
            return exc


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionResetError("peer reset"), True),
        (TimeoutError("slow"), True),
        (_wrapped(sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError())), True),
        (PublishError("customer_scores: column 'tier' is missing"), False),
        (FileNotFoundError("transactions.csv"), False),
        (ValueError("bad"), False),
    ],
)
def test_is_transient_follows_the_chain(error: BaseException, expected: bool) -> None:
    assert tasks.is_transient(error) is expected, repr(error)


def test_publish_retries_a_transient_failure_and_not_a_data_error(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(None)
    calls: list[int] = []
    locked = sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError())

    def flaky(path: Path, target: Any, **_: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise _wrapped(locked)
        return 42

    monkeypatch.setattr(tasks, "publish_scores", flaky)
    fast = tasks.publish.with_options(retry_delay_seconds=0)
    assert fast(config, tmp_path / "scores.parquet") == 42, "the retry should have succeeded"
    assert len(calls) == 2, f"one failure then one success, got {len(calls)} calls"

    def broken(path: Path, target: Any, **_: Any) -> int:
        calls.append(1)
        raise PublishError("customer_scores: column 'tier' is missing")

    calls.clear()
    monkeypatch.setattr(tasks, "publish_scores", broken)
    with pytest.raises(PublishError, match="tier"):
        fast(config, tmp_path / "scores.parquet")
    assert len(calls) == 1, f"a data error must not be retried, got {len(calls)} calls"


def test_compute_tasks_hand_arrow_memory_back_when_they_end() -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    compute = [tasks.clean, tasks.features, tasks.segmentation, tasks.churn, tasks.score]
    compute += [tasks.score_partition, tasks.allocate, tasks.rescore, tasks.monitor]
    for stage in compute:
        assert tasks.release_memory in stage.on_completion_hooks, stage.name
        assert tasks.release_memory in stage.on_failure_hooks, stage.name

    def resident_mb() -> float:
        status = Path("/proc/self/status")
        if not status.exists():
            pytest.skip("reads resident memory from /proc (Linux)")
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS"))
        return int(line.split()[1]) / 1e3

    # 64 results of 8 MB each in Arrow's pool, dropped: the pool keeps them until released.
    one = pa.array(np.ones(1_000_000))
    results = [pc.multiply(one, float(i)) for i in range(64)]
    del results
    held = resident_mb()
    tasks.release_memory(tasks.churn, None, None)  # type: ignore[arg-type]
    assert resident_mb() < held - 256
