"""In-memory stand-ins for the two I/O ports of the Reconciler (`ports.KubePort`, `ports.TokenPort`; in production
`Kube` and `TokenClient`), for unit tests of pure scheduling: the real Controller, Reconciler and SharedTokens run
against them with a fake clock (`harness.Rig` puts them together). Builders of the objects they hold (`gac`,
`secret_spec`, `federated_spec`), and a scripted HTTP apiserver for the metadata watches. Integration tests use the
real apiserver and issuer instead."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

from graphcred.acquire.credentials import Material
from graphcred.acquire.jwt import TokenClaims
from graphcred.acquire.tokens import AcquisitionError, Token
from graphcred.api.model import AppIdentity
from graphcred.kube.calls import Conflict, Gone
from graphcred.kube.errors import NotFound, error

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


class MonotonicClock:
    """Seconds as time.monotonic counts them, for the parts that measure intervals rather than tell the time."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FakeKube:
    """Secrets and GraphAppCredential status in dicts, with resourceVersions and 409/404 like the apiserver."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self.objects: set[tuple[str, str]] = set()  # GraphAppCredentials that exist (for patch_status)
        self.writes = 0
        self.reads: list[tuple[str, str]] = []  # every read_secret, in order
        self.deletes: list[tuple[str, str]] = []
        self.apps: dict[str, dict[str, Any]] = {}  # ClusterGraphApps by name
        self.app_statuses: dict[str, dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}  # Namespaces (their labels) by name
        self.app_reads = self.namespace_reads = 0
        self._rv = 100
        self._lock = threading.Lock()

    def _next(self) -> str:
        self._rv += 1
        return str(self._rv)

    def put_client_secret(self, namespace: str, name: str, value: str,
                          annotations: dict[str, str] | None = None) -> None:
        with self._lock:
            self.secrets[(namespace, name)] = {"metadata": {"name": name, "namespace": namespace,
                                                            "resourceVersion": self._next(),
                                                            "annotations": dict(annotations or {})},
                                               "data": {"clientSecret": _b64(value)}}

    def touch(self, namespace: str, name: str) -> str:
        """A metadata-only change (a label): new resourceVersion, same data."""
        with self._lock:
            self.secrets[(namespace, name)]["metadata"]["resourceVersion"] = rv = self._next()
            return rv

    def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            self.reads.append((namespace, name))
            found = self.secrets.get((namespace, name))
            return copy.deepcopy(found) if found else None

    def create_secret(self, namespace: str, body: dict[str, Any]) -> str:
        with self._lock:
            key = (namespace, body["metadata"]["name"])
            if key in self.secrets:
                raise Conflict(key[1])
            self.writes += 1
            stored = copy.deepcopy(body)
            stored["metadata"]["resourceVersion"] = rv = self._next()
            _record_fields(stored, body)
            self.secrets[key] = stored
            return rv

    def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> str:
        """A JSON merge patch (RFC 7386) guarded by the resourceVersion it carries, as the apiserver applies it."""
        with self._lock:
            current = self.secrets.get((namespace, name))
            wanted = patch.get("metadata", {}).get("resourceVersion")
            if current is None or (wanted is not None and current["metadata"]["resourceVersion"] != wanted):
                raise Conflict(name)
            self.writes += 1
            stored = merge_patch(copy.deepcopy(current), patch)
            stored["metadata"]["resourceVersion"] = rv = self._next()
            _record_fields(stored, patch)
            self.secrets[(namespace, name)] = stored
            return rv

    def delete_secret(self, namespace: str, name: str, uid: str | None = None) -> None:
        with self._lock:
            self.deletes.append((namespace, name))
            self.secrets.pop((namespace, name), None)

    def delete_secret_unchanged(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        with self._lock:
            current = self.secrets.get((namespace, name))
            if current is None:
                return
            if current["metadata"]["resourceVersion"] != resource_version:
                raise Conflict(name)
            self.deletes.append((namespace, name))
            del self.secrets[(namespace, name)]

    def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise NotImplementedError("no ServiceAccounts here: FakeKubeWithServiceAccounts has them")

    def request_service_account_token(self, namespace: str, name: str, audience: str) -> str:
        raise NotImplementedError("no ServiceAccounts here: FakeKubeWithServiceAccounts has them")

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self._lock:
            if (namespace, name) not in self.objects:
                raise Gone(f"{namespace}/{name}")
            merged = {**self.statuses.get((namespace, name), {}), **status}
            self.statuses[(namespace, name)] = {k: v for k, v in merged.items() if v is not None}

    # --- ClusterGraphApps and namespaces (appRef) ---------------------------------------------------------------
    def put_app(self, name: str, spec: dict[str, Any], *, uid: str | None = None) -> dict[str, Any]:
        """Create or update (same uid, next generation) a ClusterGraphApp; the body as a watch would report it."""
        with self._lock:
            found = self.apps.get(name)
            meta = {"name": name, "uid": uid or (found["metadata"]["uid"] if found else str(uuid.uuid4())),
                    "generation": (found["metadata"]["generation"] + 1) if found else 1,
                    "resourceVersion": self._next()}
            self.apps[name] = {"metadata": meta, "spec": copy.deepcopy(spec)}
            return copy.deepcopy(self.apps[name])

    def delete_app(self, name: str) -> dict[str, Any]:
        with self._lock:
            return self.apps.pop(name)

    def read_cluster_app(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            self.app_reads += 1
            found = self.apps.get(name)
            return copy.deepcopy(found) if found else None

    def put_namespace(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.namespaces[name] = {"metadata": {"name": name, "labels": dict(labels),
                                                  "resourceVersion": self._next()}}
            return copy.deepcopy(self.namespaces[name])

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            self.namespace_reads += 1
            found = self.namespaces.get(name)
            return copy.deepcopy(found) if found else None

    def patch_app_status(self, name: str, status: dict[str, Any]) -> None:
        with self._lock:
            if name not in self.apps:
                raise Gone(name)
            merged = {**self.app_statuses.get(name, {}), **status}
            self.app_statuses[name] = {k: v for k, v in merged.items() if v is not None}

    def token_in(self, namespace: str, name: str) -> str | None:
        secret = self.secrets.get((namespace, name))
        if not secret:
            return None
        return base64.b64decode(secret["data"]["access_token"]).decode()

    def ready(self, namespace: str, name: str) -> dict[str, Any] | None:
        for cond in self.statuses.get((namespace, name), {}).get("conditions", []):
            if cond["type"] == "Ready":
                return dict(cond)
        return None


def _record_fields(stored: dict[str, Any], written: dict[str, Any]) -> None:
    """managedFields as the apiserver keeps them for the writer (field manager graphcred: the only writer through
    this fake), simplified: a key written with a value is the writer's, a key written as null is nobody's."""
    mine = (e["fieldsV1"] for e in stored["metadata"].get("managedFields", []) if e["manager"] == "graphcred")
    fields: dict[str, Any] = next(mine, {"f:data": {}, "f:metadata": {"f:labels": {}, "f:annotations": {}}})
    for where, node in ((fields["f:data"], written.get("data") or {}),
                        (fields["f:metadata"]["f:labels"], written["metadata"].get("labels") or {}),
                        (fields["f:metadata"]["f:annotations"], written["metadata"].get("annotations") or {})):
        for key, value in node.items():
            if value is None:
                where.pop(f"f:{key}", None)
            else:
                where[f"f:{key}"] = {}
    stored["metadata"]["managedFields"] = [{"manager": "graphcred", "operation": "Update", "fieldsV1": fields}]


def merge_patch(target: Any, patch: Any) -> Any:
    """`patch` applied to `target` as a JSON merge patch (RFC 7386): null removes a key."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def fake_jwt(claims: dict[str, Any]) -> str:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg(claims)}.sig"


