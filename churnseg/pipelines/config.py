"""Run configuration: YAML validated by strict pydantic models, overridable from the environment.

Two ways to keep secrets and machine-specific URIs out of YAML:

* ``${VAR}`` or ``${VAR:-default}`` inside any string value is replaced by the environment variable.
* ``CHURNSEG__SECTION__KEY=value`` overrides one key (``CHURNSEG__MLFLOW__TRACKING_URI=...``);
  the value is parsed as YAML, so numbers and lists work too.

Nothing here touches the file system or the network until a function is called.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    model_validator,
)

from churnseg.features.contract import CONTRACTS, MODEL_TABLES
from churnseg.features.settings import FeatureConfig

ENV_PREFIX = "CHURNSEG__"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def redact_url(url: str) -> str:
    """Return a database URL with its password replaced by ``***`` (for messages and logs)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable as a URL: blank anything between "user:" and "@" all the same.
        return re.sub(r"(//[^/:@]*:)[^@/]*@", r"\1***@", url)


_SECRETS = (
    # scheme://user:password@host: the password runs to the last "@" before the path.
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s/]*@", re.IGNORECASE), r"\1***@"),
    # password=... and the like, in URL query strings and libpq "key=value" strings.
    (
        re.compile(
            r"(\b(?:password|passwd|pwd|sslpassword|secret|token|api_?key|access_?key)\s*=\s*)"
            r"(?:'(?:[^'\\]|\\.)*'|[^\s&;'\"]+)",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
)


def redact_secrets(text: str) -> str:
    """Return ``text`` with every password in a URL or ``key=value`` connection string hidden.

    Works on any text (a URL, an error message), unlike ``redact_url``, which needs one URL:
    ``postgresql://u:pw@h/db?sslpassword=x`` becomes ``postgresql://u:***@h/db?sslpassword=***``.
    """
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class SourceConfig(_Strict):
    """Where one logical table comes from: a file (or glob) or a SQL database table or query.

    How values are read is configured here too: CSV dialect, date formats, the time zone of
    timestamps without one, and (customers) attribute types.
    """

    path: str | None = Field(None, description="CSV or Parquet file, or a glob of them.")
    format: Literal["parquet", "csv"] | None = Field(
        None, description="File format; inferred from the path's suffix when omitted."
    )
    url: str | None = Field(
        None,
        description="SQLAlchemy database URL (postgresql://, sqlite:///); put the password in "
        "an environment variable: ${PGPASSWORD}. Printed and logged with the password hidden.",
    )
    table: str | None = Field(None, description="Table name in the database ('schema.table').")
    query: str | None = Field(None, description="SQL query run against the database.")
    batch_rows: int = Field(
        50_000, ge=1, description="Rows fetched from a database per batch (bounds memory)."
    )
    columns: dict[str, str] = Field(
        default_factory=dict, description="Logical column name -> column name in the source."
    )
    delimiter: str | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="CSV field delimiter (e.g. ';' or '\\t'); default: detected from the file.",
    )
    encoding: Literal["utf-8", "latin-1", "utf-16"] = Field(
        "utf-8",
        description="CSV text encoding; lines with bytes invalid in it are quarantined "
        "as 'bad_encoding'.",
    )
    header: bool = Field(True, description="The CSV file's first line names the columns.")
    date_formats: list[str] = Field(
        default_factory=list,
        description="strftime formats tried in order on text timestamps ('%d/%m/%Y %H:%M'); "
        "default: ISO 8601 only. Text matching none is quarantined as 'bad_timestamp'.",
    )
    time_zone: str | None = Field(
        None,
        description="IANA zone of timestamps that carry none (e.g. 'Europe/Paris'); they are "
        "converted to UTC. Default: UTC. Timestamps with a zone are converted from theirs.",
    )
    attributes: dict[str, Literal["numeric", "categorical", "date", "ignore"]] = Field(
        default_factory=dict,
        description="customers only: attribute column (source name) -> numeric, categorical, "
        "date (its age at each cutoff becomes the feature) or ignore (not a feature: ids, "
        "free text, values rewritten after the fact such as a last-login date); undeclared "
        "extra columns are inferred and the result is printed and logged.",
    )
    latest_by: str | None = Field(
        None,
        description="customers only: source column (e.g. updated_at) whose largest value marks "
        "the latest of duplicated customer rows; default: the row read last.",
    )

    @model_validator(mode="after")
    def _one_location(self) -> SourceConfig:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' (a file) or 'url' (a database)")
        if self.url is not None and (self.table is None) == (self.query is None):
            raise ValueError("a database source needs exactly one of 'table' or 'query'")
        if self.time_zone is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.time_zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"time_zone {self.time_zone!r} is not an IANA zone (e.g. 'Europe/Paris')"
                ) from None
        return self

    @field_serializer("url", when_used="json")
    def _hide_password(self, url: str | None) -> str | None:
        # JSON dumps feed `config show` and the MLflow lineage: never the password.
        return None if url is None else redact_url(url)

    @property
    def file_format(self) -> Literal["parquet", "csv"]:
        """Return the declared format, or the one the file suffix implies."""
        if self.format is not None:
            return self.format
        suffix = (self.path or "").lower()
        return "csv" if suffix.endswith((".csv", ".csv.gz", ".tsv")) else "parquet"


