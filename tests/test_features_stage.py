"""The feature stage on a generated sample: three tables, one column set, BTYD per snapshot."""

from __future__ import annotations

import json
import shutil
import threading
from itertools import pairwise
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from churnseg.features.btyd import BTYD_FEATURES
from churnseg.features.snapshots import SNAPSHOT
from churnseg.pipelines import stages
from churnseg.pipelines.config import Config
from churnseg.pipelines.sample import SampleSpec, generate_sample
from churnseg.pipelines.sources import FeatureEngine, connect_engine
from churnseg.pipelines.stages import feature_tables
from churnseg.pipelines.stages.feature_tables import _append_columns, _with_btyd
from tests.helpers import SAMPLE_TABLES, write_tables


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[stages.RunPaths, dict[str, int]]:
    state = tmp_path_factory.mktemp("state")
    snapshots = {"horizon_days": 60, "train_cutoffs": 3}
    config = Config.model_validate({"state_dir": str(state), "sample": {}, "snapshots": snapshots})
    paths = stages.run_paths(config, "run")
    # A generated sample without dirty rows stands in for the clean stage's output.
    write_tables(paths.clean, generate_sample(SampleSpec(customers=400, seed=21, dirty_fraction=0)))
    # The run folder's own store and artifact location: nothing lands in ./mlruns.
    stages.configure_mlflow(config)
    with mlflow.start_run():
        plan = stages.resolve_plan(config, paths)
        counts = stages.feature_stage(config, paths, plan)
        run = mlflow.active_run()
        assert run is not None
        logged = mlflow.get_run(run.info.run_id).data
    assert logged.params["label_mode"] == "inactivity"
    assert logged.params["feature_event_types"] == "login,email_open,support_ticket,complaint"
    assert logged.metrics["btyd_r"] > 0 and logged.metrics["gamma_gamma_p"] > 0
    return paths, counts


def read(paths: stages.RunPaths, name: str) -> pd.DataFrame:
    return pd.read_parquet(paths.features / f"{name}.parquet")


def test_the_three_tables_share_their_feature_columns(
    built: tuple[stages.RunPaths, dict[str, int]],
) -> None:
    paths, counts = built
    train, validation, scoring = (read(paths, n) for n in ("train", "validation", "scoring"))
    assert counts == {"train": len(train), "validation": len(validation), "scoring": len(scoring)}
    assert list(train.columns) == list(validation.columns)
    # The scoring table says who can still churn instead of a label it cannot know yet.
    assert [c for c in scoring.columns if c != "at_risk"] == [
        c for c in train.columns if c != "churned"
    ]
    assert "at_risk" in scoring.columns and "at_risk" not in train.columns
    assert {"events_complaint_90d", "sub_plan", "region", *BTYD_FEATURES} <= set(scoring.columns)
    assert sorted(p.name for p in paths.features.iterdir()) == [
        "scoring.build.json",
        "scoring.parquet",
        "train.build.json",
        "train.parquet",
        "validation.build.json",
        "validation.parquet",
    ], "staging files are removed"
    built_with = json.loads((paths.features / "scoring.build.json").read_text())
    assert set(built_with["btyd"]) == {
        *(f"btyd_{k}" for k in ("r", "alpha", "a", "b")),
        *(f"gamma_gamma_{k}" for k in "pqv"),
    }, "the scoring snapshot's BTYD fit is kept for intra-day updates"
    assert built_with["attribute_kinds"] == {}, "no clean/attributes.json in this folder"


def test_every_snapshot_is_labelled_and_holds_known_customers_only(
    built: tuple[stages.RunPaths, dict[str, int]],
) -> None:
    paths, _ = built
    train = read(paths, "train")
    cutoffs = sorted(pd.to_datetime(train.snapshot_date).unique())
    assert len(cutoffs) == 3 and all(b - a == pd.Timedelta(days=60) for a, b in pairwise(cutoffs))
    assert set(train.churned.unique()) == {0, 1}
    sizes = train.groupby("snapshot_date").size().to_list()
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1], "customers keep joining"
    assert (train.tenure_days >= 0).all(), "nobody enters a snapshot before being known"