@dataclass
class FakeTokens:
    """Issues tokens from the fake clock; can hold requests at a gate, or fail them. Records the client assertion
    each request presented (`assertions`; None: not a federation)."""

    clock: Clock
    lifetime: float = 3600.0
    requests: int = 0
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    failure: AcquisitionError | None = None
    per_authority: dict[str, int] = field(default_factory=dict)
    assertions: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate.set()  # open unless a test closes it
        self._lock = threading.Lock()

    def acquire(self, spec: AppIdentity, scopes: Sequence[str], material: Material) -> Token:
        with self._lock:
            self.requests += 1
            self.per_authority[spec.authority()] = self.per_authority.get(spec.authority(), 0) + 1
            self.assertions.append(getattr(material, "assertion", None))
        self.entered.set()
        if not self.gate.wait(timeout=10):
            raise TimeoutError("test gate never opened")
        if self.failure is not None:
            raise self.failure
        issued = self.clock()
        expires = issued + dt.timedelta(seconds=self.lifetime)
        resource = scopes[0].removesuffix("/.default")
        token = fake_jwt({"aud": resource, "tid": spec.tenant_id, "appid": spec.client_id,
                          "exp": int(expires.timestamp()), "uti": uuid.uuid4().hex})
        return Token(access_token=token, expires_on=expires.replace(microsecond=0), issued_at=issued,
                     claims=TokenClaims(resource, spec.tenant_id, spec.client_id, (), int(expires.timestamp())))


def gac(name: str, spec: dict[str, Any], *, namespace: str = "ns", uid: str | None = None, generation: int = 1,
        annotations: dict[str, str] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                         "generation": generation, "annotations": annotations or {}},
            "spec": spec, "status": status or {}}


