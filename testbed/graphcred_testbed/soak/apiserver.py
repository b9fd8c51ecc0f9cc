"""The harness's own view of the bed's apiserver: a client that does not retry, and the request counts of its
/metrics."""

from __future__ import annotations

import re
import ssl
import urllib.request
from collections import Counter

from kubernetes import client, config

from ..bed import Bed


def _api_client(bed: Bed) -> client.ApiClient:
    """An admin client that does not retry: a refused call during an apiserver restart fails at once, quietly."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(bed.kubeconfig),  # type: ignore[no-untyped-call]
                            client_configuration=configuration)
    configuration.retries = False
    return client.ApiClient(configuration)


def apiserver_requests(bed: Bed) -> Counter[str]:
    """apiserver_request_total from the bed apiserver's /metrics, by "resource[/subresource] VERB"."""
    pki = bed.control_plane.dir / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    with urllib.request.urlopen(f"{bed.control_plane.server}/metrics", context=ctx, timeout=30) as resp:
        text = resp.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            resource = labels.get("resource", "") + ("/" + labels["subresource"] if labels.get("subresource") else "")
            counts[f"{resource} {labels.get('verb', '')}"] += int(float(line.rsplit(" ", 1)[1]))
    return counts
