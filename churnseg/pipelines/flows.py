"""Prefect flows: ``retrain`` (extract to publish) and ``score`` (champions to publish).

Each flow run owns exactly one MLflow run; ``score`` called from ``retrain`` opens a nested run
under the retrain run, explicitly.

Resuming: the retrain flow extracts the sources, fingerprints them with the config and the code
(``resume.py``) and works in the run folder named by that fingerprint. Its compute tasks (clean,
build-features, train-segmentation, train-churn, score) are cached on (task name, fingerprint)
with their results persisted in the folder, so running the same command again after a failure
reuses every stage that finished (Prefect shows them as ``Cached``) and runs the failed stage and
the ones after it. Extraction, lineage, cutoff planning and publishing always run. A stage is
recomputed, and every stage after it too, when ``fresh`` is set, when its output files are gone,
or when the model version it registered is no longer in the registry.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import mlflow
import pyarrow.compute as pc
import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import State, Task, flow
from prefect.runtime import flow_run

from churnseg.models.classification import CHURNED_BAND
from churnseg.pipelines import resume, stages, tasks
from churnseg.pipelines.config import Config, load_config, redact_secrets
from churnseg.pipelines.dask_scoring import score_stage_on_dask
from churnseg.pipelines.publish import PublishTarget, latest_snapshot, run_log, target_from_config
from churnseg.pipelines.quality import QUARANTINE_FILE
from churnseg.pipelines.stages import RunPaths

P = ParamSpec("P")
R = TypeVar("R")

RESUMED_STAGES_TAG = "churnseg.resumed_stages"
RESUMED_FROM_TAG = "churnseg.resumed_from"
FINGERPRINT_TAG = "churnseg.fingerprint"


def _run_key() -> str:
    """Return the Prefect flow run id, or a fresh key outside a flow run."""
    run_id = flow_run.get_id()
    return str(run_id) if run_id else stages.new_run_key()


class StageRunner:
    """Runs compute tasks, cached on the run fingerprint when there is one; records reuse.

    Once a stage is computed rather than reused, every later stage is recomputed too
    (``refresh``): its inputs may have changed, and a run then reads as "resumed from stage X".
    """

    def __init__(self, paths: RunPaths, fingerprint: str | None, fresh: bool) -> None:
        self.paths = paths
        self.fingerprint = fingerprint
        self.refresh = fresh
        self.reused: list[str] = []

    def stage(
        self,
        task: Task[P, R],
        outputs: Sequence[Path] = (),
        valid: Callable[[R], bool] | None = None,
    ) -> Callable[P, R]:
        """Return ``task`` as a callable that reuses its cached result when that is still good.

        Args:
            task: A compute task from ``tasks``.
            outputs: Files the stage writes; when one is missing the cache is not used.
            valid: Checks a cached result against the world outside the run folder (the model
                registry); when it fails the stage is recomputed.
        """

        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if self.fingerprint is None:
                return task(*args, **kwargs)
            fingerprint = self.fingerprint

            def attempt(refresh: bool) -> State[R]:
                stage = tasks.cached(task, fingerprint, self.paths.results, refresh)
                return stage(*args, return_state=True, **kwargs)

            state = attempt(self.refresh or any(not p.exists() for p in outputs))
            value: R = state.result()  # raises the stage's error when it failed
            if state.name == "Cached" and valid is not None and not valid(value):
                state = attempt(True)
                value = state.result()
            if state.name == "Cached":
                self.reused.append(task.name)
            else:
                self.refresh = True
            return value

        return call


def _registered_here(config: Config, paths: RunPaths) -> Callable[[stages.ChurnOutcome], bool]:
    """Return a check that a churn outcome's model versions were registered by this run.

    Guards against a cached outcome outliving its models (registry reset or version deleted):
    the challenger, the champion it left, and the segmentation model it registered.
    """
    attempts = resume.attempt_run_ids(paths)

    def registered(model_name: str, version: int | None) -> bool:
        if version is None:
            return True
        try:
            found = MlflowClient().get_model_version(model_name, str(version))
        except MlflowException:
            return False
        return found.run_id in attempts

    def check(outcome: stages.ChurnOutcome) -> bool:
        churn, seg = config.mlflow.churn_model, config.mlflow.segmentation_model
        own_champion = outcome.champion_kind != "previous champion"
        return (
            registered(churn, outcome.version)
            and (not own_champion or registered(churn, outcome.champion_version))
            and registered(seg, outcome.segmentation_version)
        )

    return check


@flow(name="score")
def score_flow(
    config_path: str | None = None,
    features_path: str | None = None,
    run_folder: str | None = None,
    fingerprint: str | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Score customers with the champion models and publish them.

    Args:
        config_path: YAML config (default: the bundled sample config).
        features_path: A scoring feature table already built (by ``retrain``); when omitted the
            sources are extracted and cleaned and features are built as of the latest data.
        run_folder: Write the scores into this run folder (``retrain`` passes its own);
            default: a new folder named by the flow run id.
        fingerprint: The retrain run's fingerprint: scoring is then cached on it, so a resumed
            retrain reuses scores it already computed. Default: no caching.
        fresh: Recompute scores even when a cached result exists.

    Returns:
        A summary: rows scored and published, the snapshot, the output table, the MLflow run id,
        and which stages were reused from an earlier attempt.
    """
    config = load_config(config_path)
    stages.configure_mlflow(config)
    paths = RunPaths(Path(run_folder)) if run_folder else stages.run_paths(config, _run_key())
    if features_path is not None and config.allocation.enabled:
        _check_owners_cleaned(paths)
    runner = StageRunner(paths, fingerprint, fresh)
    nested = mlflow.active_run() is not None
    target = target_from_config(config)
    # Only a run that cleaned its own data publishes a quarantine (retrain publishes its own).
    quarantine = paths.root / QUARANTINE_FILE if features_path is None else None
    with (
        mlflow.start_run(run_name="score", nested=nested) as run,
        run_log(target, run.info.run_id, "score", quarantine) as entry,
    ):
        mlflow.set_tags(
            {
                "churnseg.flow": "score",
                "prefect.flow_run_id": _run_key(),
                "churnseg.run_folder": str(paths.root.resolve()),
            }
        )
        summary: dict[str, Any] = {}
        if features_path is None:
            stages.log_lineage(config)
            summary["rows_read"] = tasks.extract(config, paths)
            entry.rows_read = sum(summary["rows_read"].values())
            summary["quality"] = tasks.clean(config, paths)
            entry.rows_quarantined = sum(q.quarantined for q in summary["quality"].values())
            cutoffs = tasks.plan(config, paths)
            tasks.features(config, paths, cutoffs, only=("scoring",))
            features_file = paths.features / "scoring.parquet"
        else:
            features_file = Path(features_path)
        if config.scoring.uses_dask:  # partitions as tasks on a Dask cluster, same output
            # Not cached: the partitions are tasks of their own; on resume they run again.
            scored = score_stage_on_dask(config, features_file, paths.scores, run.info.run_id)
        else:
            score = runner.stage(tasks.score, outputs=[paths.scores])
            scored = score(config, features_file, paths.scores, run.info.run_id)
        if runner.reused:
            mlflow.set_tag(RESUMED_STAGES_TAG, ",".join(runner.reused))
        entry.snapshot_date = latest_snapshot(paths.scores)
        allocation = None
        if config.allocation.enabled:
            allocation = tasks.allocate(config, paths, paths.scores, run.info.run_id)
            summary["allocation"] = allocation.summary()
        published = tasks.publish(
            config, paths.scores, allocation.files if allocation is not None else None
        )
        entry.rows_published = published
        mlflow.log_metric("rows_published", published)
    summary.update(
        rows_scored=scored,
        customers_known=int(pq.ParquetFile(features_file).metadata.num_rows),
        customers_at_risk=_at_risk_count(paths.scores),
        rows_published=published,
        table=target.describe(target.names.customer_scores),
        score_run_id=run.info.run_id,
        resumed_stages=runner.reused,
    )
    return summary


