"""`graphcred status`, `renew` and `inspect secret` (also `kubectl graphcred ...`): the Kubernetes calls, made as the
user of the current kubeconfig context, like kubectl. What they show is rendered by opsview.py.

Exit codes: 0 done; 1 the credential failed (renew: not renewed, or renewed but not Ready; inspect: no token to
decode); 2 usage; 3 timed out waiting for the operator (renew --wait); 4 the cluster refused or could not be
reached (not found, forbidden, no connection, no kubeconfig).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kubernetes import client, config

from . import opsview
from .config import SERVICE_ACCOUNT_DIR, RunConfig
from .model import GROUP, PLURAL, VERSION
from .secret import RENEW_ANNOTATION

OK, FAILED, USAGE, TIMED_OUT, CLUSTER = 0, 1, 2, 3, 4
TIMEOUT = (10.0, 30.0)  # (connect, read) seconds per call
POLL_SECONDS = 0.5
LIST_ABOVE = 20  # waiting on more objects than this in a namespace: one list per poll instead of one get each

Clock = Callable[[], dt.datetime]


class OpsError(Exception):
    """A failure to report in one line, with its exit code. Never carries a token or a response body."""

    def __init__(self, message: str, code: int = CLUSTER) -> None:
        super().__init__(message)
        self.code = code


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _api_error(what: str, exc: Exception) -> OpsError:
    """One line for a failed call: its HTTP status and the apiserver's Status message (which names the object and
    the user, never data), or the kind of connection failure."""
    if isinstance(exc, client.ApiException):
        detail = ""
        with contextlib.suppress(ValueError, AttributeError):
            detail = str(json.loads(exc.body or "{}").get("message") or "")
        return OpsError(f"{what}: HTTP {exc.status} {exc.reason}" + (f": {detail}" if detail else ""))
    return OpsError(f"{what}: cannot reach the cluster ({type(exc).__name__})")


@dataclass
class Cluster:
    """The API as the kubeconfig's user, and the namespace commands default to."""

    api: client.ApiClient
    namespace: str

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None,
                namespace: str | None = None) -> Cluster:
        """Like kubectl: --kubeconfig, else $KUBECONFIG, else ~/.kube/config; in a pod without any of them, its
        ServiceAccount. The namespace: -n, else the context's (the pod's), else `default`."""
        configuration = client.Configuration()
        try:
            if _kubeconfig_given(kubeconfig, context) or not RunConfig.in_cluster():
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, context=context, client_configuration=configuration)
                default = _context_namespace(kubeconfig, context)
            else:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                default = (Path(SERVICE_ACCOUNT_DIR) / "namespace").read_text().strip()
        except (config.ConfigException, OSError) as exc:
            raise OpsError(f"cannot load the kubeconfig: {exc}") from None
        return cls(client.ApiClient(configuration), namespace or default or "default")

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
            try:
                return json.loads(resp.data)
            finally:
                resp.release_conn()
        except Exception as exc:  # noqa: BLE001 - an HTTP error or urllib3's connection errors: one line each
            raise _api_error(what, exc) from None

    def credential(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or self.namespace
        result: dict[str, Any] = self._call(f"get graphappcredential {ns}/{name}",
                                            self.custom.get_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                                            name)
        return result

    def credentials(self, selector: str | None, all_namespaces: bool) -> list[dict[str, Any]]:
        kwargs = {"label_selector": selector} if selector else {}
        if all_namespaces:
            found = self._call("list graphappcredentials", self.custom.list_cluster_custom_object, GROUP, VERSION,
                               PLURAL, **kwargs)
        else:
            found = self._call(f"list graphappcredentials in {self.namespace}",
                               self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                               **kwargs)
        return list(found.get("items") or [])

    def events_of(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        meta = obj["metadata"]
        found = self._call(f"list events in {meta['namespace']}", self.core.list_namespaced_event, meta["namespace"],
                           field_selector=f"involvedObject.uid={meta['uid']}")
        return list(found.get("items") or [])

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        return list(self._call(f"list pods in {namespace}", self.core.list_namespaced_pod, namespace)
                    .get("items") or [])

    def secret(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(f"get secret {self.namespace}/{name}", self.core.read_namespaced_secret,
                                            name, self.namespace)
        return result

    def annotate(self, namespace: str, name: str, key: str, value: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(
            f"annotate graphappcredential {namespace}/{name}", self.custom.patch_namespaced_custom_object, GROUP,
            VERSION, namespace, PLURAL, name, {"metadata": {"annotations": {key: value}}},
            _content_type="application/merge-patch+json")
        return result


def _kubeconfig_given(kubeconfig: str | None, context: str | None) -> bool:
    """As client-go decides: a kubeconfig named or found wins over the pod's ServiceAccount."""
    return bool(kubeconfig or context or os.environ.get("KUBECONFIG")
                or Path("~/.kube/config").expanduser().exists())


def _context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    contexts, active = config.list_kube_config_contexts(kubeconfig)  # type: ignore[no-untyped-call]
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return ((chosen or {}).get("context") or {}).get("namespace")


def _print(out: IO[str], text: str) -> None:
    out.write(text)
    out.flush()


# --- status ---------------------------------------------------------------------------------------------------

def status(cluster: Cluster, name: str, *, output: str = "text", out: IO[str], clock: Clock = _now) -> int:
    obj = cluster.credential(name)
    events = cluster.events_of(obj)
    pods: list[dict[str, Any]] | None = None
    pods_error = None
    try:
        pods = cluster.pods(cluster.namespace)
    except OpsError as exc:  # pods are a bonus: without the right to list them, show the rest
        pods_error = f"cannot tell ({exc})"
    view = opsview.status_view(obj, events, pods, pods_error)
    now = clock()
    if output == "json":
        _print(out, json.dumps(opsview.status_json(view, now), indent=2) + "\n")
    else:
        _print(out, opsview.render_status(view, now))
    return OK


# --- renew ----------------------------------------------------------------------------------------------------

def renew_value(now: dt.datetime) -> str:
    """RFC 3339 with microseconds: two requests in one second are two new values."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Request:
    namespace: str
    name: str
    failures_before: int
    result: opsview.RenewResult | None = None


def _targets(cluster: Cluster, names: Sequence[str], selector: str | None,
             all_namespaces: bool) -> list[dict[str, Any]]:
    if names:
        return [cluster.credential(n) for n in names]  # all found before any is annotated
    return cluster.credentials(selector, all_namespaces)


def renew(cluster: Cluster, names: Sequence[str], *, selector: str | None = None, all_namespaces: bool = False,
          wait: bool = True, timeout: float = 60.0, out: IO[str], err: IO[str], clock: Clock = _now,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Renew the named credentials, or (no names) those matching `selector`, all if None, in the namespace or
    `all_namespaces`."""
    objects = _targets(cluster, names, selector, all_namespaces)
    if not objects:
        where = "any namespace" if all_namespaces else f"namespace {cluster.namespace}"
        _print(err, f"no GraphAppCredentials found in {where}\n")
        return OK
    value = renew_value(clock())
    requests = []
    for obj in objects:
        meta, status_ = obj["metadata"], obj.get("status") or {}
        failures = status_.get("consecutiveFailures")
        cluster.annotate(meta["namespace"], meta["name"], RENEW_ANNOTATION, value)
        requests.append(_Request(meta["namespace"], meta["name"], failures if isinstance(failures, int) else 0))
        _print(out, f"{meta['namespace']}/{meta['name']}: renew requested ({RENEW_ANNOTATION}={value})\n")
    if not wait:
        return OK
    return _wait(cluster, requests, value, timeout, out, clock, sleep)


def _wait(cluster: Cluster, requests: list[_Request], value: str, timeout: float, out: IO[str], clock: Clock,
          sleep: Callable[[float], None]) -> int:
    deadline = time.monotonic() + timeout
    pending = list(requests)
    while pending:
        for request, obj in _current(cluster, pending):
            request.result = opsview.renew_result(obj, value, request.failures_before, clock())
            if request.result is not None:
                _print(out, f"{request.namespace}/{request.name}: {request.result.message}\n")
        pending = [r for r in pending if r.result is None]
        if pending and time.monotonic() >= deadline:
            for request in pending:
                _print(out, f"{request.namespace}/{request.name}: no answer from the operator within {timeout:g} s "
                       "(is it running, and watching this namespace? The request stays: it is served when the "
                       "operator sees it)\n")
            break
        if pending:
            sleep(POLL_SECONDS)
    if any(r.result is not None and not r.result.ok for r in requests):
        return FAILED
    return TIMED_OUT if pending else OK


def _current(cluster: Cluster, pending: Sequence[_Request]) -> Iterable[tuple[_Request, dict[str, Any]]]:
    """The objects awaited, as they stand: one get each, or one list per namespace when many are awaited."""
    by_namespace: dict[str, list[_Request]] = {}
    for request in pending:
        by_namespace.setdefault(request.namespace, []).append(request)
    for namespace, requests in by_namespace.items():
        if len(requests) > LIST_ABOVE:
            listed = {o["metadata"]["name"]: o for o in Cluster(cluster.api, namespace).credentials(None, False)}
            yield from ((r, listed[r.name]) for r in requests if r.name in listed)
        else:
            yield from ((r, cluster.credential(r.name, namespace)) for r in requests)


# --- inspect secret -------------------------------------------------------------------------------------------

def inspect_secret(cluster: Cluster, name: str, *, output: str = "text", out: IO[str], err: IO[str],
                   clock: Clock = _now) -> int:
    try:
        view = opsview.token_view(cluster.secret(name))
    except opsview.InspectError as exc:
        _print(err, f"secret {cluster.namespace}/{name}: {exc}\n")
        return FAILED
    if output == "json":
        _print(out, json.dumps(opsview.token_json(view), indent=2) + "\n")
    else:
        _print(out, opsview.render_token(view, clock()))
    return OK
