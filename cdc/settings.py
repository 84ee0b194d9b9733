"""Settings (environment variables prefixed CDC_), built once in `main` and passed down.

Built means checked: CDC_ROUTES and CDC_CONSUMER_GROUPS are parsed here (`router`,
`groups`), so a bad value stops `cdc` before anything touches PostgreSQL or Redis. Secrets
stay SecretStr (`repr` shows `**********`) until a connection is made (cdc.pg.db.connect,
cdc.streams.redisconn).
"""

from __future__ import annotations

from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import Field, PrivateAttr, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cdc.errors import ConfigError
from cdc.pg import ident
from cdc.pipeline.route import Router

DEFAULT_ROUTES = "WATCH_*=axiom:watches,WORKER_*=axiom:workers,*=axiom:core:events"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# What `cdc --help` may print of the secret settings' defaults (they hold no password).
SHOWN_DEFAULTS = {"database_url": DEFAULT_DATABASE_URL, "redis_url": DEFAULT_REDIS_URL}
SQL_DIR = Path(__file__).resolve().parent / "pg" / "sql"  # package data; sql/ links here


class Settings(BaseSettings):
    """Every knob of axiom-cdc; read from the environment only when instantiated."""

    model_config = SettingsConfigDict(env_prefix="CDC_", extra="ignore")

    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    redis_url: SecretStr = SecretStr(DEFAULT_REDIS_URL)
    slot: str = Field("axiom_outbox", pattern=r"^[a-z0-9_]{1,63}$")
    outbox_table: str = Field("public.event_outbox", pattern=ident.TABLE_PATTERN)
    metrics_port: int = Field(0, ge=0, le=65535)  # 0 = no metrics endpoint
    metrics_addr: str = "127.0.0.1"  # the image sets 0.0.0.0
    health_stuck_s: float = Field(60.0, gt=0)  # /healthz fails when the loop is still longer
    mark_published: bool = True
    batch_size: int = Field(500, ge=1)
    linger_ms: float = Field(0.0, ge=0)
    max_in_flight: int = Field(4, ge=1)
    max_retry: int = Field(3, ge=1)
    max_event_bytes: int = Field(1_048_576, ge=1)
    # A last-resort memory cap (XADD MAXLEN ~): it discards oldest entries, acked or not, so it
    # sits well above `cdc trim --cap` (1M), whose alarm fires first. 0 = no cap.
    stream_maxlen: int = Field(10_000_000, ge=0)
    # Redis replicas that must hold a batch (WAIT) before its LSN is confirmed; 0 = none.
    redis_min_replicas: int = Field(0, ge=0)
    redis_wait_timeout_ms: int = Field(1000, ge=1)
    routes: str = DEFAULT_ROUTES
    consumer_groups: str = "synapse_group,watch_cep_group"
    unknown_events: str = Field("pass", pattern=r"^(pass|dead_letter)$")
    backfill: bool = True
    standby_max_backoff_s: float = Field(5.0, gt=0)
    status_interval_s: float = Field(1.0, gt=0)
    metrics_sample_s: float = Field(5.0, gt=0)
    migrations_dir: Path = SQL_DIR
    weaver_secret_key: SecretStr | None = None
    log_format: str = Field("text", pattern=r"^(text|json)$")

    _router: Router = PrivateAttr()
    _groups: tuple[str, tuple[str, ...]] = PrivateAttr()  # (the text parsed, its groups)

    @model_validator(mode="after")
    def _parse(self) -> Settings:
        """Parse CDC_ROUTES and CDC_CONSUMER_GROUPS; a bad one raises ConfigError naming it."""
        self._router = Router(self.routes)
        self._groups = (self.consumer_groups, parse_groups(self.consumer_groups))
        return self

    @property
    def router(self) -> Router:
        """Return the parsed CDC_ROUTES (parsed again only after `model_copy` changed it)."""
        if self._router.rules != self.routes:
            self._router = Router(self.routes)
        return self._router

    @property
    def groups(self) -> tuple[str, ...]:
        """Return the parsed CDC_CONSUMER_GROUPS."""
        if self._groups[0] != self.consumer_groups:
            self._groups = (self.consumer_groups, parse_groups(self.consumer_groups))
        return self._groups[1]

    def group_names(self) -> list[str]:
        """Return `groups` as a list (kept for callers from before `groups`)."""
        return list(self.groups)


def parse_groups(value: str) -> tuple[str, ...]:
    """Return the groups of a CDC_CONSUMER_GROUPS value ("a,b"; "" for none), or raise."""
    if not value.strip():
        return ()
    names = tuple(g.strip() for g in value.split(","))
    for name in names:
        if not name or any(c.isspace() for c in name):
            raise ConfigError(
                f"CDC_CONSUMER_GROUPS: {value!r} has an empty or blank-containing group name",
                hint="a comma-separated list of names, e.g. CDC_CONSUMER_GROUPS="
                "synapse_group,watch_cep_group",
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"CDC_CONSUMER_GROUPS: {value!r} names a group twice",
                          hint="name each consumer group once")
    return names


def redact(dsn: str) -> str:
    """Return `dsn` with any password replaced, safe to log."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable DSN>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)
