# %% [markdown]
# # 03 · Churn model
#
# Train a few churn-model variants out of time, compare them in MLflow with
# `mlflow.search_runs`, check calibration, and read the reasons behind the highest risks.
# Variants are `CHURNSEG__...` overrides, logged to the pipeline's experiment with the tag
# `churnseg.source=notebook`; the winner becomes production by the same override (see
# `docs/experiment_to_production.md`). Nothing is registered or promoted from here.

# %% tags=["parameters"]
import os
from pathlib import Path

REPO = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
STATE_DIR = Path(os.environ.get("CHURNSEG_STATE_DIR", REPO / ".churnseg")).resolve()
CONFIG = os.environ.get("CHURNSEG_CONFIG") or None
CUSTOMERS = os.environ.get("CHURNSEG_NOTEBOOK_CUSTOMERS")
RUN_KEY = os.environ.get("CHURNSEG_NOTEBOOK_RUN", "notebook")
os.environ["CHURNSEG_STATE_DIR"] = str(STATE_DIR)
if CUSTOMERS:
    os.environ["CHURNSEG__SAMPLE__CUSTOMERS"] = CUSTOMERS

# %%
import json

import mlflow
import pandas as pd
from IPython.display import display

from churnseg.models import churn as churn_model
from churnseg.models import evaluation, reasons
from churnseg.models.plots import reliability_figure
from churnseg.pipelines import stages
from churnseg.pipelines.config import Config, load_config

config = load_config(CONFIG)
paths = stages.run_paths(config, RUN_KEY)
experiment_id = stages.configure_mlflow(config)
TAGS = {"churnseg.source": "notebook", "churnseg.notebook": "03_churn_model"}

# %% [markdown]
# ## Training and validation rows
# Stacked training cutoffs and the later validation cutoff, restricted to the at-risk
# population exactly as the churn stage does. Built once per run folder.

# %%
if not (paths.features / "train.parquet").exists():
    with mlflow.start_run(run_name="notebook-features", tags=TAGS):
        stages.extract_stage(config, paths)
        stages.clean_stage(config, paths)
        stages.feature_stage(config, paths, stages.resolve_plan(config, paths))
max_recency = config.churn.population_max_recency_days
train = stages.at_risk_population(pd.read_parquet(paths.features / "train.parquet"), max_recency)
validation = stages.at_risk_population(
    pd.read_parquet(paths.features / "validation.parquet"), max_recency
)
y = validation[churn_model.LABEL].to_numpy()
spec = churn_model.feature_spec(train)
print(f"train {len(train)} rows, churn rate {train.churned.mean():.1%}")
print(f"validation {len(validation)} rows, churn rate {y.mean():.1%}, {len(spec.columns)} inputs")

# %% [markdown]
# ## Variants
# Each variant: search its candidates on the last training cutoff, fit on the earlier ones,
# calibrate on the last one, score the validation cutoff. One MLflow run per variant, with the
# same parameter and metric names as the scheduled runs (`churn_candidate`, `val_roc_auc`, ...).


# %%
def train_variant(cfg: Config):
    """Return the calibrated model of ``cfg.churn`` and its validation metrics."""
    c = cfg.churn
    search = churn_model.time_aware_search(
        train, spec, c.candidates, c.search_sample_rows, c.random_state
    )
    model = churn_model.fit_calibrated(
        train,
        spec,
        search.name,
        search.params,
        c.calibration,
        c.random_state,
        c.fit_sample_rows,
        c.calibration_sample_rows,
    )
    proba = churn_model.churn_probability(model, validation)
    metrics = {
        **evaluation.ranking_metrics(y, proba, c.contact_capacity),
        **evaluation.probability_metrics(y, proba),
    }
    params = {
        "churn_candidate": search.name,
        "churn_params": json.dumps(search.params),
        "churn_calibration": c.calibration,
    }
    return model, proba, params, metrics


VARIANTS = {
    "logreg isotonic": {"CHURNSEG__CHURN__CANDIDATES": "[logreg]"},
    "logreg sigmoid": {
        "CHURNSEG__CHURN__CANDIDATES": "[logreg]",
        "CHURNSEG__CHURN__CALIBRATION": "sigmoid",
    },
    "hgb isotonic": {"CHURNSEG__CHURN__CANDIDATES": "[hgb]"},
}
results = {}
for name, override in VARIANTS.items():
    cfg = load_config(CONFIG, environ={**os.environ, **override})
    model, proba, params, metrics = train_variant(cfg)
    with mlflow.start_run(run_name=f"notebook-churn-{name}", tags=TAGS):
        mlflow.set_tag("churnseg.variant", name)
        mlflow.log_params({**params, "overrides": json.dumps(override)})
        mlflow.log_metrics({f"val_{k}": v for k, v in metrics.items()})
    results[name] = (model, proba)

# %% [markdown]
# ## Compare runs in MLflow
# The notebook's runs, read back from the tracking store, beside the scheduled `retrain` runs
# of the same experiment (none until the flow has run against this state folder).

# %%
shown = [
    "tags.churnseg.variant",
    "params.churn_candidate",
    "params.churn_calibration",
    "metrics.val_roc_auc",
    "metrics.val_pr_auc",
    "metrics.val_top_decile_lift",
    "metrics.val_ece",
    "metrics.val_brier",
]
runs = mlflow.search_runs(
    experiment_ids=[experiment_id],
    filter_string="tags.`churnseg.notebook` = '03_churn_model'",
    order_by=["metrics.val_roc_auc DESC"],
)
runs = runs.dropna(subset=["metrics.val_roc_auc"]).drop_duplicates("tags.churnseg.variant")
display(runs[shown].round(4))
scheduled = mlflow.search_runs(
    experiment_ids=[experiment_id], filter_string="tags.`churnseg.flow` = 'retrain'"
)
print(f"{len(scheduled)} scheduled retrain run(s) in experiment {config.mlflow.experiment!r}")
recency = evaluation.ranking_metrics(y, validation["recency_days"], config.churn.contact_capacity)
print(f"baseline, recency alone: ROC AUC {recency['roc_auc']:.3f}")
best = str(runs.iloc[0]["tags.churnseg.variant"])
print("best variant:", best)

# %% [markdown]
# ## Calibration
# Predicted against observed churn per probability bin on the validation cutoff. Ops read the
# probabilities as rates ("3 in 10 of these will leave"), so the points should sit on the
# diagonal; ECE summarises the gap.

# %%
model, proba = results[best]
table = evaluation.reliability_table(y, proba)
display(table.round(3))
reliability_figure(table)

# %% [markdown]
# ## Reasons
# For the riskiest validation customers: which features push their risk up most compared with a
# typical customer (occlusion against the training medians), in the words ops will see.

# %%
top = validation.assign(churn_probability=proba).nlargest(5, "churn_probability")
reference = reasons.reference_values(train, spec.columns)
contributions = reasons.attributions(model, top, spec.numeric, reference)
top.assign(reasons=reasons.top_reasons(contributions, top, reference, k=3))[
    ["customer_id", "churn_probability", "churned", "reasons"]
]

# %% [markdown]
# ## From here to production
# The chosen variant's overrides are the production change: set them in the flow's environment
# or write `churn.candidates` / `churn.calibration` in the YAML. The next scheduled `retrain`
# logs `churn_candidate` and `val_roc_auc` in the same experiment and promotes the model only if
# it beats the champion and the baselines.

# %%
print(" ".join(f"{k}='{v}'" for k, v in VARIANTS[best].items()))