def _check_owners_cleaned(paths: RunPaths) -> None:
    """Fail before scoring when allocation will find no clean owners in the run folder.

    Scoring a given feature table does not extract or clean anything, so allocation reads the
    owners the run that built the table cleaned: that run's folder must be the one passed.
    """
    from churnseg.pipelines.stages.allocating import AllocationUnavailableError

    if not (paths.clean / "owners.parquet").exists():
        raise AllocationUnavailableError(
            f"table 'owners': no clean owners in the run folder {paths.root}; scoring a given "
            "feature table allocates from the folder that built it: pass its run_folder, or "
            "set allocation.enabled: false"
        )


def _at_risk_count(scores: Path) -> int:
    """Return how many scored customers can still churn (risk band other than churned)."""
    bands = pq.read_table(scores, columns=["risk_band"]).column("risk_band")
    return int(pc.sum(pc.not_equal(bands, CHURNED_BAND)).as_py() or 0)


@contextmanager
def _logged_if_failing(target: PublishTarget, run_id: str) -> Iterator[None]:
    """Record a failure of what runs before the run log opens as a failed run (then re-raise).

    The retrain flow opens its run log once the run folder is known, after extraction and the
    fingerprint; an unreadable source or a busy run folder must still show in ``pipeline_runs``.
    """
    try:
        yield
    except BaseException:
        with run_log(target, run_id, "retrain"):
            raise


