"""The input data contract: logical tables, their columns and column kinds.

Users map their own column names onto these logical names in config; everything after
extraction speaks only these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnKind = Literal["string", "timestamp", "date", "float", "int", "bool"]
TableName = Literal["customers", "transactions", "events", "subscriptions"]


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

CONTRACTS: dict[str, TableContract] = {
    c.name: c for c in (CUSTOMERS, TRANSACTIONS, EVENTS, SUBSCRIPTIONS)
}
