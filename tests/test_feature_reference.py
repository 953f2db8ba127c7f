"""The benchmark's hand-written SQL reference computes the feature build's scoring snapshot."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnseg.features.build import resolve_levels
from churnseg.features.settings import FeatureConfig
from churnseg.features.snapshots import scoring_snapshot
from churnseg.features.tables import slugs
from churnseg.pipelines.sample import SampleSpec, generate_sample
from churnseg.pipelines.sources import connect_engine
from tests.helpers import SAMPLE_TABLES, write_tables

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from features_sql import snapshot_sql


@pytest.mark.parametrize("as_of", [date(2026, 1, 1), date(2025, 6, 1)])
def test_the_hand_written_query_gives_the_scoring_snapshot(tmp_path: Path, as_of: date) -> None:
    write_tables(tmp_path, generate_sample(SampleSpec(customers=1500, seed=5, dirty_fraction=0)))
    con = connect_engine()
    tables = {name: con.read_parquet(tmp_path / f"{name}.parquet") for name in SAMPLE_TABLES}
    config = resolve_levels(tables, as_of, FeatureConfig())
    built = scoring_snapshot(tables, as_of, config, 60).execute()
    assert config.channels and config.event_types and config.attribute_levels
    numeric = [c for c in ("is_key_account",) if c in tables["customers"].columns]
    sql = snapshot_sql(
        tmp_path,
        as_of,
        windows=config.windows,
        channels=slugs("channels", config.channels),
        event_types=slugs("event_types", config.event_types),
        attribute_levels=config.attribute_levels,
        numeric_attributes=numeric,
    )
    reference = con.raw_sql(sql).df()
    assert list(reference.columns) == list(built.columns)
    built = built.sort_values("customer_id", ignore_index=True)
    reference = reference.sort_values("customer_id", ignore_index=True)
    assert len(built) > 1000 and reference.customer_id.equals(built.customer_id)
    for column in built.columns:
        ours, theirs = built[column], reference[column]
        if pd.api.types.is_numeric_dtype(ours) and not pd.api.types.is_bool_dtype(ours):
            a, b = ours.to_numpy(dtype="float64"), theirs.to_numpy(dtype="float64")
            assert np.allclose(a, b, rtol=1e-9, atol=1e-9, equal_nan=True), column
        else:
            assert (
                ours.astype(object)
                .where(ours.notna())
                .equals(theirs.astype(object).where(theirs.notna()))
            ), column
