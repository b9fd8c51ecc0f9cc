"""What `graphcred status`, `renew` and `inspect secret` show, from API objects as the apiserver returns them (the
same commands against the real bed: tests/e2e/test_cli.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
from typing import Any

import pytest
import yaml

from graphcred.app.cli import main
from graphcred.ops import view as opsview
from graphcred.ops.commands import image_version, object_name, renew_value

NOW = dt.datetime(2025, 11, 25, 18, 0, 0, tzinfo=dt.UTC)
RENEW = "graphcred.io/renew-requested-at"


def _b64url(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any]) -> tuple[str, str]:
    """A token shaped like Entra's (header, claims, a random signature) and its signature."""
    signature = base64.urlsafe_b64encode(secrets.token_bytes(64)).rstrip(b"=").decode()
    header = {"typ": "JWT", "alg": "RS256", "kid": "k1"}
    return f"{_b64url(header)}.{_b64url(claims)}.{signature}", signature


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _credential(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "mail", "namespace": "team-a", "uid": "u1", "generation": 2,
                     "creationTimestamp": "2025-11-25T17:00:00Z", "annotations": {}},
        "spec": {"tenantId": "t-spec", "clientId": "c-spec", "scopes": ["https://graph.microsoft.com/.default"]},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued",
                                   "message": "token issued", "observedGeneration": 2,
                                   "lastTransitionTime": "2025-11-25T17:48:00Z"}],
                   "secretName": "mail-token", "expiresOn": "2025-11-25T18:47:00Z",
                   "refreshAt": "2025-11-25T18:17:30Z", "lastRefreshTime": "2025-11-25T17:48:00Z",
                   "consecutiveFailures": 0, "roles": ["Mail.Send", "User.Read.All"],
                   "audience": "https://graph.microsoft.com", "tenantId": "t1", "appId": "a1", **status},
    }


def _pod(name: str, containers: list[dict[str, Any]], volumes: list[dict[str, Any]] | None = None,
         phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": containers, "volumes": volumes or []},
            "status": {"phase": phase}}


TOKEN_VOLUME = {"name": "token", "secret": {"secretName": "mail-token"}}
PODS = [
    _pod("web", [{"name": "app", "volumeMounts": [{"name": "token", "mountPath": "/var/run/token"}]}], [TOKEN_VOLUME]),
    _pod("projected", [{"name": "app", "volumeMounts": [{"name": "all", "mountPath": "/etc/all"}]}],
         [{"name": "all", "projected": {"sources": [{"configMap": {"name": "x"}},
                                                    {"secret": {"name": "mail-token"}}]}}]),
    _pod("legacy", [{"name": "app", "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {
        "name": "mail-token", "key": "access_token"}}}]}]),
    _pod("pinned", [{"name": "app", "volumeMounts": [{"name": "token", "mountPath": "/etc/t",
                                                      "subPath": "access_token"}]}], [TOKEN_VOLUME]),
    _pod("done", [{"name": "app", "envFrom": [{"secretRef": {"name": "mail-token"}}]}], phase="Succeeded"),
    _pod("other", [{"name": "app", "volumeMounts": [{"name": "o", "mountPath": "/o"}]}],
         [{"name": "o", "secret": {"secretName": "other-token"}}]),
    _pod("unmounted", [{"name": "app"}], [TOKEN_VOLUME]),
]


# --- consumers ----------------------------------------------------------------------------------------------------
def test_consumers_are_the_pods_reading_the_token_secret_with_those_no_refresh_reaches_marked() -> None:
    consumers = {c.pod: c for c in opsview.secret_consumers(PODS, "mail-token")}
    # a finished pod reads nothing any more; another Secret's reader and a volume no container mounts are no use
    assert sorted(consumers) == ["legacy", "pinned", "projected", "web"]
    assert [(u.how, u.detail, u.refreshed) for u in consumers["web"].uses] == [("volume", "/var/run/token", True)]
    assert [(u.how, u.refreshed) for u in consumers["projected"].uses] == [("volume", True)]
    assert [(u.how, u.detail, u.refreshed) for u in consumers["legacy"].uses] == [("env", "TOKEN", False)]
    assert [(u.how, u.detail, u.refreshed) for u in consumers["pinned"].uses] == [("subPath", "/etc/t", False)]
    assert [c.pod for c in consumers.values() if c.stale] == ["legacy", "pinned"]


