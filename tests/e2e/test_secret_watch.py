"""The Secret metadata watch on the real apiserver: the list is paged, nothing of a Secret's data is kept, and a
Secret deleted while the watch was away (its resourceVersion compacted: 410 Gone) is reported deleted."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from graphcred.kube.metawatch import MetadataWatch
from graphcred_testbed.bed import Bed, wait_for

pytestmark = pytest.mark.bed

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
Event = tuple[str, str, str, bool]


class CountingApiClient(client.ApiClient):
    """A real client that also records the query of every Secret list request it sends (watches excluded)."""

    def __init__(self, configuration: client.Configuration) -> None:
        super().__init__(configuration)
        self.lists: list[dict[str, str]] = []

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path.endswith("/secrets") and query.get("watch") != "true":
            self.lists.append(query)
        return super().call_api(method, url, *args, **kwargs)


@pytest.fixture
def api(bed: Bed) -> Iterator[CountingApiClient]:
    assert bed.api is not None
    with CountingApiClient(bed.api.configuration) as counting:
        yield counting


def _strings(obj: Any, seen: set[int] | None = None) -> Iterator[str]:
    """Every string the watch holds on to, through its own (graphcred) objects and plain containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, str | bytes):
        yield obj if isinstance(obj, str) else obj.decode(errors="replace")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k, seen)
            yield from _strings(v, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            yield from _strings(v, seen)
    elif type(obj).__module__.startswith("graphcred"):
        for v in (*getattr(obj, "__dict__", {}).values(),
                  *(getattr(obj, s) for s in getattr(type(obj), "__slots__", ()) if hasattr(obj, s))):
            yield from _strings(v, seen)


def test_the_first_list_is_paged_and_keeps_no_secret_data(bed: Bed, namespace: str,
                                                           api: CountingApiClient) -> None:
    marker = f"password-{uuid.uuid4().hex}"
    names = [f"s{i:03d}" for i in range(120)]
    manifest = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": n, "namespace": namespace},
         "stringData": {"password": f"{marker}-{n}"}} for n in names]}
    bed.kubectl("apply", "-f", "-", input=json.dumps(manifest), timeout=120)  # client-side apply, as people do
    meta = bed.core.read_namespaced_secret(names[0], namespace).metadata
    annotation = (meta.annotations or {}).get(LAST_APPLIED, "") if meta else ""
    assert marker in annotation, "kubectl apply keeps the Secret's data in the annotation"

    events: list[Event] = []
    watch = MetadataWatch(api, lambda *e: events.append(e), namespace, page_size=50).start()
    try:
        assert watch.ready.wait(30), "the first list never completed"
        assert Counter(e[1] for e in events) == Counter(names), "each Secret reported once after the first list"
        assert [q.get("limit") for q in api.lists] == ["50", "50", "50"], api.lists
    finally:
        watch.stop()
    assert not [e for e in events if marker in repr(e)]
    assert not [s for s in _strings(watch) if marker in s], "Secret data retained by the watch"


class HeldWatch(MetadataWatch):
    """Reconnects only when let (its connection is down meanwhile, as during a network partition)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.let, self.held = threading.Event(), threading.Event()
        self.let.set()

    def _watch(self, resource_version: str) -> Any:
        if not self.let.is_set():
            self.held.set()
            self.let.wait()
        return super()._watch(resource_version)

    def stop(self) -> None:
        self.let.set()
        super().stop()


def _secret(bed: Bed, namespace: str, name: str) -> None:
    bed.core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name=name),
                                                                 string_data={"k": "v"}))


def _seen(events: list[Event], namespace: str, name: str, deleted: bool) -> bool:
    return any(e[0] == namespace and e[1] == name and e[3] == deleted for e in events)


def test_a_secret_deleted_while_the_watch_was_away_is_reported_deleted(bed: Bed, namespace: str,
                                                                        api: CountingApiClient) -> None:
    for name in ("keep", "gone"):
        _secret(bed, namespace, name)
    events: list[Event] = []
    # server_timeout=1: the apiserver ends each watch after a second, so the watch soon reaches a reconnect
    watch = HeldWatch(api, lambda *e: events.append(e), namespace, server_timeout=1)
    watch.start()
    try:
        assert watch.ready.wait(30), "the first list never completed"
        watch.let.clear()
        wait_for(watch.held.is_set, timeout=10, what="the watch to be between two connections")
        bed.core.delete_namespaced_secret("gone", namespace)
        _secret(bed, namespace, "new")
        # A restarted apiserver's watch cache begins at the current resourceVersion: the watch's own version is
        # now too old to resume from (410 Gone), as after any absence longer than the apiserver's history.
        bed.control_plane.restart_apiserver()
        lists = len(api.lists)
        watch.let.set()
        wait_for(lambda: _seen(events, namespace, "gone", True), timeout=30,
                 what="the Secret deleted in the gap to be reported deleted")
        assert _seen(events, namespace, "new", False)
        assert not _seen(events, namespace, "keep", True)
        assert len(api.lists) > lists, "listed again after 410 Gone"
    finally:
        watch.stop()
