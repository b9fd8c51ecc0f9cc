"""MSAL obtains tokens from the local issuer exactly as from login.microsoftonline.com."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import msal
import pytest
import requests

from graphcred.acquire.httpsession import ExchangeFailed, Failure, PinnedCASession
from graphcred_testbed import jose
from graphcred_testbed.bed import Bed
from graphcred_testbed.pki import self_signed

pytestmark = pytest.mark.bed

GRAPH = "https://graph.microsoft.com"


def _app(bed: Bed, client_id: str, credential: Any, tenant: str) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=f"{bed.authority_host}/{tenant}",
        instance_discovery=False,
        http_client=PinnedCASession(str(bed.issuer_ca_file), authority_hosts=[bed.authority_host]),
    )


def _verified_claims(bed: Bed, token: str) -> dict[str, Any]:
    """Verify the token's signature against the issuer's published JWKS, as a resource server would."""
    header, claims, signing_input, signature = jose.parse(token)
    tenant = claims["tid"]
    config = requests.get(f"{bed.authority_host}/{tenant}/v2.0/.well-known/openid-configuration",
                          verify=str(bed.issuer_ca_file), timeout=10).json()
    keys = requests.get(config["jwks_uri"], verify=str(bed.issuer_ca_file), timeout=10).json()["keys"]
    key = next(k for k in keys if k["kid"] == header["kid"])
    assert jose.verify_signature("RS256", jose.public_key_from_jwk(key), signing_input, signature)
    assert claims["iss"] == config["issuer"]
    return claims


def test_client_secret_yields_a_verifiable_token(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    app = bed.issuer.register_app(tenant, secret="s3cret-value", roles={GRAPH: ["Mail.Read"]}, lifetime=600)
    result = _app(bed, app.client_id, "s3cret-value", tenant).acquire_token_for_client(
        [f"{GRAPH}/.default"])
    assert "access_token" in result, result.get("error_description")
    assert result["token_source"] == "identity_provider"
    claims = _verified_claims(bed, result["access_token"])
    assert claims["aud"] == GRAPH
    assert claims["tid"] == tenant
    assert claims["appid"] == app.client_id
    assert claims["roles"] == ["Mail.Read"]
    assert 590 <= claims["exp"] - time.time() <= 600
    assert bed.issuer.token_requests(app.client_id) == 1


def test_tenant_by_domain_name_resolves(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    bed.issuer.add_tenant(tenant, "contoso-smoke.onmicrosoft.com")
    app = bed.issuer.register_app(tenant, secret="pw")
    result = _app(bed, app.client_id, "pw", "contoso-smoke.onmicrosoft.com").acquire_token_for_client(
        ["https://vault.azure.net/.default"])
    assert _verified_claims(bed, result["access_token"])["aud"] == "https://vault.azure.net"


@pytest.mark.parametrize("thumbprint_kind", ["sha256", "sha1"])
def test_certificate_yields_a_token(bed: Bed, thumbprint_kind: str) -> None:
    tenant = str(uuid.uuid4())
    pair = self_signed("graphcred-smoke")
    app = bed.issuer.register_app(tenant, certificate=pair.cert, roles={GRAPH: ["Sites.Read.All"]})
    credential: dict[str, Any] = {"private_key": pair.key_pem.decode()}
    if thumbprint_kind == "sha256":
        credential["public_certificate"] = pair.cert_pem.decode()  # msal derives x5t#S256, signs PS256
    else:
        from cryptography.hazmat.primitives import hashes

        credential["thumbprint"] = pair.cert.fingerprint(hashes.SHA1()).hex()  # RS256 with x5t
    result = _app(bed, app.client_id, credential, tenant).acquire_token_for_client([f"{GRAPH}/.default"])
    assert "access_token" in result, result.get("error_description")
    assert _verified_claims(bed, result["access_token"])["roles"] == ["Sites.Read.All"]


def test_wrong_secret_gets_aadsts7000215(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    app = bed.issuer.register_app(tenant, secret="right")
    result = _app(bed, app.client_id, "wrong", tenant).acquire_token_for_client([f"{GRAPH}/.default"])
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert "wrong" not in result["error_description"]


def test_unregistered_certificate_gets_aadsts700027(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    registered, other = self_signed("registered"), self_signed("impostor")
    app = bed.issuer.register_app(tenant, certificate=registered.cert)
    credential = {"private_key": other.key_pem.decode(), "public_certificate": other.cert_pem.decode()}
    result = _app(bed, app.client_id, credential, tenant).acquire_token_for_client([f"{GRAPH}/.default"])
    assert result["error_codes"] == [700027]


def test_expired_assertion_gets_aadsts700024(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    pair = self_signed("clock")
    app = bed.issuer.register_app(tenant, certificate=pair.cert)
    now = int(time.time())
    assertion = jose.sign(
        {"alg": "PS256", "typ": "JWT", "x5t#S256": jose.thumbprint_sha256(pair.cert)},
        {"aud": bed.issuer.token_endpoint(tenant), "iss": app.client_id, "sub": app.client_id,
         "jti": str(uuid.uuid4()), "nbf": now - 3600, "exp": now - 1800}, pair.key)
    resp = requests.post(bed.issuer.token_endpoint(tenant), verify=str(bed.issuer_ca_file), timeout=10, data={
        "grant_type": "client_credentials", "client_id": app.client_id, "scope": f"{GRAPH}/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion})
    assert resp.status_code == 400
    assert resp.json()["error_codes"] == [700024]


def test_replayed_assertion_is_refused(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    pair = self_signed("replay")
    app = bed.issuer.register_app(tenant, certificate=pair.cert)
    now = int(time.time())
    assertion = jose.sign(
        {"alg": "RS256", "typ": "JWT", "x5t": jose.thumbprint_sha1(pair.cert)},
        {"aud": bed.issuer.token_endpoint(tenant), "iss": app.client_id, "sub": app.client_id,
         "jti": str(uuid.uuid4()), "nbf": now, "exp": now + 600}, pair.key)
    form = {"grant_type": "client_credentials", "client_id": app.client_id, "scope": f"{GRAPH}/.default",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}
    first = requests.post(bed.issuer.token_endpoint(tenant), data=form, verify=str(bed.issuer_ca_file),
                          timeout=10)
    second = requests.post(bed.issuer.token_endpoint(tenant), data=form, verify=str(bed.issuer_ca_file),
                           timeout=10)
    assert first.status_code == 200
    assert second.json()["error_codes"] == [700027]


def test_subject_name_issuer_auth_with_x5c(bed: Bed) -> None:
    from graphcred_testbed.pki import CertificateAuthority

    tenant = str(uuid.uuid4())
    ca = CertificateAuthority("smoke-sni-ca")
    leaf = ca.issue("graph-daemon.contoso.com", client=True)
    app = bed.issuer.register_app(tenant, trusted_subject=("graph-daemon.contoso.com", ca.pair.cert))
    credential = {"private_key": leaf.key_pem.decode(),
                  "public_certificate": leaf.cert_pem.decode()}  # msal sends x5c with a PEM certificate
    result = _app(bed, app.client_id, credential, tenant).acquire_token_for_client([f"{GRAPH}/.default"])
    assert "access_token" in result, result.get("error_description")


@pytest.mark.parametrize(("code", "error"), [
    (700016, "unauthorized_client"), (90002, "invalid_request"), (7000215, "invalid_client")])
def test_injected_aadsts_errors(bed: Bed, code: int, error: str) -> None:
    tenant = str(uuid.uuid4())
    app = bed.issuer.register_app(tenant, secret="pw")
    bed.issuer.fail(app.client_id, aadsts=code, times=1)
    result = _app(bed, app.client_id, "pw", tenant).acquire_token_for_client([f"{GRAPH}/.default"])
    assert result["error"] == error
    assert result["error_codes"] == [code]
    assert result["error_description"].startswith(f"AADSTS{code}:")


def test_unknown_tenant_is_refused_at_discovery(bed: Bed) -> None:
    with pytest.raises(ValueError, match="Unable to get authority configuration"):
        _app(bed, str(uuid.uuid4()), "pw", str(uuid.uuid4()))


def test_server_errors_and_throttling_are_counted(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    app = bed.issuer.register_app(tenant, secret="pw")
    bed.issuer.fail(app.client_id, status=503, times=1)
    with pytest.raises(msal.exceptions.MsalServiceError, match="503"):
        _app(bed, app.client_id, "pw", tenant).acquire_token_for_client([f"{GRAPH}/.default"])
    bed.issuer.fail(app.client_id, status=429, retry_after=30, times=1)
    cca = _app(bed, app.client_id, "pw", tenant)
    throttled = cca.acquire_token_for_client([f"{GRAPH}/.default"])
    assert "access_token" not in throttled
    # msal replays a 429 for its Retry-After instead of calling again
    again = cca.acquire_token_for_client([f"{GRAPH}/.default"])
    assert "access_token" not in again
    assert bed.issuer.token_requests(app.client_id) == 2


def test_dropped_connection_and_slow_response(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    app = bed.issuer.register_app(tenant, secret="pw")
    bed.issuer.fail(app.client_id, drop=True, times=1)
    cca = _app(bed, app.client_id, "pw", tenant)
    with pytest.raises(ExchangeFailed) as dropped:  # graphcred's session names the class, not requests' exception
        cca.acquire_token_for_client([f"{GRAPH}/.default"])
    assert dropped.value.failure == Failure.CONNECTION
    bed.issuer.fail(app.client_id, delay=1.0, times=1)
    t0 = time.monotonic()
    result = cca.acquire_token_for_client([f"{GRAPH}/.default"])
    assert "access_token" in result
    assert time.monotonic() - t0 >= 1.0


def test_token_lifetime_is_settable(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    app = bed.issuer.register_app(tenant, secret="pw", lifetime=20)
    result = _app(bed, app.client_id, "pw", tenant).acquire_token_for_client([f"{GRAPH}/.default"])
    assert result["expires_in"] == 20
    claims = jose.parse(result["access_token"])[1]
    assert claims["exp"] - claims["iat"] == 20
    assert dt.datetime.fromtimestamp(claims["exp"], dt.UTC) > dt.datetime.now(dt.UTC)


def _post_token(bed: Bed, tenant: str, client_id: str, secret: str) -> requests.Response:
    return requests.post(bed.issuer.token_endpoint(tenant), verify=str(bed.issuer_ca_file), timeout=10, data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "scope": f"{GRAPH}/.default"})


def test_proxy_html_garbage_and_empty_token_faults(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    app = bed.issuer.register_app(tenant, secret="pw")
    bed.issuer.fail(app.client_id, html=True, status=429, retry_after=7, times=1)
    bed.issuer.fail(app.client_id, html=True, times=1)
    bed.issuer.fail(app.client_id, garbage=True, times=1)
    bed.issuer.fail(app.client_id, empty_token=True, times=1)
    throttled = _post_token(bed, tenant, app.client_id, "pw")
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "7")
    assert throttled.headers["Content-Type"].startswith("text/html")
    assert "Access denied by proxy" in throttled.text
    login_page = _post_token(bed, tenant, app.client_id, "pw")
    assert login_page.status_code == 200 and login_page.headers["Content-Type"].startswith("text/html")
    garbage = _post_token(bed, tenant, app.client_id, "pw")
    assert garbage.status_code == 200 and garbage.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        garbage.json()
    empty = _post_token(bed, tenant, app.client_id, "pw")
    assert empty.status_code == 200 and empty.json()["access_token"] == ""
    assert _post_token(bed, tenant, app.client_id, "pw").json()["access_token"]  # faults used up
    assert bed.issuer.token_requests(app.client_id) == 5  # faulted requests count too


def test_discovery_faults_per_tenant(bed: Bed) -> None:
    tenant, other = str(uuid.uuid4()), str(uuid.uuid4())
    bed.issuer.add_tenant(tenant, "faulty-discovery.onmicrosoft.com")
    bed.issuer.add_tenant(other)

    def discover(name: str) -> requests.Response:
        return requests.get(f"{bed.authority_host}/{name}/v2.0/.well-known/openid-configuration",
                            verify=str(bed.issuer_ca_file), timeout=10)

    before = bed.issuer.discovery_requests
    bed.issuer.fail_discovery(tenant, status=429, retry_after=3, times=1)
    bed.issuer.fail_discovery(tenant, html=True)
    throttled = discover(tenant)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "3")
    assert discover("faulty-discovery.onmicrosoft.com").headers["Content-Type"].startswith("text/html")
    assert discover(other).json()["token_endpoint"] == bed.issuer.token_endpoint(other)  # other tenants unharmed
    bed.issuer.heal()
    assert discover(tenant).json()["token_endpoint"] == bed.issuer.token_endpoint(tenant)
    assert bed.issuer.discovery_requests - before == 4
    assert bed.issuer.discovery_requests_for(tenant) == 3


def test_issuer_wide_outage_comes_after_per_app_faults(bed: Bed) -> None:
    tenant = str(uuid.uuid4())
    app = bed.issuer.register_app(tenant, secret="pw")
    bystander = bed.issuer.register_app(tenant, secret="pw2")
    bed.issuer.fail(app.client_id, aadsts=7000215, times=1)
    bed.issuer.fail_all(status=503)
    try:
        assert _post_token(bed, tenant, app.client_id, "pw").json()["error_codes"] == [7000215]
        assert _post_token(bed, tenant, app.client_id, "pw").status_code == 503
        assert _post_token(bed, tenant, bystander.client_id, "pw2").status_code == 503
    finally:
        bed.issuer.heal()
    assert _post_token(bed, tenant, bystander.client_id, "pw2").status_code == 200