# --- status -------------------------------------------------------------------------------------------------------
def _event(reason: str, at: str, *, type: str = "Normal", count: int = 1, message: str = "m",  # noqa: A002
           component: str = "graphcred", host: str = "graphcred-7d9f-x") -> dict[str, Any]:
    return {"type": type, "reason": reason, "message": message, "lastTimestamp": at, "count": count,
            "source": {"component": component, "host": host}, "reportingComponent": component,
            "reportingInstance": host}


def test_recent_events_are_newest_first_and_bounded() -> None:
    events = [_event(f"R{i}", f"2025-11-25T17:{i:02d}:00Z") for i in range(15)]
    # events.k8s.io-shaped (series, eventTime only) and kopf-shaped (no host) Events read too
    events.append({"type": "Warning", "reason": "Series", "eventTime": "2025-11-25T16:00:00.000000Z",
                   "series": {"count": 4, "lastObservedTime": "2025-11-25T17:59:30.123456Z"},
                   "reportingComponent": "graphcred", "reportingInstance": "p"})
    events.append({"type": "Normal", "reason": "Old", "lastTimestamp": "2025-11-25T10:00:00Z",
                   "source": {"component": "kopf"}})
    lines = opsview.recent_events(events)
    assert [e.reason for e in lines] == ["Series", *[f"R{i}" for i in range(14, 5, -1)]]
    assert (lines[0].count, lines[0].source) == (4, "graphcred/p")
    assert opsview.event_line(events[-1]).source == "kopf"


def test_status_text_shows_condition_times_token_consumers_and_events() -> None:
    events = [_event("Unauthorized", "2025-11-25T17:40:00Z", type="Warning", message="AADSTS7000215: invalid"),
              _event("TokenIssued", "2025-11-25T17:48:00Z", count=2, message="token issued")]
    view = opsview.status_view(_credential(), events, PODS)
    text = opsview.render_status(view, NOW)
    assert "Ready:          True, TokenIssued, since 2025-11-25T17:48:00Z (12m ago)" in text
    assert "Expires:      2025-11-25T18:47:00Z (in 47m)" in text
    assert "Next refresh: 2025-11-25T18:17:30Z (in 17m)" in text
    assert "Roles:        Mail.Send, User.Read.All" in text
    assert "Audience:     https://graph.microsoft.com" in text
    assert "Tenant:       t1" in text and "App:          a1" in text
    assert "Secret:       mail-token" in text
    lines = text.splitlines()
    assert "container app: environment variable TOKEN  -- never sees a refresh" in text
    assert "container app: volume mount at /var/run/token" in text
    assert not [line for line in lines if "/var/run/token" in line and "never" in line]
    events_at = lines.index("Events (newest first):")
    assert "TokenIssued" in lines[events_at + 2] and "12m (x2)" in lines[events_at + 2]
    assert "Unauthorized" in lines[events_at + 3] and "graphcred/graphcred-7d9f-x" in lines[events_at + 3]


def test_status_says_why_the_token_was_requested() -> None:
    view = opsview.status_view(_credential(lastRefreshReason="credential Secret changed"), [], None)
    assert "Why:          credential Secret changed" in opsview.render_status(view, NOW)
    assert opsview.status_json(view, NOW)["lastRefreshReason"] == "credential Secret changed"
    before = opsview.status_view(_credential(), [], None)  # written by a graphcred that did not say
    assert "Why:          -" in opsview.render_status(before, NOW)


def test_status_says_what_is_not_known_yet() -> None:
    obj = _credential()
    obj["status"] = {}
    obj["metadata"]["annotations"] = {RENEW: "2025-11-25T17:59:00.000001Z"}
    text = opsview.render_status(opsview.status_view(obj, [], None, "cannot tell (list pods: HTTP 403 Forbidden)"),
                                 NOW)
    assert "Ready:          Unknown (no status yet: is the operator running" in text
    assert "Secret:       mail-token" in text  # the default name, before any status
    assert "Renew:          requested 2025-11-25T17:59:00.000001Z (not served yet)" in text
    assert "cannot tell (list pods: HTTP 403 Forbidden)" in text
    assert "Events:         none" in text


