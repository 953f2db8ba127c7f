"""Scheduled deployments: prefect.yaml loads, matches ``churnseg serve``, and deploys."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import ValidationError
from typer.testing import CliRunner

from churnseg.pipelines.cli import app
from churnseg.pipelines.deployments import DEPLOYMENTS, TIMEZONE, build_deployments

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "prefect.yaml"


@pytest.fixture(scope="module")
def yaml_deployments() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(PREFECT_YAML.read_text())
    return {d["name"]: d for d in document["deployments"]}


def _entrypoint_flow(entrypoint: str, monkeypatch: pytest.MonkeyPatch) -> Flow[Any, Any]:
    monkeypatch.chdir(ROOT)  # entrypoints are relative to the project folder, as for a worker
    loaded = load_flow_from_entrypoint(entrypoint)
    assert isinstance(loaded, Flow), f"{entrypoint} is not a Prefect flow: {type(loaded)}"
    return loaded


def test_prefect_yaml_matches_the_serve_definitions(
    yaml_deployments: dict[str, dict[str, Any]],
) -> None:
    expected = {"weekly-retrain", "daily-score", "intraday-score"}
    assert set(yaml_deployments) == expected, yaml_deployments.keys()
    for spec in DEPLOYMENTS:
        entry = yaml_deployments[spec.name]
        assert entry["entrypoint"] == spec.entrypoint, spec.name
        [schedule] = entry["schedules"]
        assert schedule == {"cron": spec.cron, "timezone": TIMEZONE, "active": True}, spec.name
        assert entry["work_pool"]["name"] == "churnseg", spec.name


def test_entrypoints_load_and_parameters_fit_the_flow_signatures(
    yaml_deployments: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, entry in yaml_deployments.items():
        loaded = _entrypoint_flow(entry["entrypoint"], monkeypatch)
        accepted = set(inspect.signature(loaded.fn).parameters)
        assert set(entry["parameters"]) <= accepted, f"{name}: {entry['parameters']} vs {accepted}"
        loaded.validate_parameters(entry["parameters"])  # raises on a wrong type
        config = ROOT / entry["parameters"]["config_path"]
        assert config.is_file(), f"{name}: config {config} does not exist"


def test_schedules_parse_and_a_bad_cron_does_not(
    yaml_deployments: dict[str, dict[str, Any]],
) -> None:
    for name, entry in yaml_deployments.items():
        for schedule in entry["schedules"]:
            parsed = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
            assert parsed.timezone == "Europe/Berlin", name
    with pytest.raises(ValidationError, match="Invalid cron"):
        CronSchedule(cron="0 3 * * 9", timezone=TIMEZONE)  # the check is real


def test_yaml_deployments_apply_and_read_back(
    prefect_harness: None,
    yaml_deployments: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, entry in yaml_deployments.items():
        loaded = _entrypoint_flow(entry["entrypoint"], monkeypatch)
        [schedule] = entry["schedules"]
        deployment = loaded.to_deployment(
            name=f"yaml-{name}",
            schedules=[CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])],
            parameters=entry["parameters"],
        )
        deployment.apply()
        with get_client(sync_client=True) as client:
            stored = client.read_deployment_by_name(f"{loaded.name}/yaml-{name}")
        [stored_schedule] = stored.schedules
        assert isinstance(stored_schedule.schedule, CronSchedule), stored_schedule
        assert stored_schedule.schedule.cron == schedule["cron"], name
        assert stored_schedule.schedule.timezone == schedule["timezone"], name
        assert stored.parameters == entry["parameters"], name


def test_serve_deployments_apply_and_read_back(prefect_harness: None) -> None:
    deployments = build_deployments("configs/default.yaml")
    assert [d.name for d in deployments] == [s.name for s in DEPLOYMENTS]
    for deployment, spec in zip(deployments, DEPLOYMENTS, strict=True):
        deployment.apply()
        with get_client(sync_client=True) as client:
            stored = client.read_deployment_by_name(f"{deployment.flow_name}/{spec.name}")
        [stored_schedule] = stored.schedules
        cron = stored_schedule.schedule
        assert isinstance(cron, CronSchedule), cron
        assert (cron.cron, cron.timezone) == (spec.cron, TIMEZONE), spec.name
        assert stored.parameters == {"config_path": "configs/default.yaml"}, spec.name


def test_serve_command_hands_every_deployment_to_prefect(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect

    served: list[Any] = []
    monkeypatch.setattr(prefect, "serve", lambda *deployments: served.extend(deployments))
    result = CliRunner().invoke(app, ["serve", "--timezone", "America/New_York"])
    assert result.exit_code == 0, result.output
    assert [d.name for d in served] == ["weekly-retrain", "daily-score", "intraday-score"], served
    assert {d.schedules[0].schedule.timezone for d in served} == {"America/New_York"}
    assert "weekly-retrain" in result.output and "0 3 * * 1" in result.output, result.output


def test_serve_command_without_a_server_or_with_a_bad_zone_exits_2(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect

    monkeypatch.setattr(prefect, "serve", lambda *d: pytest.fail("must not serve"))
    bad_zone = CliRunner().invoke(app, ["serve", "--timezone", "Mars/Olympus"])
    assert bad_zone.exit_code == 2, bad_zone.output
    assert "unknown time zone 'Mars/Olympus'" in bad_zone.output, bad_zone.output
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        no_server = CliRunner().invoke(app, ["serve"])
    assert no_server.exit_code == 2, no_server.output
    assert "prefect server start" in no_server.output, no_server.output


@pytest.mark.slow
def test_prefect_deploy_all_reads_prefect_yaml_into_the_work_pool(prefect_harness: None) -> None:
    """``prefect --no-prompt deploy --all`` as documented, against the harness's API."""
    import os
    import subprocess
    import sys

    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="churnseg", type="process"), overwrite=True)
    prefect_cli = Path(sys.executable).with_name("prefect")
    done = subprocess.run(
        [str(prefect_cli), "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with get_client(sync_client=True) as client:
        for spec in DEPLOYMENTS:
            flow_name = spec.flow.removesuffix("_flow").replace("_", "-")
            stored = client.read_deployment_by_name(f"{flow_name}/{spec.name}")
            assert stored.work_pool_name == "churnseg", spec.name
            assert stored.entrypoint == spec.entrypoint, spec.name
            [schedule] = stored.schedules
            cron = schedule.schedule
            assert isinstance(cron, CronSchedule), cron
            assert (cron.cron, cron.timezone) == (spec.cron, TIMEZONE), spec.name
            assert stored.parameters == {"config_path": "configs/default.yaml"}, spec.name
