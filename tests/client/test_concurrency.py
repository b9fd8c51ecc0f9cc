"""Many threads, one credential, a Secret volume swapped over and over: no error, no expired or torn token."""

from __future__ import annotations

import random
import threading
import time

from graphcred_client import MountedTokenCredential
from graphcred_client._claims import unverified_claims

from .tokens import GRAPH_SCOPE, Mount

SEED = 12
SWAPS = 60
READERS = 4
DEADLINE = 30.0  # seconds: a bound on the test, not a timing goal


def test_readers_during_swaps_see_only_whole_fresh_tokens(mount: Mount) -> None:
    rng = random.Random(SEED)
    written = [mount.write(lifetime=3600 + rng.randrange(600))]
    credential = MountedTokenCredential(mount.directory)
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[set[str]] = [set() for _ in range(READERS)]
    calls = [0] * READERS

    def read(index: int) -> None:
        try:
            while not done.is_set():
                got = credential.get_token(GRAPH_SCOPE)
                assert got.expires_on > time.time()
                # The expiry is the file's own for that very token (each version has its own): never a torn pair.
                assert got.expires_on == unverified_claims(got.token).expires_at
                seen[index].add(got.token)
                calls[index] += 1
                time.sleep(0)  # let the writer have the GIL: readers that never yield starve the swaps
        except BaseException as exc:  # reported below, with the thread that saw it
            errors.append(exc)

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(READERS)]
    for thread in readers:
        thread.start()
    deadline = time.monotonic() + DEADLINE
    for _ in range(SWAPS):
        if errors or time.monotonic() > deadline:
            break
        # Distinct lifetimes: a token paired with another version's expires_on would show.
        written.append(mount.write(lifetime=3600 + rng.randrange(600)))
        time.sleep(rng.random() / 1000)
    done.set()
    for thread in readers:
        thread.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in readers)
    assert errors == []
    assert len(written) == SWAPS + 1
    assert set().union(*seen) <= set(written)
    assert len(set().union(*seen)) > 1 and min(calls) > 0  # the readers really ran through swaps
    assert credential.get_token(GRAPH_SCOPE).token == written[-1]
