"""With --watch-consumers: follow pods, to find those that read a token Secret where no refresh reaches it.

Built on `kube.metawatch.MetadataWatch`: the same paged list (an expired continue token starts over; 100 pods a page,
not 500: they come whole), resume from the last resourceVersion, relist after "410 Gone", and jittered backoff
after every failure. Pods are
listed and watched whole (their spec is what matters), and each is classified (`consumers.pods.classify`) as it is read,
then dropped: the watch keeps no pod, only the current page while it reads it. A pod that reads no token Secret in
use (`relevant(namespace, secret)`: a credential writes it) costs that classification and nothing else; the others
reach `on_pod`. After each complete list `on_listed` names the pods it found, so that pods deleted while the watch
was away can be forgotten.

Who writes which Secret changes while the watch runs (a credential created after its pods, or observed at start
while the first list was on its way): `rescan(namespace)` lists that namespace again. The watch stream is cut for
it and resumed afterwards from its resourceVersion; the events it replays bring the namespace to the present.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from graphcred.consumers.pods import PodConsumer, PodKey, classify
from graphcred.kube.metawatch import WHOLE_OBJECTS, MetadataWatch, WatchInterrupted

log = logging.getLogger(__name__)

PodCallback = Callable[[str, str, PodConsumer | None], None]  # namespace, name, findings (None: gone or finished)
ListedCallback = Callable[[str | None, frozenset[PodKey]], None]  # namespace listed (None: all), pods found
Relevant = Callable[[str, str], bool]  # (namespace, Secret name): is it a token Secret in use?
# Pods come whole and parse to several times their JSON: small pages keep the first list's memory low
# (docs/design/2026-12-06-metadata-only-watches.md).
POD_PAGE_SIZE = 100


def _ignored(*_: Any) -> None:
    """MetadataWatch's callback: never called, this watch reports through on_pod and on_listed."""


class PodWatch(MetadataWatch):
    """The pods of one namespace (None: all), whole, classified as they are read: `on_pod` hears of each pod that
    reads a token Secret in use where no refresh reaches it (and of its end), `on_listed` of each complete list.
    Runs in its own thread (`start`, `stop`); `rescan` and `settled` are called from the event loop."""

    accept_list = WHOLE_OBJECTS
    accept_watch = WHOLE_OBJECTS

    def __init__(self, api: client.ApiClient, on_pod: PodCallback, on_listed: ListedCallback, relevant: Relevant,
                 namespace: str | None = None, server_timeout: int = 300, page_size: int = POD_PAGE_SIZE,
                 healthy_after: float = 10.0) -> None:
        super().__init__(api, _ignored, namespace, server_timeout=server_timeout, page_size=page_size,
                         healthy_after=healthy_after, resource="pods")
        self.on_pod, self.on_listed, self.relevant = on_pod, on_listed, relevant
        self._lock = threading.Lock()
        self._rescans: dict[str, None] = {}  # namespaces to list again, in the order asked
        self._listing = False  # a list (of all, or a rescan) is under way
        self._following = False  # the watch stream is open: a rescan cuts it
        self._interrupted = False  # ... and did: the stream's end is not a failure

    # --- called from other threads ------------------------------------------------------------------------------
    def rescan(self, namespace: str) -> None:
        """List `namespace` again soon: a Secret there has just become a token Secret in use."""
        with self._lock:
            self._rescans[namespace] = None
            if not self._following:
                return  # listing, or between two steps: the rescan comes before the next stream
            self._interrupted = True
            response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # best effort: else the rescan waits for the next event
                response.shutdown()

    def settled(self) -> bool:
        """Listed completely, and no list under way or due: what on_pod said adds up to the pods there are."""
        with self._lock:
            return (self.ready.is_set() and self._resource_version is not None and not self._listing
                    and not self._rescans)

    # --- the watch thread -----------------------------------------------------------------------------------------
    def _step(self) -> None:
        try:
            if self._resource_version is None:
                self._list_all()
            self._rescan_due()
            version = self._resource_version
            assert version is not None  # set by _list_all
            self._follow(version)
        finally:
            response, self._response = self._response, None
            if response is not None:
                response.release_conn()

    def _list_all(self) -> None:
        with self._lock:
            self._rescans.clear()  # this list covers every namespace asked for so far
            self._listing = True
        try:
            version, seen = self._scan(None)
            self._resource_version = version
        finally:
            with self._lock:
                self._listing = False
        self.ready.set()
        self.on_listed(self.namespace, seen)  # after the flags: a listener asking settled() hears True

    def _rescan_due(self) -> None:
        while True:
            with self._lock:
                self._interrupted = False
                if not self._rescans:
                    return
                namespace = next(iter(self._rescans))
                del self._rescans[namespace]
                self._listing = True
            try:
                _, seen = self._scan(namespace)
            except BaseException:
                with self._lock:
                    self._rescans[namespace] = None  # again, after the backoff
                raise
            finally:
                with self._lock:
                    self._listing = False
            self.on_listed(namespace, seen)

    def _scan(self, namespace: str | None) -> tuple[str, frozenset[PodKey]]:
        """List the pods (of `namespace`, or all the watch covers), page by page, reporting each that reads a token
        Secret in use. Returns the list's resourceVersion and the pods reported."""
        started = time.monotonic()
        seen: set[PodKey] = set()
        token: str | None = None
        version, pages, pods = "", 0, 0
        while True:
            found, page_version, token, count = self._read_pods(token, namespace)
            pages, pods = pages + 1, pods + count
            version = version or page_version  # every page of one list has the first page's version
            for key, consumer in found:
                if consumer is not None:
                    self.on_pod(key[0], key[1], consumer)
                    seen.add(key)
            if not token:
                break
            if self._stop.is_set():
                raise WatchInterrupted("stopped during a list")
        log.info("pod watch: listed %d pods%s in %d page(s) in %.1f s; %d read a token Secret where no refresh "
                 "reaches them", pods, f" in {namespace}" if namespace else "", pages, time.monotonic() - started,
                 len(seen))
        return version, frozenset(seen)

    def _read_pods(self, token: str | None, namespace: str | None
                   ) -> tuple[list[tuple[PodKey, PodConsumer | None]], str, str, int]:
        """One page, classified: the pods that read a token Secret in use, the list's resourceVersion, the next
        continue token, and how many pods the page held. The parsed page lives only inside this call."""
        items, version, next_token = self._fetch_page(token, namespace)
        found = [c for c in (classify(pod, self.relevant) for pod in items) if c is not None]
        return found, version, next_token, len(items)

    def _watch(self, resource_version: str) -> Any:
        response = super()._watch(resource_version)
        with self._lock:  # a rescan asked for while the stream was opening: cut it at once, not at its next event
            self._response = response
            cut = self._interrupted
        if cut:
            with contextlib.suppress(Exception):
                response.shutdown()
        return response

    def _follow(self, resource_version: str) -> None:
        with self._lock:
            if self._rescans:
                return  # asked for while this step listed: serve it before opening a stream
            self._following = True
        try:
            super()._follow(resource_version)
        except Exception:
            with self._lock:
                interrupted, self._interrupted = self._interrupted, False
            if not interrupted or self._stop.is_set():
                raise
            log.debug("pod watch: stream cut to list %s again", ", ".join(self._rescans) or "a namespace")
        finally:
            with self._lock:
                self._following = False

    def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            super()._event(event)  # raises WatchInterrupted
            return
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if version:
            self._resource_version = version
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: the version is all it brings
        found = classify(obj, self.relevant)
        if found is not None:
            (namespace, name), consumer = found
            self.on_pod(namespace, name, None if kind == "DELETED" else consumer)
