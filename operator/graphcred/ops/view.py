"""What `graphcred status`, `renew` and `inspect secret` show, from the API's JSON to text or JSON. Pure: the calls
are in `graphcred.ops.commands`, and the time is an argument.

Nothing here prints a token, a signature or any value of a Secret: `inspect secret` decodes the header and the
claims of the access token and names the Secret's keys; the status shows what the status holds (it never holds a
secret).

Text output escapes control characters line by line (`printable`): claims, messages, names and mount paths are
chosen by tenants, and an escape sequence in them must not drive the admin's terminal.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from graphcred.acquire.jwt import b64url_decode
from graphcred.api.keys import CREDENTIAL_ANNOTATION, CREDENTIAL_EXPIRES_ANNOTATION, RENEW_ANNOTATION
from graphcred.api.model import AUTHORITY_HOSTS, Cloud
from graphcred.base.times import parse_rfc3339
from graphcred.consumers.pods import FINISHED_PHASES, containers, secret_volumes, unrefreshable
from graphcred.reconcile.rotation import NOT_REGISTERED_RETRY, RENEWAL_CONDITION

MAX_EVENTS = 10
# on a client secret's Secret, the secret's end as Entra gave it (the operator reads it; named here for the hint)
EXPIRES_ANNOTATION = CREDENTIAL_EXPIRES_ANNOTATION
TIME_CLAIMS = ("exp", "nbf", "iat")
# C0 and C1 control characters, DEL, and the Unicode controls that reorder what a terminal shows (bidi overrides)
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with each control character written as an escape (\\x1b, \\u202e): shown, never acted on."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", text)


def _text(lines: Iterable[str]) -> str:
    return "".join(printable(line) + "\n" for line in lines)


# --- small formatting helpers ------------------------------------------------------------------------------------

def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def parse_time(text: Any) -> dt.datetime | None:
    """An API timestamp: RFC 3339 with or without fractional seconds (Time, MicroTime)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return parse_rfc3339(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def span(seconds: float) -> str:
    """A duration as kubectl shows ages: 45s, 12m, 3h5m, 2d."""
    seconds = int(abs(seconds))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes}m" if minutes and hours < 10 else f"{hours}h"
    return f"{hours // 24}d"


def relative(moment: dt.datetime | None, now: dt.datetime) -> str:
    """'in 47m' or '12m ago' ('' without a time)."""
    if moment is None:
        return ""
    delta = (moment - now).total_seconds()
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


def _when(text: Any, now: dt.datetime) -> str:
    moment = parse_time(text)
    return f"{text} ({relative(moment, now)})" if moment else "-"


# --- the pods that read a token Secret ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Use:
    """How one container reads the Secret. `how`: volume, subPath, subPathExpr, env or envFrom; `detail`: the mount
    path, the variable (and key) or the prefix. `refreshed`: whether a new token reaches it (only a plain volume)."""

    container: str
    kind: str
    how: str
    detail: str
    refreshed: bool

    def text(self) -> str:
        where = {"volume": f"volume mount at {self.detail}", "env": f"environment variable {self.detail}",
                 "envFrom": "envFrom" + (f" (prefix {self.detail})" if self.detail else "")}.get(
                     self.how, f"{self.how} mount at {self.detail}")
        return f"{self.kind} {self.container}: {where}" + ("" if self.refreshed else "  -- never sees a refresh")


@dataclass(frozen=True)
class Consumer:
    pod: str
    phase: str
    uses: tuple[Use, ...]

    @property
    def stale(self) -> bool:
        return any(not use.refreshed for use in self.uses)


_KINDS = {"initContainers": "init container", "containers": "container", "ephemeralContainers": "ephemeral container"}


def _volume_mounts(spec: Mapping[str, Any], secret: str) -> Iterator[Use]:
    """Plain mounts (no subPath) of volumes that project `secret`: these see every refresh."""
    volumes = {name for name, volume in secret_volumes(spec).items() if secret in volume.secrets}
    for listed_in, container in containers(spec):
        for mount in map(_map, container.get("volumeMounts") or []):
            if _str(mount.get("name")) in volumes and not (mount.get("subPath") or mount.get("subPathExpr")):
                yield Use(_str(container.get("name")), _KINDS[listed_in], "volume", _str(mount.get("mountPath")), True)