def _log_reused(
    seg: stages.SegmentationOutcome, churn: stages.ChurnOutcome, reused: set[str]
) -> None:
    """Log the headline results of reused model stages, so the resumed MLflow run shows them.

    The full artifacts stay with the run that computed them (tag ``churnseg.resumed_from``).
    """
    if tasks.segmentation.name in reused:
        mlflow.log_param("segmentation_k", seg.k)
    if tasks.churn.name in reused:
        mlflow.log_metrics(churn.metrics)
        mlflow.set_tags({"churn.promoted": str(churn.promoted), "churn.decision": churn.reason})


@flow(name="retrain")
def retrain_flow(config_path: str | None = None, fresh: bool = False) -> dict[str, Any]:
    """Extract, clean, build features, train and promote both models, then score and publish.

    Resumes: an earlier attempt with the same fingerprint (config, extracted data, code) left
    its finished stages in the run folder ``<state_dir>/runs/<fingerprint>``; they are reused,
    and the MLflow run is tagged ``churnseg.resumed_stages`` with their task names.

    Args:
        config_path: YAML config (default: the bundled sample config).
        fresh: Recompute every stage even when an earlier attempt finished it.

    Returns:
        A summary for the command line: rows read and quarantined, k, validation ROC AUC,
        model versions, where the table and the MLflow store are, the run folder, and which
        stages were reused.
    """
    config: Config = load_config(config_path)
    stages.configure_mlflow(config)
    target = target_from_config(config)
    flow_run_id = _run_key()
    incoming = resume.incoming_paths(config, flow_run_id)
    with mlflow.start_run(run_name="retrain") as run, ExitStack() as stack:
        run_id = run.info.run_id
        mlflow.set_tags({"churnseg.flow": "retrain", "prefect.flow_run_id": flow_run_id})
        stack.callback(shutil.rmtree, incoming.root, ignore_errors=True)
        with _logged_if_failing(target, run_id):
            stages.log_lineage(config)
            rows_read = tasks.extract(config, incoming)
            fingerprint = resume.run_fingerprint(config, incoming.raw)
            paths = stages.run_paths(config, fingerprint.key)
            stack.enter_context(resume.run_lock(paths, f"flow run {flow_run_id}"))
        entry = stack.enter_context(
            run_log(target, run_id, "retrain", paths.root / QUARANTINE_FILE)
        )
        earlier = resume.record_attempt(paths, fingerprint, flow_run_id, run_id, fresh)
        resume.adopt_extract(incoming, paths)
        mlflow.set_tags(
            {"churnseg.run_folder": str(paths.root.resolve()), FINGERPRINT_TAG: fingerprint.key}
        )
        mlflow.log_dict(fingerprint.parts, "fingerprint.json")
        runner = StageRunner(paths, fingerprint.key, fresh)
        # Whatever happens next, the run says which stages it took from earlier attempts.
        stack.callback(_tag_resumed, runner, earlier)

        entry.rows_read = sum(rows_read.values())
        clean_outputs = [paths.clean / f"{t}.parquet" for t in config.sources]
        quality = runner.stage(tasks.clean, [*clean_outputs, paths.root / QUARANTINE_FILE])(
            config, paths
        )
        entry.rows_quarantined = sum(q.quarantined for q in quality.values())
        tasks.lineage(paths, rows_read)
        cutoffs = tasks.plan(config, paths)
        entry.snapshot_date = cutoffs.scoring
        feature_files = [paths.features / f"{n}.parquet" for n in stages.FEATURE_TABLES]
        feature_rows = runner.stage(tasks.features, feature_files)(config, paths, cutoffs)
        seg = runner.stage(
            tasks.segmentation,
            [
                paths.root / "segment_profiles.parquet",
                paths.root / "segment_migration.parquet",
                paths.root / stages.SEGMENTATION_FILE,
            ],
        )(config, paths, run_id)
        churn = runner.stage(tasks.churn, valid=_registered_here(config, paths))(config, paths)
        _log_reused(seg, churn, set(runner.reused))
        scoring = score_flow(
            config_path=config_path,
            features_path=str(paths.features / "scoring.parquet"),
            run_folder=str(paths.root),
            fingerprint=fingerprint.key,
            fresh=runner.refresh,
        )
        runner.reused.extend(scoring["resumed_stages"])
        entry.rows_published = scoring["rows_published"]
        profiles = paths.root / "segment_profiles.parquet"
        if profiles.exists():
            tasks.publish_profiles(config, profiles)
    return {
        "rows_read": rows_read,
        "quality": quality,
        "snapshot": cutoffs.scoring.isoformat(),
        "feature_rows": feature_rows,
        "k": seg.k,
        "segment_names": seg.names,
        "segmentation_version": churn.segmentation_version,
        "churn_version": churn.version,
        "churn_champion_version": churn.champion_version,
        "churn_champion_kind": churn.champion_kind,
        "churn_promoted": churn.promoted,
        "churn_decision": churn.reason,
        "churn_candidate": churn.candidate,
        "churn_calibration": churn.calibration,
        "validation_split": cutoffs.split,
        "churn_dropped_features": churn.dropped_features,
        "plan_notes": list(cutoffs.notes),
        "val_roc_auc": churn.metrics["val_roc_auc"],
        "val_ece": churn.metrics["val_ece"],
        "mlflow_tracking_uri": redact_secrets(config.tracking_uri),
        "mlflow_run_id": run_id,
        "run_folder": str(paths.root),
        "fingerprint": fingerprint.key,
        **scoring,
        "resumed_stages": list(runner.reused),
    }