def test_btyd_predictions_exist_for_buyers_only(
    built: tuple[stages.RunPaths, dict[str, int]],
) -> None:
    paths, _ = built
    scoring = read(paths, "scoring")
    buyers = scoring.btyd_t.notna()
    assert buyers.sum() > 100
    assert scoring.loc[buyers, list(BTYD_FEATURES)].notna().all().all()
    assert scoring.loc[~buyers, list(BTYD_FEATURES)].isna().all().all()
    assert scoring.loc[buyers, "btyd_p_alive"].between(0, 1).all()
    recent = scoring.loc[buyers].sort_values("recency_days")
    top, bottom = recent.head(50), recent.tail(50)
    assert top.btyd_p_alive.mean() > bottom.btyd_p_alive.mean(), "recent buyers more alive"


def test_scoring_reuses_the_champion_models_channels_and_event_types(tmp_path: Path) -> None:
    """A new top channel after training must not change the columns the champion expects."""
    from sklearn.dummy import DummyClassifier

    from churnseg.features.build import resolve_levels
    from churnseg.models.registry import log_and_register, promote
    from churnseg.pipelines.sources import connect_feature_engine

    config = Config.model_validate(
        {
            "state_dir": str(tmp_path),
            "sample": {},
            "snapshots": {"horizon_days": 60, "train_cutoffs": 2},
            "features": {"max_levels": 2},  # the two most frequent levels get columns
        }
    )
    stages.configure_mlflow(config)
    tables = generate_sample(SampleSpec(customers=300, seed=3, dirty_fraction=0.0))
    trained = stages.run_paths(config, "retrain")
    write_tables(trained.clean, tables)
    with mlflow.start_run():  # a retrain: features, then the churn model from the same run
        plan = stages.resolve_plan(config, trained)
        stages.feature_stage(config, trained, plan)
        train = read(trained, "train")
        x = train.drop(columns=["customer_id", "snapshot_date", "churned"]).head(20)
        model = DummyClassifier().fit(x, train["churned"].head(20))
        name = config.mlflow.churn_model
        promote(name, log_and_register(model, name, x, []), "test champion")
    train_channels = sorted(c for c in train.columns if c.startswith("channel_share_"))

    # Later data: most purchases move to a new channel, support tickets flood in.
    tx = tables["transactions"].to_pandas()
    tx.loc[tx.index % 4 != 0, "channel"] = "marketplace"
    ev = tables["events"].to_pandas()
    ev = pd.concat([ev, ev.assign(event_type="support_ticket")], ignore_index=True)
    later = {
        **tables,
        "transactions": pa.Table.from_pandas(tx, preserve_index=False),
        "events": pa.Table.from_pandas(ev, preserve_index=False),
    }
    scored = stages.run_paths(config, "score")
    write_tables(scored.clean, later)
    with connect_feature_engine(config.engine) as engine:
        now = resolve_levels(
            {n: engine.read_parquet(scored.clean / f"{n}.parquet") for n in SAMPLE_TABLES},
            plan.scoring,
            config.features,
        )
    assert "marketplace" in (now.channels or []), "the data alone would pick other columns"

    with mlflow.start_run() as run:
        stages.feature_stage(config, scored, stages.resolve_plan(config, scored), only=("scoring",))
        params = mlflow.get_run(run.info.run_id).data.params
    scoring = read(scored, "scoring")
    features = [c for c in scoring.columns if c != "at_risk"]
    assert features == [c for c in train.columns if c != "churned"]
    assert sorted(c for c in scoring.columns if c.startswith("channel_share_")) == train_channels
    assert params["feature_levels_from"] == f"champion {config.mlflow.churn_model} v1"


def test_without_a_champion_scoring_resolves_levels_from_data(tmp_path: Path) -> None:
    config = Config.model_validate(
        {"state_dir": str(tmp_path), "sample": {}, "features": {"max_levels": 2}}
    )
    stages.configure_mlflow(config)
    features, source = stages.champion_levels(config)
    assert (features.channels, features.event_types, source) == (None, None, "data")
    fixed = config.model_copy(
        update={
            "features": config.features.model_copy(
                update={"channels": [], "event_types": [], "attribute_levels": {}}
            )
        }
    )
    assert stages.champion_levels(fixed)[1] == "config"


