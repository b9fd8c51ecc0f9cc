"""Notice changes to credential Secrets (rotation) and deletions of token Secrets, cheaply; and, with workload
identity, changes to ServiceAccounts (their client-id annotation added or removed).

A metadata-only list and watch (`as=PartialObjectMetadata`): the apiserver sends metadata, never Secret data. Of
that metadata only namespace, name and resourceVersion are kept; annotations (kubectl's last-applied-configuration
holds a copy of the Secret's data), labels and managedFields are dropped as each page or event is read. Events go
to a callback (namespace, name, resourceVersion, deleted); the controller decides whether anyone cares. The same
watch follows ServiceAccounts (`resource="serviceaccounts"`): a changed resourceVersion is all the controller needs
to wake a credential, which then reads the ServiceAccount itself.

The watch runs in a thread with the blocking client. The list is paged (`limit`/`continue`), so a cluster with
tens of thousands of Secrets costs one page of memory at a time, not the whole list; an expired continue token
starts the list over. Reconnects resume from the last resourceVersion; a "410 Gone" lists again, and because the
watch keeps a compact record of the Secrets it knows, a Secret deleted while it was away is reported deleted.
Every failure (an exception, an ERROR event, a stream that ends at once) backs off, with jitter, before retrying.
That record also answers the reconciler (`Directory`): whether a Secret exists, so that a read can be skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from graphcred.api.keys import API_VERSION, EXPIRES_ON_ANNOTATION, KIND, PLURAL
from graphcred.base import backoff as exponential
from graphcred.kube.calls import refused
from graphcred.kube.errors import translated

log = logging.getLogger(__name__)

METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
METADATA_ONLY_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
WHOLE_OBJECTS = "application/json"  # what subclasses that need more than metadata ask for (pods, credentials)
Callback = Callable[[str, str, str, bool], None]  # namespace, name, resourceVersion, deleted
PAGE_SIZE = 500  # ~100 KiB of metadata a page, larger with big annotations
LIST_TIMEOUT = (10.0, 60.0)  # connect, read: one page
Item = tuple[str, str, str]  # namespace, name, resourceVersion
Marks = tuple[str, str]  # a token Secret's controlling GraphAppCredential's uid, and its expires-on annotation
Entry = tuple[str, str, str, Marks | None]  # an Item, and a token Secret's marks
_MARK_LENGTH = 64  # longer values are no uid and no timestamp: not kept (a tenant may annotate any Secret)


@dataclass(frozen=True)
class _Resource:
    label: str  # in logs and the thread's name
    plural: str  # in logs
    list_namespaced: str  # the API paths listed and watched: in one namespace ("": cluster-scoped), in all
    list_all: str


RESOURCES = {
    "secrets": _Resource("secret", "Secrets", "/api/v1/namespaces/{namespace}/secrets", "/api/v1/secrets"),
    "serviceaccounts": _Resource("serviceaccount", "ServiceAccounts", "/api/v1/namespaces/{namespace}/serviceaccounts",
                                 "/api/v1/serviceaccounts"),
    # whole objects, not metadata: only podwatch.PodWatch lists these (it needs the spec)
    "pods": _Resource("pod", "Pods", "/api/v1/namespaces/{namespace}/pods", "/api/v1/pods"),
    # objectwatch.ObjectWatch: whole GraphAppCredentials and the Namespaces' metadata, for their labels
    "graphappcredentials": _Resource("credential", "GraphAppCredentials",
                                     f"/apis/{API_VERSION}/namespaces/{{namespace}}/{PLURAL}",
                                     f"/apis/{API_VERSION}/{PLURAL}"),
    "namespaces": _Resource("namespace", "Namespaces", "", "/api/v1/namespaces"),
}


def backoff(failures: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Delay before retrying after `failures` (1, 2, ...) failures in a row: the reconciler's exponential backoff,
    jittered between half and all of it (watches and replicas that failed together do not retry together), with a
    watch's shorter base and cap."""
    return exponential.backoff(failures, base=base, cap=cap)


