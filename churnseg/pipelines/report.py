"""``churnseg report``: one self-contained HTML page of the latest results.

Sections: segment profiles (published ``segment_profiles``), churn model performance (ROC, lift,
calibration of the champion on its validation cutoff), drift (the latest monitoring run) and the
top customers by value at risk (``customer_scores_latest``). CSS is inline and every chart is a
PNG data URI, so the file opens anywhere without network access.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import sqlalchemy as sa
from matplotlib.figure import Figure
from mlflow import MlflowClient
from numpy.typing import NDArray
from sklearn.metrics import roc_curve

from churnseg.models import evaluation
from churnseg.models.churn import LABEL, churn_probability
from churnseg.models.classification import CHURNED_BAND
from churnseg.models.registry import load_champion
from churnseg.pipelines.config import Config
from churnseg.pipelines.monitor import ARTIFACTS, MonitorError, reference_run
from churnseg.pipelines.sinks.schema import LATEST_VIEW_SUFFIX
from churnseg.pipelines.sources import database_url
from churnseg.pipelines.stages import (
    configure_mlflow,
    population_recency_limit,
    read_at_risk_population,
)

TOP_CUSTOMERS = 25
REPORT_ARTIFACT = "report"
_CUSTOMER_COLUMNS = (
    "customer_id",
    "segment_name",
    "value_tier",
    "risk_band",
    "churn_probability",
    "expected_value",
    "value_at_risk",
    "top_reasons",
)


@dataclass(frozen=True)
class ModelPerformance:
    """The champion churn model on its validation cutoff: labels, scores and logged metrics."""

    version: int
    y: NDArray[np.float64]
    proba: NDArray[np.float64]
    metrics: dict[str, float]


@dataclass(frozen=True)
class DriftView:
    """What the latest monitoring run found."""

    run_id: str
    started: str
    summary: dict[str, Any]
    feature_psi: pd.DataFrame
    calibration: pd.DataFrame
    thresholds: dict[str, float]


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows; a missing part is None and its section says why."""

    title: str
    generated_at: str
    profiles: pd.DataFrame | None = None
    performance: ModelPerformance | None = None
    drift: DriftView | None = None
    top_customers: pd.DataFrame | None = None
    notes: dict[str, str] = field(default_factory=dict)


def _read_sql(config: Config, table: str, query: Any) -> pd.DataFrame | None:
    """Run ``query`` on the output database; None when ``table`` does not exist there."""
    engine = sa.create_engine(database_url(config.publish_url))
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            schema = config.publish.db_schema
            if not (
                inspector.has_table(table, schema=schema)
                or table in inspector.get_view_names(schema=schema)
            ):
                return None
            return pd.read_sql(query, conn)
    finally:
        engine.dispose()


def latest_profiles(config: Config) -> pd.DataFrame | None:
    """Return the newest snapshot's rows of the published ``segment_profiles`` table."""
    name = config.publish.segment_profiles_table
    columns = [
        "snapshot_date",
        "segment_id",
        "segment_name",
        "size",
        "share",
        "revenue_share",
        "churn_rate",
        "profile",
    ]
    t = sa.table(name, *(sa.column(c) for c in columns), schema=config.publish.db_schema)
    newest = sa.select(sa.func.max(t.c.snapshot_date)).scalar_subquery()
    query = sa.select(t).where(t.c.snapshot_date == newest).order_by(t.c.segment_id)
    return _read_sql(config, name, query)


def top_customers(config: Config, n: int = TOP_CUSTOMERS) -> pd.DataFrame | None:
    """Return the ``n`` customers of the newest snapshot with the highest value at risk.

    Customers who have churned already (risk band ``churned``) are not in it; rows without a
    value at risk come last, ordered by churn probability.
    """
    name = config.publish.table + LATEST_VIEW_SUFFIX
    t = sa.table(name, *(sa.column(c) for c in _CUSTOMER_COLUMNS), schema=config.publish.db_schema)
    can_be_kept = sa.or_(t.c.risk_band.is_(None), t.c.risk_band != CHURNED_BAND)
    query = (
        sa.select(t)
        .where(can_be_kept)
        .order_by(t.c.value_at_risk.desc().nulls_last(), t.c.churn_probability.desc())
        .limit(n)
    )
    return _read_sql(config, name, query)


