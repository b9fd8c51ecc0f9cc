"""Leader election on the real apiserver: a standby judges a Lease by its own clocks, never by another replica's
wall clock, and stays alive and ready for its probes while it waits."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
import requests

from graphcred.app.leader import LeaseElector
from graphcred_testbed.bed import wait_for

from ..helpers import Env, lease_holder, two_replicas

pytestmark = pytest.mark.bed

LEASE = "graphcred-leader"


class Monotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_standby_with_its_wall_clock_ahead_does_not_take_a_lease_renewed_a_moment_ago(env: Env) -> None:
    api = env.bed.api
    leader = LeaseElector(api, env.namespace, LEASE, "leader", lease_seconds=15)
    assert leader.try_acquire_or_renew()
    mono = Monotonic()
    standby = LeaseElector(api, env.namespace, LEASE, "standby", lease_seconds=15,
                           clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20), monotonic=mono)
    time.sleep(1)  # the Lease was renewed a second ago
    assert not standby.try_acquire_or_renew(), "a standby 20 s ahead took a Lease renewed 1 s ago"
    assert lease_holder(env) == "leader"
    # The leader keeps renewing: each renewal restarts the standby's count, on the standby's own clock.
    for _ in range(3):
        mono.now += 10
        assert leader.try_acquire_or_renew()
        assert not standby.try_acquire_or_renew(), "took a Lease that keeps being renewed"
    # The leader stops renewing: the standby takes over a whole lease duration after it last saw a change.
    mono.now += 14
    assert not standby.try_acquire_or_renew(), "took the Lease before it expired by the standby's own clock"
    mono.now += 1.5
    assert standby.try_acquire_or_renew(), "did not take a Lease unrenewed for longer than its duration"
    assert lease_holder(env) == "standby"
    # ... and the old leader, if it comes back, finds it taken
    assert not leader.try_acquire_or_renew()


@pytest.mark.long  # 45 s of probes
def test_a_standby_stays_alive_and_ready_while_the_leader_holds_the_lease(env: Env, operator_logdir: Path) -> None:
    with two_replicas(env, operator_logdir, "standby", "--lease-duration=6") as replicas:
        leader_id, leader, standby = replicas.leader_id, replicas.leader, replicas.standby
        urls = {"leader": leader.metrics_url(), "standby": standby.metrics_url()}
        for base in urls.values():
            wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200,  # noqa: B023
                     timeout=15, what=f"{base}/readyz")
        started = time.monotonic()
        polls = 0
        # The kubelet probes every 10 s and restarts after 3 failures; /healthz goes stale 30 s after the last sign
        # of progress (Health.stale_after): check every 2 s for 1.5 times that, seven 6 s Lease periods.
        while (elapsed := time.monotonic() - started) < 45:
            assert lease_holder(env) == leader_id, "the leader lost its Lease"
            for role, base in urls.items():
                for probe in ("healthz", "readyz"):
                    code = requests.get(f"{base}/{probe}", timeout=5).status_code
                    assert code == 200, f"the {role}'s /{probe} answered {code} after {elapsed:.0f} s"
            assert standby.process.alive(), "the standby exited"
            polls += 1
            time.sleep(2)
        assert polls >= 15
        assert "became leader" not in standby.logs(this_run=True)


def test_a_leader_stopped_by_sigterm_exits_and_hands_the_lease_over_at_once(env: Env, operator_logdir: Path) -> None:
    """A rollout SIGTERMs the leader: it must exit by itself (not wait for the kubelet's SIGKILL) and release the
    Lease, so that the standby takes over now rather than when a 30 s Lease runs out."""
    with two_replicas(env, operator_logdir, "rollout", "--lease-duration=30") as replicas:
        leader_id, leader, standby = replicas.leader_id, replicas.leader, replicas.standby
        wait_for(lambda: "graphcred started" in leader.logs(this_run=True), timeout=30, what="the leader to start")
        popen = leader.process.popen
        assert popen is not None
        popen.terminate()
        # well inside the kubelet's default 30 s grace period
        wait_for(lambda: popen.poll() is not None, timeout=10, what="the leader to exit after SIGTERM")
        assert popen.returncode == 0, leader.process.tail()
        assert "released the Lease" in leader.logs(this_run=True)
        new_id = wait_for(lambda: (h := lease_holder(env)) and h != leader_id and h, timeout=15,
                          what="the standby to take the released Lease (an unreleased one lasts 30 s)")
        assert str(standby.process.popen.pid) in new_id  # type: ignore[union-attr]


def test_a_leader_stopped_while_a_token_request_hangs_exits_at_once(env: Env, operator_logdir: Path) -> None:
    """SIGTERM while a worker thread waits on an authority that answers only after 25 s (it may wait 30): the
    process must not wait for that thread on its way out. It did, at interpreter exit (concurrent.futures joins
    every worker thread), so a leader that started among other tenants' slow authorities outlived the test's 10 s
    and, in a pod, could outlive the kubelet's grace period."""
    app = env.secret_app("pw")
    env.bed.issuer.fail(app.client_id, delay=25)
    env.create("slow", app, {"clientSecret": {"name": "cred"}})
    with two_replicas(env, operator_logdir, "hanging", "--lease-duration=30") as replicas:
        leader = replicas.leader
        wait_for(lambda: env.bed.issuer.token_requests(app.client_id) >= 1, timeout=30,
                 what="the leader's token request to reach the slow authority")
        popen = leader.process.popen
        assert popen is not None
        stopped = time.monotonic()
        popen.terminate()
        wait_for(lambda: popen.poll() is not None, timeout=10,
                 what="the leader to exit after SIGTERM with a token request in flight")
        print(f"exited {time.monotonic() - stopped:.2f} s after SIGTERM with a token request in flight")
        assert popen.returncode == 0, leader.process.tail()
        assert "released the Lease" in leader.logs(this_run=True)
