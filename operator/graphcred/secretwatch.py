"""Notice changes to credential Secrets (rotation) and deletions of token Secrets, cheaply.

A metadata-only watch (`as=PartialObjectMetadata`): the apiserver sends names and resourceVersions, never Secret
data, so the operator neither polls Secrets nor holds any Secret's data in memory. Events go to a callback
(name, namespace, resourceVersion, deleted); the controller decides whether anyone cares.

The watch runs in a thread with the blocking client; reconnects resume from the last resourceVersion, and a
"410 Gone" starts over with a fresh list (whose items are reported too, the callback filters by version).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
METADATA_ONLY_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
Callback = Callable[[str, str, str, bool], None]  # namespace, name, resourceVersion, deleted


class SecretMetadataWatch:
    def __init__(self, api: client.ApiClient, callback: Callback, namespace: str | None = None,
                 server_timeout: int = 300) -> None:
        self.core = client.CoreV1Api(api)
        self.callback = callback
        self.namespace = namespace
        self.server_timeout = server_timeout
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"secret-watch:{namespace or '*'}", daemon=True)
        self.ready = threading.Event()  # set once the first list has been read

    def start(self) -> SecretMetadataWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # best effort to unblock the reader
                response.shutdown()
        self._thread.join(timeout=5)

    def _list(self, **kwargs: Any) -> Any:
        headers = {"Accept": METADATA_ONLY}
        if self.namespace:
            return self.core.list_namespaced_secret(self.namespace, _preload_content=False, _headers=headers,
                                                    **kwargs)
        return self.core.list_secret_for_all_namespaces(_preload_content=False, _headers=headers, **kwargs)

    def _watch(self, resource_version: str) -> Any:
        headers = {"Accept": METADATA_ONLY_WATCH}
        kwargs: dict[str, Any] = {"watch": True, "resource_version": resource_version,
                                  "allow_watch_bookmarks": True, "timeout_seconds": self.server_timeout,
                                  "_request_timeout": (10, self.server_timeout + 30)}
        if self.namespace:
            return self.core.list_namespaced_secret(self.namespace, _preload_content=False, _headers=headers,
                                                    **kwargs)
        return self.core.list_secret_for_all_namespaces(_preload_content=False, _headers=headers, **kwargs)

    def _relist(self) -> str:
        resp = self._list()
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        for item in body.get("items") or []:
            meta = item["metadata"]
            self.callback(meta["namespace"], meta["name"], str(meta.get("resourceVersion", "")), False)
        return str(body["metadata"]["resourceVersion"])

    def _run(self) -> None:
        resource_version: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                    self.ready.set()
                self._response = self._watch(resource_version)
                for line in iter_resp_lines(self._response):  # type: ignore[no-untyped-call]
                    if self._stop.is_set():
                        return
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    meta = obj.get("metadata") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            resource_version = None  # too old: list again
                        break
                    resource_version = str(meta.get("resourceVersion") or resource_version)
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self.callback(meta["namespace"], meta["name"], resource_version, kind == "DELETED")
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the watch must outlive apiserver restarts
                if self._stop.is_set():
                    return
                failures += 1
                status = getattr(exc, "status", None)
                if status == 410:
                    resource_version = None
                delay = min(30.0, 0.5 * 2 ** min(failures, 6))
                log.warning("secret watch interrupted (%s%s); reconnecting in %.1f s", type(exc).__name__,
                            f" {status}" if status else "", delay)
                self._stop.wait(delay)
            finally:
                response, self._response = self._response, None
                if response is not None:
                    response.release_conn()
