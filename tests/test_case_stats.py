"""Case statistics for Vision: exact under concurrency, closed to Vision, outbox in the same tx."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import errors as pg_errors

from cdc.domain import casestats
from cdc.errors import ConfigError
from cdc.pipeline.contracts import Registry

TENANTS = ["acme", "globex", "initech", "umbrella"]
STATUSES = ["OPEN", "IN_PROGRESS", "ON_HOLD", "CLOSED"]
RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


def cdc(*args: str, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args], capture_output=True, text=True,
        env={**os.environ, "CDC_DATABASE_URL": dsn}, timeout=120,
    )


def truth(conn: psycopg.Connection[Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    q = "SELECT tenant_id, status, count(*) FROM core.core_case GROUP BY 1, 2"
    for t, s, n in conn.execute(q):
        out.setdefault(t, {})[s] = n
    return out


def view(conn: psycopg.Connection[Any]) -> dict[str, dict[str, int]]:
    rows = conn.execute(
        "SELECT tenant_id, total_cases, active_cases, by_status FROM vision.case_stats"
    )
    out = {}
    for t, total, active, by_status in rows:
        assert total == sum(by_status.values()) and active == by_status.get("IN_PROGRESS", 0)
        out[t] = by_status
    return out


def insert_cases(
    conn: psycopg.Connection[Any], tenant: str, status: str, n: int
) -> list[uuid.UUID]:
    rows = conn.execute(
        "INSERT INTO core.core_case (tenant_id, status) SELECT %s, %s FROM generate_series(1, %s)"
        " RETURNING id", (tenant, status, n),
    ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def vision_login(pg_dsn: str) -> Iterator[str]:
    """A LOGIN role that is a member of vision_reader, as Vision's service would be."""
    name = f"vision_app_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE vision_reader")
    yield pg_dsn.replace("postgresql://postgres@", f"postgresql://{name}@")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP ROLE {name}")


# --- the randomized concurrent workload -------------------------------------------------------

TOTAL_OPS = 10_000
WRITERS = 4


