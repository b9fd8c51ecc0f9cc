"""The GraphAppCredentials (whole) and the Namespaces (metadata, for their labels), watched by graphcred itself and
handed to the controller, the newest of each object.

kopf's watch ran every event through its handler machinery: per event a diff against a stored "essence" (a deep copy
of the object), three object loggers, a progress state, a throttler and a patch, for handlers graphcred never asked
to detect changes for; and a memory kept per object for the process's life. At 1,000 credentials that was a tenth
of the operator's CPU in steady state and a seventh while converging, and a restart handed every credential and
every namespace of the cluster through it (py-spy; docs/design/2026-12-06-lean-at-scale.md). `ObjectWatch` is
`MetadataWatch`'s list-then-watch (paged list, resume from the last resourceVersion, relist after "410 Gone"
reporting what was deleted meanwhile, jittered backoff) handing over what it lists and watches.

Between the watch's thread and the event loop sits `LatestPerKey`: what waits for the loop is at most one body per
credential, the newest. A burst (an operator start, a namespace applied at once, a relist) costs the loop one short
call per credential, and memory for one body per credential at most however many events arrive meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client

from graphcred.kube.metawatch import METADATA_ONLY, METADATA_ONLY_WATCH, WHOLE_OBJECTS, Entry, Item, MetadataWatch

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name
Deliver = Callable[[Key, dict[str, Any] | None], None]  # the body as listed, added or modified; None: deleted
DRAIN = 256  # bodies handed to the controller per turn of the event loop: a burst does not hold the loop for long


class LatestPerKey:
    """Watch events on their way from a thread to the event loop, coalesced: per credential only the newest waits
    (a newer body replaces the one waiting; a deletion replaces both). `put` from any thread; `deliver` is called on
    `loop`, in the order the credentials first had something waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Deliver, kind: str = "GraphAppCredential") -> None:
        self._loop, self._deliver, self.kind = loop, deliver, kind
        self._lock = threading.Lock()
        self._pending: dict[Key, dict[str, Any] | None] = {}
        self._scheduled = False
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, key: Key, body: dict[str, Any] | None) -> None:
        with self._lock:
            if self._closed:
                return
            self._pending[key] = body
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nothing will drain, and nothing is scheduled
            with self._lock:
                self._scheduled = False
            raise

    def close(self) -> None:
        """Hand nothing more over (the operator is stopping): what waits is dropped, later puts are ignored."""
        with self._lock:
            self._closed = True
            self._pending.clear()

    def _drain(self) -> None:
        with self._lock:
            batch = [(key, self._pending.pop(key)) for key in list(itertools.islice(self._pending, DRAIN))]
            more = self._scheduled = bool(self._pending)
        if more:
            self._loop.call_soon(self._drain)  # the rest after whatever else is ready: passes go on meanwhile
        for key, body in batch:
            try:
                self._deliver(key, body)
            except Exception as exc:  # noqa: BLE001 - one object's trouble must not drop the others of the batch
                log.error("%s %s/%s could not be taken in: %s", self.kind, key[0], key[1], type(exc).__name__)


class ObjectWatch(MetadataWatch):
    """One resource's objects, each change reported to `feed` (as the object listed or watched, or None when
    deleted). Runs in its own thread (`start`, `stop`). `credentials` and `namespaces` make the two graphcred uses."""

    def __init__(self, api: client.ApiClient, feed: LatestPerKey, namespace: str | None = None, *,
                 resource: str, whole: bool, server_timeout: int = 300, healthy_after: float = 10.0) -> None:
        super().__init__(api, self._changed, namespace, server_timeout=server_timeout, healthy_after=healthy_after,
                         resource=resource)
        self.feed = feed
        self.accept_list, self.accept_watch = (WHOLE_OBJECTS, WHOLE_OBJECTS) if whole \
            else (METADATA_ONLY, METADATA_ONLY_WATCH)
        # the objects of the page being compared, or of the event being read: what `_changed` reports
        self._bodies: dict[Key, dict[str, Any]] = {}

    @classmethod
    def credentials(cls, api: client.ApiClient, feed: LatestPerKey, namespace: str | None = None) -> ObjectWatch:
        """The GraphAppCredentials of `namespace` (None: all), whole."""
        return cls(api, feed, namespace, resource="graphappcredentials", whole=True)

    @classmethod
    def namespaces(cls, api: client.ApiClient, feed: LatestPerKey) -> ObjectWatch:
        """The Namespaces, metadata only (their labels are what a ClusterGraphApp's policy selects on); keyed
        ("", name)."""
        return cls(api, feed, resource="namespaces", whole=False)

    def _read_page(self, token: str | None) -> tuple[list[Entry], str, str]:
        items, version, next_token = self._fetch_page(token)
        self._bodies = {}
        listed: list[Entry] = []
        for obj in items:
            item = _key_of(obj)
            if item is not None:
                self._bodies[item[0], item[1]] = obj
                listed.append((*item, None))
        return listed, version, next_token

    def _relist(self) -> str:
        try:
            return super()._relist()
        finally:
            self._bodies = {}  # the last page's: reported by now

    def _event(self, event: dict[str, Any]) -> None:
        obj = event.get("object")
        item = _key_of(obj) if event.get("type") in ("ADDED", "MODIFIED") else None
        self._bodies = {(item[0], item[1]): obj} if item is not None and isinstance(obj, dict) else {}
        try:
            super()._event(event)
        finally:
            self._bodies = {}

    def _changed(self, namespace: str, name: str, resource_version: str, deleted: bool) -> None:
        key = (namespace, name)
        if deleted:
            self.feed.put(key, None)
            return
        body = self._bodies.get(key)
        if body is not None:
            self.feed.put(key, body)


def _key_of(obj: Any) -> Item | None:
    """(namespace, name, resourceVersion) of a listed or watched object ("" for the namespace of a cluster-scoped
    one), None for one without a name."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return None
    namespace, name = meta.get("namespace") or "", meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not name:
        return None
    return namespace, name, str(meta.get("resourceVersion") or "")
