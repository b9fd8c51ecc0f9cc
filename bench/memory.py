"""`python -m bench memory`: what the operator keeps per credential, without the bed.

The unit rig (`tests/unit/harness.py`: the real reconciler and controller over an in-memory apiserver and token
endpoint) with N credentials, one credential Secret each, measured with tracemalloc:

- at rest: every credential Ready, its worker asleep until its refresh (what 10,000 Ready credentials cost);
- in a burst: every credential new and its token request held by the token endpoint, as in a burst of new
  credentials: the passes waiting for a token (at most the controller's bound, 1,024) and the workers whose pass
  was turned away, queued for a place.

The in-memory apiserver's own storage of the Secrets and statuses is counted too: the figures are an upper bound of
the operator's part. Use `bench scale` for the process's RSS.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.unit.fakes import gac, secret_spec
from tests.unit.harness import NS, Rig, on_threads, until

WAITING = 1024  # the controller's default bound on the passes waiting for a token


async def _measure(n: int, waiting: bool) -> float:
    threads = ThreadPoolExecutor(64)  # more than the token slots: the held token requests must not hold them all
    rig = Rig(lifetime=3600.0, run_blocking=on_threads(threads))
    tenant = str(uuid.uuid4())
    # in a burst, one namespace per credential (as `bench scale`): a namespace has at most a quarter of the places
    spaces = [f"ns-{i}" if waiting else NS for i in range(n)]
    for i in range(n):
        rig.kube.put_client_secret(spaces[i], f"cred{i}", "s3cret")
    if waiting:
        rig.tokens.gate.clear()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    try:
        for i in range(n):
            rig.kube.objects.add((spaces[i], f"c{i}"))
            rig.controller.observe(gac(f"c{i}", secret_spec(tenant, str(uuid.uuid4()), secret=f"cred{i}"),
                                       namespace=spaces[i]))
        if waiting:
            await until(lambda: rig.controller.passes_waiting() == (min(n, WAITING), n - min(n, WAITING)),
                        timeout=120, what="every pass waiting for a token or queued for a place")
        else:
            await until(lambda: all((rig.ready(f"c{i}") or {}).get("status") == "True" for i in range(n)),
                        timeout=300, what="every credential Ready")
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / n / 1024
    finally:
        tracemalloc.stop()
        rig.tokens.gate.set()
        await rig.controller.stop()
        threads.shutdown(wait=False)


def main(n: int) -> None:
    rest = asyncio.run(_measure(n, waiting=False))
    waiting = asyncio.run(_measure(n, waiting=True))
    print(f"{n} credentials, unit rig (tracemalloc; the in-memory apiserver's storage included):")
    print(f"  at rest (Ready, asleep until the refresh): {rest:.1f} KiB per credential")
    print(f"  in a burst, every pass waiting for a token (at most {WAITING}) or queued: {waiting:.1f} KiB per "
          "credential")