class KnownObjects:
    """The objects the watch has seen: (namespace, name) -> resourceVersion, as one dict keyed "namespace/name"
    (neither may contain "/"); for a token Secret the value is (resourceVersion, *marks), one value so that a reader
    on the event loop never pairs one state's version with another's marks. About 170 bytes a Secret: ~8 MiB for
    50,000 (see tests/unit/test_secretwatch.py), and about 150 more per token Secret."""

    __slots__ = ("_versions",)

    def __init__(self) -> None:
        self._versions: dict[str, str | tuple[str, str, str]] = {}

    def __len__(self) -> int:
        return len(self._versions)

    def __iter__(self) -> Iterator[Item]:
        for key, value in self._versions.items():
            namespace, name = key.split("/", 1)
            yield namespace, name, value if isinstance(value, str) else value[0]

    def put(self, namespace: str, name: str, version: str, marks: Marks | None = None) -> None:
        self._versions[f"{namespace}/{name}"] = version if marks is None else (version, *marks)

    def pop(self, namespace: str, name: str) -> str | None:
        return _version_of(self._versions.pop(f"{namespace}/{name}", None))

    def get(self, namespace: str, name: str) -> str | None:
        return _version_of(self._versions.get(f"{namespace}/{name}"))

    def seen(self, namespace: str, name: str) -> Seen:
        """The version and a token Secret's marks, read at once."""
        value = self._versions.get(f"{namespace}/{name}")
        return Seen(value) if value is None or isinstance(value, str) else Seen(*value)

    def update(self, other: KnownObjects) -> None:
        self._versions.update(other._versions)


def _version_of(value: str | tuple[str, str, str] | None) -> str | None:
    """The resourceVersion of a `KnownObjects` value (a version, or a token Secret's version and marks)."""
    return value if value is None or isinstance(value, str) else value[0]


@dataclass(frozen=True)
class Seen:
    """What a watch knows of one object: its resourceVersion as last seen, None if it has not seen it (absent); for
    a token Secret, the uid of the GraphAppCredential controlling it and its expires-on annotation, as seen."""

    version: str | None
    owner: str | None = None
    expires_on: str | None = None


class Directory:
    """What the Secret watches know of Secrets, for the reconciler: whether one exists, and its resourceVersion.

    Lets a pass skip reads whose answer the watch already has: no read of a token Secret that does not exist
    before creating it, no second read of a credential Secret whose version a running pass has read. An answer can
    be a moment old (the watch lags the apiserver); every use is safe against that: a create that finds the Secret
    after all answers AlreadyExists and is read then, and a credential Secret's newer version wakes its readers.
    Read on the event loop while the watch threads write: single dict lookups, atomic in CPython, checked against
    a list beginning meanwhile (`MetadataWatch.seen`)."""

    def __init__(self) -> None:
        self._watches: list[MetadataWatch] = []

    def add(self, watch: MetadataWatch) -> None:
        self._watches.append(watch)

    def lookup(self, namespace: str, name: str) -> Seen | None:
        """What the watch of `namespace` knows of Secret `name`; None if no watch has a whole list of it now."""
        for watch in self._watches:
            if watch.namespace in (None, namespace):
                return watch.seen(namespace, name)
        return None


class WatchInterrupted(Exception):
    """The watch stream ended badly without an exception of its own: an ERROR event, or an early end."""

    def __init__(self, what: str, status: int | None = None) -> None:
        super().__init__(what)
        self.status = status


def _item(obj: dict[str, Any]) -> Item:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or ""), str(meta.get("resourceVersion") or "")


def _marks(obj: dict[str, Any]) -> Marks | None:
    """A token Secret's marks: the uid of the GraphAppCredential that controls it and its expires-on annotation,
    both as short strings; None for any other object. They let a pass after a restart trust, without reading it,
    a token Secret that holds the token its status describes (`TokenSecretWriter.target`)."""
    meta = obj.get("metadata") or {}
    expires = (meta.get("annotations") or {}).get(EXPIRES_ON_ANNOTATION)
    if not isinstance(expires, str) or len(expires) > _MARK_LENGTH:
        return None
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            uid = ref.get("uid")
            if (ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION and isinstance(uid, str)
                    and 0 < len(uid) <= _MARK_LENGTH):
                return uid, expires
            return None
    return None


def _entry(obj: dict[str, Any]) -> Entry:
    return (*_item(obj), _marks(obj))


