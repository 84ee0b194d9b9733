"""Synapse's mining tasks and results; completing or failing a task emits its event.

    PENDING --start--> RUNNING --complete--> COMPLETED (+ result, MINING_TASK_COMPLETED)
       |                  |
       +------fail--------+--------------->  FAILED (MINING_TASK_FAILED)

At most `max_running` tasks of a tenant are RUNNING: `start` takes a per-tenant advisory
transaction lock before counting, so concurrent starts are serialised per tenant only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from cdc.domain import outbox
from cdc.domain.stores.base import Conn, EventStore, Pool, as_uuid, transaction
from cdc.errors import StoreError
from cdc.pipeline.contracts import Registry

MAX_RUNNING = 8
STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED")
LOCK_CLASS = 0x5A1A  # advisory lock namespace: "a tenant's RUNNING count"
AGGREGATE = "mining_task"
TASK_COLUMNS = (
    "id, tenant_id, task_type, status, input_params, created_at, started_at, completed_at, error"
)
RESULT_COLUMNS = "id, task_id, result_type, result_data, created_at"


@dataclass(frozen=True, slots=True)
class MiningTask:
    """One row of synapse.mining_task."""

    id: UUID
    tenant_id: str
    task_type: str
    status: str
    input_params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None


@dataclass(frozen=True, slots=True)
class MiningResult:
    """One row of synapse.mining_result."""

    id: UUID
    task_id: UUID
    result_type: str
    result_data: Any
    created_at: datetime


class MiningStore(EventStore):
    """Create, run and finish mining tasks of many tenants."""

    def __init__(
        self,
        pool: Pool,
        *,
        max_running: int = MAX_RUNNING,
        outbox_table: str = outbox.DEFAULT_TABLE,
        registry: Registry | None = None,
    ) -> None:
        super().__init__(pool, outbox_table=outbox_table, registry=registry)
        self._max_running = max_running

    def create(
        self,
        tenant_id: str,
        task_type: str,
        input_params: Mapping[str, Any] | None = None,
        *,
        conn: Conn | None = None,
    ) -> MiningTask:
        """Record a new PENDING task."""
        if not tenant_id or not task_type:
            raise StoreError("a mining task needs a tenant_id and a task_type")
        with transaction(self._pool, conn) as c:
            cur = c.cursor(row_factory=class_row(MiningTask))
            row = cur.execute(
                f"INSERT INTO synapse.mining_task (tenant_id, task_type, input_params)"
                f" VALUES (%s, %s, %s) RETURNING {TASK_COLUMNS}",
                (tenant_id, task_type, Jsonb(dict(input_params or {}))),
            ).fetchone()
        assert row is not None
        return row

    def start(self, tenant_id: str, task_id: UUID | str, *, conn: Conn | None = None) -> MiningTask:
        """Move a PENDING task to RUNNING, unless the tenant already runs `max_running`."""
        tid = as_uuid(task_id, "mining task")
        with transaction(self._pool, conn) as c:
            c.execute(
                "SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))", (LOCK_CLASS, tenant_id)
            )
            self._expect(c, tenant_id, tid, ("PENDING",), "start")
            count = c.execute(
                "SELECT count(*) FROM synapse.mining_task WHERE tenant_id = %s"
                " AND status = 'RUNNING'", (tenant_id,),
            ).fetchone()
            if count is not None and count[0] >= self._max_running:
                raise StoreError(
                    f"tenant {tenant_id} already has {count[0]} RUNNING mining tasks "
                    f"(limit {self._max_running}); task {tid} stays PENDING",
                    hint="start it again after a running task completes or fails",
                )
            row = c.cursor(row_factory=class_row(MiningTask)).execute(
                f"UPDATE synapse.mining_task SET status = 'RUNNING', started_at = now()"
                f" WHERE id = %s RETURNING {TASK_COLUMNS}", (tid,),
            ).fetchone()
        assert row is not None
        return row

    def complete(
        self,
        tenant_id: str,
        task_id: UUID | str,
        *,
        result_type: str,
        result_data: Any,
        conn: Conn | None = None,
    ) -> MiningResult:
        """Finish a RUNNING task with its result and emit MINING_TASK_COMPLETED, atomically."""
        tid = as_uuid(task_id, "mining task")
        with transaction(self._pool, conn) as c:
            task = self._expect(c, tenant_id, tid, ("RUNNING",), "complete")
            c.execute(
                "UPDATE synapse.mining_task SET status = 'COMPLETED', completed_at = now()"
                " WHERE id = %s", (tid,),
            )
            result = c.cursor(row_factory=class_row(MiningResult)).execute(
                f"INSERT INTO synapse.mining_result (task_id, result_type, result_data)"
                f" VALUES (%s, %s, %s) RETURNING {RESULT_COLUMNS}",
                (tid, result_type, Jsonb(result_data)),
            ).fetchone()
            assert result is not None
            self._emit(c, task, "MINING_TASK_COMPLETED", "completed",
                       {"result_id": str(result.id), "result_type": result_type})
        return result

    def fail(
        self, tenant_id: str, task_id: UUID | str, error: str, *, conn: Conn | None = None
    ) -> MiningTask:
        """Mark a PENDING or RUNNING task FAILED and emit MINING_TASK_FAILED, atomically."""
        tid = as_uuid(task_id, "mining task")
        with transaction(self._pool, conn) as c:
            task = self._expect(c, tenant_id, tid, ("PENDING", "RUNNING"), "fail")
            row = c.cursor(row_factory=class_row(MiningTask)).execute(
                f"UPDATE synapse.mining_task SET status = 'FAILED', completed_at = now(),"
                f" error = %s WHERE id = %s RETURNING {TASK_COLUMNS}", (error, tid),
            ).fetchone()
            self._emit(c, task, "MINING_TASK_FAILED", "failed", {"error": error})
        assert row is not None
        return row

    def get(self, tenant_id: str, task_id: UUID | str) -> MiningTask | None:
        """Return one task of `tenant_id`, or None."""
        tid = as_uuid(task_id, "mining task")
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(MiningTask)).execute(
                f"SELECT {TASK_COLUMNS} FROM synapse.mining_task WHERE id = %s AND tenant_id = %s",
                (tid, tenant_id),
            ).fetchone()

    def list_tasks(
        self, tenant_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[MiningTask]:
        """Return a tenant's tasks, newest first, optionally of one status."""
        if status is not None and status not in STATUSES:
            raise StoreError(f"unknown mining task status {status!r}; one of {STATUSES}")
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(MiningTask)).execute(
                f"SELECT {TASK_COLUMNS} FROM synapse.mining_task WHERE tenant_id = %s"
                " AND (%s::text IS NULL OR status = %s) ORDER BY created_at DESC, id LIMIT %s",
                (tenant_id, status, status, limit),
            ).fetchall()

    def results(self, tenant_id: str, task_id: UUID | str) -> list[MiningResult]:
        """Return the results of one task of `tenant_id`, oldest first."""
        tid = as_uuid(task_id, "mining task")
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(MiningResult)).execute(
                "SELECT r.id, r.task_id, r.result_type, r.result_data, r.created_at"
                " FROM synapse.mining_result r JOIN synapse.mining_task t ON t.id = r.task_id"
                " WHERE r.task_id = %s AND t.tenant_id = %s ORDER BY r.created_at, r.id",
                (tid, tenant_id),
            ).fetchall()

    @staticmethod
    def _expect(
        c: Conn, tenant_id: str, tid: UUID, allowed: tuple[str, ...], action: str
    ) -> MiningTask:
        """Lock the task row and check its status allows `action`."""
        task = c.cursor(row_factory=class_row(MiningTask)).execute(
            f"SELECT {TASK_COLUMNS} FROM synapse.mining_task WHERE id = %s AND tenant_id = %s"
            " FOR UPDATE", (tid, tenant_id),
        ).fetchone()
        if task is None:
            raise StoreError(f"mining task {tid} not found for tenant {tenant_id}")
        if task.status not in allowed:
            raise StoreError(
                f"cannot {action} mining task {tid}: it is {task.status}, "
                f"{action} needs {' or '.join(allowed)}"
            )
        return task

    def _emit(
        self, c: Conn, task: MiningTask, event_type: str, suffix: str, extra: dict[str, Any]
    ) -> None:
        self._publish(c, outbox.Event(
            tenant_id=task.tenant_id,
            aggregate_type=AGGREGATE,
            aggregate_id=str(task.id),
            event_type=event_type,
            payload={"task_id": str(task.id), "task_type": task.task_type, **extra},
            idempotency_key=f"{AGGREGATE}:{task.id}:{suffix}",
        ))
