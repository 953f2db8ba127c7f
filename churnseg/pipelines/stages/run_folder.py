"""Run folders: where one pipeline run keeps its files, and the bundled sample."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from churnseg.pipelines.config import Config

# Customers are cleaned first: the other tables are checked against the clean ids.
CLEAN_ORDER = ("customers", "transactions", "events", "subscriptions")
# Cleaned after them (checked against the clean customer ids), never read by the features.
ALLOCATION_TABLES = ("owners", "assignments", "contact_outcomes")


@dataclass(frozen=True)
class RunPaths:
    """Folders and files of one pipeline run under ``<state_dir>/runs/<run_key>``."""

    root: Path

    @property
    def raw(self) -> Path:
        """Return the folder of extracted source copies."""
        return self.root / "raw"

    @property
    def clean(self) -> Path:
        """Return the folder of clean tables."""
        return self.root / "clean"

    @property
    def quarantine(self) -> Path:
        """Return the folder of quarantined rows."""
        return self.root / "quarantine"

    @property
    def features(self) -> Path:
        """Return the folder of feature tables (train, validation, scoring)."""
        return self.root / "features"

    @property
    def scores(self) -> Path:
        """Return the scored-customers Parquet file."""
        return self.root / "scores.parquet"

    @property
    def manifest(self) -> Path:
        """Return ``run.json``: the run's fingerprint and every attempt (retrain runs)."""
        return self.root / "run.json"

    @property
    def lock(self) -> Path:
        """Return the lock file that keeps two runs with one fingerprint apart."""
        return self.root / ".lock"

    @property
    def results(self) -> Path:
        """Return the folder of persisted Prefect task results (the stage cache)."""
        return self.root / "task-results"


def run_paths(config: Config, run_key: str) -> RunPaths:
    """Return the paths of run ``run_key`` (the folders are created by the stages).

    The retrain flow's key is its run fingerprint (``resume.run_fingerprint``), so an attempt
    with the same config, data and code finds an earlier attempt's outputs; the score and
    monitor flows use ``new_run_key`` or the Prefect flow run id.
    """
    return RunPaths(config.state_dir / "runs" / run_key)


def new_run_key() -> str:
    """Return a sortable key for a new run folder (outside a Prefect flow run)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def ensure_sample(config: Config) -> bool:
    """Generate the bundled sample into ``<state_dir>/sample`` when enabled and missing.

    The sample is written as CSV when the sources read CSV files from the sample folder.

    Returns:
        True when data was generated.
    """
    from churnseg.pipelines.sample import SampleSpec, write_sample

    if not config.sample.enabled:
        return False
    sample_dir = config.sample_dir.resolve()
    in_sample = [
        (Path(config.resolve(s.path)), s.file_format)
        for s in config.sources.values()
        if s.path and Path(config.resolve(s.path)).parent.resolve() == sample_dir
    ]
    if in_sample and all(p.exists() for p, _ in in_sample):
        return False
    csv = any(fmt == "csv" for _, fmt in in_sample)
    spec = SampleSpec(
        customers=config.sample.customers,
        seed=config.sample.seed,
        dirty_fraction=config.sample.dirty_fraction,
        file_format="csv" if csv else "parquet",
    )
    write_sample(spec, config.sample_dir)
    return True
