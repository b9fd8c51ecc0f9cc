"""The hostile tenant of the soak (docs/soak.md, "The hostile tenant"): one namespace that keeps trying known attacks
on a shared operator while the soak's invariant checker watches the other tenants' credentials.

`python -m graphcred_testbed soak --hostile` turns it on (SoakConfig.hostile). Pieces:

- pure helpers (percentiles, a token's scheduled refresh, the attack payloads): unit-tested in
  tests/unit/test_soak_hostile.py;
- `StandIns`: loopback servers. The hostile *authority* (HTTPS, a certificate of the bed's issuer CA, so the
  operator trusts it as it would trust any publicly certified host) is the tenant's own Entra stand-in: a tarpit
  that drips one byte every few seconds, 30 MiB discovery documents and token answers, a redirect to the
  metadata stand-in, a token endpoint on the internal stand-in, `error` text with CR/LF and terminal escapes.
  The *internal service* (HTTPS, trusted) and the *metadata service* (plain HTTP) are hosts no credential may
  reach: each records every request it receives, and any request is a violation;
- `HostileTenant`: the attacker. It sets up its namespace, Secrets and apps, then, from the moment the faults
  begin until the soak ends, tries one attack every few seconds in a seeded order (with variations), counting
  tries, refusals at admission (HTTP 422: the CRD's rules) and failed submissions by kind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import random
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from kubernetes import client

from graphcred.api.keys import GROUP, KIND, PLURAL, RENEW_ANNOTATION, VERSION

from .issuer import App, Fault, Issuer
from .pki import CertificateAuthority, KeyPair, new_key, self_signed

MIB = 2**20
CHART_MEMORY_LIMIT = 384 * MIB  # charts/graphcred/values.yaml resources.limits.memory
ATTACKS = ("tarpit", "big_discovery", "big_token", "template_bomb", "big_key", "pem_chain", "redirect_metadata",
           "internal_authority", "internal_token_endpoint", "throttled_app", "renew_burst", "huge_rbe",
           "long_name", "forged_error")
# every kind, alive at most this many at once (the oldest is replaced: a new tenant name is a new URL)
CAPS = {"tarpit": 40, "big_discovery": 8, "big_token": 4, "template_bomb": 2, "big_key": 8, "pem_chain": 4,
        "redirect_metadata": 3, "internal_authority": 3, "internal_token_endpoint": 3, "huge_rbe": 2,
        "long_name": 2, "forged_error": 3}
TARPIT_WAVE = 20  # tarpits created at once when the faults begin: more than the operator's 16 token slots
ATTACKER_DOMAIN = "attacker.test"


# --- pure helpers -------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[min(rank, len(ordered)) - 1]


def lateness_line(late: Sequence[float], overdue: Sequence[float]) -> str:
    """The report's lateness figures: refreshes seen, and tokens still waiting for theirs at the end."""
    text = (f"{len(late)} refreshes, p50 {percentile(late, 50):.1f} s, p99 {percentile(late, 99):.1f} s, "
            f"max {max(late, default=0.0):.1f} s")
    if overdue:
        text += f"; {len(overdue)} tokens still not refreshed at the end, overdue by up to {max(overdue):.0f} s"
    return text


def scheduled_refresh(iat: float, exp: float, refresh_before: float | None,
                      status_refresh_at: float | None = None, status_expires_on: float | None = None) -> float:
    """When the token (iat, exp) is due for refresh: the status' refreshAt if the status describes this token
    (its expiresOn is the token's exp), else the latest time the documented rule allows (docs/behaviour.md:
    half the lifetime, or `refreshBeforeExpiry` ahead of expiry when that is shorter than the lifetime; never
    sooner than 5 s or a tenth of the lifetime after the issue; jitter only moves it earlier)."""
    if status_refresh_at is not None and status_expires_on is not None and abs(status_expires_on - exp) < 2:
        return status_refresh_at
    lifetime = exp - iat
    wait = lifetime - refresh_before if refresh_before is not None and refresh_before < lifetime else lifetime / 2
    floor = min(max(5.0, lifetime * 0.1), lifetime / 2)
    return iat + max(wait, floor)