class SampleConfig(_Strict):
    """Generate the bundled synthetic sample into ``<state_dir>/sample`` when sources are absent."""

    enabled: bool = True
    customers: int = Field(3000, ge=10)
    seed: int = 42
    dirty_fraction: float = Field(0.01, ge=0.0, le=0.5)


class CleaningConfig(_Strict):
    """Cleaning rules; every rejected row keeps its reason code in quarantine (docs/data_in.md)."""

    min_date: date = Field(
        date(1980, 1, 1),
        description="Start date: timestamps before it are 'before_min_date' (placeholders "
        "such as 1900-01-01 or 1970-01-01 in systems that never had such dates).",
    )
    now: date | None = Field(
        None, description="Timestamps after this day are 'future'; default: the run's clock."
    )
    max_quarantine_share: float = Field(
        0.2, ge=0.0, le=1.0, description="Stop the run when a table loses more than this share."
    )
    missing_id_values: list[str] = Field(
        default_factory=lambda: ["null", "none", "nan", "n/a", "na", "unknown", "-", "?"],
        description="Customer ids that mean 'no id' (compared trimmed, case-insensitive); "
        "rows carrying them are 'null_customer_id' like blank ids.",
    )
    unknown_customers: Literal["quarantine", "stub"] = Field(
        "quarantine",
        description="Rows of ids missing from customers: quarantine them ('unknown_customer') "
        "or keep them and add a stub customer (is_stub = true).",
    )
    zero_amounts: Literal["quarantine", "keep"] = Field(
        "keep",
        description="Transactions with amount 0 (free orders, samples): keep them as activity "
        "(they count for recency and frequency, not for spend), or quarantine them "
        "('zero_amount').",
    )
    max_abs_amount: float | None = Field(
        1e8,
        gt=0,
        description="Amounts beyond +/- this are impossible and quarantined "
        "('amount_above_max'); null: no cap.",
    )
    extreme_quantile: float | None = Field(
        0.999,
        gt=0.5,
        lt=1.0,
        description="Clean transactions with |amount| above this quantile get is_extreme = true "
        "(flagged, kept); null: no flag.",
    )
    dedupe_order_lines: bool = Field(
        True,
        description="Quarantine a line repeating (order_id, product, quantity, amount) of an "
        "earlier one at another time ('duplicate_order_line').",
    )
    fold_case: bool = Field(
        True,
        description="Lower-case categorical values (category, channel, event_type, plan, "
        "categorical attributes); values are always trimmed.",
    )
    numeric_min_distinct: int = Field(
        20,
        ge=2,
        description="Attribute inference: a text column is numeric when every value parses as "
        "a number, none has a leading zero and it has more distinct values than this.",
    )


class SnapshotConfig(_Strict):
    """Cutoff dates: scoring at ``as_of``, validation one label window earlier, training before.

    Training cutoffs are planned from the data: every one has ``min_history_days`` of history
    before it and its label window ends on or before the validation cutoff, so no training label
    sees the validation window. With ``features.label: column`` (a snapshot table without
    timestamps) there is one cutoff and a seeded share of the labelled customers is held out.
    """

    as_of: date | None = Field(
        None,
        description="Scoring cutoff; default: the day after the last clean activity "
        "(transaction, event, subscription start or end), or today without timestamps.",
    )
    horizon_days: int = Field(90, ge=1)
    train_cutoffs: int | Literal["auto"] = Field(
        "auto",
        description="Training cutoffs: 'auto' takes as many as the history allows (at most "
        "max_train_cutoffs); a number asks for that many and takes fewer, with a note, when "
        "the history is too short for them.",
    )
    max_train_cutoffs: int = Field(
        4,
        ge=1,
        description="auto: the most training cutoffs taken, newest first (each costs a feature "
        "snapshot and a backtest fold).",
    )
    min_history_days: int | None = Field(
        None,
        ge=0,
        description="History each training cutoff needs before it, counted from the first "
        "activity in the data; default: one horizon.",
    )
    cutoff_step_days: int | None = Field(
        None,
        ge=1,
        description="Days between training cutoffs; default: the horizon. Shorter gives more "
        "training rows (label windows of neighbouring cutoffs then overlap; model selection "
        "still fits only on cutoffs whose labels ended before the one it is judged on).",
    )
    holdout_share: float = Field(
        0.25,
        gt=0.0,
        lt=1.0,
        description="label column (no timestamps): share of labelled customers held out to "
        "validate on (a seeded split by customer id).",
    )

    @model_validator(mode="after")
    def _cutoffs(self) -> SnapshotConfig:
        if isinstance(self.train_cutoffs, int) and self.train_cutoffs < 1:
            raise ValueError(f"train_cutoffs must be 'auto' or >= 1, got {self.train_cutoffs}")
        return self


