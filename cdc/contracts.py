"""Event contract registry: a pydantic model per event type (the seed's EventContractRegistry).

A payload that fails its model is a per-event failure (retried, then dead-lettered).
Unknown event types pass by default; `unknown_events="dead_letter"` rejects them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from cdc.errors import EventError


class Contract(BaseModel):
    """Base of every event payload: extra fields allowed, idempotency key optional."""

    model_config = ConfigDict(extra="allow", frozen=True)
    idempotency_key: str | None = None


class CaseCreated(Contract):
    case_id: str
    status: str


class CaseStatusChanged(Contract):
    case_id: str
    from_status: str | None
    to_status: str


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


DEFAULT_CONTRACTS: Mapping[str, type[Contract]] = {
    "CASE_CREATED": CaseCreated,
    "CASE_STATUS_CHANGED": CaseStatusChanged,
    "WATCH_ALERT_TRIGGERED": WatchAlertTriggered,
    "WORKER_TASK_COMPLETED": WorkerTaskCompleted,
    "MINING_TASK_COMPLETED": MiningTaskCompleted,
    "MINING_TASK_FAILED": MiningTaskFailed,
}


class Registry:
    """Validate payloads against the model registered for their event type."""

    def __init__(
        self,
        contracts: Mapping[str, type[Contract]] = DEFAULT_CONTRACTS,
        *,
        unknown: str = "pass",
    ) -> None:
        self._contracts = dict(contracts)
        self._reject_unknown = unknown == "dead_letter"
        # pydantic-core's validators, called directly on the hot path
        self._json = {t: m.__pydantic_validator__.validate_json for t, m in self._contracts.items()}

    def validate(self, event_type: str, payload: Any) -> None:
        """Raise EventError when `payload` breaks the contract of `event_type`."""
        model = self._contracts.get(event_type)
        if model is None:
            if self._reject_unknown:
                raise EventError(f"no contract registered for event type {event_type}")
            return
        if not isinstance(payload, dict):
            raise EventError(f"{event_type}: payload must be a JSON object")
        try:
            model.model_validate(payload)
        except ValidationError as e:
            raise _broken(event_type, e) from None

    def validate_json(self, event_type: str, text: str) -> str:
        """Validate a JSON payload in one pass; return its idempotency key ("" if none)."""
        validate = self._json.get(event_type)
        if validate is None:
            if self._reject_unknown:
                raise EventError(f"no contract registered for event type {event_type}")
            if '"idempotency_key"' not in text:
                return ""
            try:
                payload = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                raise EventError(f"payload is not JSON: {e}") from None
            key = payload.get("idempotency_key") if isinstance(payload, dict) else None
            return "" if key is None else str(key)
        try:
            obj: Contract = validate(text)
        except ValidationError as e:
            raise _broken(event_type, e) from None
        return obj.idempotency_key or ""

    def known(self) -> list[str]:
        """Return the registered event types."""
        return sorted(self._contracts)


def _broken(event_type: str, e: ValidationError) -> EventError:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    if first["type"] == "model_type":
        return EventError(f"{event_type}: payload must be a JSON object")
    return EventError(
        f"{event_type} breaks its contract: {where}: {first['msg']}"
        f" ({e.error_count()} error(s))"
    )