def _tag_resumed(runner: StageRunner, earlier: list[str]) -> None:
    """Tag the active MLflow run with the stages reused and the attempts they came from."""
    if runner.reused and mlflow.active_run() is not None:
        mlflow.set_tags(
            {RESUMED_STAGES_TAG: ",".join(runner.reused), RESUMED_FROM_TAG: ",".join(earlier)}
        )


ASSIGN_TABLES = ("customers", "owners", "assignments")


@flow(name="assign")
def assign_flow(config_path: str | None = None) -> dict[str, Any]:
    """Re-allocate the newest published snapshot's customers to owners, without re-scoring.

    Reads the owners (and the CRM's assignments, and the customers' region and industry) from
    the sources and the newest scores from the output database; publishes ``customer_assignments``
    and ``owner_workload`` for that snapshot in one transaction. For when owners change during
    the week (someone leaves, capacities move); the score flow allocates on its own when
    ``allocation.enabled``.

    Returns:
        A summary: the snapshot, customers allocated and left without an owner, moves, match
        shares, rows published, the MLflow run id and the run folder.

    Raises:
        AllocationUnavailableError: No ``sources.owners``, or nothing published to allocate yet.
    """
    from churnseg.pipelines.publish import qualified, read_table
    from churnseg.pipelines.stages.allocating import AllocationUnavailableError

    config = load_config(config_path)
    if "owners" not in config.sources:
        raise AllocationUnavailableError(
            "churnseg assign needs sources.owners in the config (docs/allocation.md)"
        )
    stages.configure_mlflow(config)
    target = target_from_config(config)
    latest = read_table(target, f"SELECT * FROM {qualified(target, target.names.latest_view)}")
    if latest.empty:
        raise AllocationUnavailableError(
            f"no published scores at {target.describe(target.names.latest_view)}; run "
            "`churnseg run` or `churnseg score` first"
        )
    # Only what allocation reads: customers' region and industry, owners, assignments.
    sources = {t: s for t, s in config.sources.items() if t in ASSIGN_TABLES}
    narrow = config.model_copy(update={"sources": sources})
    paths = stages.run_paths(config, _run_key())
    with (
        mlflow.start_run(run_name="assign") as run,
        run_log(target, run.info.run_id, "assign", paths.root / QUARANTINE_FILE) as entry,
    ):
        mlflow.set_tags({"churnseg.flow": "assign", "churnseg.run_folder": str(paths.root)})
        rows_read = tasks.extract(narrow, paths)
        entry.rows_read = sum(rows_read.values())
        quality = tasks.clean(narrow, paths)
        entry.rows_quarantined = sum(q.quarantined for q in quality.values())
        scores_file = paths.root / "published_scores.parquet"
        latest.to_parquet(scores_file, index=False)
        entry.snapshot_date = latest_snapshot(scores_file)
        outcome = tasks.allocate(narrow, paths, scores_file, run.info.run_id)
        entry.rows_published = tasks.publish_assignments(narrow, outcome.files)
    return {
        "snapshot": entry.snapshot_date.isoformat() if entry.snapshot_date else None,
        "allocation": outcome.summary(),
        "rows_published": entry.rows_published,
        "table": target.describe(target.names.customer_assignments),
        "mlflow_run_id": run.info.run_id,
        "run_folder": str(paths.root),
    }