def champion_performance(config: Config) -> ModelPerformance:
    """Return the champion churn model's scores on its own run's validation cutoff.

    Raises:
        MonitorError: No champion, or its run folder is gone.
    """
    reference = reference_run(config)
    validation_file = reference.root / "features" / "validation.parquet"
    if not validation_file.exists():
        raise MonitorError(f"validation table {validation_file} of the champion is missing")
    validation = read_at_risk_population(validation_file, population_recency_limit(config))
    proba = churn_probability(load_champion(config.mlflow.churn_model), validation)
    metrics = MlflowClient().get_run(reference.run_id).data.metrics if reference.run_id else {}
    return ModelPerformance(
        version=reference.version,
        y=validation[LABEL].to_numpy(dtype=float),
        proba=proba,
        metrics={k: v for k, v in metrics.items() if k.startswith("val_")},
    )


def _logged_table(run_id: str, path: str) -> pd.DataFrame:
    """Return a table logged with ``mlflow.log_table``."""
    data = mlflow.artifacts.load_dict(f"runs:/{run_id}/{path}")
    return pd.DataFrame(data["data"], columns=data["columns"])


def latest_drift(config: Config, experiment_id: str) -> DriftView | None:
    """Return the latest monitoring run's findings, or None when monitoring never ran."""
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string="tags.`churnseg.flow` = 'monitor' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    run_id = run.info.run_id
    thresholds = config.monitoring.psi_thresholds.model_dump()
    return DriftView(
        run_id=run_id,
        started=datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
        summary=mlflow.artifacts.load_dict(f"runs:/{run_id}/{ARTIFACTS}/summary.json"),
        feature_psi=_logged_table(run_id, f"{ARTIFACTS}/feature_psi.json"),
        calibration=_logged_table(run_id, f"{ARTIFACTS}/calibration.json"),
        thresholds=thresholds,
    )


def collect_report_data(config: Config) -> ReportData:
    """Read every section's data; a section that cannot be read carries a note instead."""
    experiment_id = configure_mlflow(config)
    notes: dict[str, str] = {}
    profiles = latest_profiles(config)
    if profiles is None or profiles.empty:
        notes["profiles"] = "no segment profiles published yet (run churnseg retrain)"
    try:
        performance: ModelPerformance | None = champion_performance(config)
    except MonitorError as exc:
        performance, notes["performance"] = None, str(exc)
    drift_view = latest_drift(config, experiment_id)
    if drift_view is None:
        notes["drift"] = "no monitoring run yet (run churnseg monitor)"
    customers = top_customers(config)
    if customers is None or customers.empty:
        notes["customers"] = "no published scores yet (run churnseg score)"
    return ReportData(
        title=f"churnseg report: {config.mlflow.experiment}",
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        profiles=profiles,
        performance=performance,
        drift=drift_view,
        top_customers=customers,
        notes=notes,
    )


# ---- charts ---------------------------------------------------------------------------------


