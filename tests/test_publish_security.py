"""Credentials never reach messages, logs, printed config, MLflow params or artifacts."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from churnseg.pipelines.config import ConfigError, config_as_dict, load_config, redact_secrets
from churnseg.pipelines.publish import PublishError, PublishTarget, publish_scores, run_log
from churnseg.pipelines.sinks.errors import scrub
from tests.test_publish import PG_URL, pg_schema, query, scores, write

__all__ = ["pg_schema"]

SECRET = "Sup3r-s3cret-pw"
URL = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test"


@given(st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s))
def test_redact_secrets_hides_any_url_encoded_password(password: str) -> None:
    url = f"postgresql://ops:{quote(password, safe='')}@db.internal:5432/crm?sslmode=require"
    assert redact_secrets(url) == "postgresql://ops:***@db.internal:5432/crm?sslmode=require"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # '@' left unencoded
        ("postgresql://h/db?user=u&password=pw1", "postgresql://h/db?user=u&password=***"),
        ("sqlite:////tmp/scores.db", "sqlite:////tmp/scores.db"),
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        (
            "invalid dsn: \"host=h password='a b' user=x\"",
            'invalid dsn: "host=h password=*** user=x"',
        ),
        ("failed: postgresql://u:pw@h/db timed out", "failed: postgresql://u:***@h/db timed out"),
    ],
)
def test_redact_secrets_examples(text: str, expected: str) -> None:
    assert redact_secrets(text) == expected


def test_scrub_removes_the_password_even_outside_a_url() -> None:
    message = f'could not parse "{SECRET}" in {URL}'
    assert SECRET not in scrub(message, URL)


def test_config_as_dict_and_config_show_hide_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from churnseg.pipelines.cli import app

    path = tmp_path / "c.yaml"
    path.write_text(
        "sample: {}\npublish:\n  url: ${OUT_URL}\n  db_schema: ops\n"
        "mlflow:\n  tracking_uri: ${TRACKING}\n"
    )
    env = {"OUT_URL": URL, "TRACKING": f"postgresql://ml:{SECRET}@h/mlflow"}
    data = config_as_dict(load_config(path, environ=env))
    assert SECRET not in json.dumps(data)
    assert data["publish"]["url"] == "postgresql+psycopg://postgres:***@127.0.0.1:5432/test"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["config", "show", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "postgres:***@" in result.output and SECRET not in result.output


def test_config_error_on_a_bad_url_hides_the_password(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"publish:\n  url: mysql://ops:{SECRET}@db/crm\n")
    with pytest.raises(ConfigError, match="url must start with one of") as info:
        load_config(path, environ={})
    assert "mysql://ops:***@db/crm" in str(info.value) and SECRET not in str(info.value)


def test_mlflow_lineage_params_and_artifacts_hide_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from churnseg.pipelines import stages

    path = tmp_path / "c.yaml"
    path.write_text(f"state_dir: {tmp_path}\nsample: {{}}\npublish:\n  url: {URL}\n")
    config = load_config(path, environ={})
    # Other tests' mlflow.set_experiment leaves MLFLOW_EXPERIMENT_ID behind: use our own.
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        experiment = mlflow.MlflowClient().create_experiment(
            "lineage", artifact_location=(tmp_path / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment) as run:
            stages.log_lineage(config)
        client = mlflow.MlflowClient()
        logged = Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path)))
        text = logged.read_text()
        params = client.get_run(run.info.run_id).data.params
    finally:
        mlflow.set_tracking_uri(None)
    assert "postgres:***@127.0.0.1" in text, text
    assert SECRET not in text
    assert SECRET not in json.dumps(params)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://postgres:{SECRET}@127.0.0.1:1/test?connect_timeout=2",  # nobody listens
        f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test?sslmode=bogus",
        f"postgresql://postgres@127.0.0.1:1/test?password={SECRET}&connect_timeout=2",
    ],
)
def test_publish_errors_do_not_carry_the_password(url: str, tmp_path: Path) -> None:
    path = write(scores("2026-01-01", ["A"], 0.1), tmp_path / "s.parquet")
    with pytest.raises(PublishError) as info:
        publish_scores(path, PublishTarget(url))
    assert "connecting failed" in str(info.value)
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__, "no raw driver error"


def test_target_repr_hides_the_url() -> None:
    target = PublishTarget(URL, db_schema="ops")
    assert SECRET not in repr(target) and SECRET not in target.display
    assert target.describe("customer_scores").endswith("(schema ops) :: customer_scores")


@pytest.mark.postgres
def test_publish_with_password_logs_no_password(
    pg_schema: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The test server trusts local connections, so the password is accepted and ignored.
    target = PublishTarget(URL, db_schema=pg_schema)
    path = write(scores("2026-01-01", ["A", "B"], 0.1), tmp_path / "s.parquet")
    with caplog.at_level(logging.DEBUG):
        assert publish_scores(path, target) == 2
        with pytest.raises(RuntimeError), run_log(target, "run-leak", "score"):
            raise RuntimeError(f"could not reach {URL}")
    assert "published 2 rows" in caplog.text
    assert SECRET not in caplog.text
    [(message,)] = query(
        PublishTarget(PG_URL, db_schema=pg_schema),
        "SELECT message FROM {schema}.pipeline_runs WHERE run_id = 'run-leak'",
    )
    assert (
        message
        == "RuntimeError: could not reach postgresql+psycopg://postgres:***@127.0.0.1:5432/test"
    )
