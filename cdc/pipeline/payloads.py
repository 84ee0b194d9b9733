"""The event payloads we know: a pydantic model per event type (the seed's contracts).

Every model allows extra fields and an optional idempotency key (`Contract`). A new event
type gets its model here and its entry in DEFAULT_CONTRACTS; contracts.py validates.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """Base of every event payload: extra fields allowed, idempotency key optional."""

    model_config = ConfigDict(extra="allow", frozen=True)
    idempotency_key: str | None = None


class CaseCreated(Contract):
    case_id: str
    status: str
    at: int | None = None  # trigger clock, µs: the order of a case's events (sql/008)


class CaseStatusChanged(Contract):
    case_id: str
    from_status: str | None
    to_status: str
    at: int | None = None


class WatchAlertTriggered(Contract):
    watch_id: str
    alert_id: str
    severity: str


class WorkerTaskCompleted(Contract):
    task_id: str
    worker_id: str


class MiningTaskCompleted(Contract):
    task_id: str
    task_type: str
    result_id: str


class MiningTaskFailed(Contract):
    task_id: str
    task_type: str
    error: str


class CaseRoleAssigned(Contract):
    case_id: str
    role_id: str
    role_name: str
    assignee_id: str | None = None
    at: int | None = None  # the producer's order; the outbox row's created_at when absent


class MaterializedTableRegistered(Contract):
    table_id: str
    datasource_id: str
    target: str


class MaterializedTableRedefined(Contract):
    table_id: str
    target: str


class MaterializedTableRefreshed(Contract):
    table_id: str
    target: str
    refresh: int
    row_count: int


class MaterializedTableRefreshFailed(Contract):
    table_id: str
    target: str
    refresh: int
    error: str


class MiningModelSaved(Contract):
    task_id: str
    model_id: str
    version: int
    model_format: str


DEFAULT_CONTRACTS: Mapping[str, type[Contract]] = {
    "CASE_CREATED": CaseCreated,
    "CASE_STATUS_CHANGED": CaseStatusChanged,
    "WATCH_ALERT_TRIGGERED": WatchAlertTriggered,
    "WORKER_TASK_COMPLETED": WorkerTaskCompleted,
    "MINING_TASK_COMPLETED": MiningTaskCompleted,
    "MINING_TASK_FAILED": MiningTaskFailed,
    "CASE_ROLE_ASSIGNED": CaseRoleAssigned,
    "MATERIALIZED_TABLE_REGISTERED": MaterializedTableRegistered,
    "MATERIALIZED_TABLE_REDEFINED": MaterializedTableRedefined,
    "MATERIALIZED_TABLE_REFRESHED": MaterializedTableRefreshed,
    "MATERIALIZED_TABLE_REFRESH_FAILED": MaterializedTableRefreshFailed,
    "MINING_MODEL_SAVED": MiningModelSaved,
}