class NamingRuleConfig(_Strict):
    """A segment name and the centroid ranks (0 lowest .. 1 highest) a segment needs for it."""

    name: str = Field(min_length=1)
    min_rank: dict[str, float] = Field(
        default_factory=dict, description="Input -> lowest rank allowed."
    )
    max_rank: dict[str, float] = Field(
        default_factory=dict, description="Input -> highest rank allowed."
    )


def _default_naming() -> list[NamingRuleConfig]:
    return [
        NamingRuleConfig(name="Champions", min_rank={"purchase_rate": 0.6, "monetary_mean": 0.6}),
        NamingRuleConfig(
            name="Bargain hunters",
            min_rank={"purchase_rate": 0.6},
            max_rank={"monetary_mean": 0.5},
        ),
        NamingRuleConfig(
            name="Big spenders", min_rank={"monetary_mean": 0.6}, max_rank={"purchase_rate": 0.5}
        ),
        NamingRuleConfig(name="Dormant", max_rank={"purchase_rate": 0.0}),
        NamingRuleConfig(name="Occasional", max_rank={"purchase_rate": 0.4}),
    ]


class SegmentationConfig(_Strict):
    """k-means segmentation: inputs, k range, identities across retrains, names."""

    features: list[str] | Literal["auto"] = Field(
        "auto",
        description="Clustering inputs: feature columns or derived names (purchase_rate); "
        "auto: purchase rate and order value with transactions, else activity and recurring "
        "revenue, else up to three numeric customer attributes (docs/models.md).",
    )
    scaler: Literal["standard", "robust"] = "standard"
    pca_components: int | None = Field(None, ge=1, description="PCA before k-means; null: off.")
    k_min: int = Field(2, ge=2)
    k_max: int = Field(8, ge=2)
    min_segment_share: float = Field(0.03, ge=0.0, lt=0.5)
    silhouette_sample: int = Field(5000, ge=100)
    n_init: int = Field(4, ge=1)
    fit_sample_rows: int = Field(
        200_000,
        ge=1000,
        validation_alias=AliasChoices("fit_sample_rows", "minibatch_above"),
        description="k-means is fitted on a seeded sample of this many rows when there are "
        "more; every row is then assigned (minibatch_above: its former name).",
    )
    match_max_distance: float = Field(
        1.0,
        gt=0.0,
        description="Largest centroid distance (champion space) at which a segment keeps its id.",
    )
    naming: list[NamingRuleConfig] = Field(default_factory=_default_naming)
    random_state: int = 0

    @model_validator(mode="after")
    def _range(self) -> SegmentationConfig:
        if isinstance(self.features, list) and not self.features:
            raise ValueError("features must list at least one input, or be 'auto'")
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        return self


class OverrideRule(_Strict):
    """A business rule that beats the model: where ``column`` ``op`` ``value``, set fields."""

    column: str
    op: Literal["eq", "ne", "gt", "ge", "lt", "le", "in"] = "eq"
    value: Any
    set: dict[Literal["value_tier", "lifecycle_stage", "segment_name"], str]


class ClassificationConfig(_Strict):
    """Value tiers, lifecycle stages and overrides."""

    value_column: str = Field(
        "auto",
        description="Per-customer value the A/B/C tiers are cut on (a feature or numeric "
        "attribute); auto: spend_365d with transactions, else sub_recurring_revenue with "
        "subscriptions, else no tiers (null).",
    )
    tier_cuts: tuple[float, float] = Field(
        (0.80, 0.95),
        description="Cumulative value shares ending tier A and tier B (e.g. 80/15/5).",
    )
    new_within_days: int = Field(90, ge=1, description="Tenure below this: 'new'.")
    churned_after_days: int = Field(
        365,
        ge=1,
        description="No activity for this long: 'churned' (the default matches "
        "churn.population_max_recency_days, so 'churned' customers are the ones not at risk).",
    )
    trend_window_days: int = Field(
        90, ge=1, description="Orders in the last window against the window before it."
    )
    growing_ratio: float = Field(1.25, gt=1.0)
    declining_ratio: float = Field(0.75, gt=0.0, lt=1.0)
    overrides: list[OverrideRule] = Field(
        default_factory=lambda: [
            OverrideRule(column="is_key_account", value=True, set={"value_tier": "A"})
        ]
    )

    @model_validator(mode="after")
    def _cuts(self) -> ClassificationConfig:
        a, b = self.tier_cuts
        if not 0 < a < b <= 1:
            raise ValueError(f"tier_cuts must satisfy 0 < A < B <= 1, got {self.tier_cuts}")
        return self