class MetadataWatch:
    """A list-then-watch of one resource (Secrets by default, or ServiceAccounts) in one namespace or all, in a
    thread of its own: `start()`, `stop()`. Reports each change of an object to `callback` (namespace, name,
    resourceVersion, deleted), keeps what it has seen for `seen()` (the `Directory`), and sets `ready` once the
    first list is read. Metadata only, unless a subclass asks for more (`accept_list`, `accept_watch`: the pod
    watch). Its failures (anything, ERROR events, a stream that ends at once) are logged and retried with backoff;
    only a 410 lists again."""

    accept_list = METADATA_ONLY  # what the list and the watch ask the apiserver for (subclasses: whole objects)
    accept_watch = METADATA_ONLY_WATCH

    def __init__(self, api: client.ApiClient, callback: Callback, namespace: str | None = None,
                 server_timeout: int = 300, page_size: int = PAGE_SIZE, healthy_after: float = 10.0,
                 resource: str = "secrets") -> None:
        if resource not in RESOURCES:
            raise ValueError(f"cannot watch {resource}: only {', '.join(RESOURCES)}")
        self.resource = RESOURCES[resource]
        self.api = api
        self.callback = callback
        self.namespace = namespace
        self.server_timeout = server_timeout
        self.page_size = page_size
        # a stream that ends by itself sooner than this (or than server_timeout) counts as a failure
        self.healthy_after = healthy_after
        self._stop = threading.Event()
        self._response: Any = None
        self._resource_version: str | None = None
        self._known = KnownObjects()
        self._thread = threading.Thread(target=self._run, name=f"{self.resource.label}-watch:{namespace or '*'}",
                                        daemon=True)
        self.ready = threading.Event()  # set once the first list has been read
        self._listing = True  # a list is being read: `_known` is incomplete (it is emptied as the list is compared)

    def start(self) -> MetadataWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # best effort to unblock the reader
                response.shutdown()
        self._thread.join(timeout=5)

    def seen(self, namespace: str, name: str) -> Seen | None:
        """What the watch knows of one object; None while it has no whole list (before the first, during a new
        one): an object it has not seen may exist then. Called from the event loop while the watch thread runs: a
        list that began (or ran) between the check and the lookup empties the record it looked in, so both are
        checked again after it."""
        known = self._known
        if self._listing:
            return None
        seen = known.seen(namespace, name)
        if self._listing or self._known is not known:
            return None
        return seen

    # --- requests (tests subclass these to hold or count them) --------------------------------------------------
    def _list_page(self, token: str | None, namespace: str | None = None) -> Any:
        query = {"limit": str(self.page_size), **({"continue": token} if token else {})}
        return self._list(self.accept_list, query, LIST_TIMEOUT, namespace)

    def _watch(self, resource_version: str) -> Any:
        query = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(self.server_timeout)}
        return self._list(self.accept_watch, query, (10.0, self.server_timeout + 30.0))

    def _list(self, accept: str, query: dict[str, str], timeout: tuple[float, float],
              namespace: str | None = None) -> Any:
        """One list or watch request of the resource, in `namespace` (default: the watch's), or in all of them if
        neither is set; the raw response (urllib3's, not read yet), an ApiException for an answer other than 2xx.

        Built and sent by the client's ApiClient (server, credentials, TLS) as its generated API classes do with
        `_preload_content=False`, without them: importing `CoreV1Api` alone costs 22 MiB of memory (its methods'
        pydantic signatures) for nothing the watches use (docs/design/2026-12-06-lean-at-scale.md, fifth step)."""
        namespace = namespace or self.namespace
        path = self.resource.list_namespaced if namespace and self.resource.list_namespaced else self.resource.list_all
        _, url, headers, body, form = self.api.param_serialize(
            "GET", path, path_params={"namespace": namespace} if "{namespace}" in path else None,
            query_params=list(query.items()), header_params={"Accept": accept}, auth_settings=["BearerToken"])
        answer = self.api.call_api("GET", url, header_params=headers, body=body, post_params=form,
                                   _request_timeout=timeout)
        if not 200 <= answer.status <= 299:
            refused(answer)
        return answer.response

    # --- list -----------------------------------------------------------------------------------------------
    def _fetch_page(self, token: str | None, namespace: str | None = None
                    ) -> tuple[list[dict[str, Any]], str, str]:
        """One page, parsed: its items, the list's resourceVersion, the next continue token. The response is
        released at once (and `stop()` can cut it while it is read); callers keep only what they need of the items."""
        self._response = response = self._list_page(token, namespace)
        try:
            if self._stop.is_set():  # as in `_follow`: a stop that came while the request was on its way
                raise WatchInterrupted("stopped during a list")
            body = json.loads(response.data)
        finally:
            self._response = None
            response.release_conn()
        meta = body.get("metadata") or {}
        return body.get("items") or [], str(meta.get("resourceVersion") or ""), str(meta.get("continue") or "")

    def _read_page(self, token: str | None) -> tuple[list[Entry], str, str]:
        """One page: its items (namespace, name, resourceVersion and a token Secret's marks only), the list's
        resourceVersion, the next continue token. The parsed page lives only inside this call."""
        items, version, next_token = self._fetch_page(token)
        return [_entry(obj) for obj in items], version, next_token

    def _relist(self) -> str:
        """List every object, page by page. Reports the objects new or changed since the last list (all of them
        the first time) and, as deleted, those known before and absent now (deleted while the watch was away).
        Returns the list's resourceVersion."""
        started = time.monotonic()
        self._listing = True
        previous, fresh = self._known, KnownObjects()
        token: str | None = None
        version, pages = "", 0
        try:
            while True:
                items, page_version, token = self._read_page(token)
                pages += 1
                version = version or page_version  # every page of one list has the first page's version
                for namespace, name, item_version, marks in items:
                    if previous.pop(namespace, name) != item_version:
                        self.callback(namespace, name, item_version, False)
                    fresh.put(namespace, name, item_version, marks)
                if not token:
                    break
                if self._stop.is_set():
                    raise WatchInterrupted("stopped during a list")
        except BaseException:
            previous.update(fresh)  # an unfinished list forgets nothing: the next one compares against it all
            raise
        for namespace, name, _ in previous:
            self.callback(namespace, name, version, True)
        log.info("%s watch: listed %d %s in %d page(s) in %.1f s; %d gone since the last list", self.resource.label,
                 len(fresh), self.resource.plural, pages, time.monotonic() - started, len(previous))
        self._known = fresh
        self._listing = False
        return version

    # --- watch ----------------------------------------------------------------------------------------------
    def _follow(self, resource_version: str) -> None:
        """Follow the watch until its stream ends. Returns if it ran its course; raises WatchInterrupted on an
        ERROR event or an end that came too soon (a stream that ends at once, again and again, is a failure)."""
        if self._stop.is_set():
            return
        opened = time.monotonic()
        self._response = self._watch(resource_version)
        # stop() sets the flag, then shuts down the stream it finds: a stop that came while this request was on its
        # way found none, and the stream would hold this thread until the server's timeout
        if self._stop.is_set():
            return
        for line in iter_resp_lines(self._response):  # type: ignore[no-untyped-call]
            if self._stop.is_set():
                return
            if line:
                self._event(json.loads(line))
        lasted = time.monotonic() - opened
        if lasted < min(self.healthy_after, self.server_timeout):
            raise WatchInterrupted(f"stream ended after {lasted:.1f} s")

    def _event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            # only the code and reason: a Status message is free text
            raise WatchInterrupted(f"ERROR event {code} {obj.get('reason') or ''}".rstrip(),
                                   code if isinstance(code, int) else None)
        namespace, name, version = _item(obj)
        if version:
            self._resource_version = version
        if kind in ("ADDED", "MODIFIED"):
            self._known.put(namespace, name, version, _marks(obj))
        elif kind == "DELETED":
            self._known.pop(namespace, name)
        else:
            return  # BOOKMARK: the version is all it brings
        self.callback(namespace, name, version, kind == "DELETED")

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._step()
                failures = 0
                continue
            except Exception as exc:  # noqa: BLE001 - the watch must outlive apiserver restarts
                if self._stop.is_set():
                    return
                failures += 1
                delay = self._failed(exc, failures)
            self._stop.wait(delay)  # outside the except block: the traceback (and its frames) is gone by now

    def _step(self) -> None:
        """List if there is no resourceVersion to resume from, then follow the watch until it ends."""
        try:
            if self._resource_version is None:
                self._resource_version = self._relist()
                self.ready.set()
            self._follow(self._resource_version)
        finally:
            response, self._response = self._response, None
            if response is not None:
                response.release_conn()

    def _failed(self, exc: Exception, failures: int) -> float:
        """Log a failure (its type and HTTP status, never a body) and return how long to wait before retrying."""
        if isinstance(exc, WatchInterrupted):
            status = exc.status
        else:
            error = translated(f"list {self.resource.plural}", exc)
            status = error.status if error is not None else None
        if status == 410:
            self._resource_version = None  # too old, or an expired continue token: list (again)
        what = str(exc) if isinstance(exc, WatchInterrupted) else type(exc).__name__ + (f" {status}" if status else "")
        delay = backoff(failures)
        (log.info if status == 410 else log.warning)(
            "%s watch interrupted (%s); %s in %.1f s", self.resource.label, what,
            "listing again" if self._resource_version is None else "reconnecting", delay)
        return delay