def secret_spec(tenant: str, client: str, secret: str = "cred", **extra: Any) -> dict[str, Any]:
    return {"tenantId": tenant, "clientId": client, "credential": {"clientSecret": {"name": secret}}, **extra}


# --- workload identity --------------------------------------------------------------------------------------------
CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"


class FakeKubeWithServiceAccounts(FakeKube):
    """FakeKube plus ServiceAccounts and the TokenRequest API. Counts reads and TokenRequests; issues a distinct
    JWT-shaped token per request (so a test can look for it in status, Events and logs); can fail TokenRequests
    with an HTTP status as the apiserver would."""

    def __init__(self) -> None:
        super().__init__()
        self.service_accounts: dict[tuple[str, str], dict[str, Any]] = {}
        self.service_account_reads = 0
        self.token_requests: list[tuple[str, str, str]] = []  # (namespace, name, audience) of each TokenRequest
        self.issued_service_account_tokens: list[str] = []
        self.token_request_status: int | None = None  # answer TokenRequests with this HTTP error

    def put_service_account(self, namespace: str, name: str, client_id: str | None = None,
                            annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """Create or update (same uid) a ServiceAccount; `client_id`: its azure.workload.identity/client-id."""
        with self._lock:
            found = self.service_accounts.get((namespace, name))
            uid = found["metadata"]["uid"] if found else str(uuid.uuid4())
            wanted = dict(annotations or {})
            if client_id is not None:
                wanted[CLIENT_ID_ANNOTATION] = client_id
            account = {"metadata": {"name": name, "namespace": namespace, "uid": uid,
                                    "resourceVersion": self._next(), "annotations": wanted}}
            self.service_accounts[(namespace, name)] = account
            return copy.deepcopy(account)

    def delete_service_account(self, namespace: str, name: str) -> None:
        with self._lock:
            self.service_accounts.pop((namespace, name), None)

    def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            self.service_account_reads += 1
            found = self.service_accounts.get((namespace, name))
            return copy.deepcopy(found) if found else None

    def request_service_account_token(self, namespace: str, name: str, audience: str) -> str:
        with self._lock:
            self.token_requests.append((namespace, name, audience))
            if self.token_request_status is not None:
                raise error("create ServiceAccount token", self.token_request_status, "Refused")
            if (namespace, name) not in self.service_accounts:
                raise NotFound("create ServiceAccount token", 404, "Not Found")
            token = fake_jwt({"iss": "https://kubernetes.default.svc", "aud": [audience],
                              "sub": f"system:serviceaccount:{namespace}:{name}", "jti": uuid.uuid4().hex})
            self.issued_service_account_tokens.append(token)
            return token


def federated_spec(tenant: str, client: str, service_account: str = "reader", **extra: Any) -> dict[str, Any]:
    return {"tenantId": tenant, "clientId": client,
            "credential": {"workloadIdentity": {"serviceAccountName": service_account}}, **extra}


# --- the apiserver's list and watch over HTTP, for the metadata watches (the real kubernetes client talks to it) ----
Answer = tuple[int, list[dict[str, Any]]]  # HTTP status, JSON documents (one body, or one watch event a line)
Handler = Callable[[dict[str, str]], Answer]  # query -> answer


def secret_metadata(name: str, rv: str) -> dict[str, Any]:
    """A Secret of namespace ns as a metadata watch lists it (PartialObjectMetadata)."""
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}}


def metadata_list(names: list[str], rv: str = "10", cont: str = "") -> dict[str, Any]:
    """One page of a metadata list: Secrets `names` at `rv`; `cont`: the continue token of the next page."""
    return {"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": rv, "continue": cont},
            "items": [secret_metadata(n, rv) for n in names]}


def failure_status(code: int, reason: str) -> dict[str, Any]:
    """The Status the apiserver answers a failed request with (or sends as a watch's ERROR event)."""
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason}


class FakeApiserver:
    """Answers any GET (the watch asks for /api/v1/secrets): `on_list(query)` for lists, `on_watch(query)` for
    watches; records queries, and the path and Accept header of every request."""

    def __init__(self, on_list: Handler, on_watch: Handler) -> None:
        self.lists: list[dict[str, str]] = []
        self.watches: list[dict[str, str]] = []
        self.requests: list[tuple[str, str]] = []  # (path, Accept)
        fake = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                fake.requests.append((urlsplit(self.path).path, self.headers.get("Accept", "")))
                watching = query.get("watch") == "true"
                (fake.watches if watching else fake.lists).append(query)
                status, docs = (fake.on_watch if watching else fake.on_list)(query)
                body = ("".join(json.dumps(d) + "\n" for d in docs) if watching else json.dumps(docs[0])).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.on_list, self.on_watch = on_list, on_watch
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def api(self) -> client.ApiClient:
        conf = client.Configuration()
        conf.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        return client.ApiClient(conf)