def pod_uses(pod: Mapping[str, Any], secret: str) -> tuple[Use, ...]:
    """Every way the pod's containers read `secret`: plain volume mounts, and (from consumers.unrefreshable) the
    subPath mounts, env and envFrom that never see a refresh."""
    spec = _map(pod.get("spec"))
    stale = [Use(f.container, f.kind, f.how.value, f.detail, False) for f in unrefreshable(spec) if f.secret == secret]
    return (*_volume_mounts(spec, secret), *stale)


def secret_consumers(pods: Iterable[Mapping[str, Any]], secret: str) -> list[Consumer]:
    """The running (or pending) pods that read `secret`, by name; finished pods read nothing any more."""
    found = []
    for pod in pods:
        phase = _str(_map(pod.get("status")).get("phase"))
        uses = pod_uses(pod, secret)
        if uses and phase not in FINISHED_PHASES:
            found.append(Consumer(_str(_map(pod.get("metadata")).get("name")), phase or "Unknown", uses))
    return sorted(found, key=lambda c: c.pod)


# --- Events -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EventLine:
    type: str
    reason: str
    message: str
    last_seen: str | None
    count: int
    source: str  # component/instance

    def seen(self) -> dt.datetime | None:
        return parse_time(self.last_seen)


def event_line(event: Mapping[str, Any]) -> EventLine:
    """An Event of either API shape (core/v1 fields, with events.k8s.io/v1's where core's are empty)."""
    series = _map(event.get("series"))
    last = (series.get("lastObservedTime") or event.get("lastTimestamp") or event.get("eventTime")
            or _map(event.get("metadata")).get("creationTimestamp"))
    count = series.get("count") or event.get("count") or 1
    source = _map(event.get("source"))
    component = _str(event.get("reportingComponent")) or _str(source.get("component"))
    instance = _str(event.get("reportingInstance")) or _str(source.get("host"))
    return EventLine(_str(event.get("type")), _str(event.get("reason")), _str(event.get("message")),
                     last if isinstance(last, str) else None, count if isinstance(count, int) else 1,
                     "/".join(p for p in (component, instance) if p))


def recent_events(events: Iterable[Mapping[str, Any]], limit: int = MAX_EVENTS) -> list[EventLine]:
    """The newest `limit` Events, newest first."""
    lines = [event_line(e) for e in events]
    oldest = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(lines, key=lambda e: e.seen() or oldest, reverse=True)[:limit]


# --- status -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StatusView:
    name: str
    namespace: str
    generation: int | None
    created: str | None
    ready: Mapping[str, Any] | None
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    renew_requested: str | None
    events: Sequence[EventLine] = ()
    consumers: Sequence[Consumer] | None = None  # None: not looked at
    consumers_error: str | None = None

    @property
    def app(self) -> str | None:
        """The ClusterGraphApp named in spec.appRef, if any: the identity is the app's, not the spec's."""
        return _str(_map(self.spec.get("appRef")).get("name")) or None

    @property
    def secret_name(self) -> str:
        return _str(self.status.get("secretName")) or _str(self.spec.get("secretName")) or f"{self.name}-token"

    @property
    def renew_pending(self) -> bool:
        return self.renew_requested is not None and self.renew_requested != self.status.get("lastRenewRequest")


