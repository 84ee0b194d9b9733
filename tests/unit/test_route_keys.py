"""Routing, partitions, key names: pure functions, no servers."""

from __future__ import annotations

import zlib

import pytest

from cdc.errors import ConfigError, EventError
from cdc.pipeline.route import Router, partition
from cdc.streams import keys


def test_first_matching_rule_wins_and_unrouted_types_are_event_errors() -> None:
    r = Router("WATCH_*=axiom:watches,*=axiom:core:events")
    assert r.route("WATCH_ALERT") == "axiom:watches"
    assert r.route("CASE_CREATED") == "axiom:core:events"
    assert Router("A_*=s").streams() == ["s"]
    with pytest.raises(EventError):
        Router("A_*=s").route("B")


@pytest.mark.parametrize("rules", ["bad", "=s", "*=", "*=s/0", "*=s/x", "A=s/2,B=s/3", "*=s/1025"])
def test_bad_rules_are_config_errors(rules: str) -> None:
    with pytest.raises(ConfigError):
        Router(rules)


def test_partitions_expand_streams_and_keep_an_aggregate_on_one() -> None:
    r = Router("W_*=axiom:watches,*=axiom:core:events/4")
    assert r.streams() == ["axiom:watches", *(f"axiom:core:events:{p}" for p in range(4))]
    assert r.stream_for("W_X", "t", "a") == "axiom:watches"
    want = zlib.crc32(b"t1\x1fcase-9") % 4
    assert r.stream_for("CASE", "t1", "case-9") == f"axiom:core:events:{want}"
    assert {partition("t1", f"a{i}", 4) for i in range(200)} == {0, 1, 2, 3}
    assert partition("t1", "a", 1) == 0


def test_marks_share_their_stream_slot_and_keep_a_tag_of_its_own() -> None:
    assert keys.hwm("s") == "axiom:cdc:hwm:{s}" and keys.hwm_v1("s") == "axiom:cdc:hwm:s"
    assert keys.hash_tag(keys.hwm("axiom:core:events")) == "axiom:core:events"
    assert keys.hwm("{t}:x") == "axiom:cdc:hwm:{t}:x"
    assert keys.hash_tag("a{}b") is None and keys.hash_tag("no tag") is None
    assert keys.partitions("s") == "axiom:cdc:partitions:{s}"
