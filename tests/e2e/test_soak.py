"""The 3-minute fault soak of issue 9 (the 20-minute one is `make soak`): two replicas with leader election, many
credentials, a seeded schedule of faults, and an invariant checker that fails the test on any violation.

What each invariant means, and the figures a run prints: docs/soak.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from graphcred_testbed.bed import Bed
from graphcred_testbed.hostile import ATTACKS
from graphcred_testbed.issuer import Issuer
from graphcred_testbed.operator_process import OperatorProcess
from graphcred_testbed.soak import SoakConfig, plan_for, run_soak

# 2 cores: fewer credentials than `make soak` (200 over 40 apps), the same mix; 60-90 s tokens refresh every
# 27-45 s, so each credential refreshes several times and meets several faults.
# Cluster apps: 2 ClusterGraphApps, 8 appRef credentials in 3 tenant namespaces (relabels, policy edits, an app
# deleted and created again, its client secret rotated).
# Rotating certificates: 3 apps whose certificate graphcred renews every 60-80 s (4 credentials: one Secret shared),
# Graph's addKey/removeKey failing now and then, two answers lost.
CONFIG = SoakConfig(minutes=3, seed=1, credentials=60, apps=12, tenants=4, namespaces=2, lifetimes=(60, 90),
                    quiet_seconds=75, cluster_apps=2, cluster_namespaces=3, cluster_credentials=8, rotating_apps=3)
EVERY_KIND = {"throttle_json", "throttle_html", "server_error", "slow", "drop", "garbage", "outage", "discovery_html",
              "apiserver_restart", "leader_kill", "rotation", "partner_churn", "spec_client", "spec_scopes", "spec_rbe",
              "ns_relabel", "policy_scopes", "policy_selector", "app_recreate", "app_rotation", "graph_fail",
              "graph_lost"}


def test_the_schedule_is_seeded_and_has_every_kind_of_fault() -> None:
    plan = plan_for(CONFIG, Issuer("https://127.0.0.1:1"))
    assert plan == plan_for(CONFIG, Issuer("https://127.0.0.1:1")), "the same seed gives the same schedule"
    assert {p.kind for p in plan} == EVERY_KIND
    assert max(p.at + p.duration for p in plan) <= CONFIG.fault_seconds, "faults stop before the quiet phase"
    assert plan != plan_for(SoakConfig(**{**CONFIG.__dict__, "seed": 2}), Issuer("https://127.0.0.1:1"))


@pytest.mark.bed
@pytest.mark.long
@pytest.mark.timeout(600)
def test_fault_soak_keeps_every_invariant(bed: Bed, operator: OperatorProcess, tmp_path: Path) -> None:
    operator.stop()  # the session operator would be a third actor beside the soak's two replicas
    try:
        result = run_soak(bed, CONFIG, tmp_path / "soak")
    finally:
        operator.start()
    print("\n" + result.report())
    assert result.checks["ready-token"] > 1000 and result.checks["progress"] > 1000, "the checker must have checked"
    assert result.checks["permission"] > 0 and result.checks["app-status"] > 100, "cluster apps too"
    assert result.revocations, "a withdrawn permission must have been seen taking a token away"
    assert result.checks["rotation-keys"] > 100 and result.checks["rotation-orphan"] >= 3, "rotating certificates too"
    assert len(result.rotations) == 3 and all(result.rotations.values()), "every certificate must have been renewed"
    assert set(result.faults) == EVERY_KIND, "and the plan must have injected every kind of fault"
    assert result.violations == [], "\n".join(map(str, result.violations[:10]))


@pytest.mark.bed
@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.skipif(os.environ.get("GRAPHCRED_SOAK_HOSTILE") != "1",
                    reason="the hostile soak (issue 24) runs with GRAPHCRED_SOAK_HOSTILE=1")
def test_fault_soak_with_a_hostile_tenant_keeps_every_invariant(bed: Bed, operator: OperatorProcess,
                                                                 tmp_path: Path) -> None:
    """The same soak while a hostile namespace keeps trying every attack of the security review: the victims'
    refreshes stay on schedule, the replicas stay under the chart's memory limit, never restart, answer /healthz
    within 2 s, and no request reaches a host that is not an allowed authority (docs/soak.md)."""
    operator.stop()
    try:
        result = run_soak(bed, SoakConfig(**{**CONFIG.__dict__, "hostile": True}), tmp_path / "soak")
    finally:
        operator.start()
    print("\n" + result.report())
    assert result.checks["ready-token"] > 1000, "the checker must have checked"
    assert set(result.hostile_tried) == set(ATTACKS), "and the attacker must have tried every attack"
    assert result.lateness, "victims' refreshes must have been seen"
    assert result.violations == [], "\n".join(map(str, result.violations[:10]))
