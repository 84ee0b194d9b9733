"""Health endpoints on the metrics port, the listen address, and gauges that stay true."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import psycopg
import pytest
from pydantic import SecretStr

from cdc.errors import ConfigError
from cdc.observe import health
from cdc.observe.metrics import Metrics
from cdc.observe.sampler import Sampler
from cdc.pg import slots
from cdc.settings import Settings
from devkit.localservers import LocalRedis, free_port
from tests.relayutil import cdc, http_get, insert_cases, metric, relay, slot_lag, wait_for


def test_active_and_standby_answer_probes_and_both_export_the_sampled_gauges(
    settings: Settings, tmp_path: object
) -> None:
    insert_cases(settings.database_url.get_secret_value(), 5)
    active, standby = free_port(), free_port()
    opts = {"CDC_METRICS_SAMPLE_S": "0.2"}
    with relay(settings, CDC_METRICS_PORT=str(active), **opts):
        wait_for(lambda: http_get(active, "/readyz")[0] == 200, what="active /readyz 200")
        with relay(settings, CDC_METRICS_PORT=str(standby), **opts):
            wait_for(lambda: http_get(standby, "/readyz")[0] == 503 and "standing by" in
                     http_get(standby, "/readyz")[1], what="standby /readyz says standing by")
            assert http_get(standby, "/healthz") == (200, "ok\n")
            assert http_get(active, "/healthz") == (200, "ok\n")
            assert http_get(active, "/readyz") == (200, f"streaming slot {settings.slot}\n")
            for port in (active, standby):
                assert http_get(port, "/")[0] == 404 and http_get(port, "/metricsx")[0] == 404
            assert metric(active, "core_relay_streaming") == 1
            assert metric(standby, "core_relay_streaming") == 0
            wait_for(lambda: metric(standby, "core_relay_slot_active") == 1, what="slot active")
            for name in ("core_relay_slot_lag_bytes", "core_event_outbox_pending",
                         "core_event_outbox_pending_age_seconds", "core_dlq_depth"):
                assert metric(standby, name) is not None, name  # exported by the standby too
    # Both stopped: nothing answers (Prometheus sees `up == 0`; alerts.yml covers it).
    assert http_get(active, "/healthz")[0] == 0


def test_healthz_fails_when_the_loop_stops_beating() -> None:
    metrics = Metrics()
    probes = health.Health(metrics, slot="s", stuck_after=30)
    assert probes.healthz()[0] == 200
    metrics.beat.at -= 31
    code, text = probes.healthz()
    assert code == 503 and "stuck" in text
    metrics.up.set(0)  # every session start/end beats
    assert probes.healthz()[0] == 200 and probes.readyz()[0] == 503


def test_readyz_names_an_unacknowledged_redis_reset_while_streaming() -> None:
    metrics = Metrics()
    probes = health.Health(metrics, slot="s", stuck_after=30)
    metrics.up.set(1)
    assert probes.readyz() == (200, "streaming slot s\n")
    metrics.redis_reset.set(1)  # it keeps publishing (architecture.md): ready, and says so
    code, text = probes.readyz()
    assert code == 200 and "Redis lost state" in text and "cdc status" in text
    metrics.redis_reset.set(0)
    assert probes.readyz() == (200, "streaming slot s\n")


def test_metrics_addr_defaults_to_loopback_and_a_busy_port_is_one_line(
    settings: Settings,
) -> None:
    assert Settings().metrics_addr == "127.0.0.1"
    server = health.serve(health.Health(Metrics(), slot="s", stuck_after=5), addr="127.0.0.1",
                          port=0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with pytest.raises(ConfigError, match="Address already in use"):
            health.serve(health.Health(Metrics(), slot="s", stuck_after=5), addr="127.0.0.1",
                         port=int(port))
        busy = cdc(settings, "run", CDC_METRICS_PORT=str(port), timeout=30)
        assert busy.returncode == 2, busy.stderr
        assert busy.stderr.count("\n") == 1 and "Address already in use" in busy.stderr
        assert "CDC_METRICS_PORT" in busy.stderr
    finally:
        server.shutdown()
        server.server_close()
    bad_addr = cdc(settings, "run", CDC_METRICS_PORT=str(free_port()),
                   CDC_METRICS_ADDR="192.0.2.1", timeout=30)
    assert bad_addr.returncode == 2 and bad_addr.stderr.count("\n") == 1, bad_addr.stderr
    assert "cannot listen on 192.0.2.1" in bad_addr.stderr
    bad_port = cdc(settings, "run", CDC_METRICS_PORT="70000", timeout=30)
    assert bad_port.returncode == 2 and bad_port.stderr.count("\n") == 1, bad_port.stderr
    assert "CDC_METRICS_PORT" in bad_port.stderr


def test_healthcheck_command_probes_the_relay(settings: Settings) -> None:
    port = free_port()
    down = cdc(settings, "healthcheck", CDC_METRICS_PORT=str(port), timeout=30)
    assert down.returncode == 1
    with relay(settings, CDC_METRICS_PORT=str(port)):
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, what="relay ready")
        up = cdc(settings, "healthcheck", CDC_METRICS_PORT=str(port), timeout=30)
        ready = cdc(settings, "healthcheck", "--ready", CDC_METRICS_PORT=str(port), timeout=30)
    assert (up.returncode, up.stdout) == (0, "ok\n")
    assert ready.returncode == 0 and "streaming" in ready.stdout


def test_sampler_keeps_postgres_gauges_true_while_redis_is_down(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = settings.database_url.get_secret_value()
    insert_cases(dsn, 7)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE event_outbox SET created_at = now() - interval '30 seconds'")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    broken = settings.model_copy(update={
        "redis_url": SecretStr(f"redis://127.0.0.1:{dead.getsockname()[1]}/0")
    })
    metrics = Metrics()
    sampler = Sampler(broken, metrics, threading.Event(), interval=60)
    with caplog.at_level(logging.INFO, logger="cdc.observe.sampler"):
        sampler.sample()
        sampler.sample()
    dead.close()
    assert metrics.registry.get_sample_value(
        "core_relay_sampler_errors_total", {"source": "redis"}) == 2
    assert metrics.registry.get_sample_value(
        "core_relay_sampler_errors_total", {"source": "postgres"}) is None
    assert metrics.registry.get_sample_value("core_event_outbox_pending") == 7
    age = metrics.registry.get_sample_value("core_event_outbox_pending_age_seconds")
    assert age is not None and 29 < age < 120
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot sample redis" in warnings[0].getMessage()
    Sampler(settings, metrics, threading.Event()).sample()  # Redis back: no new error
    assert metrics.registry.get_sample_value(
        "core_relay_sampler_errors_total", {"source": "redis"}) == 2


def test_sampler_keeps_slot_lag_and_pending_true_while_redis_is_paused(settings: Settings) -> None:
    """The issue's case: Redis SIGSTOPped (not refusing: every call waits for its timeout)."""
    dsn = settings.database_url.get_secret_value()
    slots.create(settings)
    insert_cases(dsn, 300)  # WAL the slot has not confirmed: its lag grows past 0
    paused = LocalRedis()
    paused.start()
    assert paused.proc is not None
    os.kill(paused.proc.pid, signal.SIGSTOP)
    try:
        metrics = Metrics()
        broken = settings.model_copy(update={"redis_url": SecretStr(paused.url)})
        before = slot_lag(dsn, settings.slot)
        started = time.monotonic()
        Sampler(broken, metrics, threading.Event(), interval=60).sample()
        took = time.monotonic() - started
        after = slot_lag(dsn, settings.slot)
    finally:
        os.kill(paused.proc.pid, signal.SIGCONT)
        paused.stop()
    lag = metrics.registry.get_sample_value("core_relay_slot_lag_bytes")
    assert lag is not None and 0 < before <= lag <= after, (before, lag, after)
    assert metrics.registry.get_sample_value("core_event_outbox_pending") == 300
    assert metrics.registry.get_sample_value(
        "core_relay_sampler_errors_total", {"source": "redis"}) == 1
    assert metrics.registry.get_sample_value(
        "core_relay_sampler_errors_total", {"source": "postgres"}) is None
    assert took < 10, f"a paused Redis held the sample {took:.1f} s"