def figure_data_uri(fig: Figure) -> str:
    """Return a figure as a PNG data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def segment_figure(profiles: pd.DataFrame) -> Figure:
    """Return customer share, revenue share and churn rate per segment."""
    labels = profiles.segment_name.astype(str).tolist()
    x = np.arange(len(labels))
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.bar(x - 0.2, profiles["share"].astype(float), 0.4, label="customers")
    left.bar(x + 0.2, profiles["revenue_share"].astype(float), 0.4, label="revenue")
    left.set_title("share of customers and revenue", fontsize=10)
    left.legend(fontsize=8)
    right.bar(x, profiles["churn_rate"].astype(float), color="tab:red")
    right.set_title("churn rate (validation cutoff)", fontsize=10)
    for ax in (left, right):
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    return fig


def lift_table(y: NDArray[np.float64], proba: NDArray[np.float64], bins: int = 10) -> pd.DataFrame:
    """Return per score decile (highest first): churn rate, lift and cumulative gain."""
    order = np.argsort(-proba, kind="stable")
    deciles = np.array_split(y[order], bins)
    base = y.mean() if len(y) else float("nan")
    found = np.cumsum([d.sum() for d in deciles])
    return pd.DataFrame(
        {
            "decile": np.arange(1, bins + 1),
            "churn_rate": [d.mean() if len(d) else float("nan") for d in deciles],
            "lift": [d.mean() / base if len(d) and base > 0 else float("nan") for d in deciles],
            "cumulative_gain": found / y.sum() if y.sum() else np.zeros(bins),
        }
    )


def performance_figure(performance: ModelPerformance) -> Figure:
    """Return ROC curve, lift by decile and the reliability diagram side by side."""
    y, p = performance.y, performance.proba
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    roc_ax, lift_ax, rel_ax = fig.subplots(1, 3)
    if len(np.unique(y)) > 1:
        fpr, tpr, _ = roc_curve(y, p)
        auc = performance.metrics.get("val_roc_auc", float("nan"))
        roc_ax.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="random")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate")
    roc_ax.set_title("ROC curve", fontsize=10)
    roc_ax.legend(fontsize=8, loc="lower right")
    lift = lift_table(y, p)
    lift_ax.bar(lift.decile, lift.lift, color="tab:green")
    lift_ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    lift_ax.set(xlabel="score decile (1 = highest risk)", ylabel="lift over base churn rate")
    lift_ax.set_title("lift by decile", fontsize=10)
    reliability = evaluation.reliability_table(y, p)
    rel_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    rel_ax.plot(reliability.predicted, reliability.observed, marker="o", label="model")
    rel_ax.set(xlabel="mean predicted churn probability", ylabel="observed churn rate")
    rel_ax.set_title("calibration", fontsize=10)
    rel_ax.legend(fontsize=8, loc="upper left")
    return fig


def psi_figure(feature_psi: pd.DataFrame, thresholds: dict[str, float], top: int = 20) -> Figure:
    """Return PSI per feature (worst on top) with the moderate and major thresholds."""
    head = feature_psi.sort_values("psi", ascending=False).head(top).iloc[::-1]
    colors = head.severity.map({"major": "tab:red", "moderate": "tab:orange"}).fillna("tab:blue")
    fig = Figure(figsize=(8, 0.28 * len(head) + 1.4), layout="constrained")
    ax = fig.subplots()
    ax.barh(head.feature.astype(str), head.psi.astype(float), color=colors.tolist())
    ax.axvline(thresholds["moderate"], color="tab:orange", linestyle="--", linewidth=1)
    ax.axvline(thresholds["major"], color="tab:red", linestyle="--", linewidth=1)
    ax.set_xlabel("population stability index (reference: champion's snapshot)")
    ax.set_title("feature drift", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    return fig


# ---- page -----------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #ddd;
padding-bottom:4px;margin-top:28px}
.meta{color:#666;font-size:12px}.note{color:#8a6d3b;background:#fcf8e3;padding:6px 10px}
.flag{color:#fff;background:#c0392b;padding:2px 8px;border-radius:3px}
.ok{color:#fff;background:#27ae60;padding:2px 8px;border-radius:3px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%}
.kpi{display:inline-block;margin-right:24px}.kpi b{display:block;font-size:18px}
"""


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, float_format=lambda v: f"{v:.3f}")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _note(data: ReportData, key: str) -> str:
    return f'<p class="note">{html.escape(data.notes[key])}</p>' if key in data.notes else ""


def _profiles_section(data: ReportData) -> str:
    parts = ["<h2>Segment profiles</h2>", _note(data, "profiles")]
    p = data.profiles
    if p is not None and not p.empty:
        parts.append(f'<p class="meta">snapshot {html.escape(str(p.snapshot_date.iloc[0]))}</p>')
        parts.append(_img(figure_data_uri(segment_figure(p)), "segment shares and churn rate"))
        centroids = pd.DataFrame([json.loads(s) for s in p.profile]).drop(
            columns=["segment_id", "segment_name", "size", "share"], errors="ignore"
        )
        shown = pd.concat(
            [p[["segment_name", "size", "share", "revenue_share", "churn_rate"]], centroids],
            axis=1,
        )
        parts.append(_table(shown))
    return "\n".join(parts)


