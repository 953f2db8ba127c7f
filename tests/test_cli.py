"""The command line: an example in every --help, documented exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from churnseg.pipelines.cli import app

EXPECTED_COMMANDS = {
    "sample",
    "run",
    "retrain",
    "score",
    "monitor",
    "report",
    "promote",
    "rollback",
    "history",
    "serve",
    "config show",
    "config validate",
}


def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer vendors its own click classes)
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


ALL_COMMANDS = _commands(typer.main.get_group(app))


def test_every_expected_command_exists() -> None:
    missing = EXPECTED_COMMANDS - set(ALL_COMMANDS)
    assert not missing, f"commands missing from the CLI: {sorted(missing)}"


@pytest.mark.parametrize("command", sorted(ALL_COMMANDS))
def test_help_shows_an_example(command: str) -> None:
    result = CliRunner().invoke(app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`churnseg {command} --help` has no example"


@pytest.mark.parametrize("command", [["config", "validate"], ["run"], ["score"]])
def test_a_bad_config_key_exits_2_with_one_line(command: list[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("segmentation: {k_maxx: 3}\n")
    result = CliRunner().invoke(app, [*command, "-c", str(path)])
    assert result.exit_code == 2, result.output
    assert "k_maxx" in result.output, result.output
    assert "Traceback" not in result.output, "a traceback only with --debug"


@pytest.fixture
def own_mlflow_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the MLFLOW_EXPERIMENT_ID that ``mlflow.set_experiment`` leaves for later tests."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # recorded, so teardown restores it
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")


def test_a_missing_source_file_exits_3(
    prefect_harness: None, own_mlflow_experiment: None, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
state_dir: {tmp_path / "state"}
sources:
  customers: {{path: "{tmp_path}/nowhere/customers.parquet"}}
  transactions: {{path: "{tmp_path}/nowhere/transactions.parquet"}}
"""
    )
    result = CliRunner().invoke(app, ["score", "-c", str(path)])
    assert result.exit_code == 3, result.output
    assert "nowhere" in result.output and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"one error line expected: {result.output}"


def test_summary_names_the_stages_a_resumed_run_reused() -> None:
    from churnseg.pipelines import cli

    summary: dict[str, Any] = {"rows_published": 12, "table": "sqlite customer_scores"}
    with cli.console.capture() as fresh:
        cli._print_summary(summary)
    assert "reused" not in fresh.get()
    with cli.console.capture() as resumed:
        cli._print_summary({**summary, "resumed_stages": ["clean", "build-features"]})
    assert "reused (earlier attempt)" in resumed.get()
    assert "clean, build-features" in resumed.get()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, "1000"),
        ({"GOMP_SPINCOUNT": "50000"}, "50000"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, None),  # the user's policy decides the spinning
    ],
)
def test_importing_churnseg_shortens_openmp_spinning_unless_told(
    given: dict[str, str], expected: str | None
) -> None:
    # In a fresh interpreter: libgomp reads these once, when scikit-learn loads it, so
    # churnseg's own import must set them.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_WAIT", "GOMP_"))}
    code = "import os, churnseg; print(os.environ.get('GOMP_SPINCOUNT'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env | given, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)
