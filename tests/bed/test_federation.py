"""Workload identity federation on the real bed: a ServiceAccount token from the real kube-apiserver, exchanged at
the issuer for the app's token, verified as Entra verifies it (discovery document and JWKS fetched from the
apiserver over HTTPS, signature, iss, sub, aud, exp/nbf)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import msal
import pytest
import requests
from kubernetes import client

from graphcred_testbed import jose
from graphcred_testbed.bed import Bed
from graphcred_testbed.issuer import App, FederatedCredential
from graphcred_testbed.pki import new_key

pytestmark = pytest.mark.bed

GRAPH = "https://graph.microsoft.com"
EXCHANGE = "api://AzureADTokenExchange"


def _sa_token(bed: Bed, namespace: str, name: str, audience: str = EXCHANGE) -> str:
    """A real TokenRequest token for ServiceAccount `name` (created if missing), as the operator would request it."""
    try:
        bed.core.create_namespaced_service_account(
            namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    req = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=[audience], expiration_seconds=600))
    token: str = bed.core.create_namespaced_service_account_token(name, namespace, req).status.token
    return token


def _subject(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _register(bed: Bed, *records: FederatedCredential) -> tuple[str, App]:
    tenant = str(uuid.uuid4())
    return tenant, bed.issuer.register_app(tenant, federated=list(records), roles={GRAPH: ["Sites.Selected"]})


def _exchange(bed: Bed, tenant: str, app: App, assertion: str) -> dict[str, Any]:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides `verify`
    session.verify = str(bed.issuer_ca_file)
    cca = msal.ConfidentialClientApplication(
        app.client_id, client_credential={"client_assertion": lambda: assertion},
        authority=f"{bed.authority_host}/{tenant}", instance_discovery=False, http_client=session)
    result: dict[str, Any] = cca.acquire_token_for_client([f"{GRAPH}/.default"])
    return result


def _forge(genuine: str, key: Any, **changes: Any) -> str:
    """`genuine` with some claims changed, re-signed with `key` (its header, kid included, kept unless changed)."""
    header, claims, _, _ = jose.parse(genuine)
    header.update(changes.pop("header", {}))
    claims.update(changes)
    return jose.sign(header, claims, key)


def _bed_sa_key(bed: Bed) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key((bed.control_plane.dir / "pki" / "sa.key").read_bytes(), password=None)


def _refused(result: dict[str, Any], code: int) -> str:
    assert "access_token" not in result, "the exchange was expected to be refused"
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [code]
    description: str = result["error_description"]
    assert description.startswith(f"AADSTS{code}: ")
    return description


def test_matching_record_yields_the_apps_token(bed: Bed, namespace: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    issuer = bed.control_plane.sa_issuer
    tenant, app = _register(bed, FederatedCredential(issuer, _subject(namespace, "reader"), [EXCHANGE]))
    sa_token = _sa_token(bed, namespace, "reader")
    with caplog.at_level(logging.INFO, logger="graphcred_testbed.issuer"):
        result = _exchange(bed, tenant, app, sa_token)
        fetches = bed.issuer.metadata_fetches(issuer)
        again = _exchange(bed, tenant, app, _sa_token(bed, namespace, "reader"))
    assert "access_token" in result, result.get("error_description")
    claims = jose.parse(result["access_token"])[1]
    assert (claims["appid"], claims["tid"], claims["roles"]) == (app.client_id, tenant, ["Sites.Selected"])
    assert "access_token" in again, again.get("error_description")
    assert bed.issuer.metadata_fetches(issuer) == fetches >= 1, "the issuer's keys are cached, as Entra caches them"
    assert (bed.issuer.federated_requests(app.client_id), bed.issuer.token_requests(app.client_id)) == (2, 2)
    lines = [r.getMessage() for r in caplog.records if app.client_id in r.getMessage()]
    assert len(lines) == 2, lines
    for check in ("signature RS256 kid=", "iss matched", "sub matched", "aud matched", "exp ok"):
        assert check in lines[0], lines[0]
    assert sa_token not in caplog.text and sa_token.split(".")[2] not in caplog.text


def test_another_service_account_is_refused_for_its_subject(bed: Bed, namespace: str) -> None:
    tenant, app = _register(
        bed, FederatedCredential(bed.control_plane.sa_issuer, _subject(namespace, "reader"), [EXCHANGE]))
    description = _refused(_exchange(bed, tenant, app, _sa_token(bed, namespace, "intruder")), 700213)
    assert description.startswith(
        f"AADSTS700213: No matching federated identity record found for presented assertion subject "
        f"'{_subject(namespace, 'intruder')}'. Check your federated identity credential Subject, Audience and "
        "Issuer against the presented assertion.")
    # Entra answers invalid_client with HTTP 401
    raw = requests.post(bed.issuer.token_endpoint(tenant), verify=str(bed.issuer_ca_file), timeout=10, data={
        "grant_type": "client_credentials", "client_id": app.client_id, "scope": f"{GRAPH}/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": _sa_token(bed, namespace, "intruder")})
    assert (raw.status_code, raw.json()["error_codes"]) == (401, [700213])


def test_subject_differing_only_in_case_is_refused(bed: Bed, namespace: str) -> None:
    tenant, app = _register(
        bed, FederatedCredential(bed.control_plane.sa_issuer, _subject(namespace, "reader").upper(), [EXCHANGE]))
    description = _refused(_exchange(bed, tenant, app, _sa_token(bed, namespace, "reader")), 7002138)
    assert "matches with case-insensitive comparison, but not with case-sensitive comparison" in description


def test_wrong_audience_is_refused(bed: Bed, namespace: str) -> None:
    tenant, app = _register(
        bed, FederatedCredential(bed.control_plane.sa_issuer, _subject(namespace, "reader"), [EXCHANGE]))
    description = _refused(_exchange(bed, tenant, app, _sa_token(bed, namespace, "reader", "api://Other")), 700212)
    assert description.startswith(
        "AADSTS700212: No matching federated identity record found for presented assertion audience "
        "'api://Other'.")


def test_unknown_issuer_is_refused_without_fetching_anything(bed: Bed, namespace: str) -> None:
    elsewhere = "https://oidc.graphcred.invalid/some-other-cluster"
    tenant, app = _register(bed, FederatedCredential(elsewhere, _subject(namespace, "reader"), [EXCHANGE]))
    description = _refused(_exchange(bed, tenant, app, _sa_token(bed, namespace, "reader")), 700211)
    assert description.startswith(
        "AADSTS700211: No matching federated identity record found for presented assertion issuer "
        f"'{bed.control_plane.sa_issuer}'.")
    assert bed.issuer.metadata_fetches(elsewhere) == 0


def test_app_without_federated_credentials_gets_aadsts70021(bed: Bed, namespace: str) -> None:
    tenant, app = _register(bed)
    description = _refused(_exchange(bed, tenant, app, _sa_token(bed, namespace, "reader")), 70021)
    assert description.startswith(
        "AADSTS70021: No matching federated identity record found for presented assertion. "
        f"Assertion Issuer: '{bed.control_plane.sa_issuer}'. Assertion Subject: '{_subject(namespace, 'reader')}'. "
        f"Assertion Audience: '{EXCHANGE}'.")


def test_expired_assertion_gets_aadsts700024(bed: Bed, namespace: str) -> None:
    # A TokenRequest cannot be expired: re-sign a genuine token with the bed's own ServiceAccount key (the very key
    # the apiserver signs with, so the kid and signature are valid) with its validity an hour in the past.
    tenant, app = _register(
        bed, FederatedCredential(bed.control_plane.sa_issuer, _subject(namespace, "reader"), [EXCHANGE]))
    now = int(time.time())
    old = _forge(_sa_token(bed, namespace, "reader"), _bed_sa_key(bed),
                 iat=now - 3600, nbf=now - 3600, exp=now - 3000)
    description = _refused(_exchange(bed, tenant, app, old), 700024)
    assert description.startswith("AADSTS700024: Client assertion is not within its valid time range. Current time: ")
    assert "expiry time of assertion" in description


def test_tampered_assertion_fails_signature_validation(bed: Bed, namespace: str) -> None:
    # An intruder's genuine token with its subject rewritten to the trusted ServiceAccount: the signature no longer
    # covers the claims.
    tenant, app = _register(
        bed, FederatedCredential(bed.control_plane.sa_issuer, _subject(namespace, "reader"), [EXCHANGE]))
    genuine = _sa_token(bed, namespace, "intruder")
    claims = jose.parse(genuine)[1]
    claims["sub"] = _subject(namespace, "reader")
    head, _, signature = genuine.split(".")
    tampered = ".".join([head, jose.b64url(json.dumps(claims).encode()), signature])
    _refused(_exchange(bed, tenant, app, tampered), 700027)


def test_assertion_signed_by_a_key_the_issuer_does_not_publish(bed: Bed, namespace: str) -> None:
    tenant, app = _register(
        bed, FederatedCredential(bed.control_plane.sa_issuer, _subject(namespace, "reader"), [EXCHANGE]))
    forged = _forge(_sa_token(bed, namespace, "reader"), new_key(), header={"kid": "not-the-clusters-key"})
    description = _refused(_exchange(bed, tenant, app, forged), 7000272)
    assert "The certificate with identifier not-the-clusters-key used to sign the federated credential could not " \
           f"be found in the metadata of identity provider {bed.control_plane.sa_issuer}." in description


def test_records_can_be_replaced_later(bed: Bed, namespace: str) -> None:
    issuer = bed.control_plane.sa_issuer
    tenant, app = _register(bed, FederatedCredential(issuer, _subject(namespace, "reader"), [EXCHANGE]))
    _refused(_exchange(bed, tenant, app, _sa_token(bed, namespace, "writer")), 700213)
    bed.issuer.set_federated(app.client_id, [FederatedCredential(issuer, _subject(namespace, "writer"), [EXCHANGE])])
    assert "access_token" in _exchange(bed, tenant, app, _sa_token(bed, namespace, "writer"))
    _refused(_exchange(bed, tenant, app, _sa_token(bed, namespace, "reader")), 700213)
