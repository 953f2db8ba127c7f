# %% [markdown]
# # 01 · Explore the data
#
# What the pipeline reads, what it throws away and why, and what the clean data looks like.
# Everything here calls the package (`churnseg.pipelines.stages`), so what you see is exactly
# what the scheduled `retrain` flow sees.
#
# Settings come from the environment (defaults work by hand from the repository):
# `CHURNSEG_STATE_DIR` (state folder, default `.churnseg`), `CHURNSEG_CONFIG` (YAML, default
# `configs/default.yaml`), `CHURNSEG_NOTEBOOK_CUSTOMERS` (size of the sample when it is
# generated here) and `CHURNSEG_NOTEBOOK_RUN` (run folder under `<state>/runs/`, default
# `notebook`).

# %% tags=["parameters"]
import os
from pathlib import Path

REPO = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
STATE_DIR = Path(os.environ.get("CHURNSEG_STATE_DIR", REPO / ".churnseg")).resolve()
CONFIG = os.environ.get("CHURNSEG_CONFIG") or None
CUSTOMERS = os.environ.get("CHURNSEG_NOTEBOOK_CUSTOMERS")
RUN_KEY = os.environ.get("CHURNSEG_NOTEBOOK_RUN", "notebook")
# load_config reads these: the state folder, and the sample size as a CHURNSEG__ override.
os.environ["CHURNSEG_STATE_DIR"] = str(STATE_DIR)
if CUSTOMERS:
    os.environ["CHURNSEG__SAMPLE__CUSTOMERS"] = CUSTOMERS

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from churnseg.pipelines import stages
from churnseg.pipelines.config import load_config
from churnseg.pipelines.quality import quality_markdown

config = load_config(CONFIG)
paths = stages.run_paths(config, RUN_KEY)
print("state folder:", config.state_dir)
print("run folder:  ", paths.root)

# %% [markdown]
# ## Sources
# Each logical table and where it comes from. With the bundled config these are the synthetic
# sample, generated on first use.

# %%
pd.DataFrame(
    [
        {"table": t, "location": s.path or s.table or "(query)", "format": s.file_format}
        for t, s in config.sources.items()
    ]
)

# %% [markdown]
# ## Extract and clean
# `extract_stage` copies every source into the run folder; `clean_stage` conforms the columns to
# the input contract and tags every rejected row with one reason. Rows in = clean + quarantined,
# for every table.

# %%
rows_read = stages.extract_stage(config, paths)
report = stages.clean_stage(config, paths)
pd.DataFrame(
    {
        "rows read": rows_read,
        "clean": {t: q.clean for t, q in report.items()},
        "quarantined": {t: q.quarantined for t, q in report.items()},
        "share": {t: f"{q.quarantined_share:.2%}" for t, q in report.items()},
    }
)

# %% [markdown]
# The quality report the flow logs to MLflow as `data_quality.md`: reasons, nulls, date ranges.

# %%
quality = quality_markdown(report)
(paths.root / "notebook_quality.md").write_text(quality, encoding="utf-8")
display(Markdown(quality))

# %% [markdown]
# A few quarantined transactions per reason, in their source columns: the place to look when a
# reason grows (e.g. `bad_timestamp` usually means `sources.transactions.date_formats`).

# %%
quarantine = pd.read_parquet(paths.quarantine / "transactions.parquet")
quarantine.groupby("reason").head(2).sort_values("reason")

# %% [markdown]
# ## Distributions of the clean data
# Order values are skewed (hence the log axis); orders per customer show how many customers
# have too little history to score on behaviour alone; monthly revenue shows the date range and
# any seasonality the cutoffs fall into.

# %%
tx = pd.read_parquet(paths.clean / "transactions.parquet")
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
tx.loc[tx.amount > 0, "amount"].plot.hist(bins=50, logy=True, ax=axes[0], title="line amount")
tx.groupby("customer_id").size().plot.hist(bins=40, ax=axes[1], title="lines per customer")
monthly = tx.set_index("timestamp").amount.resample("MS").sum()
monthly.plot(ax=axes[2], title="revenue per month")
fig.tight_layout()

# %%
customers = pd.read_parquet(paths.clean / "customers.parquet")
customers.describe(include="all").T.head(12)