def operator_supports_authority_host() -> bool:
    """Whether `graphcred run` has the admin's authority allow-list (`--authority-host`, the SSRF fix)."""
    out = subprocess.run([sys.executable, "-m", "graphcred", "run", "--help"], capture_output=True, text=True,
                         timeout=120, check=False)
    return "--authority-host" in out.stdout


def template_bomb(variant: int) -> dict[str, str]:
    """secretTemplate.data whose filter chain grows the token exponentially (review finding 1). Bounded here so
    that the harness never asks for more than a few hundred MiB (the review's 26 filters: 134 MB of output)."""
    json_chain = (24, 25, 26)[variant % 3]
    data = {"x": "{{ .accessToken" + " | json" * json_chain + " }}"}
    if variant % 2:
        data["y"] = "{{ .accessToken" + " | json" * 22 + " | base64" * 4 + " }}"
    return data


def forged_error(variant: int) -> str:
    """A token endpoint `error` text that forges a log line (CR/LF) or drives a terminal (escapes)."""
    forged = ("invalid_client\n2031-01-01 00:00:00,000 ERROR   graphcred.reconcile.reconciler: forged line: "
              "kube-system/prod-mail: token written to Secret attacker-ns/loot")
    escapes = "invalid_client\x1b[2J\x1b[H\x1b]0;pwned\x07graphcred: all credentials OK\x1b[8m"
    return (forged, escapes, forged.replace("\n", "\r\n") + escapes)[variant % 3]


def long_name(variant: int) -> str:
    """A GraphAppCredential name of 248 to 253 characters: `<name>-token` is no valid Secret name (finding 10)."""
    prefix = f"long-{variant}-"
    return prefix + "l" * (248 + variant % 6 - len(prefix))


def huge_duration(variant: int) -> str:
    """refreshBeforeExpiry values the pattern admits but no timedelta holds (finding 7)."""
    return ("99999999999h", "9" * 63 + "h", "1" + "0" * 40 + "s")[variant % 3]


def vm_peak_rss(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) of a process in bytes, from /proc/<pid>/status; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    found = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in text.splitlines()
             if line.startswith(("VmHWM:", "VmRSS:"))}
    if "VmHWM" not in found or "VmRSS" not in found:
        return None
    return found["VmHWM"], found["VmRSS"]


# --- the stand-ins ------------------------------------------------------------------------------------------

class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (TLS EOF, reset): the stand-ins print nothing into the soak's report


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def send(self, status: int, body: bytes | dict[str, Any], headers: dict[str, str] | None = None,
             content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        with contextlib.suppress(OSError):  # the operator gave up (a byte cap, a deadline): nothing to report
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)


def _serve(handler: type[BaseHTTPRequestHandler], pair: KeyPair | None, workdir: Path, stem: str,
           ) -> ThreadingHTTPServer:
    server = _QuietServer(("127.0.0.1", 0), handler)
    if pair is not None:
        crt, key = pair.write(workdir, stem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name=f"hostile-{stem}", daemon=True).start()
    return server


