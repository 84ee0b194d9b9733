"""Query jobs in the harness Redis: saved with a TTL, updated in place, gone when expired."""

from __future__ import annotations

import time

import pytest
import redis

from cdc.domain.queryjobs import QueryJob, QueryJobStore
from cdc.errors import StoreError
from cdc.streams import keys
from devkit.localservers import LocalRedis


def test_save_get_and_default_ttl(rds: redis.Redis) -> None:
    jobs = QueryJobStore(rds)
    job = jobs.save(QueryJob("j1", "t1", data={"sql": "SELECT 1", "rows": [1, 2]}))
    assert rds.exists(keys.query_job("j1")) == 1
    assert jobs.get("j1") == job
    left = jobs.ttl_s("j1")
    assert left is not None and 3590 < left <= 3600
    assert jobs.get("missing") is None and jobs.ttl_s("missing") is None


def test_update_status_keeps_ttl_and_never_resurrects(rds: redis.Redis) -> None:
    jobs = QueryJobStore(rds, ttl_s=60)
    created = jobs.save(QueryJob("j1", "t1", data={"sql": "SELECT 1"}))
    running = jobs.update_status("j1", "RUNNING")
    assert running.status == "RUNNING" and running.data == {"sql": "SELECT 1"}
    assert running.created_at == created.created_at and running.updated_at >= created.updated_at
    done = jobs.update_status("j1", "COMPLETED", data={"rows": 3})
    assert done.data == {"rows": 3} and done.error is None
    left = jobs.ttl_s("j1")
    assert left is not None and 50 < left <= 60
    with pytest.raises(StoreError, match="unknown query job status"):
        jobs.update_status("j1", "DONE")
    with pytest.raises(StoreError, match="not found"):
        jobs.update_status("never-saved", "FAILED", error="x")
    assert rds.exists(keys.query_job("never-saved")) == 0


def test_job_is_gone_after_its_ttl(rds: redis.Redis) -> None:
    jobs = QueryJobStore(rds, ttl_s=0.3)
    jobs.save(QueryJob("short", "t1"))
    jobs.save(QueryJob("long", "t1"), ttl_s=30)
    assert jobs.get("short") is not None
    time.sleep(0.5)
    assert jobs.get("short") is None
    assert rds.exists(keys.query_job("short")) == 0
    assert jobs.get("long") is not None


def test_expire_now_or_later(rds: redis.Redis) -> None:
    jobs = QueryJobStore(rds)
    jobs.save(QueryJob("a", "t1"))
    jobs.save(QueryJob("b", "t1", status="FAILED", error="timeout"))
    assert jobs.expire("a") is True and jobs.get("a") is None
    assert jobs.expire("a") is False
    failed = jobs.get("b")
    assert failed is not None and failed.error == "timeout"
    assert jobs.expire("b", after_s=0.2) is True
    left = jobs.ttl_s("b")
    assert left is not None and left <= 0.2
    time.sleep(0.35)
    assert jobs.get("b") is None


def test_works_with_a_bytes_client(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)  # decode_responses=False
    try:
        jobs = QueryJobStore(client)
        saved = jobs.save(QueryJob("j1", "t1", data={"ok": True}))
        assert jobs.get("j1") == saved
        assert jobs.update_status("j1", "FAILED", error="bad sql").error == "bad sql"
    finally:
        client.close()


def test_a_job_survives_a_weaver_and_a_redis_restart_with_aof() -> None:
    """P0-03: the job lives in Redis, not the process; AOF keeps it and its TTL."""
    with LocalRedis(appendonly=True) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        saved = QueryJobStore(client, ttl_s=600).save(
            QueryJob("j1", "t1", data={"sql": "SELECT 1"}))
        QueryJobStore(client).update_status("j1", "RUNNING")
        client.close()
        server.kill()  # SIGKILL: appendfsync always, so what Redis acked is on disk
        server.start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        jobs = QueryJobStore(client)  # a new store, as after a Weaver restart
        again, left = jobs.get("j1"), jobs.ttl_s("j1")
        client.close()
    assert again is not None and again.status == "RUNNING" and again.data == saved.data
    assert again.created_at == saved.created_at
    assert left is not None and 500 < left <= 600