def ready_condition(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for cond in _map(obj.get("status")).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond
    return None


def status_view(obj: Mapping[str, Any], events: Iterable[Mapping[str, Any]] = (),
                pods: Iterable[Mapping[str, Any]] | None = None, pods_error: str | None = None) -> StatusView:
    meta = _map(obj.get("metadata"))
    view = StatusView(
        name=_str(meta.get("name")), namespace=_str(meta.get("namespace")),
        generation=meta.get("generation") if isinstance(meta.get("generation"), int) else None,
        created=meta.get("creationTimestamp"), ready=ready_condition(obj), spec=_map(obj.get("spec")),
        status=_map(obj.get("status")), renew_requested=_map(meta.get("annotations")).get(RENEW_ANNOTATION),
        events=recent_events(events), consumers_error=pods_error)
    if pods is not None:
        view = replace(view, consumers=secret_consumers(pods, view.secret_name))
    return view


def _ready_text(view: StatusView | AppView, now: dt.datetime) -> list[str]:
    cond = view.ready
    if cond is None:
        watching = " and watching this namespace" if isinstance(view, StatusView) else ""
        return [f"Ready:          Unknown (no status yet: is the operator running{watching}?)"]
    line = f"Ready:          {cond.get('status')}, {cond.get('reason')}"
    if cond.get("lastTransitionTime"):
        line += f", since {_when(cond.get('lastTransitionTime'), now)}"
    lines = [line, f"  Message:      {cond.get('message') or '-'}"]
    observed = cond.get("observedGeneration")
    if isinstance(observed, int) and view.generation is not None and observed < view.generation:
        lines.append(f"  Note:         reported for generation {observed}; the spec is at generation "
                     f"{view.generation} (not reconciled yet)")
    return lines


def _app_text(view: StatusView) -> list[str]:
    return [f"App:            {view.app} (ClusterGraphApp: graphcred status cga/{view.app})"] if view.app else []


def _gac_credential_text(view: StatusView, now: dt.datetime) -> list[str]:
    expires = view.status.get("credentialExpiresOn")
    if view.app:  # the app's credential, described under the app; its expiry as the operator last read it
        return (["Credential:     the app's", f"  Expires:      {credential_expiry(expires, now)}"]
                if expires else [])
    return _credential_lines(credential_facts(view.spec), "", expires, now)


def renewal_condition(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The CertificateRenewal condition (certificate.rotation), if any."""
    for cond in _map(obj.get("status")).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == RENEWAL_CONDITION:
            return cond
    return None


UNKNOWN_KEY_ID_TEXT = "- (not known: set rotation.keyId, or this key may stay on the app once replaced)"


def upload_commands(secret: str, namespace: str, client_id: str) -> list[str]:
    """The one upload a person makes for a certificate graphcred generated (docs/certificate-rotation.md): the
    certificate out of its Secret, then onto the app next to its other credentials (--append keeps them)."""
    return [f"kubectl get secret {shlex.quote(secret)} -n {shlex.quote(namespace)} "
            "-o jsonpath='{.data.tls\\.crt}' | base64 -d > cert.pem",
            f"az ad app credential reset --id {shlex.quote(client_id)} --cert @cert.pem --append"]


def _certificate_text(view: StatusView, now: dt.datetime) -> list[str]:
    """status.certificate and the CertificateRenewal condition of a credential with certificate.rotation; when
    Entra does not know the certificate yet, the commands that upload it."""
    cert = _map(view.status.get("certificate"))
    cond = renewal_condition({"status": view.status})
    if not cert and cond is None:
        return []
    lines = ["Certificate:    renewed by graphcred (certificate.rotation)"]
    if cert:
        key_id = _str(cert.get("keyId"))
        lines += [f"  Thumbprint:   {_str(cert.get('thumbprint')) or '-'}",
                  f"  Not after:    {_when(cert.get('notAfter'), now)}",
                  f"  Renew at:     {_when(cert.get('renewAt'), now)}",
                  f"  Key ID:       {key_id or UNKNOWN_KEY_ID_TEXT}"]
        if cert.get("nextThumbprint"):
            lines.append(f"  Next:         {_str(cert.get('nextThumbprint'))} (renewal under way)")
        lines.append(f"  Last renewal: {_when(cert.get('lastRenewalTime'), now)}")
    if cond is not None:
        line = f"  Renewal:      {cond.get('status')}, {cond.get('reason')}"
        if cond.get("lastTransitionTime"):
            line += f", since {_when(cond.get('lastTransitionTime'), now)}"
        lines += [line, f"    Message:    {cond.get('message') or '-'}"]
    if cert.get("pem"):
        secret = _str(_map(_map(view.spec.get("credential")).get("certificate")).get("name")) or "SECRET"
        client_id = _str(view.spec.get("clientId")) or "CLIENT_ID"
        lines += ["  Upload:       Entra does not know this certificate yet. Upload it to the app once:",
                  *(f"    {command}" for command in upload_commands(secret, view.namespace, client_id)),
                  f"    (graphcred tries again every {NOT_REGISTERED_RETRY:.0f} s; from then on it renews the "
                  "certificate itself)"]
    return lines


def _token_text(view: StatusView, now: dt.datetime) -> list[str]:
    status, spec = view.status, view.spec
    roles = status.get("roles") or []
    return [
        "Token:",
        f"  Secret:       {view.secret_name}",
        f"  Expires:      {_when(status.get('expiresOn'), now)}",
        f"  Next refresh: {_when(status.get('refreshAt'), now)}",
        f"  Last refresh: {_when(status.get('lastRefreshTime'), now)}",
        f"  Why:          {status.get('lastRefreshReason') or '-'}",
        f"  Audience:     {status.get('audience') or '-'}",
        f"  Roles:        {', '.join(str(r) for r in roles) if roles else '-'}",
        f"  Tenant:       {status.get('tenantId') or spec.get('tenantId') or '-'}",
        f"  App:          {status.get('appId') or spec.get('clientId') or '-'}",
        f"  Failures:     {status.get('consecutiveFailures') or 0} in a row",
    ]


def _renew_text(view: StatusView) -> list[str]:
    served = view.status.get("lastRenewRequest")
    if view.renew_pending:
        return [f"Renew:          requested {view.renew_requested} (not served yet)"]
    return [f"Renew:          last request served: {served}"] if served else []


def _consumers_text(view: StatusView) -> list[str]:
    head = f"Consumers (pods in {view.namespace} reading {view.secret_name}):"
    if view.consumers_error:
        return [head, f"  {view.consumers_error}"]
    if view.consumers is None:
        return []
    if not view.consumers:
        return [head, "  none found"]
    lines = [head]
    for consumer in view.consumers:
        lines.append(f"  {consumer.pod} ({consumer.phase})")
        lines += [f"    {use.text()}" for use in consumer.uses]
    counted = view.status.get("unrefreshableConsumers")
    if counted:
        lines.append(f"  The operator counts {counted} pod(s) that never see a refresh (status.unrefreshableConsumers)")
    return lines


# outcomes whose message says nothing the outcome and the time do not: the target holds the newest token
_SETTLED_OUTCOMES = ("Current", "Restarted")


def restart_records(status: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """status.restarts: one record per restart target (kind, name, outcome, lastRestartTime, message, derived)."""
    raw = status.get("restarts")
    return [r for r in raw if isinstance(r, Mapping)] if isinstance(raw, list) else []


def _restarts_text(view: StatusView, now: dt.datetime) -> list[str]:
    """Each restart target (spec.restartTargets, and those restartUnrefreshable found) with its last restart and
    outcome, as status.restarts records them; the message only where the outcome is a problem. A target the spec
    names that has no record yet is listed too: the operator records targets once the Secret holds a token."""
    records = restart_records(view.status)
    named = [_map(t) for t in view.spec.get("restartTargets") or [] if isinstance(t, Mapping)]
    unrefreshable = view.spec.get("restartUnrefreshable") is True
    if not records and not named and not unrefreshable:
        return []
    lines = ["Restart targets (restarted by graphcred after each new token):"]
    if unrefreshable:
        lines.append("  Derived:      the workloads of pods that never see a refresh (restartUnrefreshable)")
    rows: list[tuple[str, ...]] = []
    for record in records:
        outcome = _str(record.get("outcome")) or "-"
        target = f"{_str(record.get('kind'))}/{_str(record.get('name'))}"
        if record.get("derived") is True:
            target += " (derived)"
        message = "" if outcome in _SETTLED_OUTCOMES else _str(record.get("message")) or "-"
        rows.append((printable(target), printable(outcome), _when(record.get("lastRestartTime"), now),
                     printable(message)))
    recorded = {(_str(r.get("kind")), _str(r.get("name"))) for r in records}
    for ref in named:
        kind, name = _str(ref.get("kind")), _str(ref.get("name"))
        if (kind, name) not in recorded:
            rows.append((printable(f"{kind}/{name}"), "-", "-", "not recorded yet"))
    if not rows:
        return [*lines, "  none found yet"]
    head: tuple[str, ...] = ("TARGET", "OUTCOME", "LAST RESTART", "MESSAGE")
    if not any(row[-1] for row in rows):  # every target is current: no message column
        head, rows = head[:-1], [row[:-1] for row in rows]
    return [*lines, *(line.rstrip() for line in _table([head, *rows]))]


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "   " + row[-1]
            for row in rows]


def _events_text(view: StatusView | AppView, now: dt.datetime) -> list[str]:
    if not view.events:
        return ["Events:         none"]
    rows = [("LAST SEEN", "TYPE", "REASON", "FROM", "MESSAGE")]
    for event in view.events:
        seen = event.seen()
        age = span((now - seen).total_seconds()) if seen else "-"
        if event.count > 1:
            age += f" (x{event.count})"
        rows.append((age, printable(event.type), printable(event.reason), printable(event.source or "-"),
                     printable(event.message)))
    return ["Events (newest first):", *_table(rows)]


def render_status(view: StatusView, now: dt.datetime) -> str:
    lines = [f"Name:           {view.name}", f"Namespace:      {view.namespace}",
             f"Created:        {_when(view.created, now)}",
             *_ready_text(view, now), *_app_text(view), *_gac_credential_text(view, now),
             *_certificate_text(view, now), *_token_text(view, now),
             *_renew_text(view),
             *_consumers_text(view),
             *_restarts_text(view, now),
             *_events_text(view, now)]
    return _text(lines)


def _seconds_until(text: Any, now: dt.datetime) -> int | None:
    moment = parse_time(text)
    return int((moment - now).total_seconds()) if moment else None


def status_json(view: StatusView, now: dt.datetime) -> dict[str, Any]:
    status, spec = view.status, view.spec
    return {
        "name": view.name, "namespace": view.namespace, "generation": view.generation,
        "ready": dict(view.ready) if view.ready is not None else None,
        "secretName": view.secret_name,
        "expiresOn": status.get("expiresOn"), "secondsLeft": _seconds_until(status.get("expiresOn"), now),
        "refreshAt": status.get("refreshAt"), "lastRefreshTime": status.get("lastRefreshTime"),
        "lastRefreshReason": status.get("lastRefreshReason"),
        "consecutiveFailures": status.get("consecutiveFailures") or 0,
        "roles": list(status.get("roles") or []), "audience": status.get("audience"),
        "tenantId": status.get("tenantId") or spec.get("tenantId"),
        "appId": status.get("appId") or spec.get("clientId"),
        "appRef": view.app,
        "credentialExpiresOn": status.get("credentialExpiresOn"),
        "credentialSecondsLeft": _seconds_until(status.get("credentialExpiresOn"), now),
        "certificate": dict(_map(status.get("certificate"))) or None,
        "certificateRenewal": dict(renewal) if (renewal := renewal_condition({"status": status})) else None,
        "renewRequested": view.renew_requested, "lastRenewRequest": status.get("lastRenewRequest"),
        "renewPending": view.renew_pending,
        "unrefreshableConsumers": status.get("unrefreshableConsumers"),
        "consumers": None if view.consumers is None else [
            {"pod": c.pod, "phase": c.phase, "uses": [asdict(u) for u in c.uses]} for c in view.consumers],
        "consumersError": view.consumers_error,
        "restarts": [dict(r) for r in restart_records(status)] or None,
        "events": [{"type": e.type, "reason": e.reason, "message": e.message, "lastSeen": e.last_seen,
                    "count": e.count, "source": e.source} for e in view.events],
    }


# --- status of a ClusterGraphApp --------------------------------------------------------------------------------

MAX_USERS = 20  # credentials listed under an app; the rest are counted


def selector_text(selector: Any) -> str:
    """A namespaceSelector as kubectl writes label selectors (`-l`): `a=b,tier in (gold,silver),!legacy`.
    `{}` selects every namespace, and says so."""
    selector = _map(selector)
    parts = [f"{k}={v}" for k, v in sorted(_map(selector.get("matchLabels")).items())]
    for req in map(_map, selector.get("matchExpressions") or []):
        key, op = _str(req.get("key")), _str(req.get("operator"))
        values = ",".join(str(v) for v in req.get("values") or [])
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key,
                      "DoesNotExist": f"!{key}"}.get(op, f"{key} {op} ({values})"))
    return ",".join(parts) if parts else "{} (every namespace)"


@dataclass(frozen=True)
class AppUser:
    """A GraphAppCredential naming the app, with its Ready condition."""

    namespace: str
    name: str
    ready: str  # True, False or Unknown (no status yet)
    reason: str


def app_users(credentials: Iterable[Mapping[str, Any]], app: str) -> list[AppUser]:
    """The credentials whose spec.appRef names `app`: those not Ready first (what a reader looks for), then by
    namespace and name."""
    found = []
    for obj in credentials:
        if _str(_map(_map(obj.get("spec")).get("appRef")).get("name")) != app:
            continue
        meta, cond = _map(obj.get("metadata")), _map(ready_condition(obj))
        found.append(AppUser(_str(meta.get("namespace")), _str(meta.get("name")),
                             _str(cond.get("status")) or "Unknown", _str(cond.get("reason")) or "-"))
    return sorted(found, key=lambda u: (u.ready == "True", u.namespace, u.name))


@dataclass(frozen=True)
class AppView:
    name: str
    generation: int | None
    created: str | None
    ready: Mapping[str, Any] | None
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    # where the app's Secret or ServiceAccount lives, as the operator's Deployment says; None: could not tell
    resource_namespace: str | None = None
    users: Sequence[AppUser] | None = None  # None: not looked at
    users_error: str | None = None
    events: Sequence[EventLine] = ()


def app_view(obj: Mapping[str, Any], credentials: Iterable[Mapping[str, Any]] | None = None,
             credentials_error: str | None = None, events: Iterable[Mapping[str, Any]] = (),
             resource_namespace: str | None = None) -> AppView:
    meta = _map(obj.get("metadata"))
    name = _str(meta.get("name"))
    return AppView(name=name, generation=meta.get("generation") if isinstance(meta.get("generation"), int) else None,
                   created=meta.get("creationTimestamp"), ready=ready_condition(obj), spec=_map(obj.get("spec")),
                   status=_map(obj.get("status")), resource_namespace=resource_namespace,
                   users=None if credentials is None else app_users(credentials, name),
                   users_error=credentials_error, events=recent_events(events))


def _authority(spec: Mapping[str, Any]) -> str:
    cloud = _str(spec.get("cloud")) or Cloud.AZURE_PUBLIC.value
    host = _str(spec.get("authorityHost"))
    if host:
        return f"{host} (authorityHost)"
    known = next((h for c, h in AUTHORITY_HOSTS.items() if c.value == cloud), None)
    return f"{known} ({cloud})" if known else cloud


def credential_facts(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the app's credential is and what it names; never any of its material (which the spec never holds)."""
    cred = _map(spec.get("credential"))
    if "clientSecret" in cred:
        ref = _map(cred["clientSecret"])
        return {"kind": "clientSecret", "secret": _str(ref.get("name")), "key": _str(ref.get("key")) or "clientSecret"}
    if "certificate" in cred:
        ref = _map(cred["certificate"])
        return {"kind": "certificate", "secret": _str(ref.get("name")), "sendX5c": ref.get("sendX5c") is True}
    if "workloadIdentity" in cred:
        ref = _map(cred["workloadIdentity"])
        return {"kind": "workloadIdentity", "serviceAccount": _str(ref.get("serviceAccountName")),
                "audience": _str(ref.get("audience")) or "api://AzureADTokenExchange"}
    if "managedIdentity" in cred:
        client_id = _str(_map(cred["managedIdentity"]).get("clientId"))
        return {"kind": "managedIdentity", "assigned": "user" if client_id else "system",
                **({"clientId": client_id} if client_id else {})}
    return {"kind": None}


def credential_expiry(expires: Any, now: dt.datetime) -> str:
    """status.credentialExpiresOn as shown: the time, how far off, and whether it has passed."""
    moment = parse_time(expires)
    if moment is None:
        return "-"
    return f"{expires} ({relative(moment, now)}{', expired' if moment <= now else ''})"


def _credential_lines(facts: Mapping[str, Any], where: str, expires: Any, now: dt.datetime) -> list[str]:
    """The credential's kind, what it names (`where`: the namespace of what it names, if not the object's own) and
    when it expires: known for a certificate (its notAfter) and for a client secret whose Secret says so."""
    kind = facts["kind"]
    at = f", {where}" if where else ""
    lines = [f"Credential:     {kind or '- (none in the spec)'}"]
    if kind == "clientSecret":
        lines.append(f"  Secret:       {facts['secret']}, key {facts['key']}{at}")
    elif kind == "certificate":
        lines.append(f"  Secret:       {facts['secret']} (kubernetes.io/tls){at}"
                     + (", sends x5c" if facts["sendX5c"] else ""))
    elif kind == "workloadIdentity":
        lines += [f"  Account:      ServiceAccount {facts['serviceAccount']}{at}",
                  f"  Audience:     {facts['audience']}"]
    elif kind == "managedIdentity":
        lines.append(f"  Identity:     user-assigned, client ID {facts['clientId']}" if facts["assigned"] == "user"
                     else "  Identity:     system-assigned (the operator's node or pod)")
    if expires:
        lines.append(f"  Expires:      {credential_expiry(expires, now)}")
    elif kind == "certificate":
        lines.append("  Expires:      -")
    elif kind == "clientSecret":
        # Entra does not tell a secret's end to its holder: only the admin who created it knows (docs/behaviour.md)
        lines.append(f"  Expires:      - (not known: annotate the Secret {EXPIRES_ANNOTATION}=<endDateTime>)")
    return lines


def _credential_text(view: AppView, now: dt.datetime) -> list[str]:
    where = (f"in namespace {view.resource_namespace}" if view.resource_namespace
             else "in the operator's cluster resource namespace")
    return _credential_lines(credential_facts(view.spec), where, view.status.get("credentialExpiresOn"), now)


def _policy_text(spec: Mapping[str, Any]) -> list[str]:
    policy = _map(spec.get("policy"))
    scopes = [str(s) for s in policy.get("allowedScopes") or []]
    return ["Policy:",
            f"  Namespaces:   {selector_text(policy.get('namespaceSelector')) if policy else '- (no policy)'}",
            f"  Scopes:       {', '.join(scopes) if scopes else '-'}"]


def _users_text(view: AppView, now: dt.datetime, limit: int) -> list[str]:
    status = view.status
    users, permitted = status.get("users"), status.get("permitted")
    lines = [f"Users:          {users if isinstance(users, int) else '-'} GraphAppCredential(s), "
             f"{permitted if isinstance(permitted, int) else '-'} permitted (as the operator counts them)",
             f"  Last token:   {_when(status.get('lastTokenTime'), now)}"]
    head = "Credentials using it (not Ready first):"
    if view.users_error:
        return [*lines, head, f"  {view.users_error}"]
    if view.users is None:
        return lines
    if not view.users:
        return [*lines, head, "  none found"]
    rows = [("NAMESPACE", "NAME", "READY", "REASON")]
    rows += [(u.namespace, u.name, u.ready, u.reason) for u in view.users[:limit]]
    lines += [head, *_table(rows)]
    if len(view.users) > limit:
        lines.append(f"  and {len(view.users) - limit} more")
    return lines


def render_app(view: AppView, now: dt.datetime, limit: int = MAX_USERS) -> str:
    spec = view.spec
    lines = [f"Name:           {view.name}", "Kind:           ClusterGraphApp (cluster-scoped)",
             f"Created:        {_when(view.created, now)}", *_ready_text(view, now),
             f"Tenant:         {spec.get('tenantId') or '-'}", f"Client:         {spec.get('clientId') or '-'}",
             f"Authority:      {_authority(spec)}",
             *_credential_text(view, now), *_policy_text(spec), *_users_text(view, now, limit),
             *_events_text(view, now)]
    return _text(lines)


def app_json(view: AppView, now: dt.datetime) -> dict[str, Any]:
    spec, status = view.spec, view.status
    policy = _map(spec.get("policy"))
    return {
        "kind": "ClusterGraphApp", "name": view.name, "generation": view.generation,
        "ready": dict(view.ready) if view.ready is not None else None,
        "tenantId": spec.get("tenantId"), "clientId": spec.get("clientId"), "authority": _authority(spec),
        "credential": credential_facts(spec), "resourceNamespace": view.resource_namespace,
        "credentialExpiresOn": status.get("credentialExpiresOn"),
        "secondsLeft": _seconds_until(status.get("credentialExpiresOn"), now),
        "policy": {"namespaceSelector": selector_text(policy.get("namespaceSelector")) if policy else None,
                   "allowedScopes": list(policy.get("allowedScopes") or [])},
        "users": status.get("users"), "permitted": status.get("permitted"),
        "lastTokenTime": status.get("lastTokenTime"),
        "credentials": None if view.users is None else [asdict(u) for u in view.users],
        "credentialsError": view.users_error,
        "events": [{"type": e.type, "reason": e.reason, "message": e.message, "lastSeen": e.last_seen,
                    "count": e.count, "source": e.source} for e in view.events],
    }


# --- renew --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RenewResult:
    ok: bool
    message: str


def renew_result(obj: Mapping[str, Any], value: str, failures_before: int, now: dt.datetime) -> RenewResult | None:
    """What became of the renew request `value`, from the object as it stands; None while it is pending. Served:
    status.lastRenewRequest == value (a new token is in the Secret; ok if Ready). Failed: a failed attempt since
    the request (consecutiveFailures grew past `failures_before`)."""
    status = _map(obj.get("status"))
    cond = ready_condition(obj) or {}
    reason = f"{cond.get('reason')}: {cond.get('message') or '-'}"
    if status.get("lastRenewRequest") == value:
        if cond.get("status") == "True":
            return RenewResult(True, f"renewed: the new token expires {_when(status.get('expiresOn'), now)}")
        return RenewResult(False, f"renewed, but not Ready: {reason}")
    failures = status.get("consecutiveFailures")
    if isinstance(failures, int) and failures > failures_before and cond.get("status") != "True":
        return RenewResult(False, f"not renewed: {reason}")
    return None


# --- inspect secret -----------------------------------------------------------------------------------------------

class InspectError(Exception):
    """The Secret holds nothing to decode. The message never contains the token."""


@dataclass(frozen=True)
class TokenView:
    namespace: str
    secret: str
    type: str
    credential: str | None  # the GraphAppCredential that writes it (its annotation)
    keys: tuple[str, ...]  # names only
    source_key: str
    header: Mapping[str, Any] = field(default_factory=dict)
    claims: Mapping[str, Any] = field(default_factory=dict)


def _token_from(data: Mapping[str, Any]) -> tuple[str, str]:
    """(key, access token) from the Secret's data: `access_token`, else `authorization` without 'Bearer '."""
    for key in ("access_token", "authorization"):
        raw = data.get(key)
        if not isinstance(raw, str) or not raw:
            continue
        try:
            text = base64.b64decode(raw, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InspectError(f"key {key} is not base64-encoded UTF-8 text") from None
        if key == "authorization":
            text = text.removeprefix("Bearer ").removeprefix("bearer ")
        return key, text.strip()
    raise InspectError("no access_token or authorization key: not a graphcred token Secret, or not written yet")


def _segment(part: str, what: str) -> Mapping[str, Any]:
    try:
        value = json.loads(b64url_decode(part))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InspectError(f"the token's {what} is not base64url-encoded JSON") from None
    if not isinstance(value, Mapping):
        raise InspectError(f"the token's {what} is not a JSON object")
    return value


def token_view(secret: Mapping[str, Any]) -> TokenView:
    """The decoded header and claims of the Secret's access token. The signature is never decoded or kept."""
    meta = _map(secret.get("metadata"))
    data = _map(secret.get("data"))
    key, token = _token_from(data)
    parts = token.split(".")
    if len(parts) == 5:
        raise InspectError(f"key {key} holds an encrypted token (JWE): its claims are for the resource to read")
    if len(parts) != 3:
        raise InspectError(f"key {key} does not hold a JWT ({len(parts)} dot-separated parts, not 3)")
    header, claims = _segment(parts[0], "header"), _segment(parts[1], "payload")
    del token, parts
    return TokenView(namespace=_str(meta.get("namespace")), secret=_str(meta.get("name")),
                     type=_str(secret.get("type")) or "Opaque",
                     credential=_map(meta.get("annotations")).get(CREDENTIAL_ANNOTATION),
                     keys=tuple(sorted(data)), source_key=key, header=header, claims=claims)


def _claim_text(name: str, value: Any, now: dt.datetime) -> str:
    if name in TIME_CLAIMS and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):  # a tenant's token may say anything: show it as it is
            return f"{json.dumps(value)} (not a time)"
        return f"{value} ({moment.strftime('%Y-%m-%dT%H:%M:%SZ')}, {relative(moment, now)})"
    return value if isinstance(value, str) else json.dumps(value)


def render_token(view: TokenView, now: dt.datetime) -> str:
    width = max([len(k) for k in (*view.header, *view.claims)] + [3]) + 1
    lines = [f"Secret:       {view.namespace}/{view.secret} ({view.type})",
             f"Written by:   GraphAppCredential {view.credential}" if view.credential else
             "Written by:   - (no graphcred.io/credential annotation)",
             f"Keys:         {', '.join(view.keys)} (values not shown)",
             f"Decoded from: {view.source_key} (header and claims only; the signature is not shown)",
             "Header:"]
    lines += [f"  {k + ':':<{width}} {_claim_text(k, v, now)}" for k, v in view.header.items()]
    lines.append("Claims:")
    lines += [f"  {k + ':':<{width}} {_claim_text(k, v, now)}" for k, v in view.claims.items()]
    return _text(lines)


def token_json(view: TokenView) -> dict[str, Any]:
    return {"namespace": view.namespace, "secret": view.secret, "type": view.type, "credential": view.credential,
            "keys": list(view.keys), "decodedFrom": view.source_key, "header": dict(view.header),
            "claims": dict(view.claims)}
