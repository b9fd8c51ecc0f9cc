from __future__ import annotations

import datetime as dt

import pytest
from kubernetes import client

from graphcred.app.leader import LeaseElector, _parse, may_take, observe, renew_overdue
from graphcred.base.times import rfc3339_micro as _micro


def test_microtime_round_trips_in_both_spellings() -> None:
    moment = dt.datetime(2026, 11, 25, 12, 0, 1, 250000, tzinfo=dt.UTC)
    assert _parse(_micro(moment)) == moment
    assert _parse(moment.isoformat()) == moment  # how the Python client serializes datetimes
    assert _parse(None) is None and _parse("garbage") is None


# --- the decisions, with fake clocks ---------------------------------------------------------------------------
def test_a_standby_whose_wall_clock_is_20_s_ahead_does_not_take_a_lease_renewed_1_s_ago() -> None:
    # The record's renewTime is the leader's wall clock; the standby's runs 20 s ahead. Neither is consulted:
    # the standby counts from when it first read this record, on its own monotonic clock.
    leader_wall = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)
    renewed = _micro(leader_wall - dt.timedelta(seconds=1))
    standby_mono = 500.0
    seen = observe(None, "leader", renewed, "41", standby_mono)
    assert not may_take(seen, "standby", 15.0, standby_mono)
    assert not may_take(seen, "standby", 15.0, standby_mono + 14.9)
    assert may_take(seen, "standby", 15.0, standby_mono + 15.0)


def test_every_change_of_the_record_restarts_the_count() -> None:
    seen = observe(None, "leader", "t1", "1", 0.0)
    assert observe(seen, "leader", "t1", "1", 10.0) is seen  # unchanged: keeps when it was first seen
    for changed in (("leader", "t2", "2"), ("other", "t1", "1"), ("leader", "t1", "3")):
        again = observe(seen, *changed, 10.0)
        assert again.at == 10.0
        assert not may_take(again, "standby", 15.0, 24.0) and may_take(again, "standby", 15.0, 25.0)


def test_a_lease_renewed_with_a_wall_clock_far_behind_still_expires_on_time() -> None:
    # A leader whose clock is an hour behind wrote an ancient renewTime; the standby still waits one duration.
    ancient = _micro(dt.datetime(2026, 11, 25, 11, 0, tzinfo=dt.UTC))
    seen = observe(None, "leader", ancient, "7", 100.0)
    assert not may_take(seen, "standby", 15.0, 100.0)
    assert may_take(seen, "standby", 15.0, 115.0)


def test_a_free_or_own_lease_is_taken_at_once() -> None:
    assert may_take(observe(None, "", "", "3", 0.0), "standby", 15.0, 0.0)  # released on a clean shutdown
    assert may_take(observe(None, "me", "t", "3", 0.0), "me", 15.0, 0.0)  # ours (a restarted container)


def test_the_leader_stops_before_a_standby_can_take_the_lease() -> None:
    lease, deadline = 15.0, 10.0
    attempt_started = 50.0  # the successful renewal's write landed at some moment after this
    assert not renew_overdue(attempt_started, deadline, attempt_started + deadline)
    assert renew_overdue(attempt_started, deadline, attempt_started + deadline + 0.01)
    # a standby that saw the write at the earliest moment (attempt_started) can take it only at +lease
    assert deadline < lease


def test_the_elector_keeps_the_deadline_and_call_timeouts_inside_the_lease() -> None:
    elector = LeaseElector(client.ApiClient(client.Configuration()), "ns", "lease", "me", lease_seconds=15.0)
    assert elector.renew_deadline == 10.0 and elector.retry_seconds == 2.0
    connect, read = elector.timeout
    assert 2 * (connect + read) < elector.renew_deadline  # an attempt (read + write) fits in the deadline
    with pytest.raises(ValueError, match="shorter"):
        LeaseElector(client.ApiClient(client.Configuration()), "ns", "lease", "me", lease_seconds=15.0,
                     renew_deadline=15.0)
