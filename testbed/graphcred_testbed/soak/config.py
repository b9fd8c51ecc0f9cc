"""The soak's configuration: its size, its timings and the graces its invariants allow."""

from __future__ import annotations

from dataclasses import dataclass

from ..hostile import ATTACKS, CHART_MEMORY_LIMIT

# Seconds a token Secret of an appRef credential may still hold a token after its namespace stopped being permitted
# (a relabel, a policy edit, the app deleted): "within seconds" (docs/soak.md), counted from when a leader could act.
REVOKE_GRACE = 10.0


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 20.0  # the soak itself (faults, then the quiet phase), after setup
    seed: int = 1
    credentials: int = 200
    apps: int = 40
    tenants: int = 10
    namespaces: int = 4
    lifetimes: tuple[int, ...] = (60, 90, 120)  # token lifetimes, one per app (short: many refreshes)
    sharing: float = 0.15  # chance that a credential shares the previous one's app and key (groups of 2-3)
    certificates: float = 0.3  # fraction of apps authenticated by certificate
    near_lifetime: float = 0.05  # fraction of credentials with refreshBeforeExpiry = lifetime - 5 s
    quiet_seconds: float = 90.0  # the last part of the run, without faults
    ready_within: float = 60.0  # after the faults stop, every credential Ready within this
    setup_ready_within: float = 180.0
    poll_interval: float = 1.0
    lease_duration: float = 8.0
    token_timeout: float = 5.0  # the replicas' --token-timeout: slow answers beyond it become timeouts
    ready_expired_grace: float = 10.0  # Ready=True may outlive its token by this much (the operator's wake-up)
    stuck_grace: float = 60.0  # a due refresh or a new generation must show in status within this
    log_level: str = "INFO"
    # cluster apps (cluster.py): ClusterGraphApps, tenant namespaces labelled in or out, appRef credentials
    cluster_apps: int = 2
    cluster_namespaces: int = 4
    cluster_credentials: int = 16
    revoke_grace: float = REVOKE_GRACE  # a token Secret may outlive its permission by this much
    app_status_within: float = 30.0  # a ClusterGraphApp's status.users/permitted match the cluster within this
    # rotating certificates (rotating.py): apps whose certificate graphcred renews itself every minute or two
    rotating_apps: int = 3
    rotation_grace: float = 10.0  # an app may be without a valid key graphcred holds this long (a key replicating)
    # a hostile namespace trying every attack of hostile.py, and the invariants
    # that go with it (refresh lateness, peak RSS, no restart, /healthz within 2 s, no forbidden host reached)
    hostile: bool = False
    hostile_interval: float = 3.0  # seconds between two attacks (after a first wave of tarpits)
    hostile_attacks: tuple[str, ...] = ATTACKS  # a subset shows one attack's effect (the tarpit hides the others)
    refresh_slack: float = 10.0  # a victim's refresh may come this late after its schedule
    memory_limit: int = CHART_MEMORY_LIMIT  # bytes: the chart's default limit; above it the pod is OOM-killed

    @property
    def fault_seconds(self) -> float:
        return max(self.minutes * 60 - self.quiet_seconds, 0.0)
