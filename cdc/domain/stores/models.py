"""Synapse's mining models: numbered versions per task (ProcessMiningService's `_models`).

`save` writes version n+1 under the task row's lock, so concurrent savers get distinct
versions, and emits MINING_MODEL_SAVED in the same transaction. The newest version of a
task, or of every task of a tenant, is one query on the (tenant_id, task_id, version DESC)
index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg
from psycopg.rows import class_row

from cdc.domain import outbox
from cdc.domain.stores.base import Conn, EventStore, as_uuid, transaction
from cdc.errors import StoreError

AGGREGATE = "mining_model"
COLUMNS = "id, tenant_id, task_id, version, model_format, body, created_at"
LATEST_SQL = (
    f"SELECT {COLUMNS} FROM synapse.mining_model WHERE tenant_id = %s AND task_id = %s"
    " ORDER BY version DESC LIMIT 1"
)
# DISTINCT ON walks the unique index (tenant_id, task_id, version DESC) in order: the first
# row of each task is its newest version, without a sort.
LATEST_PER_TASK_SQL = (
    f"SELECT DISTINCT ON (task_id) {COLUMNS} FROM synapse.mining_model WHERE tenant_id = %s"
    " ORDER BY task_id, version DESC"
)


@dataclass(frozen=True, slots=True)
class MiningModel:
    """One version of a task's model."""

    id: UUID
    tenant_id: str
    task_id: UUID
    version: int
    model_format: str
    body: bytes
    created_at: datetime


class MiningModelStore(EventStore):
    """Save model versions of mining tasks and read them back."""

    def save(
        self, tenant_id: str, task_id: UUID | str, model_format: str, body: bytes,
        *, conn: Conn | None = None,
    ) -> MiningModel:
        """Store the next version of the task's model; emit MINING_MODEL_SAVED."""
        tid = as_uuid(task_id, "mining task")
        if not isinstance(body, bytes | bytearray | memoryview):
            raise StoreError("a model body is bytes (encode text formats first)")
        with transaction(self._pool, conn) as c:
            locked = c.execute(
                "SELECT 1 FROM synapse.mining_task WHERE id = %s AND tenant_id = %s FOR UPDATE",
                (tid, tenant_id),
            ).fetchone()
            if locked is None:
                raise StoreError(f"mining task {tid} not found for tenant {tenant_id}")
            try:
                with c.transaction():  # a savepoint: a refused format leaves `conn` usable
                    row = c.cursor(row_factory=class_row(MiningModel)).execute(
                        "INSERT INTO synapse.mining_model"
                        " (tenant_id, task_id, version, model_format, body)"
                        " SELECT %s, %s, coalesce(max(version), 0) + 1, %s, %s"
                        " FROM synapse.mining_model WHERE tenant_id = %s AND task_id = %s"
                        f" RETURNING {COLUMNS}",
                        (tenant_id, tid, model_format, bytes(body), tenant_id, tid),
                    ).fetchone()
            except psycopg.errors.CheckViolation:
                raise StoreError(
                    f"model format {model_format!r} is not a short lower-case name (bpmn, pnml)"
                ) from None
            assert row is not None
            self._publish(c, outbox.Event(
                tenant_id=tenant_id, aggregate_type=AGGREGATE, aggregate_id=str(tid),
                event_type="MINING_MODEL_SAVED",
                payload={"task_id": str(tid), "model_id": str(row.id),
                         "version": row.version, "model_format": model_format},
                idempotency_key=f"{AGGREGATE}:{tid}:v{row.version}",
            ))
        return row

    def latest(self, tenant_id: str, task_id: UUID | str) -> MiningModel | None:
        """Return the newest version of one task's model, or None."""
        tid = as_uuid(task_id, "mining task")
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(MiningModel)).execute(
                LATEST_SQL, (tenant_id, tid)
            ).fetchone()

    def latest_per_task(self, tenant_id: str) -> list[MiningModel]:
        """Return the newest version of every task's model of `tenant_id`, by task id."""
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(MiningModel)).execute(
                LATEST_PER_TASK_SQL, (tenant_id,)
            ).fetchall()

    def get(self, tenant_id: str, task_id: UUID | str, version: int) -> MiningModel | None:
        """Return one version of a task's model, or None."""
        tid = as_uuid(task_id, "mining task")
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(MiningModel)).execute(
                f"SELECT {COLUMNS} FROM synapse.mining_model"
                " WHERE task_id = %s AND tenant_id = %s AND version = %s",
                (tid, tenant_id, version),
            ).fetchone()

    def versions(self, tenant_id: str, task_id: UUID | str) -> list[int]:
        """Return the stored versions of a task's model, newest first."""
        tid = as_uuid(task_id, "mining task")
        with transaction(self._pool) as c:
            return [int(v) for (v,) in c.execute(
                "SELECT version FROM synapse.mining_model WHERE tenant_id = %s AND task_id = %s"
                " ORDER BY version DESC", (tenant_id, tid),
            ).fetchall()]