def test_btyd_columns_stream_in_order_and_a_shuffled_stage_gives_the_same_file(
    built: tuple[stages.RunPaths, dict[str, int]], tmp_path: Path
) -> None:
    paths, _ = built
    train = pq.read_table(paths.features / "train.parquet")
    assert train.column_names[-len(BTYD_FEATURES) :] == list(BTYD_FEATURES)
    keys = train.select([SNAPSHOT, "customer_id"]).to_pandas()
    assert keys.equals(keys.sort_values([SNAPSHOT, "customer_id"], ignore_index=True))

    staged = train.drop_columns(list(BTYD_FEATURES))
    snapshots = sorted(set(staged.column(SNAPSHOT).to_pylist()))
    parts = [staged.filter(pc.equal(staged.column(SNAPSHOT), pa.scalar(s))) for s in snapshots]
    # In order, one file per snapshot: streamed. Reversed and shuffled: joined, then sorted.
    ordered = [tmp_path / f"ordered{i}.parquet" for i in range(len(parts))]
    for part, path in zip(parts, ordered, strict=True):
        pq.write_table(part, path)
    shuffled = tmp_path / "shuffled.parquet"
    mixed = pa.concat_tables(parts[::-1])
    pq.write_table(mixed.take(np.random.default_rng(0).permutation(mixed.num_rows)), shuffled)
    horizon, period = 60, 7
    outputs = {}
    for name, files in {"ordered": ordered, "shuffled": [shuffled]}.items():
        target = tmp_path / f"{name}.target.parquet"
        with FeatureEngine(connect_engine()) as local:
            _with_btyd(local.con, files, target, horizon, period)
        outputs[name] = pq.read_table(target)
    assert outputs["ordered"].equals(outputs["shuffled"])
    assert outputs["ordered"].select(staged.column_names).equals(staged)
    assert all(f.nullable for f in outputs["ordered"].schema)


def test_appended_feature_file_keeps_dictionaries_only_for_repeating_values(
    tmp_path: Path,
) -> None:
    # 20,000 distinct floats in a row group (160 KB, under pyarrow's default dictionary limit of
    # 1 MB) stop filling their dictionary at 64 KB and go on plain; a count with a few values
    # keeps all of them in its dictionary. The rows are unchanged.
    rows = 20_000
    rng = np.random.default_rng(3)
    base = pa.table({"spend": rng.random(rows), "orders": rng.integers(0, 9, rows)})
    source, target = tmp_path / "staged.parquet", tmp_path / "features.parquet"
    pq.write_table(base, source)
    extra = pa.table({"p_alive": rng.random(rows)})
    _append_columns([source], base.schema, extra, target)
    written = pq.read_table(target)
    assert written.select(["spend", "orders"]).cast(base.schema).equals(base)
    assert written.column("p_alive").equals(extra.column("p_alive"))
    group = pq.ParquetFile(target).metadata.row_group(0)
    dictionary_bytes = {}
    for i in range(group.num_columns):
        chunk = group.column(i)
        dictionary_bytes[chunk.path_in_schema] = chunk.data_page_offset - (
            chunk.dictionary_page_offset or chunk.data_page_offset
        )
    assert 0 < dictionary_bytes["spend"] < 70_000
    assert 0 < dictionary_bytes["p_alive"] < 70_000
    assert 0 < dictionary_bytes["orders"] < 1_000


def test_duckdb_feature_writes_give_up_dictionaries_past_8192_values(tmp_path: Path) -> None:
    # One row group holding 12,000 distinct values ten times each: DuckDB's default keeps a
    # dictionary of up to 24,576; the feature engine's writes stop at 8,192
    # (PARQUET_WRITE_OPTIONS). A column of nine values keeps its dictionary.
    rows = 120_000
    table = pa.table({"spend": (np.arange(rows) % 12_000) / 7.0, "orders": np.arange(rows) % 9})
    source, target = tmp_path / "source.parquet", tmp_path / "written.parquet"
    pq.write_table(table, source, use_dictionary=False)
    with FeatureEngine(connect_engine()) as engine:
        engine.write_parquet(engine.read_parquet(source), target)
    assert pq.read_table(target).cast(table.schema).equals(table)
    group = pq.ParquetFile(target).metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(2)}
    assert not any("DICTIONARY" in e for e in encodings["spend"])
    assert any("DICTIONARY" in e for e in encodings["orders"])


