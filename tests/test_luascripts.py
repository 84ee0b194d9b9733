"""The one Lua registry: every script loads under the SHA1 computed here, and every caller
survives `SCRIPT FLUSH` (NOSCRIPT -> the text is loaded again), the relay mid-session too."""

from __future__ import annotations

from pathlib import Path

import redis

from cdc.domain.queryjobs import QueryJob, QueryJobStore
from cdc.ops.trim import Trimmer
from cdc.settings import Settings
from cdc.streams import keys, luascripts
from tests.relayutil import insert_cases, relay, stream_events, wait_for

LUA_DIR = Path(luascripts.__file__).parent / "lua"


def test_every_script_file_is_registered_and_loads_under_its_computed_sha(
    rds: redis.Redis,
) -> None:
    files = {p.stem for p in LUA_DIR.glob("*.lua")} - {"xadd_args"}  # the prelude
    assert files == set(luascripts.NAMES)
    for name in luascripts.NAMES:
        lua = luascripts.script(name)
        assert rds.script_load(lua.text) == lua.sha, name
    assert "xadd_args" in luascripts.script("publish").text


def test_callers_reload_their_script_after_a_flush(rds: redis.Redis, redis_url: str) -> None:
    store = QueryJobStore(rds)
    store.save(QueryJob("j1", "t1"))
    rds.script_flush()
    store.save(QueryJob("j2", "t1"))  # NOSCRIPT, loaded, run
    rds.script_flush()
    assert store.update_status("j2", "RUNNING").status == "RUNNING"
    assert rds.hget(keys.query_job("j1"), "tenant_id") == "t1"

    rds.xadd("s1", {"f": "v"})
    trimmer = Trimmer(redis_url=redis_url, streams=["s1"], cap=0)
    try:
        rds.script_flush()
        assert [r.stream for r in trimmer.trim_once()] == ["s1"]
    finally:
        trimmer.close()
    assert rds.script_exists(luascripts.script("trim").sha) == [True]


def test_relay_survives_a_script_flush_mid_session(
    settings: Settings, pg_dsn: str, rds: redis.Redis, tmp_path: Path
) -> None:
    assert rds.execute_command("SCRIPT", "EXISTS", luascripts.script("publish").sha) == [0]
    with relay(settings, str(tmp_path / "relay.log")) as proc:
        insert_cases(pg_dsn, 300, tag="a")
        wait_for(lambda: rds.xlen("axiom:core:events") == 300, what="the first 300")
        rds.script_flush()
        insert_cases(pg_dsn, 300, tag="b")
        wait_for(lambda: rds.xlen("axiom:core:events") >= 600, what="the 300 after the flush")
        assert proc.poll() is None, (tmp_path / "relay.log").read_text()
    ids = [e["event_id"] for e in stream_events(rds)]
    assert len(ids) == len(set(ids)) == 600
    assert rds.execute_command("SCRIPT", "EXISTS", luascripts.script("publish").sha) == [1]
