"""Feature settings: windows, levels and churn labels of a feature build.

Part of the library (``features/``): the pipeline's YAML config holds one of these under
``features``, and notebooks build one directly.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FeatureConfig(BaseModel):
    """Feature windows and churn labels; the label horizon is ``snapshots.horizon_days``.

    Label modes (``label``): ``inactivity`` - no purchase (or activity event) in
    ``[as_of, as_of + horizon)``; ``contract`` - the subscription coverage that was active at
    ``as_of`` lapses in the horizon and no subscription follows within ``grace_days`` (or, without
    a subscriptions table, ``customers.churn_date`` falls in the horizon); ``column`` - the
    customers column ``label_column`` holds the flag (a snapshot without timestamps).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: tuple[int, ...] = Field(
        (30, 90, 180, 365),
        min_length=1,
        description="Window lengths in days for counts, sums and trends (ascending, distinct).",
    )
    slope_bucket_days: int = Field(30, ge=1, description="Bucket length of the spend slope.")
    slope_buckets: int = Field(12, ge=2, description="Buckets the spend slope is fitted over.")
    label: Literal["inactivity", "contract", "column"] = Field(
        "inactivity", description="Churn label mode: inactivity, contract or column."
    )
    activity_event_types: list[str] = Field(
        default_factory=list,
        description="inactivity: event types that also count as activity (default: none).",
    )
    grace_days: int = Field(
        30, ge=0, description="contract: a lapse shorter than this is a renewal, not churn."
    )
    label_column: str | None = Field(
        None, description="column: the customers column holding the churn flag (0/1, bool)."
    )
    btyd_period_days: int = Field(
        7, ge=1, description="BTYD period unit in days (7: frequency, recency, T in weeks)."
    )
    channels: list[str] | None = Field(
        None, description="Channels with a share column; default: the most frequent ones."
    )
    event_types: list[str] | None = Field(
        None, description="Event types with feature columns; default: the most frequent ones."
    )
    attribute_levels: dict[str, list[str]] | None = Field(
        None,
        description="Values each categorical customers attribute keeps (others become "
        "'other'); default: its max_levels most frequent values.",
    )
    max_levels: int = Field(
        20,
        ge=1,
        le=250,
        description="At most this many channels or event types get columns, and categorical "
        "attributes keep this many most frequent values (the rest become 'other').",
    )
    subscription_term_days: int = Field(
        30, ge=1, description="Subscriptions renew every this many days from their start."
    )
    subscription_end_known: bool = Field(
        False,
        description="end_date is a contract end fixed in advance, so a future end may be read.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FeatureConfig:
        if list(self.windows) != sorted(set(self.windows)) or self.windows[0] < 1:
            raise ValueError(f"windows must be ascending, distinct and >= 1, got {self.windows}")
        if self.label == "column" and not self.label_column:
            raise ValueError("label 'column' needs label_column (the customers churn flag)")
        return self
