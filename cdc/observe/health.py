"""The relay's HTTP endpoint: /metrics, /healthz (alive, loop not stuck), /readyz (streaming).

A standby relay is healthy but not ready: `/readyz` answers 503 "standing by". Every other
path is 404. The loop's liveness is `Metrics.beat`: a streaming session beats every status
interval, a standing-by one at every retry.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cdc.errors import ConfigError
from cdc.observe.metrics import Metrics


class Health:
    """Answer the probes from the relay's metrics."""

    def __init__(self, metrics: Metrics, *, slot: str, stuck_after: float) -> None:
        self.metrics = metrics
        self.slot = slot
        self.stuck_after = stuck_after

    def healthz(self) -> tuple[int, str]:
        """Return 200 while the loop keeps beating, else 503."""
        age = self.metrics.beat.age()
        if age > self.stuck_after:
            return 503, f"stuck: the relay loop has not moved for {age:.0f} s\n"
        return 200, "ok\n"

    def readyz(self) -> tuple[int, str]:
        """Return 200 while streaming the slot, else 503 saying why."""
        if self.metrics.up.last == 1:
            if self.metrics.redis_reset.last == 1:  # it streams on: ready, but not silently
                return 200, (f"streaming slot {self.slot}; Redis lost state it had"
                             " acknowledged (core_relay_redis_reset 1): `cdc status` names"
                             " the recovery\n")
            return 200, f"streaming slot {self.slot}\n"
        if self.metrics.slot_active.last == 1:
            return 503, f"standing by: slot {self.slot} is held by another relay\n"
        return 503, f"not streaming slot {self.slot} (starting or retrying)\n"


def serve(health: Health, *, addr: str, port: int) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz on addr:port in a daemon thread."""
    registry = health.metrics.registry

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                code, body, ctype = 200, generate_latest(registry), CONTENT_TYPE_LATEST
            elif path in ("/healthz", "/readyz"):
                code, text = health.healthz() if path == "/healthz" else health.readyz()
                body, ctype = text.encode(), "text/plain; charset=utf-8"
            else:
                code, body, ctype = 404, b"not found: try /metrics, /healthz, /readyz\n", (
                    "text/plain; charset=utf-8")
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the relay's log

    try:
        server = ThreadingHTTPServer((addr, port), Handler)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {addr}:{port} (CDC_METRICS_ADDR, CDC_METRICS_PORT):"
            f" {e.strerror or e}",
            hint="choose a free port and an address of this host",
        ) from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="cdc-http", daemon=True).start()
    return server