@flow(name="score-changed")
def score_changed_flow(config_path: str | None = None, as_of: str | None = None) -> dict[str, Any]:
    """Re-score the customers whose data changed since the newest snapshot, and publish them.

    An intra-day update (``stages.intraday``): customers with a transaction, event,
    subscription change or signup/churn date at or after the snapshot date, or missing from
    it, are scored as of now with the champion models and the snapshot's thresholds; their
    rows replace theirs in that snapshot (``update_kind`` 'intraday'). Every other row stays.

    Args:
        config_path: YAML config (default: the bundled sample config).
        as_of: The moment to take features at (ISO date-time, UTC); default now
            (``intraday.update_as_of``).

    Returns:
        A summary: the snapshot updated, the moment, customers changed, rows published, the
        output table, the MLflow run id and the run folder.

    Raises:
        IntradayUnavailableError: Nothing published to update, or the champions changed
            since the snapshot (run ``churnseg score``).
    """
    from datetime import datetime

    from churnseg.pipelines.stages.intraday import load_rescorer, update_as_of

    config = load_config(config_path)
    stages.configure_mlflow(config)
    target = target_from_config(config)
    rescorer = load_rescorer(config, target)
    moment = update_as_of(config, datetime.fromisoformat(as_of) if as_of else None)
    snapshot = rescorer.snapshot
    paths = stages.run_paths(config, _run_key())
    with (
        mlflow.start_run(run_name="score-changed") as run,
        run_log(target, run.info.run_id, "score-changed") as entry,
    ):
        mlflow.set_tags(
            {
                "churnseg.flow": "score-changed",
                "churnseg.run_folder": str(paths.root),
                "churnseg.updates_snapshot": snapshot.snapshot_date.isoformat(),
                "churnseg.updates_run_id": snapshot.run_id,
            }
        )
        entry.snapshot_date = snapshot.snapshot_date
        changed = tasks.changed_customers(config, snapshot, moment)
        scores = (
            tasks.rescore(config, rescorer, changed, moment, paths, run.info.run_id)
            if changed
            else None
        )
        published = tasks.publish_update(config, scores) if scores is not None else 0
        entry.rows_published = published
        mlflow.log_metrics({"customers_changed": len(changed), "rows_published": published})
    return {
        "snapshot": snapshot.snapshot_date.isoformat(),
        "as_of": moment.isoformat(),
        "customers_changed": len(changed),
        "rows_published": published,
        "table": target.describe(target.names.customer_scores),
        "mlflow_run_id": run.info.run_id,
        "run_folder": str(paths.root),
    }


