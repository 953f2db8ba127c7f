# %% [markdown]
# # 04 · Scores for ops
#
# What sales and support query: the published `customer_scores_latest` view (one row per
# customer at the newest snapshot), `segment_profiles`, and the run log. Plain SQL on the
# configured output database (`publish.url`), so the queries here work as they are in any SQL
# client. Needs a published run: `churnseg run` (or the scheduled flow) writes the tables.

# %% tags=["parameters"]
import os
from pathlib import Path

REPO = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
STATE_DIR = Path(os.environ.get("CHURNSEG_STATE_DIR", REPO / ".churnseg")).resolve()
CONFIG = os.environ.get("CHURNSEG_CONFIG") or None
os.environ["CHURNSEG_STATE_DIR"] = str(STATE_DIR)

# %%
import json

import pandas as pd
import sqlalchemy as sa
from IPython.display import display

from churnseg.pipelines.config import load_config

config = load_config(CONFIG)
p = config.publish
schema = f"{p.db_schema}." if p.db_schema else ""
scores, profiles, runs = (schema + t for t in (p.table, p.segment_profiles_table, p.runs_table))
latest = f"{scores}_latest"
# PostgreSQL URLs go through psycopg 3, the driver the project installs.
url = config.publish_url.replace("postgresql://", "postgresql+psycopg://", 1)
engine = sa.create_engine(url)
if not sa.inspect(engine).has_table(p.table, schema=config.publish.db_schema):
    raise RuntimeError(f"no table {scores!r} in {config.publish_url}: run `churnseg run` first")


def query(sql: str) -> pd.DataFrame:
    """Return the result of one SQL query on the output database."""
    with engine.connect() as con:
        return pd.read_sql(sa.text(sql), con)


# %% [markdown]
# ## Risk by segment
# The newest snapshot: customers and mean churn probability per segment.

# %%
query(f"""
    SELECT segment_name, COUNT(*) AS customers,
           ROUND(AVG(churn_probability), 3) AS mean_risk,
           MAX(snapshot_date) AS snapshot_date
    FROM {latest}
    GROUP BY segment_name
    ORDER BY mean_risk DESC
""")

# %% [markdown]
# ## Who to call
# The riskiest customers who can still be kept (risk band other than `churned`: those have
# left already), as many as retention can contact (`churn.contact_capacity`), exported as a CSV
# list next to the state folder's other outputs.

# %%
customers = int(query(f"SELECT COUNT(*) AS n FROM {latest} WHERE risk_band <> 'churned'").n[0])
capacity = max(1, round(config.churn.contact_capacity * customers))
calls = query(f"""
    SELECT customer_id, segment_name, churn_probability, risk_band, top_reasons
    FROM {latest}
    WHERE risk_band <> 'churned'
    ORDER BY churn_probability DESC, customer_id
    LIMIT {capacity}
""")
out = STATE_DIR / "exports" / "contact_list.csv"
out.parent.mkdir(parents=True, exist_ok=True)
calls.to_csv(out, index=False)
print(f"{len(calls)} customers written to {out}")
calls.head(10)

# %%
risk = query(f"SELECT churn_probability FROM {latest}")
ax = risk.churn_probability.plot.hist(bins=40, title="churn probability, newest snapshot")
ax.set_xlabel("P(churn within the horizon)")

# %% [markdown]
# ## Segment profiles
# Size, revenue share and churn rate per segment at the newest snapshot, with the centroid in
# plain units (the `profile` JSON).

# %%
seg = query(f"""
    SELECT snapshot_date, segment_id, segment_name, size, share, revenue_share, churn_rate, profile
    FROM {profiles}
    WHERE snapshot_date = (SELECT MAX(snapshot_date) FROM {profiles})
    ORDER BY segment_id
""")
seg.drop(columns="profile").join(pd.json_normalize(seg.profile.map(json.loads))).round(3)

# %% [markdown]
# ## Snapshots and runs
# How many customers each published snapshot holds, and the latest pipeline runs.

# %%
display(
    query(f"""
    SELECT snapshot_date, COUNT(*) AS customers, ROUND(AVG(churn_probability), 3) AS mean_risk
    FROM {scores} GROUP BY snapshot_date ORDER BY snapshot_date DESC
""")
)
query(f"""
    SELECT run_id, flow, snapshot_date, status, rows_read, rows_quarantined, rows_published
    FROM {runs} ORDER BY started_at DESC LIMIT 5
""")
