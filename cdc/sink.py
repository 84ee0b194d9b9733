"""The Redis side: deduplicated XADD batches (lua/publish.lua) sent pipelined on one connection.

A batch travels as one MessagePack argument per stream (luascripts.pack);
commands are written without waiting and replies read in order, so several batches are
in flight while the relay keeps decoding. Each command names the last dedup key the
previous command for its stream carried: the script refuses the batch unless that one
landed, so an error reply can never be followed by a batch that moves the mark past it.
"""

from __future__ import annotations

import select
from collections.abc import Iterable
from typing import Any

import redis
from redis.connection import ConnectionPool

from cdc import keys, luascripts
from cdc.redisconn import bad_url, translate

ENTRY_FIELDS = (
    "event_id", "event_type", "aggregate_type", "aggregate_id", "tenant_id",
    "payload", "idempotency_key", "created_at", "commit_lsn",
)
# A traced event's entry carries these two more (cdc/tracing.py); an untraced one stops at
# ENTRY_FIELDS: publish.lua writes as many fields as the entry has values.
STREAM_FIELDS = (*ENTRY_FIELDS, "traceparent", "tracestate")
DLQ_FIELDS = (
    *ENTRY_FIELDS, "error", "original_stream", "payload_bytes", "payload_truncated"
)
# Per field list: its packed names and how many of its fields every entry has.
_NAMES: dict[tuple[str, ...], tuple[bytes, int]] = {
    ENTRY_FIELDS: (luascripts.pack(ENTRY_FIELDS), len(ENTRY_FIELDS)),
    STREAM_FIELDS: (luascripts.pack(STREAM_FIELDS), len(ENTRY_FIELDS)),
    DLQ_FIELDS: (luascripts.pack(DLQ_FIELDS), len(DLQ_FIELDS)),
}
PUBLISH_LUA = luascripts.source("publish")


class RedisSink:
    """Publish batches of entries to streams, atomically deduplicated per stream."""

    def __init__(self, url: str, *, maxlen: int = 0, timeout: float = 5.0) -> None:
        try:
            self._pool = ConnectionPool.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        except ValueError:  # the message would echo the URL, password included
            raise bad_url() from None
        self._maxlen = maxlen
        self._conn: Any = None
        self._sha = ""
        self._last: dict[str, str] = {}  # stream -> last dedup key sent this connection

    def connect(self) -> None:
        """Open the connection and load the publish script."""
        try:
            self._conn = self._pool.make_connection()
            self._conn.connect()
            self._last.clear()
            self._conn.send_command("SCRIPT", "LOAD", PUBLISH_LUA)
            self._sha = self._conn.read_response().decode()
        except (redis.RedisError, OSError) as e:
            self.close()
            raise translate(e, "connect") from None

    def instance_token(self, fresh: str) -> str:
        """Return the Redis instance token, writing `fresh` first if Redis has none."""
        try:
            self._conn.send_command("SET", keys.REDIS_INSTANCE, fresh, "NX", "GET")
            old = self._conn.read_response()
        except (redis.RedisError, OSError) as e:
            raise translate(e, "SET") from None
        return fresh if old is None else bytes(old).decode()

    def prime(self, streams: Iterable[str]) -> None:
        """Take each stream's mark as the key its first batch names (publish.lua's ARGV[4]).

        So a Redis emptied after this session started is refused (CDCGAP) at its first batch
        on any stream that had a mark, not only at the second.
        """
        try:
            for stream in streams:
                self._conn.send_command("GET", keys.hwm(stream))
                mark = self._conn.read_response()
                if mark is not None:
                    self._last[stream] = bytes(mark).decode()
        except (redis.RedisError, OSError) as e:
            raise translate(e, "GET") from None

    def ensure_groups(self, streams: Iterable[str], groups: Iterable[str]) -> None:
        """Create each consumer group on each stream (MKSTREAM), ignoring existing ones."""
        group_list = list(groups)
        for stream in streams:
            for group in group_list:
                try:
                    self._conn.send_command("XGROUP", "CREATE", stream, group, "$", "MKSTREAM")
                    self._conn.read_response()
                except redis.ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise translate(e, "XGROUP CREATE") from None
                except (redis.RedisError, OSError) as e:
                    raise translate(e, "XGROUP CREATE") from None

    def send(self, by_stream: dict[str, list[list[str]]], names: dict[str, tuple[str, ...]]) -> int:
        """Write one EVALSHA per stream without waiting; return how many replies to read.

        Each entry is [dedup key, *values]; values follow `names[stream]` (default
        STREAM_FIELDS: ENTRY_FIELDS, then the trace context when the event has one).
        """
        last = self._last
        cmds = []
        for stream, entries in by_stream.items():
            packed, required = _NAMES[names.get(stream, STREAM_FIELDS)]
            cmds.append((
                "EVALSHA", self._sha, 2, stream, keys.hwm(stream), self._maxlen,
                packed, luascripts.pack(entries), last.get(stream, ""), required,
            ))
            last[stream] = entries[-1][0]
        try:
            self._conn.send_packed_command(self._conn.pack_commands(cmds), check_health=False)
        except (redis.RedisError, OSError) as e:
            raise translate(e, "XADD") from None
        return len(cmds)

    def wait(self, other_fd: int, timeout: float) -> bool:
        """Wait until a reply or `other_fd` is readable; return True when a reply is ready."""
        try:
            if self._conn.can_read(timeout=0):
                return True
            sock = self._conn._sock  # redis-py keeps its socket here; we only select on it
            if sock is None:
                raise redis.ConnectionError("connection closed")
            readable, _, _ = select.select([sock, other_fd], [], [], timeout)
        except (redis.RedisError, OSError, ValueError) as e:  # Redis went away while we waited
            raise translate(e, "XADD") from None
        return sock in readable

    def read_replies(self, n: int) -> int:
        """Read `n` replies in order; return how many entries were added (not deduplicated)."""
        added = 0
        try:
            for _ in range(n):
                added += int(self._conn.read_response())
        except (redis.RedisError, OSError) as e:
            raise translate(e, "XADD") from None
        return added

    def close(self) -> None:
        """Drop the connection."""
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
        self._pool.disconnect()
