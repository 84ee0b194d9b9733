"""Checkpoint: the confirmable LSN never passes an event Redis has not acknowledged."""

from __future__ import annotations

from cdc.pipeline.checkpoint import Batch, Checkpoint


def test_a_batch_confirms_the_last_commit_decoded_before_its_seal() -> None:
    cp = Checkpoint(100)
    cp.committed(150)
    first = Batch([], 0)
    cp.seal(first)
    cp.committed(200)  # decoded after the seal: belongs to a later batch
    second = Batch([], 0)
    cp.seal(second)
    assert (first.confirm_lsn, second.confirm_lsn) == (150, 200)
    assert cp.confirmed == 100  # nothing acknowledged yet
    assert cp.acked() is first and cp.confirmed == 150
    assert cp.acked() is second and cp.confirmed == 200


def test_acks_come_in_order_and_never_move_backwards() -> None:
    cp = Checkpoint(500)
    cp.seal(b := Batch([], 0))
    assert b.confirm_lsn == 500  # nothing committed since the start: no advance
    cp.acked()
    assert cp.confirmed == 500


def test_idle_confirms_the_wal_end_only_with_nothing_in_flight() -> None:
    cp = Checkpoint(10)
    cp.committed(20)
    cp.seal(Batch([], 0))
    cp.idle(wal_end=99)
    assert cp.confirmed == 10  # a batch is in flight: the keepalive's WAL end must wait
    cp.acked()
    cp.idle(wal_end=99)
    assert cp.confirmed == 99 and cp.last_commit_end == 99