def test_snapshots_written_unsorted_when_duckdb_memory_is_short_give_the_same_tables(
    built: tuple[stages.RunPaths, dict[str, int]], tmp_path: Path
) -> None:
    paths, counts = built
    assert feature_tables.customers_estimate(paths) == 400  # the sample's customers
    # The measured case: at 5M customers and 117 columns an 8 GB limit is too short to sort.
    with FeatureEngine(connect_engine()) as engine:
        engine.con.raw_sql("SET memory_limit = '20GB'")
        assert feature_tables.sorts_in_query(engine, 5_000_000, 117)
        engine.con.raw_sql("SET memory_limit = '8GB'")
        assert not feature_tables.sorts_in_query(engine, 5_000_000, 117)
        assert feature_tables.sorts_in_query(engine, 1_000_000, 117)
    config = Config.model_validate(
        {
            "state_dir": str(tmp_path),
            "sample": {},
            "snapshots": {"horizon_days": 60, "train_cutoffs": 3},
        }
    )
    short = stages.run_paths(config, "short")
    shutil.copytree(paths.clean, short.clean)
    written: list[bool] = []

    def unsorted(engine: FeatureEngine, customers: int, columns: int) -> bool:
        written.append(False)
        return False

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(feature_tables, "sorts_in_query", unsorted)
        assert stages.feature_stage(config, short, stages.resolve_plan(config, short)) == counts
    assert len(written) == 3 + 1 + 1  # every snapshot took the unsorted path
    for name in ("train", "validation", "scoring"):
        assert pq.read_table(short.features / f"{name}.parquet").equals(
            pq.read_table(paths.features / f"{name}.parquet")
        ), name


def test_read_feature_table_gives_the_frame_pandas_reads(tmp_path: Path) -> None:
    from churnseg.pipelines.stages import read_feature_table

    frame = pd.DataFrame(
        {
            "customer_id": ["c1", "c2", None, "c4"],
            SNAPSHOT: pd.to_datetime(["2025-01-01"] * 4).date,
            "frequency": np.array([3, 0, 1, 7], dtype="int64"),
            "recency_days": [1.5, np.nan, 30.0, 400.0],
            "churned": np.array([0, 1, 0, 1], dtype="int8"),
            "is_key_account": [True, False, None, True],
        }
    )
    path = tmp_path / "features.parquet"
    frame.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(read_feature_table(path), pd.read_parquet(path))
    # Either condition keeps a row (hand-checked): c1 and c4 buy often, c2 churned.
    kept = read_feature_table(path, filters=[[("frequency", ">", 1)], [("churned", "==", 1)]])
    assert kept.customer_id.tolist() == ["c1", "c2", "c4"]
    recent = read_feature_table(path, filters=[("recency_days", "<", 100.0)])
    assert recent.frequency.tolist() == [3, 1]  # a missing recency fails the test


def test_batches_read_ahead_gives_every_batch_of_every_file_in_order(tmp_path: Path) -> None:
    from churnseg.pipelines.frames import batches_read_ahead

    paths = []
    for i, n in enumerate([7, 0, 5]):  # an empty file in the middle yields nothing
        path = tmp_path / f"part{i}.parquet"
        pq.write_table(pa.table({"x": pa.array(range(100 * i, 100 * i + n), pa.int64())}), path)
        paths.append(path)
    files = [pq.ParquetFile(p) for p in paths]
    batches = list(batches_read_ahead(files, batch_size=3))
    assert [b.num_rows for b in batches] == [3, 3, 1, 3, 2]
    assert [v for b in batches for v in b.column("x").to_pylist()] == [
        *range(0, 7),
        *range(200, 205),
    ]
    # A reader that stops early leaves no thread behind: the generator closes its pool.
    early = batches_read_ahead(files, batch_size=3)
    assert next(early).num_rows == 3
    early.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("read-ahead")]
