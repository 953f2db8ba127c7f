from __future__ import annotations

from pathlib import Path

import pytest

from churnseg.pipelines.config import ConfigError, config_as_dict, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_default_config_loads_with_embedded_stores() -> None:
    config = load_config(environ={})
    assert config.tracking_uri == "sqlite:///.churnseg/mlflow.db"
    assert config.publish_url == "sqlite:///.churnseg/scores.db"
    assert set(config.sources) == {
        "customers",
        "transactions",
        "events",
        "subscriptions",
        "owners",
        "assignments",
    }


def test_unknown_key_names_the_key_and_allowed_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "segmentation:\n  k_maxx: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert "segmentation.k_maxx: unknown key" in message
    assert "k_max" in message and "min_segment_share" in message


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "snapshots:\n  horizon_days: -3\n")
    with pytest.raises(ConfigError, match=r"snapshots\.horizon_days: .*-3"):
        load_config(path, environ={})


def test_a_check_across_sections_says_what_is_missing_without_echoing_the_config(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "sample: {enabled: false}\n"
        "sources:\n  customers: {path: c.csv}\n  transactions: {path: t.csv}\n"
        "allocation: {enabled: true}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    problem = str(info.value).splitlines()[1]
    assert problem.startswith("(top level): allocation.enabled needs sources.owners"), problem
    assert "got {" not in problem and "tracking_uri" not in problem, "the config is not echoed"


def test_segmentation_sample_keeps_its_former_name(tmp_path: Path) -> None:
    """``minibatch_above`` (before 2026-12-07) still sets the rows k-means is fitted on."""
    sample = "sample: {enabled: true}\n"
    path = write(tmp_path, sample + "segmentation:\n  minibatch_above: 50000\n")
    assert load_config(path, environ={}).segmentation.fit_sample_rows == 50_000
    with pytest.raises(ConfigError, match=r"segmentation\.minibatch_above: .*1000"):
        load_config(write(tmp_path, sample + "segmentation:\n  minibatch_above: 5\n"), environ={})


def test_k_range_is_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "segmentation:\n  k_min: 6\n  k_max: 3\n")
    with pytest.raises(ConfigError, match="k_max"):
        load_config(path, environ={})


def test_unknown_table_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "sources:\n  orders: {path: x.csv}\n")
    with pytest.raises(ConfigError, match="unknown table"):
        load_config(path, environ={})


def test_source_needs_exactly_one_location(tmp_path: Path) -> None:
    path = write(tmp_path, "sources:\n  transactions: {path: a.csv, url: 'sqlite:///x.db'}\n")
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(path, environ={})


def test_env_interpolation_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sample: {}\npublish:\n  url: ${OUT_URL}\nstate_dir: ${STATE:-/tmp/default-state}\n",
    )
    env = {
        "OUT_URL": "sqlite:///tmp/out.db",
        "CHURNSEG__SEGMENTATION__K_MAX": "5",
        "CHURNSEG__MLFLOW__TRACKING_URI": "sqlite:///tmp/m.db",
    }
    config = load_config(path, environ=env)
    assert config.publish_url == "sqlite:///tmp/out.db"
    assert str(config.state_dir) == "/tmp/default-state"
    assert config.segmentation.k_max == 5
    assert config.tracking_uri == "sqlite:///tmp/m.db"


def test_missing_env_variable_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "publish:\n  url: ${NOT_SET_ANYWHERE}\n")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        load_config(path, environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_config_as_dict_resolves_state_dir(tmp_path: Path) -> None:
    path = write(tmp_path, f"state_dir: {tmp_path}\nsample: {{}}\n")
    data = config_as_dict(load_config(path, environ={}))
    assert data["mlflow"]["tracking_uri"] == f"sqlite:///{tmp_path}/mlflow.db"