ChurnCandidate = Literal["logreg", "hgb"]


class RiskBandConfig(_Strict):
    """How churn scores become low / medium / high risk bands.

    ``capacity``: the top ``high_share`` of customers by ``rank_by`` are high, the next
    ``medium_share`` medium. ``cost``: high where churn probability x expected value x
    ``save_rate`` exceeds ``contact_cost`` (a contact pays off), medium where it exceeds half of it.
    """

    mode: Literal["capacity", "cost"] = "capacity"
    rank_by: Literal["churn_probability", "value_at_risk"] = "churn_probability"
    high_share: float = Field(0.10, gt=0.0, lt=1.0)
    medium_share: float = Field(0.20, ge=0.0, lt=1.0)
    contact_cost: float = Field(5.0, ge=0.0, description="Cost of one retention contact.")
    save_rate: float = Field(
        0.2, gt=0.0, le=1.0, description="Share of contacted churners a contact keeps."
    )


class ChurnConfig(_Strict):
    """Churn model: candidates, calibration, population, promotion, bands and reasons."""

    candidates: list[ChurnCandidate] = Field(
        default_factory=lambda: list[ChurnCandidate](["logreg", "hgb"]), min_length=1
    )
    calibration: Literal["auto", "isotonic", "sigmoid", "none"] = Field(
        "auto",
        description="How P(churn) is calibrated on held-out time: auto picks sigmoid, isotonic "
        "or none by cross-fitted log loss; published probabilities are never exactly 0 or 1 "
        "and keep the ranking's resolution (no tied blocks).",
    )
    refit_on_latest: bool = Field(
        True,
        description="After choosing and judging the model on held-out time, refit it on every "
        "training cutoff and calibrate it on the validation cutoff (the newest matured labels); "
        "the reported validation metrics stay those of the model that did not see them.",
    )
    population_max_recency_days: int | None = Field(
        365,
        ge=1,
        description="Train and validate on customers who bought within this many days (or never"
        " bought yet); long-lapsed customers are churned already, not at risk.",
    )
    train_max_rows: int | None = Field(
        1_000_000,
        ge=10_000,
        description="Training rows read (the at-risk rows of every training cutoff; a seeded"
        " sample, about the same share of each cutoff, when there are more); null: all. The"
        " search, the final fit and the calibrator fit on samples of these anyway (at most"
        " 500,000 and 200,000 rows by default), so more rows only cost memory.",
    )
    search_sample_rows: int = Field(
        100_000,
        ge=1000,
        description="Rows per search and backtest fit, and per evaluation of one (seeded"
        " samples). Validation always scores every row of the validation cutoff.",
    )
    fit_sample_rows: int | None = Field(
        500_000,
        ge=1000,
        description="Rows the final model fits on (a seeded sample of the cutoffs before the"
        " last); null: all.",
    )
    calibration_sample_rows: int | None = Field(
        200_000,
        ge=1000,
        description="Rows of the last training cutoff the calibrator is fitted on (a seeded"
        " sample); null: all of them.",
    )
    contact_capacity: float = Field(
        0.10, gt=0.0, le=1.0, description="Share of customers retention can contact."
    )
    promotion_metric: Literal["roc_auc", "pr_auc"] = "roc_auc"
    promotion_margin: float = Field(
        0.005, ge=0.0, description="How much better than the champion a challenger must be."
    )
    risk_bands: RiskBandConfig = RiskBandConfig()
    reasons_top_k: int = Field(3, ge=1, le=10)
    reasons_max_features: int = Field(
        12, ge=1, description="Features attributed per customer: the most important ones."
    )
    random_state: int = 0


class MlflowConfig(_Strict):
    """Tracking store and registered model names."""

    tracking_uri: str = "sqlite:///{state_dir}/mlflow.db"
    artifact_location: str = "{state_dir}/mlartifacts"
    experiment: str = "churnseg"
    segmentation_model: str = "churnseg-segmentation"
    churn_model: str = "churnseg-churn"


# Lower-case, unquoted-safe, short enough for PostgreSQL's 63-byte names with derived suffixes.
_TABLE_NAME = r"^[a-z_][a-z0-9_]{0,47}$"
PUBLISH_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")


