"""Short-lived query jobs (Weaver/Oracle) in Redis, each a hash that expires after its TTL.

Redis is the right home for them: they matter for minutes, and losing one on a Redis
restart only means the client asks again. Key names come from `cdc.streams.keys`. Each step
touches one key, so the store works on a Redis Cluster client as on a single Redis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from cdc.errors import StoreError
from cdc.streams import keys, luascripts
from cdc.streams.redisconn import Client

DEFAULT_TTL_S = 3600.0
STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")

SAVE = luascripts.script("queryjob_save")  # the whole job and its TTL, in one step
UPDATE = luascripts.script("queryjob_update")  # fields of a job that still exists


@dataclass(frozen=True, slots=True)
class QueryJob:
    """One query job: who asked, where it is, and what it carries."""

    job_id: str
    tenant_id: str
    status: str = "PENDING"
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def fields(self) -> dict[str, str]:
        """Return the Redis hash fields of this job."""
        return {
            "job_id": self.job_id,
            "tenant_id": self.tenant_id,
            "status": self.status,
            "data": orjson.dumps(self.data).decode(),
            "error": self.error or "",
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> QueryJob:
        """Build a job from a Redis hash (bytes or str)."""
        f = {_text(k): _text(v) for k, v in raw.items()}
        return cls(
            job_id=f["job_id"],
            tenant_id=f["tenant_id"],
            status=f["status"],
            data=orjson.loads(f.get("data") or "{}"),
            error=f.get("error") or None,
            created_at=datetime.fromisoformat(f["created_at"]),
            updated_at=datetime.fromisoformat(f["updated_at"]),
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise StoreError(f"unknown query job status {status!r}; one of {', '.join(STATUSES)}")


class QueryJobStore:
    """Save, read, update and expire query jobs; every job expires after `ttl_s`."""

    def __init__(self, client: Client, *, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise StoreError("a query job TTL must be positive")
        self._client = client
        self._ttl_ms = math.ceil(ttl_s * 1000)

    def save(self, job: QueryJob, *, ttl_s: float | None = None) -> QueryJob:
        """Write the whole job and (re)start its TTL."""
        _check_status(job.status)
        ttl_ms = self._ttl_ms if ttl_s is None else math.ceil(ttl_s * 1000)
        key = keys.query_job(job.job_id)
        pairs = [x for kv in job.fields().items() for x in kv]
        try:
            SAVE(self._client, [key], [ttl_ms, *pairs])
        except redis.RedisError as e:
            raise StoreError(f"cannot save query job {job.job_id}: {e}") from None
        return job

    def get(self, job_id: str) -> QueryJob | None:
        """Return a job, or None when it never existed or has expired."""
        try:
            raw = self._client.hgetall(keys.query_job(job_id))
        except redis.RedisError as e:
            raise StoreError(f"cannot read query job {job_id}: {e}") from None
        return QueryJob.from_fields(raw) if raw else None

    def update_status(
        self,
        job_id: str,
        status: str,
        *,
        data: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> QueryJob:
        """Set a job's status (and data or error), keeping its TTL; a gone job is an error."""
        _check_status(status)
        argv = ["status", status, "updated_at", datetime.now(UTC).isoformat()]
        if data is not None:
            argv += ["data", orjson.dumps(dict(data)).decode()]
        if error is not None:
            argv += ["error", error]
        try:
            raw = UPDATE(self._client, [keys.query_job(job_id)], argv)
        except redis.RedisError as e:
            raise StoreError(f"cannot update query job {job_id}: {e}") from None
        if not raw:
            raise StoreError(f"query job {job_id} not found: it expired or was never saved")
        pairs = iter(raw)
        return QueryJob.from_fields(dict(zip(pairs, pairs, strict=True)))

    def expire(self, job_id: str, *, after_s: float = 0.0) -> bool:
        """Drop a job now (`after_s=0`) or after `after_s` seconds; False if it was gone."""
        key = keys.query_job(job_id)
        try:
            if after_s <= 0:
                return bool(self._client.delete(key))
            return bool(self._client.pexpire(key, math.ceil(after_s * 1000)))
        except redis.RedisError as e:
            raise StoreError(f"cannot expire query job {job_id}: {e}") from None

    def ttl_s(self, job_id: str) -> float | None:
        """Return the seconds a job has left, or None when it is gone."""
        try:
            ms = int(self._client.pttl(keys.query_job(job_id)))
        except redis.RedisError as e:
            raise StoreError(f"cannot read the TTL of query job {job_id}: {e}") from None
        return None if ms < 0 else ms / 1000
