"""bench/scale.py counts what it reports: the watch of token Secret writes behind the steady-state figures, against
the scripted apiserver of tests/unit/fakes.py (the real kubernetes client talks to it)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from bench.scale import _SecretWrites
from kubernetes import client

from graphcred_testbed.bed import wait_for

from .fakes import Answer, FakeApiserver, failure_status, metadata_list


def _write(rv: int) -> dict[str, Any]:
    return {"type": "MODIFIED", "object": {"metadata": {"namespace": f"bench-{rv}", "name": "c-token",
                                                        "resourceVersion": str(rv)}}}


def _serve(writes: list[dict[str, Any]], instead: list[Answer]) -> FakeApiserver:
    """Each watch answers the writes after its resourceVersion, then its stream ends (as the apiserver ends the
    watches of slow readers); `instead`: answers to give first, one a watch."""
    lock = threading.Lock()

    def on_watch(query: dict[str, str]) -> Answer:
        with lock:
            if instead:
                return instead.pop(0)
            since = int(query.get("resourceVersion") or 0)
            newer = [w for w in writes if int(w["object"]["metadata"]["resourceVersion"]) > since]
        if not newer:
            time.sleep(0.05)
        return 200, newer

    fake = FakeApiserver(lambda _: (200, [metadata_list([], rv="10")]), on_watch)
    fake.thread.start()
    return fake


def _writes_watch(fake: FakeApiserver) -> _SecretWrites:
    bed: Any = SimpleNamespace(core=client.CoreV1Api(fake.api()))
    watch = _SecretWrites(bed)
    watch.start()
    return watch


def test_a_write_is_counted_once_when_the_apiserver_ends_the_stream() -> None:
    writes = [_write(11), _write(12)]
    fake = _serve(writes, [])
    watch = _writes_watch(fake)
    try:
        wait_for(lambda: len(fake.watches) >= 3, timeout=5, what="the watch resumed twice")
        writes.append(_write(13))
        seen = len(fake.watches)
        wait_for(lambda: len(fake.watches) >= seen + 2, timeout=5, what="two more resumptions")
    finally:
        watch.stop()
        fake.server.shutdown()
        fake.server.server_close()
    assert sorted(ns for ns, _ in watch.writes) == ["bench-11", "bench-12", "bench-13"], \
        "a resumed watch counted writes again"


def test_a_watch_that_cannot_go_on_says_so() -> None:
    """A 410 (the resourceVersion compacted away, after a long stall): the writes after it are not seen, and the
    steady-state figures built on them must say they are incomplete, not read as token requests that wrote nothing."""
    fake = _serve([_write(11)], [(200, [_write(11), {"type": "ERROR", "object": failure_status(410, "Expired")}])])
    watch = _writes_watch(fake)
    try:
        wait_for(lambda: getattr(watch, "failure", None) is not None, timeout=5, what="the failure noted")
    finally:
        watch.stop()
        fake.server.shutdown()
        fake.server.server_close()
    assert watch.failure is not None and "410" in watch.failure, watch.failure