@flow(name="monitor")
def monitor_flow(config_path: str | None = None, run_folder: str | None = None) -> dict[str, Any]:
    """Compare the current data with the champion churn model's snapshot; flag drift.

    Feature PSI, churn score drift, segment migration and realised against predicted churn of
    matured published snapshots, all logged to one MLflow run tagged ``churnseg.drift_flagged``.
    When flagged and ``monitoring.retrain_on_drift`` is set, the retrain flow runs afterwards
    (as its own MLflow run, not nested: it is a new model's lineage).

    Args:
        config_path: YAML config (default: the bundled sample config).
        run_folder: A run folder whose clean tables and scoring features are already built
            (e.g. the latest score run); when omitted the sources are extracted, cleaned and
            featurised into a new run folder.

    Returns:
        A summary: flagged, reasons, score drift, features with moderate or major drift,
        matured snapshots, the MLflow run id, and the retrain summary when one ran.

    Raises:
        MonitorError: No champion churn model, or its reference snapshot is gone; raised before
            any data is read.
    """
    from churnseg.pipelines.monitor import monitor_summary, reference_run

    config = load_config(config_path)
    stages.configure_mlflow(config)
    # Before extracting anything: without a champion there is nothing to compare with.
    reference = reference_run(config)
    with mlflow.start_run(run_name="monitor") as run:
        if run_folder is None:
            paths = stages.run_paths(config, _run_key())
            stages.log_lineage(config)
            tasks.extract(config, paths)
            tasks.clean(config, paths)
            cutoffs = tasks.plan(config, paths)
            tasks.features(config, paths, cutoffs, only=("scoring",))
        else:
            paths = stages.RunPaths(Path(run_folder))
            cutoffs = stages.resolve_plan(config, paths)
        mlflow.set_tags({"churnseg.flow": "monitor", "churnseg.run_folder": str(paths.root)})
        outcome = tasks.monitor(config, reference, paths, cutoffs.scoring)
    summary = {
        **monitor_summary(outcome),
        "snapshot": cutoffs.scoring.isoformat(),
        "mlflow_run_id": run.info.run_id,
        "run_folder": str(paths.root),
    }
    if outcome.flagged and config.monitoring.retrain_on_drift:
        summary["retrain"] = retrain_flow(config_path=config_path)
    return summary
