"""The fault soak: many credentials, two replicas, a seeded schedule of faults, and an invariant checker.

`python -m graphcred_testbed soak --minutes 20 --seed 1` (`make soak`) runs it on a bed of its own and prints the
figures; tests/e2e/test_soak.py runs a 3-minute version inside `make test` and fails on any violation.

The run:
  setup   apps in several tenants (client secret and certificate apps, short token lifetimes), credential Secrets
          (most credentials with a key of their own, some sharing one), GraphAppCredentials in a few namespaces
          (some with refreshBeforeExpiry near the lifetime); two `graphcred run --leader-election` replicas;
          everything Ready.
  faults  a plan drawn from random.Random(seed): per-app token endpoint faults (429 JSON and HTML with
          Retry-After, 5xx, slow answers, dropped connections, non-JSON 200), issuer-wide outages, one `200 <html>`
          discovery answer, apiserver restarts, SIGKILL of the leader, credential rotation good->bad->good,
          deletion and re-creation of sharing partners during a (slowed) acquisition, spec changes of clientId,
          scopes and refreshBeforeExpiry.
  quiet   every fault healed; every credential must be Ready within `ready_within` seconds.

A checker thread lists GraphAppCredentials and token Secrets about every second and records a violation on anything
a user would notice (see docs/soak.md for each invariant and why it has no false positives). A second thread acts as
kubelet and Prometheus: it restarts replicas that exit, probes /healthz (stricter than the chart), follows
the Lease, and reads `graphcred_workers` from the leader's /metrics.

The package: config (SoakConfig), world (apps, keys, credentials drawn from the seed), plan (the fault schedule),
faults (the plan's actions on the bed), replicas (the two operator processes, supervised), checker (the invariants),
result (the figures and violations), run (the soak itself: setup, faults, quiet phase, budgets), apiserver (the
harness's own client and the apiserver's request counts); cluster and clustercheck (ClusterGraphApps and their
invariants); rotating and rotationcheck (certificates graphcred renews itself, Graph's key calls failing, and their
invariants).
"""

from __future__ import annotations

from .apiserver import apiserver_requests
from .checker import GC_PENDING, LEASE_NAME
from .config import SoakConfig
from .faults import TENANT_WIDE
from .plan import APP_FAULTS, PlanItem, plan_for
from .result import SoakResult, Violation
from .run import Soak, own_bed, run_soak
from .world import GRAPH, RESOURCES

__all__ = ["APP_FAULTS", "GC_PENDING", "GRAPH", "LEASE_NAME", "RESOURCES", "TENANT_WIDE", "PlanItem", "Soak",
           "SoakConfig", "SoakResult", "Violation", "apiserver_requests", "own_bed", "plan_for", "run_soak"]
