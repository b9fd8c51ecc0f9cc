"""`python -m bench calls`: the operator's CPU for one token acquisition and for one Kubernetes call, alone.

What a refresh costs is mostly these calls (a token request, the Secret patch, the status patch); `bench scale`
measures them among everything else on a loaded machine, this measures each in one thread (its thread CPU time,
so neither the bed's processes nor the other threads count), against the bed's issuer and apiserver:

- a token acquisition through `TokenClient` (msal, the pinned-CA session; discovery cached, as in steady state);
- a Kubernetes call through `Kube`: a Secret read and a Secret patch, alternating.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from graphcred.acquire.credentials import ClientSecret
from graphcred.acquire.tokens import TokenClient
from graphcred.api.model import GraphAppCredentialSpec
from graphcred.kube.calls import Kube
from graphcred_testbed.bed import Bed

WARM = 50
ROUNDS = 3


def _cpu_per_call(n: int, call: Callable[[], object]) -> tuple[float, float]:
    """(thread CPU, wall) in ms per call, the median of ROUNDS rounds of `n` calls after WARM unmeasured ones."""
    for _ in range(WARM):
        call()
    cpu, wall = [], []
    for _ in range(ROUNDS):
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(n):
            call()
        cpu.append((time.thread_time() - c0) / n * 1000)
        wall.append((time.perf_counter() - w0) / n * 1000)
    return statistics.median(cpu), statistics.median(wall)


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as d, Bed(Path(d), imds=False) as bed:
        tenant, secret = str(uuid.uuid4()), "bench-calls-secret"
        app = bed.issuer.register_app(tenant, secret=secret)
        spec = GraphAppCredentialSpec.model_validate({
            "tenantId": tenant, "clientId": app.client_id, "authorityHost": bed.authority_host,
            "scopes": ["https://graph.microsoft.com/.default"], "credential": {"clientSecret": {"name": "app"}}})
        tokens = TokenClient(str(bed.issuer_ca_file), authority_hosts=[bed.authority_host])
        identity, material = spec.identity(), ClientSecret(secret)
        assert identity is not None
        token_cpu, token_wall = _cpu_per_call(n, lambda: tokens.acquire(identity, spec.scopes, material))

        kube = Kube(bed.api)
        name = f"bench-calls-{uuid.uuid4().hex[:8]}"
        version = [kube.create_secret("default", {"metadata": {"name": name}, "type": "Opaque",
                                                  "data": {"token": "eHh4" * 400}})]

        def read_and_patch() -> None:
            kube.read_secret("default", name)
            version[0] = kube.patch_secret("default", name, {"metadata": {"resourceVersion": version[0]},
                                                             "data": {"token": "eXl5" * 400}})

        kube_cpu, kube_wall = _cpu_per_call(n // 2, read_and_patch)
    print(f"token acquisition: {token_cpu:.2f} ms CPU ({token_wall:.1f} ms wall, the bed's issuer signs), n={n}")
    print(f"Kubernetes call (a Secret read or patch, ~1.6 KiB): {kube_cpu / 2:.2f} ms CPU "
          f"({kube_wall / 2:.1f} ms wall), n={n}")
    print(f"median of {ROUNDS} rounds, thread CPU time of the calling thread only")
