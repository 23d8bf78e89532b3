"""The run lease on SQLite and on PostgreSQL: one holder at a time, stale holders taken over by compare-and-set."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime

import pytest
from sqlalchemy import update

from loop.store import RunLease, Store
from loop.store.lease import LeaseHeld, LeaseLost, acquire


def _set(store: Store, run: str, **values) -> None:
    with store.session() as session:
        session.execute(update(RunLease).where(RunLease.run == run).values(**values))


def test_second_acquire_refuses_naming_the_holder_until_released(store):
    lease = acquire(store, "r1")
    with pytest.raises(LeaseHeld, match=rf"run 'r1' is in use by pid {os.getpid()} on \S+, since .* UTC"):
        acquire(store, "r1")
    acquire(store, "other").release()  # leases are per run
    lease.heartbeat()
    lease.release()
    acquire(store, "r1").release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(store):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that existed and is gone
    first = acquire(store, "r1")
    _set(store, "r1", pid=child.pid)
    second = acquire(store, "r1")
    assert second.token != first.token
    with pytest.raises(LeaseLost):
        first.heartbeat()
    with store.session() as session, pytest.raises(LeaseLost):
        first.fence(session)
    with store.session() as session:
        second.fence(session)  # the new holder may record its work
    first.release()  # a former holder's release leaves the new holder's row alone
    with pytest.raises(LeaseHeld):
        acquire(store, "r1")


def test_a_live_holder_on_this_host_keeps_the_lease_until_its_pid_names_another_process(store):
    acquire(store, "r1")
    _set(store, "r1", heartbeat=time.time() - 3600)  # stopped or slow, but alive: still the holder
    with pytest.raises(LeaseHeld, match="last heartbeat 3600 s ago"):
        acquire(store, "r1", stale_after_s=60)
    # The pid now belongs to a process that started after the lease was taken: the holder is gone.
    _set(store, "r1", started_at=datetime(2000, 1, 1))
    acquire(store, "r1").release()


def test_another_host_is_taken_over_only_when_its_heartbeat_is_stale(store):
    acquire(store, "r1")
    _set(store, "r1", host="elsewhere", pid=1)
    with pytest.raises(LeaseHeld, match="on elsewhere"):
        acquire(store, "r1", stale_after_s=60)
    _set(store, "r1", heartbeat=time.time() - 61)
    acquire(store, "r1", stale_after_s=60).release()


def test_take_over_is_compare_and_set(store, monkeypatch):
    """Two processes judge the same stale holder at once: the row changes only for the first."""
    acquire(store, "r1")
    _set(store, "r1", host="elsewhere", heartbeat=time.time() - 600)
    import loop.store.lease

    real = loop.store.lease._is_stale
    winner = []

    def stale_and_raced(row, *args):
        if not winner:  # between our read and our update, another process takes the row over
            monkeypatch.setattr(loop.store.lease, "_is_stale", real)
            winner.append(acquire(store, "r1"))
        return real(row, *args)

    monkeypatch.setattr(loop.store.lease, "_is_stale", stale_and_raced)
    with pytest.raises(LeaseHeld, match="just taken over"):
        acquire(store, "r1")
    with store.session() as session:
        assert session.get(RunLease, "r1").token == winner[0].token


def test_heartbeats_keep_a_live_holder_and_stop_on_release(store):
    with acquire(store, "r1", heartbeat_s=0.05) as lease:
        with store.session() as session:
            before = session.get(RunLease, "r1").heartbeat
        time.sleep(0.3)
        with store.session() as session:
            assert session.get(RunLease, "r1").heartbeat > before
        assert not lease.lost
    with store.session() as session:
        assert session.get(RunLease, "r1") is None