class PublishConfig(_Strict):
    """Where and how the output tables are published (docs/output_tables.md)."""

    url: str = Field(
        "sqlite:///{state_dir}/scores.db",
        description="Output database: sqlite:///path, or postgresql:// (postgresql+psycopg://) "
        "with the password from the environment (${PGPASSWORD}); never printed or logged.",
    )
    table: str = Field(
        "customer_scores",
        pattern=_TABLE_NAME,
        description="Customer scores table; the view on its newest snapshot is <table>_latest.",
    )
    segment_profiles_table: str = Field("segment_profiles", pattern=_TABLE_NAME)
    quarantine_table: str = Field("data_quarantine", pattern=_TABLE_NAME)
    runs_table: str = Field("pipeline_runs", pattern=_TABLE_NAME)
    db_schema: str | None = Field(
        None,
        pattern=_TABLE_NAME,
        description="PostgreSQL schema holding the tables (created if missing); default: public.",
    )
    keep_snapshots: int = Field(
        12, ge=1, description="Newest snapshots kept in the scores and segment profile tables."
    )
    keep_quarantine_runs: int = Field(
        30, ge=1, description="Newest runs whose quarantined rows are kept in the database."
    )
    chunk_rows: int = Field(
        100_000, ge=1, description="Rows per batch when scoring and publishing (bounds memory)."
    )
    lock_timeout_seconds: float = Field(
        600.0, gt=0, description="Longest wait for another publisher of the same snapshot."
    )

    @model_validator(mode="after")
    def _known_database(self) -> PublishConfig:
        if not self.url.startswith(PUBLISH_SCHEMES):
            raise ValueError(f"url must start with one of {', '.join(PUBLISH_SCHEMES)}")
        if self.db_schema is not None and self.url.startswith("sqlite"):
            raise ValueError("db_schema applies to PostgreSQL only; SQLite has one schema per file")
        return self


class PsiThresholds(_Strict):
    """PSI per severity: at ``moderate`` a feature is reported, at ``major`` the run is flagged."""

    moderate: float = Field(0.1, gt=0.0, description="PSI from which a shift is moderate.")
    major: float = Field(0.25, gt=0.0, description="PSI from which a shift is major (flags).")

    @model_validator(mode="after")
    def _ordered(self) -> PsiThresholds:
        if self.moderate >= self.major:
            raise ValueError(f"moderate ({self.moderate}) must be below major ({self.major})")
        return self


class MonitoringConfig(_Strict):
    """Drift monitoring: thresholds that flag a run, and whether a flag triggers a retrain."""

    psi_thresholds: PsiThresholds = Field(
        PsiThresholds(), description="Feature PSI per severity; a major shift flags the run."
    )
    psi_bins: int = Field(10, ge=2, le=100, description="Quantile bins of the reference.")
    score_psi_threshold: float = Field(
        0.2, gt=0.0, description="PSI of the churn score distribution that flags the run."
    )
    calibration_tolerance: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="Largest accepted gap between realised churn rate and mean predicted "
        "probability of a published snapshot whose horizon has passed.",
    )
    retrain_on_drift: bool = Field(
        False, description="Run the retrain flow when the monitoring run is flagged."
    )


class ScoringConfig(_Strict):
    """Where scoring runs: in this process, or in row-range partitions on a Dask cluster."""

    dask_address: str | None = Field(
        None,
        description="Scheduler of a running Dask cluster (tcp://host:8786) to score partitions "
        "on; its workers must read and write the run folder (shared storage). Null: see "
        "dask_workers.",
    )
    dask_workers: int = Field(
        0,
        ge=0,
        description="Without dask_address: start a local Dask cluster of this many worker "
        "processes for scoring; 0 scores in this process.",
    )
    partition_rows: int = Field(
        250_000, ge=1, description="Rows of the scoring feature table per Dask partition task."
    )

    @property
    def uses_dask(self) -> bool:
        """Whether scoring fans partitions out on a Dask cluster."""
        return self.dask_address is not None or self.dask_workers > 0


# spark_conf keys whose values are credentials: hidden in `config show` and the MLflow lineage.
_SECRET_KEY = re.compile(r"password|secret|token|credential|access\.?key", re.IGNORECASE)


