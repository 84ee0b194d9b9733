"""The Redis side: deduplicated XADD batches (lua/publish.lua) sent pipelined, one connection
per Redis node.

A batch travels as one MessagePack argument per stream (luascripts.pack); commands are
written without waiting and replies read in order, so several batches are in flight while
the relay keeps decoding. Each command names the last dedup key the previous command for
its stream carried: the script refuses the batch unless that one landed, so an error reply
can never be followed by a batch that moves the mark past it.

On a Redis Cluster (detected with INFO cluster) each stream and its mark share a hash slot
(keys.hwm), so each stream's commands go to the master owning it, pipelined on that node's
connection; a MOVED or ASK reply, or a master failing over, ends the session like any
Redis error, and the next one starts from a fresh slot map. With `min_replicas` > 0 every
node written is sent `WAIT min_replicas timeout` after the batch's commands, and a batch
that fewer replicas acknowledged is not acknowledged.
"""

from __future__ import annotations

import select
from collections.abc import Iterable
from typing import Any

import redis
from pydantic import SecretStr
from redis.cluster import RedisCluster

from cdc.errors import ConfigError, SinkError
from cdc.streams import keys, luascripts
from cdc.streams.entries import DLQ_FIELDS, ENTRY_FIELDS, STREAM_FIELDS
from cdc.streams.groups import is_busygroup
from cdc.streams.redisconn import cluster_client, is_cluster, pool, redis_errors, translate

# Per field list: its packed names and how many of its fields every entry has.
_NAMES: dict[tuple[str, ...], tuple[bytes, int]] = {
    STREAM_FIELDS: (luascripts.pack(STREAM_FIELDS), len(ENTRY_FIELDS)),
    DLQ_FIELDS: (luascripts.pack(DLQ_FIELDS), len(DLQ_FIELDS)),
}
PUBLISH = luascripts.script("publish")
RAISE_MARK = luascripts.script("raise_mark")  # format-1 marks migrated (keys.hwm)
WAIT_SLICE_S = 0.002  # wait(): how long a reply is waited for before the source is looked at
# What a batch's commands await: (node index, replies to read) per node written.
Replies = tuple[tuple[int, int], ...]


