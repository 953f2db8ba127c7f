"""The API's coalescer: requests that arrive during a run share the next one."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from churnseg.pipelines.api.app import AuditLog
from churnseg.pipelines.api.batching import Coalescer
from churnseg.pipelines.publish import PublishError


def test_keys_submitted_during_a_run_share_the_next_run() -> None:
    started, release = threading.Event(), threading.Event()
    runs: list[list[str]] = []

    def work(keys: list[str]) -> int:
        runs.append(keys)
        if len(runs) == 1:
            started.set()
            release.wait(5)
        return len(runs)

    coalescer: Coalescer[str, int] = Coalescer(work, workers=1, max_batch=3)
    first = coalescer.submit("a")
    assert started.wait(5)
    waiting = [coalescer.submit(k) for k in ("b", "c", "b", "d", "e")]
    release.set()
    assert first.result(5) == 1
    results = [f.result(5) for f in waiting]
    coalescer.close()
    assert runs == [["a"], ["b", "c", "d"], ["e"]], "oldest first, at most 3, 'b' once"
    assert results == [2, 2, 2, 2, 3], "both requests for 'b' get the run that had it"


def test_a_failed_run_fails_every_request_in_it_and_the_next_run_still_works() -> None:
    def work(keys: list[str]) -> str:
        if "bad" in keys:
            raise ValueError("source down")
        return ",".join(keys)

    coalescer: Coalescer[str, str] = Coalescer(work, workers=2, max_batch=10)
    with pytest.raises(ValueError, match="source down"):
        coalescer.submit("bad").result(5)
    assert coalescer.submit("ok").result(5) == "ok"
    coalescer.close()
    with pytest.raises(RuntimeError, match="closed"):
        coalescer.submit("late")


def test_a_worker_lingers_for_more_keys_before_it_starts() -> None:
    runs: list[list[int]] = []
    coalescer: Coalescer[int, None] = Coalescer(
        lambda keys: runs.append(keys), workers=1, max_batch=10, linger_seconds=0.5
    )
    first = coalescer.submit(1)
    later = [coalescer.submit(k) for k in (2, 3)]  # well within the linger
    for future in (first, *later):
        future.result(5)
    coalescer.close()
    assert runs == [[1, 2, 3]], "one run, not a run of one and then the rest"


class _AuditStore:
    """Stands in for the API's store: records each audit write, or fails them all."""

    def __init__(self, fail: bool = False) -> None:
        self.writes: list[list[str]] = []
        self.fail = fail
        self.first = threading.Event()
        self.release = threading.Event()

    def audit(self, rows: list[dict[str, object]]) -> None:
        self.writes.append([str(r["audit_id"]) for r in rows])
        if len(self.writes) == 1:
            self.first.set()
            self.release.wait(5)
        if self.fail:
            raise PublishError("table 'api_audit': database is locked")


def test_audit_rows_that_arrive_during_a_write_share_the_next_transaction() -> None:
    store = _AuditStore()
    log = AuditLog(store)  # type: ignore[arg-type]
    first = log.write({"audit_id": "r0"})
    assert store.first.wait(5)
    rest = [log.write({"audit_id": f"r{i}"}) for i in range(1, 33)]
    store.release.set()
    for future in [first, *rest]:
        assert future.result(5) is None
    assert store.writes == [["r0"], [f"r{i}" for i in range(1, 33)]]


def test_a_failed_audit_write_reaches_every_request_in_it() -> None:
    store = _AuditStore(fail=True)
    log = AuditLog(store)  # type: ignore[arg-type]
    store.release.set()
    futures = [log.write({"audit_id": f"r{i}"}) for i in range(5)]
    for future in futures:
        with pytest.raises(PublishError, match="api_audit"):
            future.result(5)


def test_a_new_snapshot_is_loaded_beside_the_old_and_a_champion_change_refuses_updates(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import churnseg.pipelines.api.app as app
    from churnseg.pipelines.config import Config
    from churnseg.pipelines.stages.intraday import IntradayUnavailableError

    published = {"run": "r1"}
    loads: list[str] = []
    slow_load = threading.Event()

    def snapshot(_: object) -> SimpleNamespace:
        return SimpleNamespace(run_id=published["run"])

    def load(_: object, __: object, found: SimpleNamespace | None = None) -> SimpleNamespace:
        run = found.run_id if found is not None else published["run"]
        if run == "bad":
            raise IntradayUnavailableError("the champions changed since snapshot bad")
        if run == "r2":
            slow_load.wait(5)  # a reload takes a while: rescores go on meanwhile
        loads.append(run)
        models = SimpleNamespace(segmentation_version=1, churn_version=1)
        return SimpleNamespace(snapshot=SimpleNamespace(run_id=run), models=models)

    monkeypatch.setattr(app, "published_snapshot", snapshot)
    monkeypatch.setattr(app, "load_rescorer", load)
    monkeypatch.setattr(app, "champion_version", lambda _: 1)
    config = Config.model_validate({"state_dir": str(tmp_path), "sample": {"enabled": True}})
    cache = app.RescorerCache(config, reload_seconds=0.02)
    try:
        assert cache.get().snapshot.run_id == "r1"
        published["run"] = "r2"
        time.sleep(0.2)
        assert cache.get().snapshot.run_id == "r1", "served while the new one loads"
        slow_load.set()
        deadline = time.monotonic() + 5
        while cache.get().snapshot.run_id != "r2" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cache.get().snapshot.run_id == "r2"
        published["run"] = "bad"
        deadline = time.monotonic() + 5
        with pytest.raises(IntradayUnavailableError, match="champions changed"):
            while time.monotonic() < deadline:
                cache.get()
                time.sleep(0.02)
    finally:
        cache.stop()
    assert loads == ["r1", "r2"]
