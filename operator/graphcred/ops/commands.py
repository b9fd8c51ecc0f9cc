"""`graphcred status`, `renew`, `inspect secret` and `version` (also `kubectl graphcred ...`): the Kubernetes calls,
made as the user of the current kubeconfig context, like kubectl. What they show is rendered by `graphcred.ops.view`.

Exit codes: 0 done; 1 the credential failed (renew: not renewed, or renewed but not Ready; inspect: no token to
decode); 2 usage (also a label selector the apiserver cannot parse); 3 timed out waiting for the operator (renew
--wait); 4 the cluster refused or could not be reached (not found, forbidden, no connection, no kubeconfig).

Every line of text output passes through `printable`: names, messages and claims are the tenants' to choose, and a
terminal must not run what they wrote.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml
from kubernetes import client, config

from graphcred import __version__
from graphcred.api.keys import (
    APP_KIND,
    APP_PLURAL,
    APP_SHORT_NAMES,
    APP_SINGULAR,
    GROUP,
    KIND,
    PLURAL,
    RENEW_ANNOTATION,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from graphcred.api.model import DNS_SUBDOMAIN_PATTERN
from graphcred.base.times import rfc3339_micro
from graphcred.kube.connect import (
    SERVICE_ACCOUNT_DIR,
    in_cluster,
    kubeconfig_errors,
    kubeconfig_problem,
    kubeconfig_source,
)
from graphcred.ops import view as opsview
from graphcred.ops.view import printable

OK, FAILED, USAGE, TIMED_OUT, CLUSTER = 0, 1, 2, 3, 4
TIMEOUT = (10.0, 30.0)  # (connect, read) seconds per call
POLL_SECONDS = 0.5
LIST_ABOVE = 20  # waiting on more objects than this in a namespace: one list per poll instead of one get each

OPERATOR_LABEL = "app.kubernetes.io/name=graphcred"  # the chart's Deployment (`graphcred version`)
Clock = Callable[[], dt.datetime]
# what `status gac/NAME` and `inspect secret secret/NAME` accept before the slash, as kubectl does
KINDS = {
    "credential": {*SHORT_NAMES, SINGULAR, PLURAL, KIND.lower(), f"{SINGULAR}.{GROUP}", f"{PLURAL}.{GROUP}",
                   f"{KIND.lower()}.{GROUP}", f"{PLURAL}.{VERSION}.{GROUP}"},
    "app": {*APP_SHORT_NAMES, APP_SINGULAR, APP_PLURAL, APP_KIND.lower(), f"{APP_SINGULAR}.{GROUP}",
            f"{APP_PLURAL}.{GROUP}", f"{APP_PLURAL}.{VERSION}.{GROUP}"},
    "secret": {"secret", "secrets"},
}
CLUSTER_SCOPED_EVENTS = "default"  # where Events about cluster-scoped objects are posted (client-go's convention)
RESOURCE_NAMESPACE_ENV = "GRAPHCRED_CLUSTER_RESOURCE_NAMESPACE"
RESOURCE_NAMESPACE_FLAG = "--cluster-resource-namespace"


class OpsError(Exception):
    """A failure to report in one line, with its exit code. Never carries a token or a response body."""

    def __init__(self, message: str, code: int = CLUSTER, http_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_EXPECTED = {"credential": "gac/NAME or graphappcredential/NAME", "app": "cga/NAME or clustergraphapp/NAME",
             "secret": "secret/NAME"}


def object_name(text: str, kind: str) -> str:
    """NAME or TYPE/NAME (gac/NAME, graphappcredentials.graphcred.io/NAME; secret/NAME) as kubectl takes it, checked
    as a Kubernetes name: it goes into a URL path."""
    return typed_name(text, (kind,))[1]


def typed_name(text: str, kinds: Sequence[str]) -> tuple[str, str]:
    """(kind, name) of NAME or TYPE/NAME, TYPE one of `kinds`' (a bare NAME is the first kind's)."""
    kind, name = kinds[0], text
    if "/" in text:
        given, name = text.split("/", 1)
        found = next((k for k in kinds if given.lower() in KINDS[k]), None)
        if found is None:
            raise ValueError(f"{printable(text)!r}: expected NAME or {' or '.join(_EXPECTED[k] for k in kinds)}")
        kind = found
    if len(name) > 253 or not re.fullmatch(DNS_SUBDOMAIN_PATTERN, name):
        raise ValueError(f"{printable(text)!r} is not a Kubernetes name (lower-case letters, digits, '-' and '.')")
    return kind, name


def connection_cause(exc: BaseException) -> str:
    """Why a connection failed, in words, from the exceptions urllib3 chains (no class names)."""
    found: list[BaseException] = []
    pending: list[Any] = [exc]
    while pending and len(found) < 20:
        current = pending.pop(0)
        if not isinstance(current, BaseException) or any(current is f for f in found):
            continue
        found.append(current)
        pending += [getattr(current, "reason", None), current.__cause__, current.__context__, *current.args]
    for error in found:
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"TLS: the server's certificate is not trusted ({error.verify_message or error.reason})"
    for error in found:
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake failed ({error.reason or error.strerror or 'no reason given'})"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused - is the server address right, and the apiserver running?"
        if isinstance(error, socket.gaierror):
            return "the server's host name does not resolve"
        if isinstance(error, OSError) and error.strerror and error.errno is not None:
            return error.strerror.lower()
    if any(isinstance(e, TimeoutError) or "timed out" in str(e).lower() for e in found):
        return "no answer in time"
    return " ".join(str(found[-1]).split()) or "the connection failed"


def _api_error(what: str, exc: Exception, where: str = "") -> OpsError:
    """One line for a failed call: its HTTP status and the apiserver's Status message (which names the object and
    the user, never data), or why the cluster could not be reached and where it was looked for."""
    if isinstance(exc, client.ApiException):
        detail = ""
        with contextlib.suppress(ValueError, AttributeError):
            detail = str(json.loads(exc.body or "{}").get("message") or "")
        return OpsError(f"{what}: HTTP {exc.status} {exc.reason}" + (f": {detail}" if detail else ""),
                        http_status=exc.status)
    return OpsError(f"{what}: cannot reach the cluster{where}: {connection_cause(exc)}")


@dataclass
class Cluster:
    """The API as the kubeconfig's user, and the namespace commands default to. `source`: where the configuration
    came from (a kubeconfig path, or the pod's ServiceAccount), named in connection errors with the server."""

    api: client.ApiClient
    namespace: str
    source: str = ""

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None,
                namespace: str | None = None) -> Cluster:
        """Like kubectl: --kubeconfig, else $KUBECONFIG, else ~/.kube/config; in a pod without any of them, its
        ServiceAccount. The namespace: -n, else the context's (the pod's), else `default`."""
        configuration = client.Configuration()
        in_pod = not _kubeconfig_given(kubeconfig, context) and in_cluster()
        source = "the pod's ServiceAccount (in-cluster config)" if in_pod else kubeconfig_source(kubeconfig)
        if kubeconfig and not in_pod and not os.path.exists(kubeconfig):
            raise OpsError(f"kubeconfig {kubeconfig}: no such file")
        try:
            if not in_pod:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, context=context, client_configuration=configuration)
                default = _context_namespace(kubeconfig, context)
            else:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                default = (Path(SERVICE_ACCOUNT_DIR) / "namespace").read_text().strip()
        except kubeconfig_errors() as exc:
            raise OpsError(f"cannot load the {source}: {kubeconfig_problem(exc)}") from None
        return cls(client.ApiClient(configuration), namespace or default or "default", source)

    @property
    def where(self) -> str:
        """' at https://host:port (kubeconfig ...)' for connection errors."""
        server = self.api.configuration.host
        return f" at {server}" + (f" ({self.source})" if self.source else "")

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
            raise _api_error(what, exc, self.where) from None

    def credential(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or self.namespace
        result: dict[str, Any] = self._call(f"get graphappcredential {ns}/{name}",
                                            self.custom.get_namespaced_custom_object, GROUP, VERSION, ns, PLURAL,
                                            name)
        return result

    def app(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(f"get clustergraphapp {name}", self.custom.get_cluster_custom_object,
                                            GROUP, VERSION, APP_PLURAL, name)
        return result

    def apps(self) -> list[dict[str, Any]]:
        return list(self._call("list clustergraphapps", self.custom.list_cluster_custom_object, GROUP, VERSION,
                               APP_PLURAL).get("items") or [])

    def credentials(self, selector: str | None, all_namespaces: bool) -> list[dict[str, Any]]:
        kwargs = {"label_selector": selector} if selector else {}
        try:
            if all_namespaces:
                found = self._call("list graphappcredentials", self.custom.list_cluster_custom_object, GROUP,
                                   VERSION, PLURAL, **kwargs)
            else:
                found = self._call(f"list graphappcredentials in {self.namespace}",
                                   self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                                   **kwargs)
        except OpsError as exc:
            if selector and exc.http_status == 400:  # the apiserver could not parse the selector: a usage error
                raise OpsError(f"--selector {selector!r}: {exc}", USAGE, 400) from None
            raise
        return list(found.get("items") or [])

    def events_of(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or CLUSTER_SCOPED_EVENTS
        found = self._call(f"list events in {namespace}", self.core.list_namespaced_event, namespace,
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
    """Text for a terminal: each line with its control characters escaped (lines rendered by opsview are already;
    escaping is idempotent)."""
    out.write("\n".join(printable(line) for line in text.split("\n")))
    out.flush()


def _dump(out: IO[str], data: Any, output: str) -> None:
    """JSON or YAML: both escape control characters themselves (YAML: in double quotes, allow_unicode off)."""
    if output == "yaml":
        out.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=False, width=1_000_000))
    else:
        out.write(json.dumps(data, indent=2) + "\n")
    out.flush()


# --- status ---------------------------------------------------------------------------------------------------

def status(cluster: Cluster, name: str, *, kind: str = "credential", output: str = "text", out: IO[str],
           clock: Clock = _now) -> int:
    if kind == "app":
        return app_status(cluster, name, output=output, out=out, clock=clock)
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
    if output in ("json", "yaml"):
        _dump(out, opsview.status_json(view, now), output)
    else:
        _print(out, opsview.render_status(view, now))
    return OK


def app_status(cluster: Cluster, name: str, *, output: str = "text", out: IO[str], clock: Clock = _now) -> int:
    """A ClusterGraphApp: its status, identity, credential (what it names, never its material), policy, the
    GraphAppCredentials naming it (in every namespace the user may list them) and its Events (in `default`)."""
    obj = cluster.app(name)
    credentials: list[dict[str, Any]] | None = None
    credentials_error = None
    try:
        # no field selector reaches spec.appRef: every credential is listed, and those naming the app kept
        credentials = cluster.credentials(None, all_namespaces=True)
    except OpsError as exc:  # who uses it is a bonus: without the right to list them everywhere, show the rest
        credentials_error = f"cannot tell ({exc})"
    try:
        events = cluster.events_of(obj)
    except OpsError:
        events = []
    view = opsview.app_view(obj, credentials, credentials_error, events, resource_namespace(cluster))
    now = clock()
    if output in ("json", "yaml"):
        _dump(out, opsview.app_json(view, now), output)
    else:
        _print(out, opsview.render_app(view, now))
    return OK


def resource_namespace(cluster: Cluster) -> str | None:
    """The operator's cluster resource namespace, as its Deployment (the chart's) sets it: the flag, else the
    variable, else the Deployment's own namespace (POD_NAMESPACE); None when no one answer is found or the user may
    not list Deployments."""
    try:
        deployments, _ = operator_deployments(cluster)
    except OpsError:
        return None
    found = {_resource_namespace_of(d) for d in deployments}
    return found.pop() if len(found) == 1 else None


def _resource_namespace_of(deployment: Mapping[str, Any]) -> str:
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = spec.get("containers") or []
    container = next((c for c in containers if c.get("name") == "graphcred"), containers[0] if containers else {})
    args = [str(a) for a in (container.get("args") or [])]
    for i, arg in enumerate(args):
        if arg.startswith(f"{RESOURCE_NAMESPACE_FLAG}="):
            return arg.split("=", 1)[1]
        if arg == RESOURCE_NAMESPACE_FLAG and i + 1 < len(args):
            return args[i + 1]
    env = {e.get("name"): e.get("value") for e in container.get("env") or [] if e.get("value")}
    return str(env.get(RESOURCE_NAMESPACE_ENV) or env.get("POD_NAMESPACE")
               or (deployment.get("metadata") or {}).get("namespace") or "")


# --- renew ----------------------------------------------------------------------------------------------------

def renew_value(now: dt.datetime) -> str:
    """RFC 3339 with microseconds: two requests in one second are two new values."""
    return rfc3339_micro(now)


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
        cluster.annotate(meta["namespace"], meta["name"], RENEW_ANNOTATION, value)  # names: _print escapes
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
                   clock: Clock = _now, prog: str = "graphcred") -> int:
    try:
        secret = cluster.secret(name)
    except OpsError as exc:
        if exc.http_status == 404:
            raise OpsError(f"{exc}{_token_secret_hint(cluster, name)}", exc.code, 404) from None
        raise
    try:
        view = opsview.token_view(secret)
    except opsview.InspectError as exc:
        _print(err, f"{prog}: secret {cluster.namespace}/{name}: {exc}\n")
        return FAILED
    if output in ("json", "yaml"):
        _dump(out, opsview.token_json(view), output)
    else:
        _print(out, opsview.render_token(view, clock()))
    return OK


def _token_secret_hint(cluster: Cluster, name: str) -> str:
    """A GraphAppCredential's name given for its token Secret (a natural slip): name the Secret."""
    try:
        obj = cluster.credential(name)
    except OpsError:
        return ""
    secret = opsview.status_view(obj).secret_name
    return f" (a GraphAppCredential is named {name}: its token Secret is {secret})"


# --- version --------------------------------------------------------------------------------------------------

def image_version(image: str) -> str | None:
    """The tag of an image reference (registry:5000/graphcred:0.1.0@sha256:... -> 0.1.0), None without one."""
    reference = image.split("@", 1)[0]
    last = reference.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else None


def operator_deployments(cluster: Cluster) -> tuple[list[dict[str, Any]], str]:
    """The chart's Deployments the user may see: in every namespace, or (not allowed to list them there) in the
    namespace; and where they were looked for."""
    apps = client.AppsV1Api(cluster.api)
    try:
        found = cluster._call("list deployments", apps.list_deployment_for_all_namespaces,
                              label_selector=OPERATOR_LABEL)
        where = "any namespace"
    except OpsError as exc:
        if exc.http_status != 403:
            raise
        found = cluster._call(f"list deployments in {cluster.namespace}", apps.list_namespaced_deployment,
                              cluster.namespace, label_selector=OPERATOR_LABEL)
        where = f"namespace {cluster.namespace} (not allowed to list Deployments in every namespace)"
    return list(found.get("items") or []), where


def _operator_entry(deployment: Mapping[str, Any]) -> dict[str, Any]:
    meta, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == "graphcred"), containers[0] if containers else {})
    image = str(container.get("image") or "")
    label = (meta.get("labels") or {}).get("app.kubernetes.io/version")
    return {"namespace": meta.get("namespace"), "name": meta.get("name"), "image": image,
            "version": image_version(image) or label or "unknown",
            "replicas": spec.get("replicas"), "readyReplicas": (deployment.get("status") or {}).get("readyReplicas")
            or 0}


def version(connect: Callable[[], Cluster] | None, *, output: str = "text", out: IO[str]) -> int:
    """The client's version, then (with `connect`) the operator's: the image tag of each of the chart's Deployments
    (labelled app.kubernetes.io/name=graphcred), else its app.kubernetes.io/version label."""
    if output == "text":
        _print(out, f"Client Version:   {__version__}\n")
    if connect is None:
        if output != "text":
            _dump(out, {"clientVersion": __version__}, output)
        return OK
    deployments, where = operator_deployments(connect())
    operators = [_operator_entry(d) for d in deployments]
    if output != "text":
        _dump(out, {"clientVersion": __version__, "operators": operators, "searched": where}, output)
        return OK
    if not operators:
        _print(out, f"Operator Version: not found (no Deployment labelled {OPERATOR_LABEL} in {where})\n")
    for op in operators:
        _print(out, f"Operator Version: {op['version']} (Deployment {op['namespace']}/{op['name']}, image "
               f"{op['image'] or '-'}, {op['readyReplicas']}/{op['replicas']} ready)\n")
    return OK