class EngineConfig(_Strict):
    """Where the feature build runs: embedded DuckDB, or Spark through Ibis's PySpark backend.

    The same Ibis expressions run on both. Extraction, cleaning and the BG/NBD fit stay on
    this machine (DuckDB and pandas); with ``pyspark`` the transaction-level feature build runs
    on Spark, and its output is written back into the run folder as one Parquet file per table.
    On a cluster the run folder (``state_dir``) must be storage that the driver and every
    executor see at the same path.
    """

    backend: Literal["duckdb", "pyspark"] = Field(
        "duckdb",
        description="Feature build engine: duckdb (embedded, default) or pyspark (needs Java "
        "and the pyspark package).",
    )
    spark_master: str = Field(
        "local[2]",
        min_length=1,
        description="pyspark only: Spark master URL (local[N], spark://host:7077, yarn, "
        "k8s://...). An already running session in this process is reused as it is.",
    )
    duckdb_memory_limit: str | None = Field(
        None,
        pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="Embedded DuckDB (extract, clean, features): memory it may use before it"
        " spills to a temporary folder, e.g. 8GB; null: DuckDB's default, 80% of the machine."
        " Not every operator spills (a join's hash table while it is probed): the feature"
        " build then writes snapshots unsorted and sorts them in a query of their own. The"
        " feature build of 1M customers completes even at 700MB (198 s), that of 5M at 8GB"
        " (1144 s, peak 10.6 GB); extract and clean of 5M ran at 8GB (peak 8.3 GB instead of"
        " 19.9 GB).",
    )
    spark_conf: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="pyspark only: extra spark.* settings (spark.executor.memory: 4g). The "
        "session time zone is always UTC.",
    )

    @model_validator(mode="after")
    def _spark_keys(self) -> EngineConfig:
        for key, value in self.spark_conf.items():
            if not key.startswith("spark."):
                raise ValueError(f"spark_conf key {key!r} must start with 'spark.'")
            if key == "spark.master":
                raise ValueError("set the master with engine.spark_master, not spark_conf")
            if key == "spark.sql.session.timeZone" and str(value) != "UTC":
                raise ValueError("spark.sql.session.timeZone must stay UTC (features are UTC)")
        return self

    def spark_settings(self) -> dict[str, str]:
        """Return every Spark setting the session gets: fixed ones, then ``spark_conf``."""
        settings = {
            "spark.sql.session.timeZone": "UTC",
            # Naive Parquet timestamps stay plain timestamps, as DuckDB reads them.
            "spark.sql.parquet.inferTimestampNTZ.enabled": "false",
            # Spark's console bar would garble the CLI's own progress display.
            "spark.ui.showConsoleProgress": "false",
        }
        for key, value in self.spark_conf.items():
            settings[key] = str(value).lower() if isinstance(value, bool) else str(value)
        return settings


class AllocationWeightsConfig(_Strict):
    """The parts of the cost of placing one customer with one owner (docs/allocation.md)."""

    region: float = Field(10.0, ge=0.0, description="The owner does not cover the region.")
    industry: float = Field(5.0, ge=0.0, description="The owner does not cover the industry.")
    seniority: float = Field(
        3.0, ge=0.0, description="Per seniority level the owner lacks for the value tier."
    )
    move: float = Field(
        4.0, ge=0.0, description="Moving a customer away from its active current owner."
    )
    unassigned: float = Field(
        1000.0,
        gt=0.0,
        description="No owner for a customer (times 1 + its priority bucket); must exceed the "
        "worst placement.",
    )


def _default_tier_seniority() -> dict[Literal["A", "B", "C"], int]:
    return {"A": 3, "B": 2, "C": 1}


class AllocationConfig(_Strict):
    """Account allocation: every customer to an owner (``churnseg assign``, docs/allocation.md).

    Needs ``sources.owners``; ``sources.assignments`` (the CRM's current owners) is optional:
    without it the previous published allocation is the current one.
    """

    enabled: bool = Field(
        False, description="The score flow allocates and publishes with the scores."
    )
    region_column: str | None = Field(
        "region", description="Customers attribute holding the region; null: none."
    )
    industry_column: str | None = Field(
        "industry", description="Customers attribute holding the industry; null: none."
    )
    weights: AllocationWeightsConfig = AllocationWeightsConfig()
    tier_seniority: dict[Literal["A", "B", "C"], int] = Field(
        default_factory=_default_tier_seniority,
        description="Least owner seniority level each value tier should get.",
    )
    priority_buckets: int = Field(
        4, ge=1, le=20, description="Value-at-risk quantile buckets; higher is placed first."
    )
    max_moves_share: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Largest share of customers moved away from an active owner per run for a "
        "broken rule (moves forced by an owner leaving or by capacity are always made).",
    )
    owner_role_prefix: str = Field(
        "owner_",
        pattern=r"^[a-z_][a-z0-9_]{0,30}$",
        description="PostgreSQL: the database role of owner X is <prefix>X; row-level security "
        "shows each such role only its own rows.",
    )
    reader_role: str | None = Field(
        None,
        pattern=r"^[a-z_][a-z0-9_]{0,47}$",
        description="PostgreSQL: a role (e.g. the group of owner roles) granted SELECT on the "
        "allocation tables and view at every publish; null: grants are left to the DBA.",
    )


ApiScope = Literal["read", "rescore", "feedback"]


def _read_scope() -> list[ApiScope]:
    return ["read"]


