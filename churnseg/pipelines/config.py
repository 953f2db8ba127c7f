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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from churnseg.features.contract import CONTRACTS

ENV_PREFIX = "CHURNSEG__"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """Where one logical table comes from: a file (or glob) or a SQL database table or query."""

    path: str | None = Field(None, description="CSV or Parquet file, or a glob of them.")
    format: Literal["parquet", "csv"] | None = Field(
        None, description="File format; inferred from the path's suffix when omitted."
    )
    url: str | None = Field(None, description="SQLAlchemy-style database URL.")
    table: str | None = Field(None, description="Table name in the database.")
    query: str | None = Field(None, description="SQL query run against the database.")
    columns: dict[str, str] = Field(
        default_factory=dict, description="Logical column name -> column name in the source."
    )

    @model_validator(mode="after")
    def _one_location(self) -> SourceConfig:
        if (self.path is None) == (self.url is None):
            raise ValueError("give exactly one of 'path' (a file) or 'url' (a database)")
        if self.url is not None and (self.table is None) == (self.query is None):
            raise ValueError("a database source needs exactly one of 'table' or 'query'")
        return self

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
    """Cleaning rules; every rejected row keeps its reason code in quarantine."""

    min_date: date = Field(date(2000, 1, 1), description="Timestamps before this are rejected.")
    now: date | None = Field(
        None, description="Timestamps after this day are 'future'; default: the run's clock."
    )
    max_quarantine_share: float = Field(
        0.2, ge=0.0, le=1.0, description="Stop the run when a table loses more than this share."
    )


class SnapshotConfig(_Strict):
    """Cutoff dates: scoring at ``as_of``, validation one horizon earlier, training before that."""

    as_of: date | None = Field(
        None, description="Scoring cutoff; default: the day after the last clean transaction."
    )
    horizon_days: int = Field(90, ge=1)
    train_cutoffs: int = Field(3, ge=1)
    cutoff_step_days: int | None = Field(
        None, ge=1, description="Days between training cutoffs; default: the horizon."
    )


class SegmentationConfig(_Strict):
    """k-means segmentation over log-scaled RFM features."""

    k_min: int = Field(2, ge=2)
    k_max: int = Field(8, ge=2)
    min_segment_share: float = Field(0.03, ge=0.0, lt=0.5)
    silhouette_sample: int = Field(5000, ge=100)
    n_init: int = Field(4, ge=1)
    random_state: int = 0

    @model_validator(mode="after")
    def _range(self) -> SegmentationConfig:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) must be >= k_min ({self.k_min})")
        return self


class ChurnConfig(_Strict):
    """Churn classifier settings."""

    c: float = Field(1.0, gt=0.0, description="Inverse regularisation strength.")
    max_iter: int = Field(1000, ge=10)


class MlflowConfig(_Strict):
    """Tracking store and registered model names."""

    tracking_uri: str = "sqlite:///{state_dir}/mlflow.db"
    artifact_location: str = "{state_dir}/mlartifacts"
    experiment: str = "churnseg"
    segmentation_model: str = "churnseg-segmentation"
    churn_model: str = "churnseg-churn"


class PublishConfig(_Strict):
    """Where scored customers are published."""

    url: str = "sqlite:///{state_dir}/scores.db"
    table: str = Field("customer_scores", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class Config(_Strict):
    """The whole run configuration."""

    state_dir: Path = Field(Path(".churnseg"), description="Local state: sample, runs, stores.")
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    sample: SampleConfig = SampleConfig()
    cleaning: CleaningConfig = CleaningConfig()
    snapshots: SnapshotConfig = SnapshotConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    churn: ChurnConfig = ChurnConfig()
    mlflow: MlflowConfig = MlflowConfig()
    publish: PublishConfig = PublishConfig()

    @model_validator(mode="after")
    def _known_tables(self) -> Config:
        unknown = sorted(set(self.sources) - set(CONTRACTS))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; allowed: {sorted(CONTRACTS)}")
        if "transactions" not in self.sources and not self.sample.enabled:
            raise ValueError("sources.transactions is required unless sample.enabled is true")
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


def _describe(error: ValidationError) -> str:
    """Return one line per problem: the dotted key, what is wrong, and what is allowed."""
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


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
    """Return the resolved config as plain data (for printing and for MLflow lineage)."""
    data = config.model_dump(mode="json")
    data["mlflow"]["tracking_uri"] = config.tracking_uri
    data["publish"]["url"] = config.publish_url
    return data
