"""`graphcred status` shows when the credential itself (a client secret, a certificate) expires, from
status.credentialExpiresOn: for a GraphAppCredential of its own identity, for one using a ClusterGraphApp, and for
the app (`graphcred status cga/NAME`); in text and in JSON."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from graphcred.ops import view as opsview

NOW = dt.datetime(2025, 11, 25, 18, 0, 0, tzinfo=dt.UTC)
SECRET = {"clientSecret": {"name": "cred", "key": "clientSecret"}}
CERT = {"certificate": {"name": "mail-cert"}}


def _gac(spec: dict[str, Any], **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "mail", "namespace": "team-a", "generation": 1},
            "spec": {"scopes": ["https://graph.microsoft.com/.default"], **spec},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued",
                                       "observedGeneration": 1}], "secretName": "mail-token", **status}}


def _own(credential: dict[str, Any], **status: Any) -> dict[str, Any]:
    return _gac({"tenantId": "t", "clientId": "c", "credential": credential}, **status)


def _lines_from(text: str, head: str, count: int) -> list[str]:
    lines = text.splitlines()
    at = lines.index(head)
    return lines[at:at + count]


@pytest.mark.parametrize(("credential", "expires", "expected"), [
    (SECRET, "2025-12-09T18:00:00Z", ["Credential:     clientSecret", "  Secret:       cred, key clientSecret",
                                      "  Expires:      2025-12-09T18:00:00Z (in 14d)"]),
    # a few hours left reads in hours, as kubectl shows ages
    (CERT, "2025-11-26T03:30:00Z", ["Credential:     certificate", "  Secret:       mail-cert (kubernetes.io/tls)",
                                    "  Expires:      2025-11-26T03:30:00Z (in 9h30m)"]),
    # passed: said plainly, no token comes with it
    (SECRET, "2025-11-22T18:00:00Z", ["Credential:     clientSecret", "  Secret:       cred, key clientSecret",
                                      "  Expires:      2025-11-22T18:00:00Z (3d ago, expired)"]),
])
def test_status_shows_when_the_credential_expires(credential: dict[str, Any], expires: str,
                                                  expected: list[str]) -> None:
    view = opsview.status_view(_own(credential, credentialExpiresOn=expires))
    text = opsview.render_status(view, NOW)
    assert _lines_from(text, "Credential:     " + next(iter(credential)), 3) == expected
    # the credential comes before the token it buys
    assert text.index("Credential:") < text.index("Token:")


def test_status_json_has_the_credential_expiry_and_seconds_left() -> None:
    view = opsview.status_view(_own(SECRET, credentialExpiresOn="2025-12-09T18:00:00Z"))
    out = opsview.status_json(view, NOW)
    assert out["credentialExpiresOn"] == "2025-12-09T18:00:00Z"
    assert out["credentialSecondsLeft"] == 14 * 86400
    unknown = opsview.status_json(opsview.status_view(_own(SECRET)), NOW)
    assert (unknown["credentialExpiresOn"], unknown["credentialSecondsLeft"]) == (None, None)


def test_an_unknown_expiry_says_how_to_make_it_known() -> None:
    # Entra does not tell a client secret's end to whoever holds it: the admin writes it on the Secret
    text = opsview.render_status(opsview.status_view(_own(SECRET)), NOW)
    assert ("  Expires:      - (not known: annotate the Secret graphcred.io/credential-expires-on=<endDateTime>)"
            in text.splitlines())
    cert = opsview.render_status(opsview.status_view(_own(CERT)), NOW)  # not read yet
    assert _lines_from(cert, "Credential:     certificate", 3)[2] == "  Expires:      -"
    # a workload identity's federated token has no credential to expire
    wi = opsview.render_status(opsview.status_view(_own({"workloadIdentity": {"serviceAccountName": "sa"}})), NOW)
    assert _lines_from(wi, "Credential:     workloadIdentity", 4)[3] == "Token:"


def test_a_credential_of_an_app_shows_the_apps_expiry() -> None:
    obj = _gac({"appRef": {"name": "mail-platform"}}, credentialExpiresOn="2025-12-25T18:00:00Z")
    text = opsview.render_status(opsview.status_view(obj), NOW)
    assert _lines_from(text, "Credential:     the app's", 2) == [
        "Credential:     the app's", "  Expires:      2025-12-25T18:00:00Z (in 30d)"]
    # without a known expiry the app's credential is described under the app only
    bare = opsview.render_status(opsview.status_view(_gac({"appRef": {"name": "mail-platform"}})), NOW)
    assert "Credential:" not in bare


def test_app_status_shows_its_credential_expiry_in_text_and_json() -> None:
    app = {"metadata": {"name": "mail-platform", "generation": 1},
           "spec": {"tenantId": "t", "clientId": "c", "credential": SECRET},
           "status": {"credentialExpiresOn": "2025-12-02T18:00:00Z"}}
    view = opsview.app_view(app, [], None, [], "graphcred-system")
    assert _lines_from(opsview.render_app(view, NOW), "Credential:     clientSecret", 3) == [
        "Credential:     clientSecret", "  Secret:       cred, key clientSecret, in namespace graphcred-system",
        "  Expires:      2025-12-02T18:00:00Z (in 7d)"]
    assert opsview.app_json(view, NOW)["credentialExpiresOn"] == "2025-12-02T18:00:00Z"
