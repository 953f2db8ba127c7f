# %% [markdown]
# # 02 · Segmentation
#
# Try segmentation variants, look at the k scores, the segment profiles, a plot, and how
# customers moved between segments since the validation snapshot. Every variant is a set of
# `CHURNSEG__...` overrides: the same text, put in the scheduled flow's environment or in the
# YAML, makes it the production setting (see `docs/experiment_to_production.md`). Each variant
# is logged to the pipeline's MLflow experiment with the tag `churnseg.source=notebook`, beside
# the scheduled runs. Nothing is registered or promoted from here.

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

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
from IPython.display import display

from churnseg.models import segmentation as seg_model
from churnseg.models.plots import k_selection_figure
from churnseg.pipelines import stages
from churnseg.pipelines.config import Config, load_config

config = load_config(CONFIG)
paths = stages.run_paths(config, RUN_KEY)
experiment_id = stages.configure_mlflow(config)
TAGS = {"churnseg.source": "notebook", "churnseg.notebook": "02_segmentation"}

# %% [markdown]
# ## Features
# Built once per run folder with the pipeline's own stages (delete the run folder to rebuild
# after changing a `features` or `snapshots` setting).

# %%
if not (paths.features / "scoring.parquet").exists():
    with mlflow.start_run(run_name="notebook-features", tags=TAGS):
        stages.extract_stage(config, paths)
        stages.clean_stage(config, paths)
        stages.feature_stage(config, paths, stages.resolve_plan(config, paths))
scoring = pd.read_parquet(paths.features / "scoring.parquet")
validation = pd.read_parquet(paths.features / "validation.parquet")
print(f"{len(scoring)} customers at the scoring cutoff, {len(validation)} at validation")

# %% [markdown]
# ## Variants
# `fit_segments` builds the pipeline from a config's `segmentation` section, as the segmentation
# stage does: its inputs are `segmentation.features`, or with `auto` the default for this table
# (`stages.segmentation_inputs`). k is chosen inside `AutoKMeans` from k_min..k_max; its scores
# for every k are kept in `scores_`.


# %%
def fit_segments(cfg: Config, frame: pd.DataFrame):
    """Return the fitted segmentation pipeline of ``cfg.segmentation`` and its inputs."""
    inputs = stages.segmentation_inputs(cfg, frame)
    return stages.segmentation_pipeline_from_config(cfg, inputs).fit(frame), inputs


VARIANTS = {
    "default": {},
    "robust scaler": {"CHURNSEG__SEGMENTATION__SCALER": "robust"},
    "with recency": {
        "CHURNSEG__SEGMENTATION__FEATURES": "[purchase_rate, monetary_mean, recency_days]"
    },
}
fitted, rows = {}, []
for name, override in VARIANTS.items():
    cfg = load_config(CONFIG, environ={**os.environ, **override})
    pipeline, inputs = fit_segments(cfg, scoring)
    km = pipeline[-1]
    silhouette = float(pd.DataFrame(km.scores_).set_index("k").silhouette[km.k_])
    with mlflow.start_run(run_name=f"notebook-segmentation-{name}", tags=TAGS) as run:
        mlflow.set_tag("churnseg.variant", name)
        mlflow.log_params(
            {
                "overrides": json.dumps(override),
                "segmentation_k": km.k_,
                "segmentation_features": ",".join(inputs),
                "segmentation_scaler": cfg.segmentation.scaler,
            }
        )
        mlflow.log_metric("segmentation_silhouette", silhouette)
    fitted[name] = (cfg, pipeline, inputs)
    rows.append({"variant": name, "k": km.k_, "silhouette": silhouette, "run_id": run.info.run_id})
pd.DataFrame(rows)

# %% [markdown]
# ## Trying k
# The scores for every k of the default variant; the chosen k is marked. A k whose smallest
# segment is below `min_segment_share` is not eligible however good its silhouette.

# %%
cfg, pipeline, inputs = fitted["default"]
display(pd.DataFrame(pipeline[-1].scores_))
k_selection_figure(pipeline[-1].scores_, pipeline[-1].k_)

# %% [markdown]
# ## Profiles
# Size, share of revenue and mean behaviour of each segment in plain units, named by the
# configured rules (`segmentation.naming`).

# %%
segments = pipeline.predict(scoring)
columns = list(dict.fromkeys([*inputs, *stages.PROFILE_COLUMNS]))
profiles = seg_model.segment_profiles(scoring, segments, columns)
rules = [seg_model.NamingRule(r.name, r.min_rank, r.max_rank) for r in cfg.segmentation.naming]
names = seg_model.name_segments(profiles, inputs, rules)
profiles.insert(1, "segment_name", profiles.segment_id.map(names))
profiles.round(3)

# %%
fig, ax = plt.subplots(figsize=(6, 4.5))
rate = seg_model.purchase_rate(scoring)
for sid, name in names.items():
    mask = segments == sid
    ax.scatter(rate[mask], scoring.monetary_mean[mask], s=6, label=name, alpha=0.6)
ax.set(xscale="symlog", yscale="symlog", xlabel="purchase rate", ylabel="mean order value")
ax.legend(markerscale=3, fontsize=8)

# %% [markdown]
# ## Migration
# The same model applied to the validation snapshot (one horizon earlier): who moved where.
# `(none)` is a customer present at one snapshot only.

# %%
before = validation.assign(segment_id=pipeline.predict(validation))
after = scoring.assign(segment_id=segments)
migration = seg_model.migration_table(before, after, names)
migration.pivot_table(index="segment_from", columns="segment_to", values="customers", fill_value=0)

# %% [markdown]
# ## From here to production
# To make a variant the scheduled setting, put its overrides in the flow's environment, or
# write the same keys in the YAML (`segmentation.scaler: robust`). The next `retrain` run logs it
# in the same experiment; compare with `mlflow.search_runs` as in notebook 03.

# %%
for name, override in VARIANTS.items():
    print(f"{name:>14}: " + (" ".join(f"{k}='{v}'" for k, v in override.items()) or "(as is)"))