def test_status_notes_a_condition_for_an_older_generation() -> None:
    obj = _credential()
    obj["metadata"]["generation"] = 3
    text = opsview.render_status(opsview.status_view(obj), NOW)
    assert "reported for generation 2; the spec is at generation 3" in text


def test_status_json_has_the_same_facts_for_scripts() -> None:
    doc = opsview.status_json(opsview.status_view(_credential(lastRenewRequest="r1"), [], PODS), NOW)
    json.dumps(doc)  # serialisable as is
    assert doc["ready"]["status"] == "True" and doc["secondsLeft"] == 47 * 60
    assert doc["roles"] == ["Mail.Send", "User.Read.All"] and doc["lastRenewRequest"] == "r1"
    assert not doc["renewPending"]
    stale = [c["pod"] for c in doc["consumers"] if any(not u["refreshed"] for u in c["uses"])]
    assert stale == ["legacy", "pinned"]


# --- certificate.rotation: status.certificate and the CertificateRenewal condition ---------------------------------
CLIENT = "3c9e7a5b-1d2f-4a6b-8c0e-9f1a3b5d7e2c"
KEY_ID = "5f0c3a1e-8b2d-4c6f-9a7e-1d3b5c7e9f20"


def _rotating(certificate: dict[str, Any], *conditions: dict[str, Any], ready: tuple[str, str] = ("True",
              "TokenIssued")) -> dict[str, Any]:
    obj = _credential(certificate=certificate)
    obj["spec"] = {"tenantId": "t-spec", "clientId": CLIENT, "credential": {"certificate": {
        "name": "mail-cert", "rotation": {"objectId": "0b8e2f4a-6c1d-4e3f-8a5b-7c9d1e3f5a7b"}}}}
    obj["status"]["conditions"] = [{"type": "Ready", "status": ready[0], "reason": ready[1], "message": "m",
                                    "lastTransitionTime": "2025-11-25T17:48:00Z"}, *conditions]
    return obj