def _performance_section(data: ReportData) -> str:
    parts = ["<h2>Churn model performance</h2>", _note(data, "performance")]
    perf = data.performance
    if perf is not None:
        kpis = "".join(
            f'<span class="kpi">{html.escape(k.removeprefix("val_"))}<b>{v:.3f}</b></span>'
            for k, v in sorted(perf.metrics.items())
            if k in ("val_roc_auc", "val_pr_auc", "val_top_decile_lift", "val_brier", "val_ece")
        )
        parts.append(
            f'<p class="meta">champion v{perf.version}, out-of-time validation cutoff, '
            f"{len(perf.y):,} customers at risk, churn rate {perf.y.mean():.3f}</p>"
        )
        parts.append(f"<div>{kpis}</div>")
        parts.append(_img(figure_data_uri(performance_figure(perf)), "ROC, lift, calibration"))
    return "\n".join(parts)


def _drift_section(data: ReportData) -> str:
    parts = ["<h2>Drift</h2>", _note(data, "drift")]
    d = data.drift
    if d is not None:
        s = d.summary
        badge = (
            '<span class="flag">flagged</span>' if s["flagged"] else '<span class="ok">ok</span>'
        )
        parts.append(f'<p>{badge} <span class="meta">monitoring run {d.run_id}, {d.started} UTC')
        parts.append("</span></p>")
        if s["reasons"]:
            items = "".join(f"<li>{html.escape(r)}</li>" for r in s["reasons"])
            parts.append(f"<ul>{items}</ul>")
        score = s["score"]
        parts.append(
            f'<div><span class="kpi">score PSI<b>{score["score_psi"]:.3f}</b></span>'
            f'<span class="kpi">mean score then / now<b>{score["score_mean_reference"]:.3f} / '
            f"{score['score_mean_current']:.3f}</b></span>"
            f'<span class="kpi">customers who changed segment<b>'
            f"{s['segment_moved_share']:.1%}</b></span></div>"
        )
        if not d.feature_psi.empty:
            parts.append(_img(figure_data_uri(psi_figure(d.feature_psi, d.thresholds)), "PSI"))
        parts.append("<h3>Realised against predicted churn (matured snapshots)</h3>")
        if d.calibration.empty:
            parts.append('<p class="meta">no published snapshot has passed its horizon yet</p>')
        else:
            parts.append(_table(d.calibration))
    return "\n".join(parts)


def _customers_section(data: ReportData) -> str:
    parts = ["<h2>Top customers by value at risk</h2>", _note(data, "customers")]
    c = data.top_customers
    if c is not None and not c.empty:
        if c["value_at_risk"].isna().all():
            parts.append('<p class="meta">value at risk not computed; ordered by churn risk</p>')
        parts.append(_table(c))
    return "\n".join(parts)


def render_report(data: ReportData) -> str:
    """Return the whole page as one HTML string (no external resources)."""
    body = "\n".join(
        [
            f"<h1>{html.escape(data.title)}</h1>",
            f'<p class="meta">generated {html.escape(data.generated_at)}</p>',
            _profiles_section(data),
            _performance_section(data),
            _drift_section(data),
            _customers_section(data),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(data.title)}</title><style>{_CSS}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def build_report(config: Config, out_path: Path) -> Path:
    """Write the report page to ``out_path`` and log it to MLflow (a run named ``report``).

    Returns:
        The written file.
    """
    page = render_report(collect_report_data(config))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    with mlflow.start_run(run_name="report", nested=mlflow.active_run() is not None):
        mlflow.set_tags({"churnseg.flow": "report"})
        mlflow.log_artifact(str(out_path), REPORT_ARTIFACT)
    return out_path