class Workload:
    """Shared state of the writer threads."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.done_ops = [0] * WRITERS
        self.kinds: dict[str, int] = {}
        self.ids: list[uuid.UUID] = []
        self.truncated = threading.Event()
        self.finished = threading.Event()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()

    def pick(self, rng: random.Random) -> uuid.UUID:
        n = len(self.ids)
        return self.ids[rng.randrange(max(0, n - 3000), n)] if n else uuid.uuid4()

    def count(self, kind: str) -> None:
        with self.lock:
            self.kinds[kind] = self.kinds.get(kind, 0) + 1


def one_op(w: Workload, conn: psycopg.Connection[Any], rng: random.Random) -> str:
    """Run one random case write in the open transaction; return its kind."""
    roll = rng.random()
    tenant, status = rng.choice(TENANTS), rng.choice(STATUSES)
    if roll < 0.35:
        w.ids.extend(insert_cases(conn, tenant, status, rng.choice([1, 1, 1, 3, 8])))
        return "insert"
    if roll < 0.60:
        conn.execute("UPDATE core.core_case SET status = %s, updated_at = now() WHERE id = %s",
                     (status, w.pick(rng)))
        return "status_change"
    if roll < 0.72:
        conn.execute("UPDATE core.core_case SET tenant_id = %s WHERE id = %s",
                     (tenant, w.pick(rng)))
        return "tenant_move"
    if roll < 0.78:
        conn.execute("UPDATE core.core_case SET tenant_id = %s, status = %s WHERE id = %s",
                     (tenant, status, w.pick(rng)))
        return "tenant_and_status"
    if roll < 0.82:
        conn.execute("UPDATE core.core_case SET updated_at = now() WHERE id = %s", (w.pick(rng),))
        return "touch"
    if roll < 0.86:
        ids = sorted({w.pick(rng) for _ in range(4)})
        conn.execute("UPDATE core.core_case SET status = %s WHERE id = ANY(%s)", (status, ids))
        return "bulk_status"
    if roll < 0.90:  # an upsert: inserts a new case or changes an existing one
        case_id = w.pick(rng) if rng.random() < 0.5 else uuid.uuid4()
        conn.execute(
            "INSERT INTO core.core_case (id, tenant_id, status) VALUES (%s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET status = excluded.status", (case_id, tenant, status),
        )
        return "upsert"
    conn.execute("DELETE FROM core.core_case WHERE id = %s", (w.pick(rng),))
    return "delete"


def writer(w: Workload, index: int) -> None:
    rng = random.Random(1000 + index)
    with psycopg.connect(w.dsn) as conn:
        conn.execute("SET deadlock_timeout = '20ms'")
        conn.commit()
        while sum(w.done_ops) < TOTAL_OPS:
            try:
                if index == 0 and not w.truncated.is_set() and w.done_ops[0] > TOTAL_OPS // 8:
                    insert_cases(conn, "acme", "OPEN", 2)
                    conn.execute("TRUNCATE core.core_case")
                    insert_cases(conn, "acme", "IN_PROGRESS", 3)
                    conn.commit()
                    w.truncated.set()
                    w.count("truncate")
                    w.done_ops[index] += 3
                    continue
                kinds = [one_op(w, conn, rng) for _ in range(rng.randint(1, 3))]
                if rng.random() < 0.05:
                    conn.rollback()
                    kinds = ["rolled_back"] * len(kinds)
                else:
                    conn.commit()
                for kind in kinds:
                    w.count(kind)
                w.done_ops[index] += len(kinds)
            except RETRYABLE:
                conn.rollback()
                w.count("deadlock_retry")
            except BaseException as e:  # reported by the test thread
                w.errors.append(e)
                return


def maintainer(w: Workload, findings: list[str]) -> None:
    """Fold, rebuild and verify over and over while the writers run."""
    with psycopg.connect(w.dsn, autocommit=True) as conn:
        rounds = 0
        while not w.finished.is_set():
            row = conn.execute("SELECT corrected FROM core.rebuild_case_stats()").fetchone()
            corrected = row[0] if row else None
            if corrected:
                findings.append(f"rebuild corrected {corrected} counters while writers ran")
            conn.execute("SELECT core.fold_case_stats()")
            report = casestats.verify(w.dsn)
            if not report.ok:
                findings.append(f"verify under one snapshot found {report.mismatches}")
            rounds += 1
            time.sleep(0.02)
        findings.append(f"rounds={rounds}")


def test_randomized_concurrent_workload_keeps_the_view_exact(pg_dsn: str) -> None:
    w = Workload(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for t in TENANTS:
            w.ids.extend(insert_cases(conn, t, "OPEN", 50))
    findings: list[str] = []
    threads = [threading.Thread(target=writer, args=(w, i)) for i in range(WRITERS)]
    maint = threading.Thread(target=maintainer, args=(w, findings))
    for t in [*threads, maint]:
        t.start()
    for t in threads:
        t.join(120)
    w.finished.set()
    maint.join(60)
    print(f"ops per writer {w.done_ops}, kinds {w.kinds}, maintenance {findings[-1:]}")
    assert not w.errors, w.errors
    assert sum(w.done_ops) >= TOTAL_OPS, (w.done_ops, w.kinds)
    assert all(n > 0 for n in w.done_ops), w.done_ops
    assert w.truncated.is_set()
    for kind in ("insert", "status_change", "tenant_move", "delete", "upsert", "truncate"):
        assert w.kinds.get(kind, 0) > 0, w.kinds
    assert [f for f in findings if not f.startswith("rounds=")] == []
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        expected = truth(conn)
        assert sum(map(len, expected.values())) >= 8  # the check compares something
        assert view(conn) == expected  # exact: off by one fails
        assert conn.execute("SELECT * FROM core.rebuild_case_stats()").fetchone()[0] == 0
        assert view(conn) == expected


def test_writers_on_one_tenant_do_not_wait_for_each_other(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as a, psycopg.connect(pg_dsn) as b:
        insert_cases(a, "acme", "IN_PROGRESS", 1)  # a holds its counter row, uncommitted
        b.execute("SET lock_timeout = '500ms'")
        insert_cases(b, "acme", "IN_PROGRESS", 1)  # would time out on a single hot row
        b.execute("UPDATE core.core_case SET status = 'CLOSED' WHERE tenant_id = 'acme'")
        b.commit()
        a.commit()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert view(conn) == truth(conn) == {"acme": {"IN_PROGRESS": 1, "CLOSED": 1}}
        shards = conn.execute("SELECT count(DISTINCT shard) FROM core.case_stats_shard").fetchone()
        assert shards == (2,)


# --- Vision's roles ----------------------------------------------------------------------------


def test_vision_reader_gets_42501_on_core_tables(pg_dsn: str, vision_login: str) -> None:
    for dsn, setup in ((vision_login, None), (pg_dsn, "SET ROLE vision_reader"),
                       (pg_dsn, "SET ROLE vision_admin")):
        with psycopg.connect(dsn, autocommit=True) as conn:
            if setup:
                conn.execute(setup)
            for query in ("SELECT * FROM core.core_case", "SELECT * FROM core.case_stats_shard",
                          "SELECT * FROM public.event_outbox",
                          "SELECT * FROM core.rebuild_case_stats()",
                          "INSERT INTO core.core_case (tenant_id, status) VALUES ('x', 'OPEN')"):
                with pytest.raises(pg_errors.InsufficientPrivilege) as exc:
                    conn.execute(query)
                assert exc.value.sqlstate == "42501", query
            conn.execute("SELECT * FROM vision.case_stats").fetchall()  # the one thing allowed


def test_vision_reader_sees_only_its_bound_tenants(pg_dsn: str, vision_login: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        insert_cases(conn, "acme", "IN_PROGRESS", 3)
        insert_cases(conn, "acme", "CLOSED", 2)
        insert_cases(conn, "globex", "OPEN", 4)
    login = vision_login.split("//")[1].split("@")[0]
    casestats.bind(pg_dsn, login, "acme")
    q = "SELECT tenant_id, total_cases, active_cases FROM vision.case_stats ORDER BY 1"
    with psycopg.connect(vision_login, autocommit=True) as conn:
        assert conn.execute(q).fetchall() == [("acme", 5, 3)]  # unset: its bound tenants
        conn.execute("SET app.tenant_id = 'acme'")
        assert conn.execute(q).fetchall() == [("acme", 5, 3)]
        sneaky = q.replace("ORDER BY", "WHERE tenant_id = 'globex' ORDER BY")
        assert conn.execute(sneaky).fetchall() == []
        conn.execute("SET app.tenant_id = 'globex'")  # not bound: nothing (see 007)
        assert conn.execute(q).fetchall() == []
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET ROLE vision_admin")
        assert conn.execute(q).fetchall() == [("acme", 5, 3), ("globex", 4, 0)]
        conn.execute("SET ROLE vision_reader")  # the group role itself is bound to nothing
        assert conn.execute(q).fetchall() == []


def test_core_writer_role_is_enough_to_write_cases(pg_dsn: str) -> None:
    name = f"core_app_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE core_writer")
    try:
        app = pg_dsn.replace("postgresql://postgres@", f"postgresql://{name}@")
        with psycopg.connect(app, autocommit=True) as conn:
            ids = insert_cases(conn, "acme", "OPEN", 3)
            conn.execute("UPDATE core.core_case SET status = 'IN_PROGRESS' WHERE id = %s",
                         (ids[0],))
            conn.execute("UPDATE core.core_case SET tenant_id = 'globex' WHERE id = %s", (ids[1],))
            conn.execute("DELETE FROM core.core_case WHERE id = %s", (ids[2],))
            with pytest.raises(pg_errors.InsufficientPrivilege):
                conn.execute("SELECT core.rebuild_case_stats()")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            assert view(conn) == truth(conn) == {"acme": {"IN_PROGRESS": 1}, "globex": {"OPEN": 1}}
            assert [r[3] for r in outbox(conn)].count("CASE_CREATED") == 3
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {name}")


# --- TRUNCATE, rebuild ---------------------------------------------------------------------------


def test_truncate_zeroes_counters_in_its_own_transaction(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        insert_cases(conn, "acme", "OPEN", 5)
        conn.commit()
        insert_cases(conn, "globex", "OPEN", 2)
        conn.execute("TRUNCATE core.core_case")
        insert_cases(conn, "globex", "IN_PROGRESS", 1)
        conn.commit()
        assert view(conn) == truth(conn) == {"globex": {"IN_PROGRESS": 1}}


def test_rebuild_repairs_drift_and_folds_shards(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        insert_cases(conn, "acme", "OPEN", 4)
        with psycopg.connect(pg_dsn, autocommit=True) as other:  # a second shard
            insert_cases(other, "acme", "OPEN", 3)
        conn.execute("ALTER TABLE core.core_case DISABLE TRIGGER case_stats_insert")
        insert_cases(conn, "globex", "OPEN", 2)  # invisible to the counters: drift
        conn.execute("ALTER TABLE core.core_case ENABLE TRIGGER case_stats_insert")
        conn.execute("UPDATE core.case_stats_shard SET n = n + 5 WHERE tenant_id = 'acme'"
                     " AND shard = pg_backend_pid()")
        report = casestats.verify(pg_dsn)
        assert [m.tenant_id for m in report.mismatches] == ["acme", "globex"]
        assert report.mismatches[0].view == {"OPEN": 12}
        assert report.mismatches[0].actual == {"OPEN": 7}

        done = casestats.rebuild(pg_dsn)
        assert (done.corrected, done.folded) == (2, 2)
        assert casestats.verify(pg_dsn).ok
        rows = conn.execute("SELECT tenant_id, status, shard, n FROM core.case_stats_shard"
                            " ORDER BY 1").fetchall()
        assert rows == [("acme", "OPEN", 0, 7), ("globex", "OPEN", 0, 2)]
        assert casestats.rebuild(pg_dsn) == casestats.Rebuilt(corrected=0, folded=0)


def test_rebuild_refuses_repeatable_read(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(pg_errors.ActiveSqlTransaction, match="READ COMMITTED"):
            conn.execute("SELECT core.rebuild_case_stats()")


def test_verify_needs_a_user_that_sees_every_tenant(pg_dsn: str, vision_login: str) -> None:
    with pytest.raises(ConfigError, match="vision_admin"):
        casestats.verify(vision_login)


# --- domain events through the outbox ------------------------------------------------------------


def outbox(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT tenant_id, aggregate_type, aggregate_id, event_type, payload, status,"
        " xmin::text = pg_current_xact_id()::text FROM public.event_outbox"
        " ORDER BY created_at, event_type <> 'CASE_CREATED', id"
    ).fetchall()


def test_case_events_go_to_the_outbox_in_the_same_transaction(pg_dsn: str) -> None:
    registry = Registry(unknown="dead_letter")
    with psycopg.connect(pg_dsn) as conn, psycopg.connect(pg_dsn, autocommit=True) as other:
        (case_id,) = insert_cases(conn, "acme", "OPEN", 1)
        conn.execute("UPDATE core.core_case SET status = 'IN_PROGRESS' WHERE id = %s", (case_id,))
        conn.execute("UPDATE core.core_case SET updated_at = now() WHERE id = %s", (case_id,))
        conn.execute("UPDATE core.core_case SET tenant_id = 'globex' WHERE id = %s", (case_id,))
        rows = outbox(conn)
        assert [r[3] for r in rows] == ["CASE_CREATED", "CASE_STATUS_CHANGED"]  # touch/move: none
        assert all(r[:3] == ("acme", "case", str(case_id)) and r[5] == "PENDING" for r in rows)
        assert all(r[6] for r in rows)  # written by this very transaction
        assert rows[0][4].pop("at") < rows[1][4].pop("at")  # the trigger's clock (sql/008)
        assert rows[0][4] == {"case_id": str(case_id), "status": "OPEN"}
        assert rows[1][4] == {"case_id": str(case_id), "from_status": "OPEN",
                              "to_status": "IN_PROGRESS"}
        for r in rows:
            registry.validate(r[3], r[4])
        assert outbox(other) == []  # not visible before commit
        conn.commit()
        assert len(outbox(other)) == 2


def test_rolled_back_case_writes_leave_no_events(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        (case_id,) = insert_cases(conn, "acme", "OPEN", 1)
        conn.commit()
        conn.execute("UPDATE core.core_case SET status = 'CLOSED' WHERE id = %s", (case_id,))
        insert_cases(conn, "acme", "OPEN", 2)
        assert len(outbox(conn)) == 4
        conn.rollback()
        assert [r[3] for r in outbox(conn)] == ["CASE_CREATED"]
        assert view(conn) == truth(conn) == {"acme": {"OPEN": 1}}


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_case_stats_verify_and_rebuild(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        insert_cases(conn, "acme", "IN_PROGRESS", 3)
        insert_cases(conn, "acme", "CLOSED", 4)
        insert_cases(conn, "globex", "OPEN", 1)

    proc = cdc("case-stats", "--tenant", "acme", dsn=pg_dsn)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout) == {"total_cases": 7, "active_cases": 3}
    proc = cdc("case-stats", "--tenant", "nobody", dsn=pg_dsn)
    assert orjson.loads(proc.stdout) == {"total_cases": 0, "active_cases": 0}

    proc = cdc("stats", "verify", dsn=pg_dsn)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 tenant(s), 8 case(s)" in proc.stdout

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE core.case_stats_shard SET n = n - 1 WHERE tenant_id = 'globex'")
    proc = cdc("stats", "verify", "--json", dsn=pg_dsn)
    assert proc.returncode == 1
    report = orjson.loads(proc.stdout)
    assert report["ok"] is False
    assert report["mismatches"] == [{"tenant_id": "globex", "view": {}, "count": {"OPEN": 1}}]
    proc = cdc("stats", "verify", dsn=pg_dsn)
    assert proc.returncode == 1 and "tenant globex" in proc.stdout and "acme" not in proc.stdout

    proc = cdc("stats", "rebuild", "--json", dsn=pg_dsn)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["corrected"] == 1
    assert cdc("stats", "verify", dsn=pg_dsn).returncode == 0


def test_cli_without_the_migration_names_the_fix(pg_server: Any) -> None:
    name = f"t_nostats_{os.getpid()}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    try:
        proc = cdc("stats", "rebuild", dsn=f"postgresql://postgres@127.0.0.1:{pg_server.port}/{name}")
        assert proc.returncode == 1
        assert "cdc migrate" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
