"""The feature engine setting: strict config, and the feature stage on Spark equal to DuckDB.

The Spark test builds the three feature tables of a small sample once on DuckDB and once on
PySpark (local mode, the shared ``spark`` session) and compares them file for file.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow.parquet as pq
import pytest

from churnseg.pipelines import stages
from churnseg.pipelines.config import Config, ConfigError, config_as_dict, load_config
from churnseg.pipelines.sample import SampleSpec, generate_sample
from tests.conftest import SPARK_TEST_CONF
from tests.helpers import write_tables


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_engine_defaults_to_embedded_duckdb() -> None:
    config = load_config(environ={})
    assert config.engine.backend == "duckdb"
    assert config.engine.spark_master == "local[2]" and config.engine.spark_conf == {}


def test_backend_and_spark_settings_from_yaml_and_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sample: {}\nengine:\n  spark_master: spark://head:7077\n"
        "  spark_conf: {spark.executor.memory: 4g, spark.sql.shuffle.partitions: 400,"
        " spark.sql.adaptive.enabled: true}\n",
    )
    config = load_config(path, environ={"CHURNSEG__ENGINE__BACKEND": "pyspark"})
    assert config.engine.backend == "pyspark"
    settings = config.engine.spark_settings()
    assert settings["spark.executor.memory"] == "4g"
    assert settings["spark.sql.shuffle.partitions"] == "400"
    assert settings["spark.sql.adaptive.enabled"] == "true"
    assert settings["spark.sql.session.timeZone"] == "UTC", "features are computed in UTC"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("engine:\n  backend: dask\n", r"engine\.backend: .*'duckdb' or 'pyspark'"),
        ("engine:\n  spark_conf: {executor.memory: 4g}\n", r"must start with 'spark\.'"),
        ("engine:\n  spark_conf: {spark.master: yarn}\n", r"engine\.spark_master"),
        ("engine:\n  spark_conf: {spark.sql.session.timeZone: CET}\n", "must stay UTC"),
        ("engine:\n  spark_mastr: yarn\n", r"engine\.spark_mastr: unknown key"),
    ],
)
def test_bad_engine_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ={})


def test_spark_credentials_are_hidden_when_shown() -> None:
    conf = {"spark.hadoop.fs.s3a.secret.key": "s3cr3t", "spark.executor.memory": "4g"}
    config = Config.model_validate(
        {"sample": {}, "engine": {"backend": "pyspark", "spark_conf": conf}}
    )
    shown = config_as_dict(config)["engine"]["spark_conf"]
    assert shown == {"spark.hadoop.fs.s3a.secret.key": "***", "spark.executor.memory": "4g"}


def test_pyspark_and_rich_are_imported_lazily_by_our_code() -> None:
    """No module of ours imports pyspark or rich at import time (mlflow and ibis may do so)."""
    import ast
    import subprocess

    import churnseg

    for path in Path(churnseg.__file__).parent.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            roots = {n.split(".")[0] for n in names}
            assert "pyspark" not in roots, f"{path.name} imports pyspark at import time"
            if path.name != "cli.py":
                assert "rich" not in roots, f"{path.name} imports rich at import time"
    code = "import sys, churnseg.pipelines.progress; print('rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "the progress hook alone needs no rich"


def _build(state: Path, clean: Path, engine: dict[str, Any]) -> tuple[stages.RunPaths, dict]:
    """Run the feature stage for all three tables on ``engine``; return paths and counts."""
    config = Config.model_validate(
        {
            "state_dir": str(state),
            "sample": {},
            "snapshots": {"horizon_days": 60, "train_cutoffs": 2},
            "engine": engine,
        }
    )
    paths = stages.run_paths(config, "run")
    shutil.copytree(clean, paths.clean)
    # The run folder's own store and artifact location: nothing lands in ./mlruns.
    stages.configure_mlflow(config)
    with mlflow.start_run() as run:
        plan = stages.resolve_plan(config, paths)
        counts = stages.feature_stage(config, paths, plan)
        logged = mlflow.get_run(run.info.run_id).data.params
    assert logged["feature_engine"] == engine["backend"]
    return paths, counts


def _frame(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    keys = [c for c in ("customer_id", "snapshot_date") if c in frame]
    return frame.sort_values(keys[::-1]).reset_index(drop=True)


@pytest.mark.skipif(shutil.which("java") is None, reason="PySpark needs Java")
@pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")  # pyspark 4.0 on pandas 3
def test_feature_stage_on_spark_writes_the_duckdb_tables(
    tmp_path: Path, spark: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = tmp_path / "clean"
    write_tables(clean, generate_sample(SampleSpec(customers=120, seed=5, dirty_fraction=0.0)))

    duck, duck_counts = _build(tmp_path / "duck", clean, {"backend": "duckdb"})
    sparked, spark_counts = _build(
        tmp_path / "spark",
        clean,
        {"backend": "pyspark", "spark_master": "local[2]", "spark_conf": SPARK_TEST_CONF},
    )

    assert spark_counts == duck_counts and duck_counts["scoring"] > 50
    for name in stages.FEATURE_TABLES:
        a, b = duck.features / f"{name}.parquet", sparked.features / f"{name}.parquet"
        assert b.is_file(), f"{name}: one Parquet file, as DuckDB writes it (not a folder)"
        assert pq.read_schema(b) == pq.read_schema(a), f"{name}: same columns and types"
        assert pq.ParquetFile(b).metadata.num_rows == duck_counts[name]
        pd.testing.assert_frame_equal(_frame(a), _frame(b), rtol=1e-9, atol=1e-9)
    # Nothing of Spark's left behind: no part folders, no staging files, no views.
    assert sorted(p.name for p in sparked.features.iterdir()) == [
        "scoring.build.json",
        "scoring.parquet",
        "train.build.json",
        "train.parquet",
        "validation.build.json",
        "validation.parquet",
    ]
    assert not [t for t in spark.catalog.listTables() if t.name.startswith("churnseg_")]
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_duckdb_memory_limit_reaches_the_connection(tmp_path: Path) -> None:
    from churnseg.pipelines.sources import connect_engine

    config = load_config(
        write(tmp_path, "sample: {}\nengine: {duckdb_memory_limit: 1.5GB}\n"), environ={}
    )
    con = connect_engine(config.engine)
    limit, spill = con.raw_sql(
        "select current_setting('memory_limit'), current_setting('temp_directory')"
    ).fetchone()
    assert limit == "1.3 GiB"  # 1.5 GB as DuckDB prints it
    assert spill.endswith("churnseg-duckdb-spill")
    unlimited = load_config(
        write(tmp_path, "sample: {}\nengine: {duckdb_memory_limit: null}\n"), environ={}
    )
    default = connect_engine(unlimited.engine).raw_sql("select current_setting('memory_limit')")
    assert default.fetchone()[0] != "1.3 GiB"
    with pytest.raises(ConfigError, match="duckdb_memory_limit"):
        load_config(write(tmp_path, "engine: {duckdb_memory_limit: lots}\n"), environ={})


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("1.5GB", 1.5e9), ("700MB", 700e6), ("20GiB", 20 * 2**30), ("1000KB", 1e6), ("-1", 2**64)],
)
def test_duckdb_memory_limit_reads_back_in_bytes(setting: str, expected: float) -> None:
    from churnseg.pipelines.sources import connect_engine, duckdb_memory_limit

    con = connect_engine()
    con.raw_sql(f"SET memory_limit = '{setting}'")
    # DuckDB prints the limit cut to a tenth of its unit (1.5 GB, 1.397 GiB: "1.3 GiB"), at
    # most 0.1 below; -1 is no limit.
    got = duckdb_memory_limit(con)
    assert expected * 0.9 <= got <= expected