def _renewal(status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": "CertificateRenewal", "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2025-11-25T17:30:00Z"}


def _section(text: str, head: str) -> list[str]:
    """The lines of one section: its head and the indented lines under it."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(head))
    end = next((i for i in range(at + 1, len(lines)) if not lines[i].startswith(" ")), len(lines))
    return lines[at:end]


def test_status_shows_the_certificate_graphcred_renews_and_how_its_renewal_goes() -> None:
    obj = _rotating({"thumbprint": "A" * 40, "thumbprintSha256": "B" * 64, "notAfter": "2026-02-23T18:00:00Z",
                     "renewAt": "2026-01-24T18:00:00Z", "keyId": KEY_ID, "lastRenewalTime": "2025-11-22T18:00:00Z"},
                    _renewal("True", "Scheduled", "certificate AAAA expires at 2026-02-23T18:00:00Z; graphcred "
                             "renews it from 2026-01-24T18:00:00Z"))
    text = opsview.render_status(opsview.status_view(obj), NOW)
    assert _section(text, "Certificate:") == [
        "Certificate:    renewed by graphcred (certificate.rotation)",
        f"  Thumbprint:   {'A' * 40}",
        "  Not after:    2026-02-23T18:00:00Z (in 90d)",
        "  Renew at:     2026-01-24T18:00:00Z (in 60d)",
        f"  Key ID:       {KEY_ID}",
        "  Last renewal: 2025-11-22T18:00:00Z (3d ago)",
        "  Renewal:      True, Scheduled, since 2025-11-25T17:30:00Z (30m ago)",
        "    Message:    certificate AAAA expires at 2026-02-23T18:00:00Z; graphcred renews it from "
        "2026-01-24T18:00:00Z"]
    # between the credential it belongs to and the token it buys
    assert text.index("Credential:") < text.index("Certificate:") < text.index("Token:")
    assert "Upload:" not in text and "az ad app" not in text  # registered: nothing to upload


def test_status_shows_a_renewal_under_way_and_one_that_fails() -> None:
    obj = _rotating({"thumbprint": "A" * 40, "thumbprintSha256": "B" * 64, "notAfter": "2025-11-26T18:00:00Z",
                     "renewAt": "2025-11-25T10:00:00Z", "nextThumbprint": "C" * 40},
                    _renewal("False", "RenewalFailed", "Microsoft Graph refused addKey: HTTP 403 "
                             "Authorization_RequestDenied; the current certificate keeps serving"))
    section = _section(opsview.render_status(opsview.status_view(obj), NOW), "Certificate:")
    assert f"  Next:         {'C' * 40} (renewal under way)" in section
    assert "  Renew at:     2025-11-25T10:00:00Z (8h ago)" in section
    assert "  Key ID:       - (not known: set rotation.keyId, or this key may stay on the app once replaced)" in section
    assert "  Last renewal: -" in section
    assert "  Renewal:      False, RenewalFailed, since 2025-11-25T17:30:00Z (30m ago)" in section
    assert any("HTTP 403 Authorization_RequestDenied" in line for line in section)
    doc = opsview.status_json(opsview.status_view(obj), NOW)
    assert doc["certificate"]["nextThumbprint"] == "C" * 40
    assert doc["certificateRenewal"]["reason"] == "RenewalFailed"


def test_a_certificate_entra_does_not_know_yet_comes_with_the_upload_commands() -> None:
    obj = _rotating({"thumbprint": "A" * 40, "thumbprintSha256": "B" * 64, "notAfter": "2026-02-23T18:00:00Z",
                     "renewAt": "2026-01-24T18:00:00Z",
                     "pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
                    ready=("False", "CertificateNotRegistered"))
    section = _section(opsview.render_status(opsview.status_view(obj), NOW), "Certificate:")
    at = section.index("  Upload:       Entra does not know this certificate yet. Upload it to the app once:")
    assert section[at + 1:at + 3] == [
        "    kubectl get secret mail-cert -n team-a -o jsonpath='{.data.tls\\.crt}' | base64 -d > cert.pem",
        f"    az ad app credential reset --id {CLIENT} --cert @cert.pem --append"]
    assert "renews the certificate itself" in section[at + 3]
    assert "BEGIN CERTIFICATE" not in "\n".join(section)  # the commands, not the PEM (status holds it)
    assert opsview.status_json(opsview.status_view(obj), NOW)["certificate"]["pem"].startswith("-----BEGIN")


def test_the_upload_commands_quote_what_a_shell_would_read() -> None:
    assert opsview.upload_commands("cert", "team a", "id;rm -rf /") == [
        "kubectl get secret cert -n 'team a' -o jsonpath='{.data.tls\\.crt}' | base64 -d > cert.pem",
        "az ad app credential reset --id 'id;rm -rf /' --cert @cert.pem --append"]


def test_no_certificate_section_without_rotation() -> None:
    view = opsview.status_view(_credential())
    assert "Certificate:" not in opsview.render_status(view, NOW)
    doc = opsview.status_json(view, NOW)
    assert doc["certificate"] is None and doc["certificateRenewal"] is None


# --- restart targets: status.restarts ------------------------------------------------------------------------------
WAITING = ("StatefulSet db: the rollout graphcred started at 2025-11-25T17:18:01Z is in progress: 1 of 3 pods "
           "ready; graphcred restarts it for the newer token once that is done")
FORBIDDEN = ("Deployment api: read Deployment failed: HTTP 403 Forbidden: graphcred may not read or patch it (the "
             "chart's restartTargets.enabled grants it)")


def _restarting(*records: dict[str, Any], named: list[tuple[str, str]] | None = None,
                unrefreshable: bool = False) -> dict[str, Any]:
    """A credential with restart targets: `named` in spec.restartTargets (default: those of `records` not derived)
    and `records` in status.restarts, as the restarter writes them."""
    obj = _credential(restarts=list(records))
    if named is None:
        named = [(r["kind"], r["name"]) for r in records if not r.get("derived")]
    obj["spec"]["restartTargets"] = [{"kind": kind, "name": name} for kind, name in named]
    if unrefreshable:
        obj["spec"]["restartUnrefreshable"] = True
    return obj


def _record(kind: str, name: str, outcome: str, message: str, last: str | None = None,
            derived: bool = False) -> dict[str, Any]:
    record = {"kind": kind, "name": name, "tokenTime": "2025-11-25T17:48:00Z", "outcome": outcome, "message": message}
    if last:
        record["lastRestartTime"] = last
    if derived:
        record["derived"] = True
    return record


def test_status_shows_each_restart_target_with_its_outcome_and_last_restart() -> None:
    obj = _restarting(
        _record("Deployment", "web", "Restarted", "restarted for the token acquired at 2025-11-25T17:48:00Z",
                "2025-11-25T17:48:01Z"),
        _record("StatefulSet", "db", "Waiting", WAITING, "2025-11-25T17:18:01Z"),
        _record("DaemonSet", "agent", "Current", "first seen: its pods are taken to hold the token in the Secret"),
        _record("Deployment", "api", "Forbidden", FORBIDDEN, derived=True),
        named=[("Deployment", "web"), ("StatefulSet", "db"), ("DaemonSet", "agent"), ("Deployment", "new")],
        unrefreshable=True)
    text = opsview.render_status(opsview.status_view(obj), NOW)
    assert _section(text, "Restart targets") == [
        "Restart targets (restarted by graphcred after each new token):",
        "  Derived:      the workloads of pods that never see a refresh (restartUnrefreshable)",
        "  TARGET                     OUTCOME     LAST RESTART                     MESSAGE",
        "  Deployment/web             Restarted   2025-11-25T17:48:01Z (11m ago)",
        f"  StatefulSet/db             Waiting     2025-11-25T17:18:01Z (41m ago)   {WAITING}",
        "  DaemonSet/agent            Current     -",
        f"  Deployment/api (derived)   Forbidden   -                                {FORBIDDEN}",
        # named in the spec, not recorded: the operator has not seen it yet (no token yet, or not running)
        "  Deployment/new             -           -                                not recorded yet"]
    # after the consumers (whose pods they are), before the Events
    assert text.index("Token:") < text.index("Restart targets") < text.index("Events:")


def test_restart_targets_that_all_hold_the_newest_token_need_no_message_column() -> None:
    obj = _restarting(_record("Deployment", "web", "Restarted", "restarted", "2025-11-25T17:48:01Z"),
                      _record("StatefulSet", "db", "Current", "first seen"))
    assert _section(opsview.render_status(opsview.status_view(obj), NOW), "Restart targets")[1:] == [
        "  TARGET           OUTCOME     LAST RESTART",
        "  Deployment/web   Restarted   2025-11-25T17:48:01Z (11m ago)",
        "  StatefulSet/db   Current     -"]


def test_restart_targets_before_any_record() -> None:
    named = opsview.render_status(opsview.status_view(_restarting(named=[("Deployment", "web")])), NOW)
    assert _section(named, "Restart targets")[1:] == ["  TARGET           OUTCOME   LAST RESTART   MESSAGE",
                                                      "  Deployment/web   -         -              not recorded yet"]
    derived_only = opsview.render_status(opsview.status_view(_restarting(named=[], unrefreshable=True)), NOW)
    assert _section(derived_only, "Restart targets")[1:] == [
        "  Derived:      the workloads of pods that never see a refresh (restartUnrefreshable)", "  none found yet"]


def test_no_restart_section_without_restart_targets() -> None:
    view = opsview.status_view(_credential())
    assert "Restart" not in opsview.render_status(view, NOW)
    assert opsview.status_json(view, NOW)["restarts"] is None


def test_status_json_has_the_restart_records_as_status_holds_them() -> None:
    records = [_record("Deployment", "web", "Restarted", "restarted", "2025-11-25T17:48:01Z"),
               _record("Deployment", "api", "NotFound", "Deployment api not found", derived=True)]
    doc = opsview.status_json(opsview.status_view(_restarting(*records)), NOW)
    json.dumps(doc)
    assert doc["restarts"] == records


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (119, "119s"), (720, "12m"), (3 * 3600 + 300, "3h5m"),
                                               (12 * 3600 + 60, "12h"), (3 * 86400, "3d")])
def test_spans_read_like_kubectl_ages(seconds: float, text: str) -> None:
    assert opsview.span(seconds) == text


# --- renew --------------------------------------------------------------------------------------------------------
def test_a_renew_request_is_pending_until_served_or_failed() -> None:
    value = renew_value(NOW)
    assert value == "2025-11-25T18:00:00.000000Z"
    waiting = _credential(lastRenewRequest="older")
    assert opsview.renew_result(waiting, value, 0, NOW) is None
    served = opsview.renew_result(_credential(lastRenewRequest=value), value, 0, NOW)
    assert served is not None and served.ok and "expires 2025-11-25T18:47:00Z (in 47m)" in served.message
    missing_roles = _credential(lastRenewRequest=value)
    missing_roles["status"]["conditions"][0].update(status="False", reason="MissingRoles", message="no Mail.Send")
    result = opsview.renew_result(missing_roles, value, 0, NOW)
    assert result is not None and not result.ok and "renewed, but not Ready: MissingRoles: no Mail.Send" in \
        result.message
    failed = _credential(consecutiveFailures=4)
    failed["status"]["conditions"][0].update(status="False", reason="Unauthorized", message="AADSTS7000215")
    assert opsview.renew_result(failed, value, 4, NOW) is None  # the failures seen before the request
    result = opsview.renew_result(failed, value, 3, NOW)
    assert result is not None and not result.ok and result.message == "not renewed: Unauthorized: AADSTS7000215"


# --- inspect secret -----------------------------------------------------------------------------------------------
CLAIMS = {"aud": "https://graph.microsoft.com", "iss": "https://login.example/t1/v2.0", "iat": 1764090000,
          "nbf": 1764090000, "exp": 1764093600, "tid": "t1", "appid": "a1", "roles": ["Mail.Send"], "uti": "u"}


def _token_secret(token: str, **extra: str) -> dict[str, Any]:
    data = {"access_token": _b64(token), "token_type": _b64("Bearer"), "expires_on": _b64("2025-11-25T18:47:00Z"),
            "authorization": _b64(f"Bearer {token}"), **{k: _b64(v) for k, v in extra.items()}}
    return {"metadata": {"name": "mail-token", "namespace": "team-a",
                         "annotations": {"graphcred.io/credential": "mail"}}, "type": "Opaque", "data": data}


def test_inspect_shows_header_and_claims_never_the_token_or_its_signature() -> None:
    token, signature = _jwt(CLAIMS)
    view = opsview.token_view(_token_secret(token, **{".env": f"TOKEN={token}", "config.json": f'{{"t":"{token}"}}'}))
    text = opsview.render_token(view, dt.datetime(2025, 11, 25, 17, 0, tzinfo=dt.UTC))
    as_json = json.dumps(opsview.token_json(view))
    for shown in (text, as_json, repr(view)):
        assert token not in shown and signature not in shown and "Bearer" not in shown
        assert token.split(".")[1] not in shown  # not even the encoded claims
    assert "Written by:   GraphAppCredential mail" in text
    assert "Keys:         .env, access_token, authorization, config.json, expires_on, token_type (values not shown)" \
        in text
    assert "alg:" in text and "RS256" in text and "kid:" in text
    assert "roles:" in text and '["Mail.Send"]' in text
    assert "exp:   1764093600 (2025-11-25T18:00:00Z, in 1h)" in text
    assert opsview.token_json(view)["claims"] == CLAIMS


def test_inspect_reads_the_authorization_key_when_it_is_the_only_one() -> None:
    token, _ = _jwt(CLAIMS)
    secret = _token_secret(token)
    secret["data"] = {"authorization": secret["data"]["authorization"]}
    view = opsview.token_view(secret)
    assert view.source_key == "authorization" and view.claims["tid"] == "t1"


@pytest.mark.parametrize(("data", "message"), [
    ({}, "no access_token or authorization key"),
    ({"access_token": "not base64!"}, "not base64-encoded UTF-8"),
    ({"access_token": _b64("opaque-token-value")}, "does not hold a JWT (1 dot-separated parts, not 3)"),
    ({"access_token": _b64("a.b.c.d.e")}, "encrypted token (JWE)"),
    ({"access_token": _b64("bm90IGpzb24.e30.c2ln")}, "header is not base64url-encoded JSON"),
    ({"access_token": _b64(f"{_b64url({'alg': 'RS256'})}.WzFd.c2ln")}, "payload is not a JSON object"),
])
def test_inspect_refuses_what_it_cannot_decode_without_echoing_it(data: dict[str, str], message: str) -> None:
    with pytest.raises(opsview.InspectError) as refused:
        opsview.token_view({"metadata": {"name": "s", "namespace": "n"}, "data": data})
    said = str(refused.value)
    assert message in said
    assert not [value for value in data.values() if value in said]
    assert "opaque-token-value" not in said and "bm90IGpzb24" not in said


# --- command line -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["renew"], ["renew", "a", "--all"], ["renew", "--all", "-l", "x=y"],
                                  ["renew", "a", "-A"], ["renew", "a", "--timeout", "0"],
                                  ["renew", "a", "--timeout", "soon"], ["status"], ["inspect", "pod", "x"],
                                  ["status", "x", "-o", "xml"], ["status", "gac/x/y"], ["status", "pod/x"],
                                  ["status", "Not_A_Name"], ["inspect", "secret", "gac/x"], ["renew", "a", "b/c"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Each with the usage of the command used (`graphcred renew ...`, not the top level's)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"Usage: graphcred {argv[0]}" in err and "Traceback" not in err


def test_no_kubeconfig_is_a_cluster_error_exit_4(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing"
    assert main(["status", "x", "--kubeconfig", str(missing)]) == 4
    assert capsys.readouterr().err == f"graphcred: kubeconfig {missing}: no such file\n"


def test_the_kubectl_plugin_names_itself_as_kubectl_shows_it(capsys: pytest.CaptureFixture[str]) -> None:
    from graphcred.app.cli import kubectl_main

    assert kubectl_main(["status", "--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage: kubectl graphcred status")


# --- names as kubectl takes them ------------------------------------------------------------------------------------
@pytest.mark.parametrize("given", ["mail-reader", "gac/mail-reader", "GAC/mail-reader",
                                   "graphappcredential/mail-reader", "graphappcredentials/mail-reader",
                                   "graphappcredentials.graphcred.io/mail-reader",
                                   "graphappcredential.graphcred.io/mail-reader"])
def test_a_credential_is_named_as_kubectl_names_it(given: str) -> None:
    """Before: `status gac/mail-reader` asked for .../graphappcredentials/gac/mail-reader."""
    assert object_name(given, "credential") == "mail-reader"


@pytest.mark.parametrize(("given", "kind"), [("pod/mail", "credential"), ("gac/a/b", "credential"),
                                             ("a/b", "credential"), ("Mail", "credential"), ("../x", "credential"),
                                             ("gac/mail", "secret"), ("x" * 254, "secret")])
def test_what_is_not_a_name_is_refused_before_any_call(given: str, kind: str) -> None:
    with pytest.raises(ValueError, match=r"expected NAME or|is not a Kubernetes name"):
        object_name(given, kind)
    assert object_name("secret/mail-token", "secret") == "mail-token"


# --- what tenants wrote never drives the terminal -------------------------------------------
HOSTILE = "\x1b[2J\x1b[H\x1b]0;pwned\x07graphcred: all credentials OK\x1b[8m\x9b31m\u202e"


def _has_controls(text: str) -> bool:
    return any((ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f or c == "\u202e" for c in text)


def test_inspect_escapes_control_characters_in_claims_and_names() -> None:
    token, _ = _jwt({**CLAIMS, "appid": HOSTILE, f"x{HOSTILE}": "k", "roles": [HOSTILE]})
    secret = _token_secret(token)
    secret["metadata"]["annotations"]["graphcred.io/credential"] = f"mail\n{HOSTILE}"
    text = opsview.render_token(opsview.token_view(secret), NOW)
    assert not _has_controls(text)
    appid = next(line for line in text.splitlines() if line.startswith("  appid:"))
    assert appid.split()[1:] == ["\\x1b[2J\\x1b[H\\x1b]0;pwned\\x07graphcred:", "all", "credentials",
                                 "OK\\x1b[8m\\x9b31m\\u202e"]
    assert "Written by:   GraphAppCredential mail\\x0a\\x1b[2J" in text, "a newline cannot forge a line either"


def test_status_escapes_control_characters_in_messages_events_and_mounts() -> None:
    obj = _credential()
    obj["status"]["conditions"][0]["message"] = HOSTILE
    events = [_event(HOSTILE, "2025-11-25T17:40:00Z", message=f"line\n{HOSTILE}", host=HOSTILE)]
    pods = [_pod(f"p{HOSTILE}", [{"name": "app", "volumeMounts": [{"name": "t", "mountPath": f"/x{HOSTILE}"}]}],
                 [{"name": "t", "secret": {"secretName": "mail-token"}}])]
    obj["status"]["restarts"] = [{"kind": "Deployment", "name": f"w{HOSTILE}", "outcome": "Failed",
                                  "message": f"patch\n{HOSTILE}"}]
    text = opsview.render_status(opsview.status_view(obj, events, pods), NOW)
    assert not _has_controls(text)
    assert "Message:      \\x1b[2J" in text and "line\\x0a\\x1b[2J" in text
    assert "patch\\x0a\\x1b[2J" in text, "a restart record's message too"


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_json_and_yaml_escape_control_characters_too(output: str) -> None:
    import io

    from graphcred.ops.commands import _dump

    out = io.StringIO()
    _dump(out, {"message": HOSTILE}, output)
    assert not _has_controls(out.getvalue())
    assert (json.loads if output == "json" else yaml.safe_load)(out.getvalue()) == {"message": HOSTILE}


@pytest.mark.parametrize("exp", [10**13, -(10**13), 1e308, 10**400])
def test_an_out_of_range_time_claim_is_shown_not_raised(exp: Any) -> None:
    """Before: exp=1e13 ended `inspect secret` with a ValueError traceback."""
    token, _ = _jwt({**CLAIMS, "exp": exp})
    text = opsview.render_token(opsview.token_view(_token_secret(token)), NOW)
    assert "(not a time)" in text.split("  exp:")[1].splitlines()[0]


def test_status_json_keys_are_camel_case_like_the_rest() -> None:
    doc = opsview.status_json(opsview.status_view(_credential(), [_event("R", "2025-11-25T17:40:00Z")]), NOW)
    assert doc["events"] == [{"type": "Normal", "reason": "R", "message": "m", "lastSeen": "2025-11-25T17:40:00Z",
                              "count": 1, "source": "graphcred/graphcred-7d9f-x"}]


# --- connection problems, in words ----------------------------------------------------------------------------------
def test_a_refused_connection_names_the_server_the_kubeconfig_and_the_cause(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `get graphappcredential ux/x: cannot reach the cluster (MaxRetryError)`."""
    import socket

    with socket.socket() as closed:  # bound, never listening: the port stays ours and refuses connections
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "https://127.0.0.1:{port}"}}}}]
users: [{{name: u, user: {{token: x}}}}]
contexts: [{{name: c, context: {{cluster: c, user: u, namespace: ux}}}}]
current-context: c
""")
        assert main(["status", "gac/x", "--kubeconfig", str(kubeconfig)]) == 4
    assert capsys.readouterr().err == (
        f"graphcred: get graphappcredential ux/x: cannot reach the cluster at https://127.0.0.1:{port} (kubeconfig "
        f"{kubeconfig}): connection refused - is the server address right, and the apiserver running?\n")


def test_a_malformed_kubeconfig_is_named_and_exits_4(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a 60-line yaml.parser.ParserError traceback, exit 1."""
    bad = tmp_path / "bad.kubeconfig"
    bad.write_text("garbage: [\n")
    assert main(["renew", "x", "--kubeconfig", str(bad)]) == 4
    assert capsys.readouterr().err == (f"graphcred: cannot load the kubeconfig {bad}: not valid YAML: expected the "
                                       "node content, but found '<stream end>' at line 2, column 1\n")


def test_image_tags_are_versions() -> None:
    assert image_version("ghcr.io/example/graphcred:0.1.0") == "0.1.0"
    assert image_version("registry:5000/graphcred:0.2.0@sha256:" + "a" * 64) == "0.2.0"
    assert image_version("registry:5000/graphcred") is None


def test_completion_scripts_name_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "_GRAPHCRED_COMPLETE=bash_complete" in script and "complete -o nosort -F _graphcred_completion graphcred" \
        in script