@dataclass
class StandIns:
    """The hostile authority and the two hosts nobody may reach, on loopback ports of their own."""

    ca: CertificateAuthority  # the bed issuer's CA: the operator trusts what it signed (`--ca-bundle`)
    workdir: Path
    on_forbidden: Callable[[str, str], None]  # (which stand-in, "METHOD path") for every request it receives
    big_body: int = 30 * MIB
    stop: threading.Event = field(default_factory=threading.Event)
    forbidden: Counter[str] = field(default_factory=Counter)
    tarpits_open: int = 0
    tarpits_peak: int = 0
    authority_requests: Counter[str] = field(default_factory=Counter)  # by behaviour
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> StandIns:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._padding = b"x" * self.big_body
        self.metadata = _serve(self._recording("metadata"), None, self.workdir, "metadata")
        self.internal = _serve(self._recording("internal"), self.ca.issue("internal", server=True,
                               hosts=("127.0.0.1",)), self.workdir, "internal")
        self.authority = _serve(self._authority_handler(), self.ca.issue("attacker", server=True,
                                hosts=("127.0.0.1",)), self.workdir, "authority")
        self._servers = [self.metadata, self.internal, self.authority]
        return self

    def close(self) -> None:
        self.stop.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    @property
    def authority_url(self) -> str:
        return f"https://127.0.0.1:{self.authority.server_address[1]}"

    @property
    def internal_url(self) -> str:
        return f"https://127.0.0.1:{self.internal.server_address[1]}"

    @property
    def metadata_url(self) -> str:
        return f"http://127.0.0.1:{self.metadata.server_address[1]}"

    def _recording(self, who: str) -> type[BaseHTTPRequestHandler]:
        stand_ins = self

        class Recording(_Quiet):
            def _record(self) -> None:
                with stand_ins._lock:
                    stand_ins.forbidden[who] += 1
                stand_ins.on_forbidden(who, f"{self.command} {self.path[:120]}")

            def do_GET(self) -> None:
                self._record()
                self.send(200, {"Code": "Success", "AccessKeyId": "ASIA-STAND-IN", "SecretAccessKey": "stand-in"})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._record()
                self.send(200, {"access_token": "INTERNAL-SERVICE-RESPONSE-FIELD", "token_type": "Bearer",
                                "expires_in": 3600})
        return Recording

    def _authority_handler(self) -> type[BaseHTTPRequestHandler]:
        stand_ins = self

        class Authority(_Quiet):
            """Behaviour chosen by the tenant segment of the path (spec.tenantId): `<behaviour>-<n>.attacker.test`."""

            def _behaviour(self) -> tuple[str, str]:
                tenant = self.path.split("/")[1] if self.path.count("/") >= 1 else ""
                with stand_ins._lock:
                    stand_ins.authority_requests[tenant.split("-")[0]] += 1
                return tenant.split("-")[0], tenant

            def _discovery(self, tenant: str, token_endpoint: str | None = None) -> dict[str, Any]:
                base = stand_ins.authority_url
                return {"token_endpoint": token_endpoint or f"{base}/{tenant}/oauth2/v2.0/token",
                        "issuer": f"{base}/{tenant}/v2.0", "authorization_endpoint": f"{base}/{tenant}/authorize",
                        "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys"}

            def do_GET(self) -> None:
                kind, tenant = self._behaviour()
                if kind.startswith("drip"):
                    self._drip(float(kind.removeprefix("drip") or 5))
                elif kind == "bigdisc":
                    doc = json.dumps(self._discovery(tenant)).encode()
                    self.send(200, doc[:-1] + b', "padding": "' + stand_ins._padding + b'"}')
                elif kind == "redirect":
                    self.send(302, b"", {"Location": f"{stand_ins.metadata_url}/latest/meta-data/iam/"
                                         "security-credentials/node-role"}, "text/plain")
                elif kind == "internal":
                    self.send(200, self._discovery(tenant, f"{stand_ins.internal_url}/api/v1/admin/export?all=true"))
                elif kind in ("bigtoken", "forge"):
                    self.send(200, self._discovery(tenant))
                else:
                    self.send(404, {"error": "not_found"})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind, tenant = self._behaviour()
                if kind == "bigtoken":
                    self.send(400, b'{"error": "invalid_client", "padding": "' + stand_ins._padding + b'"}')
                elif kind == "forge":
                    variant = int(tenant.split("-")[1].split(".")[0]) if tenant.count("-") else 0
                    self.send(400, {"error": forged_error(variant), "error_codes": [9999999]})
                else:
                    self.send(404, {"error": "not_found"})

            def _drip(self, seconds: float) -> None:
                with stand_ins._lock:
                    stand_ins.tarpits_open += 1
                    stand_ins.tarpits_peak = max(stand_ins.tarpits_peak, stand_ins.tarpits_open)
                try:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    self.wfile.flush()
                    while not stand_ins.stop.wait(seconds):
                        self.wfile.write(b"X")
                        self.wfile.flush()
                except OSError:
                    pass
                finally:
                    self.close_connection = True
                    with stand_ins._lock:
                        stand_ins.tarpits_open -= 1
        return Authority


# --- the attacker -------------------------------------------------------------------------------------------

