"""Scheduled deployments: a weekly retrain, a daily scoring run, intra-day updates every 15 min.

The same two definitions live in ``prefect.yaml`` (for ``prefect deploy`` to a work pool) and
here (for ``churnseg serve``, which runs them from one process); a test keeps them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

TIMEZONE = "Europe/Berlin"


@dataclass(frozen=True)
class DeploymentSpec:
    """One scheduled deployment: which flow, when, and what it is for."""

    name: str
    flow: str  # attribute of ``churnseg.pipelines.flows``
    cron: str
    description: str

    @property
    def entrypoint(self) -> str:
        """The ``path:function`` entrypoint that ``prefect.yaml`` uses."""
        return f"churnseg/pipelines/flows.py:{self.flow}"


# Retrain early on Monday, after the weekend's data has landed; score every morning, two hours
# later so that on Mondays the scoring run finds the freshly promoted champions.
DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        name="weekly-retrain",
        flow="retrain_flow",
        cron="0 3 * * 1",
        description="Retrain segmentation and churn models, then score and publish every customer.",
    ),
    DeploymentSpec(
        name="daily-score",
        flow="score_flow",
        cron="0 5 * * *",
        description="Score the latest data with the champion models and publish the snapshot.",
    ),
    # Every quarter hour, the customers whose data changed since the morning's snapshot.
    DeploymentSpec(
        name="intraday-score",
        flow="score_changed_flow",
        cron="*/15 * * * *",
        description="Re-score the customers with new rows since the latest snapshot and update "
        "it in place (intra-day).",
    ),
)


def build_deployments(
    config_path: str | None = None, timezone: str = TIMEZONE
) -> list[RunnerDeployment]:
    """Return the scheduled deployments, ready for ``prefect.serve`` or ``.apply()``.

    Args:
        config_path: The YAML config every scheduled run uses (None: the bundled sample config).
        timezone: IANA time zone the cron expressions are read in.

    Raises:
        ConfigError: The time zone is unknown.
    """
    from prefect.schedules import Cron

    from churnseg.pipelines import flows
    from churnseg.pipelines.config import ConfigError

    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {timezone!r} (expected e.g. Europe/Berlin)") from None

    return [
        getattr(flows, spec.flow).to_deployment(
            name=spec.name,
            schedule=Cron(spec.cron, timezone=timezone),
            parameters={"config_path": config_path},
            description=spec.description,
            tags=["churnseg"],
        )
        for spec in DEPLOYMENTS
    ]