class RedisSink:
    """Publish batches of entries to streams, atomically deduplicated per stream."""

    def __init__(
        self, url: str | SecretStr, *, maxlen: int = 0, timeout: float = 5.0, min_replicas: int = 0,
        wait_timeout_ms: int = 1000, known_nodes: list[tuple[str, int]] | None = None,
    ) -> None:
        self._pool = pool(url, timeout=timeout)  # a Sentinel's pool follows the primary
        self._url = url
        self._timeout = timeout
        self._maxlen = maxlen
        self._min_replicas = min_replicas
        self._wait_ms = wait_timeout_ms
        self._cluster: RedisCluster | None = None
        # Cluster nodes seen by an earlier session: a start when CDC_REDIS_URL's node is down.
        self.known_nodes: list[tuple[str, int]] = list(known_nodes or [])
        self._conns: list[Any] = []  # one raw connection per node, [0] on a single Redis
        self._node_of: dict[str, int] = {}  # stream -> index into _conns
        self._by_name: dict[str, int] = {}  # node "host:port" -> index into _conns
        self._last: dict[str, str] = {}  # stream -> last dedup key sent this session

    def connect(self) -> None:
        """Open the connection(s) and load the publish script."""
        try:
            self._last.clear()
            try:
                cluster = is_cluster(self._url, timeout=self._timeout)
            except SinkError:
                if not self.known_nodes:
                    raise
                cluster = True  # that node is down: start from the others the last session saw
            if cluster:
                # From CDC_REDIS_URL, or from the nodes seen before when that one is down.
                self._cluster = cluster_client(
                    self._url, timeout=self._timeout, nodes=self.known_nodes
                )
                self.known_nodes = [
                    (n.host, int(n.port)) for n in self._cluster.get_nodes()  # type: ignore[no-untyped-call]
                ]
            else:
                self._open(self._pool)
        except (redis.RedisError, OSError) as e:
            self.close()
            raise translate(e, "connect") from None
        except SinkError:
            self.close()
            raise

    def _open(self, pool: Any) -> int:
        conn = pool.make_connection()
        conn.connect()
        conn.send_command("SCRIPT", "LOAD", PUBLISH.text)  # a flush later: NOSCRIPT, resumed
        conn.read_response()
        self._conns.append(conn)
        return len(self._conns) - 1

    def _node(self, stream: str) -> int:
        """Return the index of the connection to the master that owns `stream`."""
        found = self._node_of.get(stream)
        if found is not None:
            return found
        if self._cluster is None:
            if not self._conns:
                raise SinkError("Redis is not connected", hint="the relay reconnects")
            found = 0
        else:
            node = self._cluster.get_node_from_key(stream)  # type: ignore[no-untyped-call]
            found = self._by_name.get(node.name)
            if found is None:
                try:
                    found = self._by_name[node.name] = self._open(
                        node.redis_connection.connection_pool
                    )
                except (redis.RedisError, OSError) as e:
                    raise translate(e, "connect") from None
        self._node_of[stream] = found
        return found

    def _call(self, stream: str, *args: Any) -> Any:
        """Send one command to `stream`'s node and return its reply."""
        conn = self._conns[self._node(stream)]
        conn.send_command(*args)
        return conn.read_response()

    def instance_token(self, fresh: str) -> str:
        """Return the Redis instance token, writing `fresh` first if Redis has none."""
        with redis_errors("SET"):
            old = self._call(keys.REDIS_INSTANCE, "SET", keys.REDIS_INSTANCE, fresh, "NX", "GET")
        return fresh if old is None else bytes(old).decode()

    def prime(self, streams: Iterable[str]) -> None:
        """Take each stream's mark as the key its first batch names (publish.lua's ARGV[4]).

        So a Redis emptied after this session started is refused (CDCGAP) at its first batch
        on any stream that had a mark, not only at the second.
        """
        with redis_errors("GET"):
            for stream in streams:
                mark = self._call(stream, "GET", keys.hwm(stream))
                if mark is not None:
                    self._last[stream] = bytes(mark).decode()

    def migrate_marks(self, streams: Iterable[str]) -> int:
        """Carry format-1 marks over to format 2 (keys.hwm); return how many were moved.

        A crash half-way is harmless: a mark is only ever raised, the old key is deleted
        after, and the next start moves what is left.
        """
        moved = 0
        with redis_errors("mark migration"):
            for stream in streams:
                old_key, new_key = keys.hwm_v1(stream), keys.hwm(stream)
                if old_key == new_key:
                    continue
                old = self._call(old_key, "GET", old_key)
                if old is not None:
                    # EVAL, not EVALSHA: this runs once a mark, on a connection without it.
                    self._call(new_key, "EVAL", RAISE_MARK.text, 1, new_key, old)
                    self._call(old_key, "DEL", old_key)
                    moved += 1
            self._call(keys.FORMAT, "SET", keys.FORMAT, keys.FORMAT_VERSION)
        return moved

    def check_partitions(self, partitions: dict[str, int]) -> None:
        """Record each route's number of partitions; refuse a silent change of one."""
        for stream, n in partitions.items():
            key = keys.partitions(stream)
            with redis_errors("SET"):
                old = self._call(key, "SET", key, n, "NX", "GET")
            if old is not None and int(old) != n:
                raise ConfigError(
                    f"CDC_ROUTES publishes {stream} in {n} partition(s), but it was published"
                    f" in {int(old)}: changing N on a live system reorders aggregates",
                    hint=f"stop the relay, let the consumers drain every {stream} stream,"
                    f" then `redis-cli DEL {key}` and start the relay (docs/architecture.md,"
                    " partitions)",
                )

    def ensure_groups(self, streams: Iterable[str], groups: Iterable[str]) -> None:
        """Create each consumer group on each stream (MKSTREAM), ignoring existing ones."""
        group_list = list(groups)
        for stream in streams:
            for group in group_list:
                try:
                    self._call(stream, "XGROUP", "CREATE", stream, group, "$", "MKSTREAM")
                except redis.ResponseError as e:
                    if not is_busygroup(e):
                        raise translate(e, "XGROUP CREATE") from None
                except (redis.RedisError, OSError) as e:
                    raise translate(e, "XGROUP CREATE") from None

    def send(
        self, by_stream: dict[str, list[list[str]]], names: dict[str, tuple[str, ...]]
    ) -> Replies:
        """Write one EVALSHA per stream without waiting; return the replies to read.

        Each entry is [dedup key, *values]; values follow `names[stream]` (default
        STREAM_FIELDS: ENTRY_FIELDS, then the trace context when the event has one).
        """
        last = self._last
        per_node: dict[int, list[tuple[Any, ...]]] = {}
        for stream, entries in by_stream.items():
            packed, required = _NAMES[names.get(stream, STREAM_FIELDS)]
            cmds = per_node.get(node := self._node(stream))
            if cmds is None:
                cmds = per_node[node] = []
            cmds.append((
                "EVALSHA", PUBLISH.sha, 2, stream, keys.hwm(stream), self._maxlen,
                packed, luascripts.pack(entries), last.get(stream, ""), required,
            ))
            last[stream] = entries[-1][0]
        try:
            for node, cmds in per_node.items():
                if self._min_replicas:
                    cmds.append(("WAIT", self._min_replicas, self._wait_ms))
                conn = self._conns[node]
                conn.send_packed_command(conn.pack_commands(cmds), check_health=False)
        except (redis.RedisError, OSError) as e:
            raise translate(e, "XADD") from None
        return tuple((node, len(cmds)) for node, cmds in per_node.items())

    def wait(self, other_fd: int, timeout: float, replies: Replies = ((0, 1),)) -> bool:
        """Wait until a reply of `replies` is readable, `other_fd` is, or `timeout` passes.

        Return True when a reply is ready. redis-py shows no socket to select on, so this
        polls the nodes (`can_read`, non-destructive), then `other_fd`, then waits on the
        first node for at most WAIT_SLICE_S: the caller looks at its source in between.
        """
        if not replies:  # nothing was sent: nothing to wait for
            return True
        try:
            conns = [self._conns[node] for node, _ in replies]
            for conn in conns:
                if not conn.is_connected:  # can_read would reconnect, losing the replies
                    raise redis.ConnectionError("connection closed")
                if conn.can_read(timeout=0):
                    return True
            if select.select([other_fd], [], [], 0)[0]:
                return False
            return bool(conns[0].can_read(timeout=min(timeout, WAIT_SLICE_S)))
        except (redis.RedisError, OSError, ValueError) as e:  # Redis went away while we waited
            raise translate(e, "XADD") from None

    def read_replies(self, replies: Replies) -> int:
        """Read a batch's replies in order; return how many entries were added.

        With `min_replicas`, a node whose WAIT counted fewer replicas fails the batch.
        """
        added = 0
        try:
            for node, n in replies:
                conn = self._conns[node]
                scripts = n - 1 if self._min_replicas else n
                for _ in range(scripts):
                    added += int(conn.read_response())
                if self._min_replicas:
                    self._check_wait(int(conn.read_response()), node)
        except (redis.RedisError, OSError) as e:
            raise translate(e, "XADD") from None
        return added

    def _check_wait(self, acked: int, node: int) -> None:
        if acked < self._min_replicas:
            where = next((name for name, i in self._by_name.items() if i == node), "Redis")
            raise SinkError(
                f"{where}: only {acked} of CDC_REDIS_MIN_REPLICAS={self._min_replicas}"
                f" replica(s) acknowledged a batch within {self._wait_ms} ms: not confirmed",
                hint="check the replicas (INFO replication); the relay resumes from its"
                " confirmed position and publishes nothing twice",
            )

    def close(self) -> None:
        """Drop the connections."""
        for conn in self._conns:
            conn.disconnect()
        self._conns = []
        self._node_of.clear()
        self._by_name.clear()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
        self._pool.disconnect()
