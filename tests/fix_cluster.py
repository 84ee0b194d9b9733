"""A Redis Cluster per test module that asks for one (three masters, a replica each).

Loaded beside tests/fix_servers.py (pytest_plugins in tests/conftest.py): `cluster` starts
six redis-server processes once per module, `rc` empties it for a test, `cs` points this
test's settings at it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from redis.cluster import RedisCluster

from cdc.settings import Settings
from devkit.localservers import LocalRedisCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRedisCluster]:
    """Start a 3-master, 1-replica-each cluster for this module."""
    with LocalRedisCluster(masters=3, replicas=1) as c:
        yield c


@pytest.fixture
def rc(cluster: LocalRedisCluster) -> Iterator[RedisCluster]:
    """A cluster client on an emptied cluster whose three masters all serve slots."""
    cluster.settled()
    client = RedisCluster.from_url(cluster.url, decode_responses=True)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def cs(settings: Settings, cluster: LocalRedisCluster) -> Settings:
    """This test's settings with CDC_REDIS_URL at one node of the cluster."""
    return settings.model_copy(update={"redis_url": SecretStr(cluster.url)})