class ApiTokenConfig(_Strict):
    """One bearer token of ``churnseg api``: who holds it and what it may do.

    The token itself never sits in the config: either the name of the environment variable
    holding it (read when the API starts; only its SHA-256 is kept), or its SHA-256 in hex
    (``printf %s "$TOKEN" | sha256sum``), so the service never sees the plain token at rest.
    """

    name: str = Field(
        ..., min_length=1, max_length=64, description="Who holds it: recorded as author/actor."
    )
    token_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the token (at least 16 characters).",
    )
    token_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="The token's SHA-256, lower-case hex."
    )
    scopes: list[ApiScope] = Field(
        default_factory=_read_scope,
        description="read: GET customers; rescore: POST rescore; feedback: POST feedback.",
    )
    owner_id: str | None = Field(
        None,
        description="An account owner's token: reads, rescores and sends feedback only for the "
        "customers allocated to this owner in the newest allocation.",
    )

    @model_validator(mode="after")
    def _one_secret(self) -> ApiTokenConfig:
        if (self.token_env is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token_env and token_sha256")
        return self


class ApiConfig(_Strict):
    """``churnseg api``: the HTTP service over the published tables (docs/api.md)."""

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    tokens: list[ApiTokenConfig] = Field(
        default_factory=list, description="Bearer tokens; the API refuses to start without one."
    )
    rescore_workers: int = Field(
        1,
        ge=1,
        le=32,
        description="Rescore runs at once; requests arriving meanwhile join the next run.",
    )
    rescore_batch: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Most rescore requests computed together (those that arrived meanwhile).",
    )
    rescore_linger_seconds: float = Field(
        0.05,
        ge=0.0,
        le=5.0,
        description="How long a rescore run waits for more requests before it starts.",
    )
    reload_seconds: float = Field(
        60.0,
        gt=0,
        description="How often a rescore checks whether a new snapshot or champion arrived.",
    )
    keyed_sources: bool = Field(
        True,
        description="Rescores read file sources through copies ordered by customer, kept under "
        "<state_dir>/keyed and rebuilt when a file changes (about 3 GB and 20 s at 1M "
        "customers); off: every rescore reads every row of the files.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ApiConfig:
        names = [t.name for t in self.tokens]
        if len(set(names)) != len(names):
            raise ValueError(f"token names must be unique; got {names}")
        return self


def missing_for_label(features: FeatureConfig, tables: set[str]) -> str | None:
    """Return what the label mode needs that ``tables`` lack (None when they suffice).

    The combinations that work: ``inactivity`` needs transactions; ``contract`` needs
    subscriptions, or customers with a ``churn_date`` column; ``column`` needs customers (with
    ``features.label_column``). Any of them may add the other tables as features.
    """
    label = features.label
    if label == "inactivity" and "transactions" not in tables:
        fits = ["contract"] if "subscriptions" in tables else []
        fits += ["column"] if "customers" in tables else []
        hint = f"; with these tables use features.label: {' or '.join(fits)}" if fits else ""
        return (
            "features.label 'inactivity' needs sources.transactions (churn = no purchase in "
            f"the horizon); the config has {sorted(tables)}{hint}"
        )
    if label == "contract" and not tables & {"subscriptions", "customers"}:
        return (
            "features.label 'contract' needs sources.subscriptions, or sources.customers "
            f"with a churn_date column; the config has {sorted(tables)}"
        )
    if label == "column" and "customers" not in tables:
        return (
            "features.label 'column' needs sources.customers holding the label column "
            f"{features.label_column!r}; the config has {sorted(tables)}"
        )
    return None


# The tables the bundled sample has (contact outcomes are the users' own feedback).
SAMPLE_TABLES = (*MODEL_TABLES, "owners", "assignments")


class Config(_Strict):
    """The whole run configuration."""

    state_dir: Path = Field(Path(".churnseg"), description="Local state: sample, runs, stores.")
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    sample: SampleConfig = SampleConfig()
    cleaning: CleaningConfig = CleaningConfig()
    snapshots: SnapshotConfig = SnapshotConfig()
    features: FeatureConfig = FeatureConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    classification: ClassificationConfig = ClassificationConfig()
    churn: ChurnConfig = ChurnConfig()
    mlflow: MlflowConfig = MlflowConfig()
    publish: PublishConfig = PublishConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    scoring: ScoringConfig = ScoringConfig()
    engine: EngineConfig = EngineConfig()
    allocation: AllocationConfig = AllocationConfig()
    api: ApiConfig = ApiConfig()

    @model_validator(mode="before")
    @classmethod
    def _sample_sources(cls, data: Any) -> Any:
        """Use the bundled sample only where the config has a ``sample:`` section enabling it.

        A config without ``sample:`` never reads or generates the sample, so removing a source
        can never switch a run to synthetic data.
        """
        if not isinstance(data, dict):
            return data
        sample = data.get("sample")
        if sample is None:
            return {**data, "sample": {"enabled": False}}
        enabled = not isinstance(sample, dict) or sample.get("enabled", True)
        if enabled and not data.get("sources"):
            sources = {t: {"path": f"{{state_dir}}/sample/{t}.parquet"} for t in SAMPLE_TABLES}
            data = {**data, "sources": sources}
        return data

    @model_validator(mode="after")
    def _known_tables(self) -> Config:
        unknown = sorted(set(self.sources) - set(CONTRACTS))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; allowed: {sorted(CONTRACTS)}")
        if not self.sources:
            raise ValueError(
                "no sources: give sources.customers and/or sources.transactions (and events, "
                "subscriptions where you have them), or `sample: {enabled: true}` for the "
                "bundled synthetic sample"
            )
        missing = missing_for_label(self.features, set(self.sources))
        if missing:
            raise ValueError(missing)
        if self.allocation.enabled and "owners" not in self.sources:
            raise ValueError(
                "allocation.enabled needs sources.owners (owner_id, capacity, regions, "
                "industries, seniority, active); see docs/allocation.md"
            )
        return self

    def resolve(self, text: str) -> str:
        """Return ``text`` with ``{state_dir}`` replaced by the state folder."""
        return text.replace("{state_dir}", str(self.state_dir))

    @property
    def tracking_uri(self) -> str:
        """Return the MLflow tracking URI with the state folder filled in."""
        return self.resolve(self.mlflow.tracking_uri)

    @property
    def publish_url(self) -> str:
        """Return the publish database URL with the state folder filled in."""
        return self.resolve(self.publish.url)

    @property
    def sample_dir(self) -> Path:
        """Return the folder the bundled sample is generated into."""
        return self.state_dir / "sample"


def _expand_env(value: Any, environ: dict[str, str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, dict):
        return {k: _expand_env(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, environ) for v in value]
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name} is not set (used as ${{{name}}})")

        return _ENV_PATTERN.sub(sub, value)
    return value


def _apply_env_overrides(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """Return ``raw`` with every ``CHURNSEG__A__B=value`` variable set at key path ``a.b``."""
    for name, text in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        node = raw
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: '{key}' is not a section")
            node = child
        node[path[-1]] = yaml.safe_load(text) if text else None
    return raw


_SHOWN_INPUT = 120  # longest offending value quoted in a config error


def _describe(error: ValidationError) -> str:
    """Return one line per problem: the dotted key, what is wrong, and what is allowed."""
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = str(item["msg"]).removeprefix("Value error, ")
        got = repr(item.get("input"))
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif len(redact_secrets(got)) > _SHOWN_INPUT:
            # A check across sections gets them all as its input (the whole config at the top
            # level): the message names the keys, and the echo would bury it.
            lines.append(f"{key}: {message}")
        else:
            lines.append(f"{key}: {message} (got {got})")
    # The offending input may hold a database URL: never show its password.
    return redact_secrets("\n".join(lines))


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load, expand and validate a YAML config.

    Args:
        path: YAML file; the bundled ``configs/default.yaml`` when omitted.
        environ: Environment used for ``${VAR}`` and ``CHURNSEG__`` overrides (default: os.environ).

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: The file is missing or malformed, or a key or value is not allowed.
    """
    environ = dict(os.environ if environ is None else environ)
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = _expand_env(_apply_env_overrides(raw, environ), environ)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        allowed = _allowed_keys_hint(exc)
        raise ConfigError(f"{path}: invalid configuration\n{_describe(exc)}{allowed}") from None


def _allowed_keys_hint(error: ValidationError) -> str:
    """Return the allowed keys of each section that received an unknown key."""
    hints = []
    for item in error.errors():
        if item["type"] != "extra_forbidden":
            continue
        model: type[BaseModel] = Config
        for part in item["loc"][:-1]:
            field = model.model_fields.get(str(part))
            annotation = field.annotation if field else None
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
            else:
                model = SourceConfig
        hints.append(f"allowed keys here: {', '.join(sorted(model.model_fields))}")
    return ("\n" + "\n".join(dict.fromkeys(hints))) if hints else ""


def config_as_dict(config: Config) -> dict[str, Any]:
    """Return the resolved config as plain data, passwords hidden (printing, MLflow lineage)."""
    data = config.model_dump(mode="json")
    data["mlflow"]["tracking_uri"] = redact_secrets(config.tracking_uri)
    data["mlflow"]["artifact_location"] = redact_secrets(
        config.resolve(config.mlflow.artifact_location)
    )
    data["publish"]["url"] = redact_secrets(config.publish_url)
    for name, source in config.sources.items():
        if source.url is not None:
            data["sources"][name]["url"] = redact_secrets(source.url)
    # spark.hadoop.fs.s3a.secret.key and the like: keep the key, hide the value.
    data["engine"]["spark_conf"] = {
        k: "***" if _SECRET_KEY.search(k) else v for k, v in data["engine"]["spark_conf"].items()
    }
    return data
