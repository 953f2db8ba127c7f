"""The input data contract: logical tables, their columns and column kinds.

Users map their own column names onto these logical names in config; everything after
extraction speaks only these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnKind = Literal["string", "timestamp", "date", "float", "int", "bool"]
TableName = Literal[
    "customers",
    "transactions",
    "events",
    "subscriptions",
    "owners",
    "assignments",
    "contact_outcomes",
]


@dataclass(frozen=True)
class TableContract:
    """Columns a logical table must have and may have, with the kind each is coerced to."""

    name: TableName
    required: dict[str, ColumnKind]
    optional: dict[str, ColumnKind]

    @property
    def columns(self) -> dict[str, ColumnKind]:
        """Return required and optional columns together, required first."""
        return {**self.required, **self.optional}


CUSTOMERS = TableContract(
    name="customers",
    required={"customer_id": "string"},
    optional={"signup_date": "timestamp", "churn_date": "timestamp"},
)
TRANSACTIONS = TableContract(
    name="transactions",
    required={"customer_id": "string", "timestamp": "timestamp", "amount": "float"},
    optional={
        "order_id": "string",
        "quantity": "int",
        "product": "string",
        "category": "string",
        "channel": "string",
        "is_return": "bool",
    },
)
EVENTS = TableContract(
    name="events",
    required={"customer_id": "string", "timestamp": "timestamp", "event_type": "string"},
    optional={"value": "float"},
)
SUBSCRIPTIONS = TableContract(
    name="subscriptions",
    required={"customer_id": "string", "start_date": "timestamp"},
    optional={"end_date": "timestamp", "plan": "string", "recurring_revenue": "float"},
)

# Allocation: who looks after customers. Regions and industries an owner covers are text lists
# separated by ";" or ","; seniority is a level (1 = junior); capacity counts accounts.
OWNERS = TableContract(
    name="owners",
    required={"owner_id": "string", "capacity": "int"},
    optional={
        "name": "string",
        "regions": "string",
        "industries": "string",
        "seniority": "int",
        "active": "bool",
    },
)
ASSIGNMENTS = TableContract(
    name="assignments",
    required={"customer_id": "string", "owner_id": "string"},
    optional={"since": "timestamp"},
)
CONTACT_OUTCOMES = TableContract(
    name="contact_outcomes",
    required={"customer_id": "string", "contacted_at": "timestamp"},
    optional={"owner_id": "string", "channel": "string", "outcome": "string"},
)

CONTRACTS: dict[str, TableContract] = {
    c.name: c
    for c in (
        CUSTOMERS,
        TRANSACTIONS,
        EVENTS,
        SUBSCRIPTIONS,
        OWNERS,
        ASSIGNMENTS,
        CONTACT_OUTCOMES,
    )
}
# Tables that describe customers' behaviour (features, labels); the others serve allocation.
MODEL_TABLES = ("customers", "transactions", "events", "subscriptions")