@dataclass
class _Alive:
    kind: str
    name: str
    since: float
    own_app: bool  # acquires real tokens from the bed's issuer (writes a token Secret)


class HostileTenant:
    """One namespace's user with edit rights, trying every attack of the review, over and over."""

    def __init__(self, *, issuer: Issuer, authority_host: str, stand_ins: StandIns, namespace: str,
                 victim_tenant: str, custom: client.CustomObjectsApi, core: client.CoreV1Api, seed: int,
                 interval: float, stopping: threading.Event, note: Callable[[str], None],
                 attacks: Sequence[str] = ATTACKS) -> None:
        self.issuer, self.authority_host, self.stand_ins = issuer, authority_host, stand_ins
        self.namespace, self.victim_tenant = namespace, victim_tenant
        self.custom, self.core = custom, core
        self.rng = random.Random(seed * 7919 + 24)  # a reproducible order of attacks, not cryptography
        self.interval, self.stopping, self.note = interval, stopping, note
        unknown = set(attacks) - set(ATTACKS)
        if unknown or not attacks:
            raise ValueError(f"hostile attacks: unknown {sorted(unknown)}; choose from {', '.join(ATTACKS)}")
        self.attacks = tuple(a for a in ATTACKS if a in attacks)
        self.tried: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # HTTP 422 from the apiserver: refused at admission
        self.failed: Counter[str] = Counter()  # could not be submitted (the apiserver restarting, ...)
        self.alive: list[_Alive] = []
        self.created = 0  # objects and patches the attacker got admitted (their status writes are budgeted)
        self.renews = 0
        self.own_secret_writes = 0  # Secrets the attacker wrote itself (not counted against graphcred)
        self.own_app_seconds = 0.0  # GraphAppCredential-seconds on the attacker's own app (token refreshes)
        self.hostile_tenant = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        self._counter = Counter[str]()
        self._key_pair: KeyPair | None = None  # the 8192-bit key and its certificate, once made
        self._chain: tuple[KeyPair, bytes] | None = None
        self._keygen = threading.Thread(target=self._generate_big_key, name="hostile-keygen", daemon=True)
        self.own: App | None = None
        self.throttled: App | None = None

    # --- setup -------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Apps in the issuer, the namespace's Secrets; an 8192-bit key made in the background (seconds)."""
        if "big_key" in self.attacks:
            self._keygen.start()
        secret = f"hostile~{uuid.uuid4().hex[:16]}"
        self.own = self.issuer.register_app(self.hostile_tenant, secret=secret, lifetime=60)
        # an app of the attacker's in the VICTIMS' Entra tenant, throttled for good (finding 6)
        self.throttled = self.issuer.register_app(self.victim_tenant, secret=secret, lifetime=60)
        self.throttle()
        for name, value in (("junk", "hostile-junk-secret"), ("own", secret)):
            self._secret(name, {"clientSecret": value}, "Opaque")

    def throttle(self) -> None:
        """429 with Retry-After 600 on the attacker's throttled app (again after the soak heals the issuer)."""
        assert self.throttled is not None
        self.issuer.fail(self.throttled.client_id, Fault(status=429, retry_after=600))

    def _generate_big_key(self) -> None:
        started = time.monotonic()
        key = new_key(8192)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile-8192")])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
        self._key_pair = KeyPair(cert, key)
        self.note(f"hostile: the 8192-bit key took {time.monotonic() - started:.0f} s to make")

    def _secret(self, name: str, data: dict[str, str], kind: str) -> None:
        body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), string_data=data, type=kind)
        with contextlib.suppress(client.ApiException):
            self.core.create_namespaced_secret(self.namespace, body, _request_timeout=30)
            self.own_secret_writes += 1

    # --- the loop ----------------------------------------------------------------------------------------
    def loop(self) -> None:
        for _ in range(TARPIT_WAVE if "tarpit" in self.attacks else 0):
            self.attempt("tarpit")
        order: list[str] = []
        while not self.stopping.wait(self.interval):
            if not order:
                order = list(self.attacks)
                self.rng.shuffle(order)
            self.attempt(order.pop())

    def attempt(self, kind: str) -> None:
        self.tried[kind] += 1
        variant = self._counter[kind]
        self._counter[kind] += 1
        try:
            getattr(self, f"_{kind}")(variant)
        except client.ApiException as exc:
            if exc.status == 422:
                self.refused[kind] += 1
            else:
                self.failed[kind] += 1
        except Exception:  # noqa: BLE001 - the apiserver restarting (a planned fault): counted, tried again later
            self.failed[kind] += 1

    # --- bookkeeping -------------------------------------------------------------------------------------
    def _make_room(self, kind: str) -> None:
        mine = [a for a in self.alive if a.kind == kind]
        if len(mine) >= CAPS.get(kind, 1_000):
            oldest = mine[0]
            with contextlib.suppress(client.ApiException):
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, oldest.name,
                                                            _request_timeout=15)
            self.alive.remove(oldest)
            self._retire(oldest)

    def _has(self, name: str) -> bool:
        return any(a.name == name for a in self.alive)

    def _retire(self, alive: _Alive) -> None:
        if alive.own_app:
            self.own_app_seconds += time.time() - alive.since

    def finish(self) -> None:
        for alive in self.alive:
            self._retire(alive)
        self.alive = []

    def _create(self, kind: str, name: str, spec: dict[str, Any], own_app: bool = False) -> None:
        self._make_room(kind)
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=15)
        self.created += 1
        self.alive.append(_Alive(kind, name, time.time(), own_app))

    def _foreign(self, behaviour: str, n: int, authority: str | None = None) -> dict[str, Any]:
        """A client-secret credential at the hostile authority, with a tenant name choosing its behaviour."""
        return {"tenantId": f"{behaviour}-{n}.{ATTACKER_DOMAIN}", "clientId": str(uuid.uuid4()),
                "authorityHost": authority or self.stand_ins.authority_url,
                "credential": {"clientSecret": {"name": "junk"}}}

    def _own(self, app: App | None = None) -> dict[str, Any]:
        app = app or self.own
        assert app is not None
        return {"tenantId": app.tenant_id, "clientId": app.client_id, "authorityHost": self.authority_host,
                "credential": {"clientSecret": {"name": "own"}}}

    # --- the attacks (one try each) ----------------------------------------------------------------------
    def _tarpit(self, n: int) -> None:
        drip = (5, 3, 8)[n % 3]
        self._create("tarpit", f"tarpit-{n}", self._foreign(f"drip{drip}", n))

    def _big_discovery(self, n: int) -> None:
        self._create("big_discovery", f"bigdisc-{n}", self._foreign("bigdisc", n))

    def _big_token(self, n: int) -> None:
        self._create("big_token", f"bigtoken-{n}", self._foreign("bigtoken", n))

    def _template_bomb(self, n: int) -> None:
        bombs = [a for a in self.alive if a.kind == "template_bomb"]
        if len(bombs) >= CAPS["template_bomb"]:  # a new template: a new generation renders again
            target = bombs[n % len(bombs)].name
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, target,
                                                       {"spec": {"secretTemplate": {"data": template_bomb(n)}}},
                                                       _request_timeout=15)
            self.created += 1
            return
        self._create("template_bomb", f"bomb-{n}", {**self._own(), "secretTemplate": {"data": template_bomb(n)}},
                     own_app=True)

    def _key_secret(self, name: str, pair: KeyPair, chain: bytes | None = None) -> bool:
        """Create the certificate Secret once; afterwards annotate it (every credential reading it wakes up)."""
        try:
            self.core.read_namespaced_secret(name, self.namespace, _request_timeout=15)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            data = {"tls.crt": (chain or pair.cert_pem).decode(), "tls.key": pair.key_pem.decode()}
            self.core.create_namespaced_secret(self.namespace, client.V1Secret(
                metadata=client.V1ObjectMeta(name=name), string_data=data, type="kubernetes.io/tls"),
                _request_timeout=30)
            self.own_secret_writes += 1
            return True
        self.core.patch_namespaced_secret(name, self.namespace, {"metadata": {"annotations": {
            "hostile/poke": uuid.uuid4().hex}}}, _request_timeout=15)
        self.own_secret_writes += 1
        return False

    def _certificate_credential(self, secret: str, x5c: bool) -> dict[str, Any]:
        return {"tenantId": self.hostile_tenant, "clientId": str(uuid.uuid4()), "authorityHost": self.authority_host,
                "credential": {"certificate": {"name": secret, "sendX5c": x5c}}}

    def _big_key(self, n: int) -> None:
        if self._key_pair is None:
            raise RuntimeError("the 8192-bit key is not made yet")  # counted as not submitted
        self._key_secret("bigkey", self._key_pair)
        if len([a for a in self.alive if a.kind == "big_key"]) < CAPS["big_key"]:
            self._create("big_key", f"bigkey-{n}", self._certificate_credential("bigkey", False))

    def _pem_chain(self, n: int) -> None:
        if self._chain is None:
            pair = self_signed("hostile-chain")
            self._chain = pair, pair.cert_pem * ((900 * 1024) // len(pair.cert_pem))  # under the apiserver's 1 MiB
        self._key_secret("pemchain", *self._chain)
        if len([a for a in self.alive if a.kind == "pem_chain"]) < CAPS["pem_chain"]:
            self._create("pem_chain", f"pemchain-{n}", self._certificate_credential("pemchain", n % 2 == 0))

    def _redirect_metadata(self, n: int) -> None:
        self._create("redirect_metadata", f"redirect-{n}", self._foreign("redirect", n))

    def _internal_authority(self, n: int) -> None:
        spec = self._foreign("internal", n, authority=self.stand_ins.internal_url)
        self._create("internal_authority", f"internal-host-{n}", spec)

    def _internal_token_endpoint(self, n: int) -> None:
        self._create("internal_token_endpoint", f"internal-token-{n}", self._foreign("internal", n))

    def _throttled_app(self, n: int) -> None:
        """The attacker's app in the victims' Entra tenant answers 429; renews make it ask again and again."""
        if not self._has("throttled"):
            self._create("throttled_app", "throttled", self._own(self.throttled))
            return
        self._renew("throttled", 3)

    def _renew(self, name: str, times: int) -> None:
        for _ in range(times):
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {
                "metadata": {"annotations": {RENEW_ANNOTATION: dt.datetime.now(dt.UTC).isoformat()
                                             + f"-{uuid.uuid4().hex[:6]}"}}}, _request_timeout=15)
            self.renews += 1

    def _renew_burst(self, n: int) -> None:
        if not self._has("renewer"):
            self._create("renew_burst", "renewer", self._own(), own_app=True)
        self._renew("renewer", 20 + n % 3 * 10)

    def _huge_rbe(self, n: int) -> None:
        self._create("huge_rbe", f"rbe-{n}", {**self._own(), "refreshBeforeExpiry": huge_duration(n)}, own_app=True)

    def _long_name(self, n: int) -> None:
        self._create("long_name", long_name(n), self._own(), own_app=True)

    def _forged_error(self, n: int) -> None:
        self._create("forged_error", f"forge-{n}", self._foreign("forge", n))

    # --- figures -----------------------------------------------------------------------------------------
    def write_allowance(self) -> tuple[float, float]:
        """(token Secret writes, status writes) the attacker's own objects may cause: like a victim's, each
        refresh of its own 60 s tokens (one per 27 s) plus 5 per object, and a status write per renew and 30 per
        object or patch admitted (a failing credential's retries, with backoff)."""
        return self.own_app_seconds / 27 + 5 * self.created, 30.0 * self.created + self.renews

    def report(self) -> list[str]:
        tried = sum(self.tried.values())
        lines = [f"hostile tenant {self.namespace}: attacks tried {tried:,}: " + _counts(self.tried),
                 "  refused at admission (HTTP 422): " + _counts(self.refused)
                 + "; not submitted (apiserver unreachable, ...): " + _counts(self.failed),
                 f"  tarpit connections open at most {self.stand_ins.tarpits_peak} at once; requests the hostile "
                 "authority served: " + _counts(self.stand_ins.authority_requests),
                 "  requests that reached a host no credential may use: "
                 + (_counts(self.stand_ins.forbidden) or "none")]
        return lines


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counter.items())) or "-"

