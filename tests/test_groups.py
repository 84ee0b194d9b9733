"""cdc.streams.groups on a real Redis: BUSYGROUP-tolerant creation and XINFO GROUPS read once."""

from __future__ import annotations

import pytest
import redis

from cdc.streams import groups


def test_ensure_group_creates_once_and_group_infos_reads_them(redis_url: str) -> None:
    text = redis.Redis.from_url(redis_url, decode_responses=True)
    raw = redis.Redis.from_url(redis_url)  # the sampler's client: bytes, not text
    try:
        assert groups.group_infos(text, "s") == []  # no stream yet: no groups, no error
        assert groups.ensure_group(text, "s", "g1", "0") is True  # MKSTREAM
        assert groups.ensure_group(text, "s", "g1", "0") is False  # BUSYGROUP: exists
        assert groups.ensure_group(raw, "s", "g2", "$") is True
        text.xadd("s", {"k": "v"})
        text.xadd("s", {"k": "w"})
        text.xreadgroup("g1", "c1", {"s": ">"}, count=1)
        for client in (text, raw):
            infos = {g.name: g for g in groups.group_infos(client, "s")}
            assert set(infos) == {"g1", "g2"}
            assert (infos["g1"].consumers, infos["g1"].pending, infos["g1"].lag) == (1, 1, 1)
            assert (infos["g2"].consumers, infos["g2"].pending, infos["g2"].lag) == (0, 0, 2)
            assert infos["g1"].last_delivered_id.count("-") == 1
        text.set("plain", "x")  # any other error is the caller's to translate
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            groups.ensure_group(text, "plain", "g")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            groups.group_infos(text, "plain")
        with pytest.raises(redis.ResponseError):
            groups.ensure_group(text, "absent", "g", mkstream=False)
    finally:
        text.close()
        raw.close()
