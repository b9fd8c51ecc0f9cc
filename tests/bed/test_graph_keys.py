"""The bed's Graph API rolls an app's certificates as Microsoft Graph does (`application: addKey` / `removeKey`, with a
proof of possession signed by a current key), and the issuer follows: an added certificate signs client assertions
only after the replication delay, a removed one is refused at once. No control plane: the module's private issuer
and Graph API (tests/bed/conftest.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from graphcred.acquire.httpsession import PinnedCASession
from graphcred_testbed import jose
from graphcred_testbed.bed import wait_for
from graphcred_testbed.graph import GRAPH_APP_ID, PROOF_AUDIENCE, GraphApi, KeyCall
from graphcred_testbed.issuer import App, IssuerServer, sha1_hex
from graphcred_testbed.pki import KeyPair, self_signed

pytestmark = pytest.mark.bed

GRAPH = "https://graph.microsoft.com"
GUID_LENGTH = 36


@dataclass
class Rig:
    issuer: IssuerServer
    graph: GraphApi
    ca_file: Path
    http: requests.Session
    secrets: list[str]  # every token, proof and private key of the test: none may appear in an answer or the key log

    def app(self, pair: KeyPair, **kwargs: Any) -> App:
        """A new app in a new tenant with the certificate `pair` registered (as a person uploads it)."""
        return self.issuer.issuer.register_app(str(uuid.uuid4()), certificate=pair.cert, **kwargs)

    def result(self, app: App, pair: KeyPair) -> dict[str, Any]:
        """What MSAL answers for a Graph token of `app` signed with `pair` (RS256, x5t), with a fresh cache."""
        cca = msal.ConfidentialClientApplication(
            app.client_id, authority=f"{self.issuer.base_url}/{app.tenant_id}", instance_discovery=False,
            client_credential={"private_key": pair.key_pem.decode(), "thumbprint": sha1_hex(pair.cert)},
            http_client=PinnedCASession(str(self.ca_file), authority_hosts=[self.issuer.base_url]))
        result: dict[str, Any] = cca.acquire_token_for_client([f"{GRAPH}/.default"])
        if "access_token" in result:
            self.secrets.append(result["access_token"])
        return result

    def token(self, app: App, pair: KeyPair) -> str:
        result = self.result(app, pair)
        assert "access_token" in result, result.get("error_description")
        token: str = result["access_token"]
        return token

    def proof(self, app: App, pair: KeyPair, *, aud: Any = PROOF_AUDIENCE, iss: str | None = None,
              nbf: float | None = None, lifetime: float = 600, signer: KeyPair | None = None) -> str:
        """A proof of possession as Graph's docs make it: RS256 with `x5t` of `pair`, signed by `signer` (default:
        `pair`), iss the application's object id, exp = nbf + 10 minutes."""
        start = int(time.time()) if nbf is None else int(nbf)
        proof = jose.sign({"alg": "RS256", "typ": "JWT", "x5t": jose.thumbprint_sha1(pair.cert)},
                          {"aud": aud, "iss": iss or app.object_id, "nbf": start, "exp": int(start + lifetime)},
                          (signer or pair).key)
        self.secrets.append(proof)
        return proof

    def post(self, path: str, token: str, body: dict[str, Any]) -> requests.Response:
        return self.http.post(self.graph.base_url + path, json=body, headers={"Authorization": f"Bearer {token}"},
                              timeout=10)

    def add_key(self, app: App, token: str, new: KeyPair, proof: str, **key: Any) -> requests.Response:
        return self.post(f"/applications/{app.object_id}/addKey", token,
                         {"keyCredential": {**key_credential(new), **key}, "passwordCredential": None, "proof": proof})

    def remove_key(self, app: App, token: str, key_id: str, proof: str, *, by_app_id: bool = False
                   ) -> requests.Response:
        where = f"applications(appId='{app.client_id}')" if by_app_id else f"applications/{app.object_id}"
        return self.post(f"/{where}/removeKey", token, {"keyId": key_id, "proof": proof})

    def refused(self, resp: requests.Response, status: int, code: str) -> str:
        """Graph's error shape with this status and code; nothing secret in it. Returns the message."""
        assert resp.status_code == status, resp.text
        error = resp.json()["error"]
        assert error["code"] == code, error
        assert error["innerError"]["request-id"] == resp.headers["request-id"]
        self.assert_nothing_secret(resp.text)
        message: str = error["message"]
        return message

    def assert_nothing_secret(self, text: str) -> None:
        for secret in self.secrets:
            assert secret not in text
            assert secret.split(".")[-1] not in text  # not even a signature
        assert "PRIVATE KEY" not in text


def key_credential(pair: KeyPair) -> dict[str, Any]:
    der = pair.cert.public_bytes(serialization.Encoding.DER)
    return {"type": "AsymmetricX509Cert", "usage": "Verify", "key": base64.b64encode(der).decode()}


@pytest.fixture
def rig(issuer_graph: tuple[IssuerServer, GraphApi, Path]) -> Iterator[Rig]:
    issuer, graph, ca_file = issuer_graph
    http = requests.Session()
    http.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides `verify`
    http.verify = str(ca_file)
    rig = Rig(issuer, graph, ca_file, http, [])
    yield rig
    http.close()
    rig.assert_nothing_secret(repr(graph.key_calls()))


def _current(rig: Rig, app: App) -> list[str]:
    """Thumbprints of the app's current (not removed) keys."""
    return [k.thumbprint for k in rig.issuer.issuer.keys(app.client_id) if k.removed_at is None]


# --- addKey, removeKey and the issuer ------------------------------------------------------------------------------
def test_added_certificate_signs_assertions_only_after_the_replication_delay(rig: Rig) -> None:
    old, new = self_signed("graphcred-old"), self_signed("graphcred-new")
    app = rig.app(old, replication_delay=4.0)
    resp = rig.add_key(app, rig.token(app, old), new, rig.proof(app, old))
    assert resp.status_code == 200, resp.text
    added = resp.json()
    assert added["@odata.context"] == f"{rig.graph.base_url}/$metadata#microsoft.graph.keyCredential"
    assert len(added["keyId"]) == GUID_LENGTH and uuid.UUID(added["keyId"])
    assert added["customKeyIdentifier"] == sha1_hex(new.cert)
    assert added["type"] == "AsymmetricX509Cert" and added["usage"] == "Verify" and added["key"] is None
    assert added["displayName"] == "CN=graphcred-new"
    assert added["startDateTime"] == new.cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert added["endDateTime"] == new.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    key = rig.issuer.issuer.keys(app.client_id)[-1]
    assert (key.key_id, key.via, key.removed_at) == (added["keyId"], "addKey", None)
    assert key.usable_from == pytest.approx(key.added_at + 4.0)
    early = rig.result(app, new)
    assert time.time() < key.usable_from, "the refusal must be seen within the replication delay"
    assert early.get("error_codes") == [700027], early
    assert "access_token" in rig.result(app, old), "the old certificate keeps working meanwhile"

    wait_for(lambda: "access_token" in rig.result(app, new), timeout=15, interval=0.5,
             what="a token signed with the added certificate")
    assert time.time() >= key.usable_from


def test_removed_certificate_is_refused_at_once(rig: Rig) -> None:
    old, new = self_signed("old"), self_signed("new")
    app = rig.app(old)
    first = rig.issuer.issuer.keys(app.client_id)[0]
    assert (first.thumbprint, first.via) == (sha1_hex(old.cert), "registered")
    assert rig.add_key(app, rig.token(app, old), new, rig.proof(app, old)).status_code == 200
    # switched: the new key authenticates the call and signs the proof; the old one goes, named by the appId form
    resp = rig.remove_key(app, rig.token(app, new), first.key_id, rig.proof(app, new), by_app_id=True)
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    assert rig.result(app, old).get("error_codes") == [700027]
    assert "access_token" in rig.result(app, new)
    removed = rig.issuer.issuer.keys(app.client_id)[0]
    assert removed.removed_at is not None
    assert _current(rig, app) == [sha1_hex(new.cert)]
    # removed twice: Graph finds no such key
    again = rig.remove_key(app, rig.token(app, new), first.key_id, rig.proof(app, new))
    rig.refused(again, 404, "Request_ResourceNotFound")


def test_a_proof_signed_by_a_key_just_removed_is_refused(rig: Rig) -> None:
    old, new, next_ = self_signed("old"), self_signed("new"), self_signed("next")
    app = rig.app(old)
    token = rig.token(app, old)  # a bearer token outlives the key that got it
    added = rig.add_key(app, token, new, rig.proof(app, old)).json()
    old_id = rig.issuer.issuer.keys(app.client_id)[0].key_id
    assert rig.remove_key(app, token, old_id, rig.proof(app, new)).status_code == 204
    resp = rig.add_key(app, token, next_, rig.proof(app, old))
    rig.refused(resp, 401, "Authentication_MissingOrMalformed")
    assert _current(rig, app) == [added["customKeyIdentifier"]]


# --- proofs Graph refuses ------------------------------------------------------------------------------------------
PROOFS: dict[str, tuple[dict[str, Any], str, str]] = {  # case -> proof() arguments, code, why (in the key log)
    "signed by an unregistered key": ({"stranger": True}, "Authentication_MissingOrMalformed",
                                      "not signed by a certificate registered"),
    "signature by another key under a registered x5t": ({"forged": True}, "Authentication_MissingOrMalformed",
                                                        "signature does not verify"),
    "expired": ({"nbf": -900}, "Authentication_ExpiredToken", "expired"),
    "not yet valid": ({"nbf": 300}, "Authentication_MissingOrMalformed", "not valid yet"),
    "lifetime over ten minutes": ({"lifetime": 601}, "Authentication_MissingOrMalformed", "lifetime is 601 s"),
    "Microsoft Graph's appId as aud": ({"aud": GRAPH_APP_ID}, "Authentication_MissingOrMalformed", "aud"),
    "aud naming the token endpoint": ({"aud": "https://login.microsoftonline.com/x/oauth2/v2.0/token"},
                                      "Authentication_MissingOrMalformed", "aud"),
    "the client id as iss": ({"iss": "client-id"}, "Authentication_MissingOrMalformed", "iss"),
    "no proof": ({"none": True}, "Authentication_MissingOrMalformed", "no proof"),
    "not a JWT": ({"garbage": True}, "Authentication_MissingOrMalformed", "not a signed JWT"),
    "padded": ({"padded": True}, "Authentication_MissingOrMalformed", "padding"),
}


@pytest.mark.parametrize("case", list(PROOFS))
def test_proofs_graph_refuses(rig: Rig, case: str) -> None:
    args, code, why = PROOFS[case]
    old, new = self_signed("old"), self_signed("new")
    app = rig.app(old)
    token = rig.token(app, old)
    stranger = self_signed("stranger")
    proof: str | None
    if args.get("none"):
        proof = None
    elif args.get("garbage"):
        proof = "not-a-jwt"
    elif args.get("stranger"):
        proof = rig.proof(app, stranger)
    elif args.get("forged"):
        proof = rig.proof(app, old, signer=stranger)
    elif args.get("padded"):
        raw = json.dumps({"alg": "RS256", "typ": "JWT", "x5t": jose.thumbprint_sha1(old.cert)}).encode()
        while len(raw) % 3 == 0:  # a length base64 pads
            raw = raw[:-1] + b" }"
        header = base64.urlsafe_b64encode(raw).decode()
        assert header.endswith("=")
        good = rig.proof(app, old).split(".")
        proof = ".".join([header, good[1], good[2]])
    else:
        now = time.time()
        nbf = now + args.get("nbf", 0)
        iss = app.client_id if args.get("iss") == "client-id" else None
        proof = rig.proof(app, old, nbf=nbf, lifetime=args.get("lifetime", 600), iss=iss,
                          aud=args.get("aud", PROOF_AUDIENCE))
    body = {"keyCredential": key_credential(new), "passwordCredential": None, "proof": proof}
    resp = rig.post(f"/applications/{app.object_id}/addKey", token, body)
    rig.refused(resp, 401, code)
    assert _current(rig, app) == [sha1_hex(old.cert)], "nothing added"
    call = rig.graph.key_calls(app.client_id)[-1]
    assert (call.op, call.status, call.key_id) == ("addKey", 401, None)
    assert call.outcome.startswith(code) and why in call.outcome, call.outcome


def test_remove_key_needs_a_valid_proof_too(rig: Rig) -> None:
    old = self_signed("old")
    app = rig.app(old)
    key_id = rig.issuer.issuer.keys(app.client_id)[0].key_id
    resp = rig.remove_key(app, rig.token(app, old), key_id, rig.proof(app, old, lifetime=3600))
    rig.refused(resp, 401, "Authentication_MissingOrMalformed")
    assert _current(rig, app) == [sha1_hex(old.cert)]
    assert "access_token" in rig.result(app, old)


# --- key credentials Graph refuses ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "why"), [
    ({"key": "this is not base64!"}, "not the base64 of a DER X.509 certificate"),
    ({"key": base64.b64encode(b"\x30\x03\x02\x01\x00").decode()}, "not the base64 of a DER X.509 certificate"),
    ({"key": None}, "not the base64"),
    ({"type": "Symmetric"}, "AsymmetricX509Cert only"),
    ({"usage": "Sign"}, "usage Verify"),
], ids=["not base64", "not a certificate", "no key", "symmetric", "usage Sign"])
def test_malformed_certificate_is_400(rig: Rig, change: dict[str, Any], why: str) -> None:
    old, new = self_signed("old"), self_signed("new")
    app = rig.app(old)
    resp = rig.add_key(app, rig.token(app, old), new, rig.proof(app, old), **change)
    message = rig.refused(resp, 400, "Request_BadRequest")
    assert message == "Invalid value specified for property 'keyCredential' of resource 'Application'."
    assert _current(rig, app) == [sha1_hex(old.cert)]
    assert why in rig.graph.key_calls(app.client_id)[-1].outcome


def test_expired_or_duplicate_certificate_is_400(rig: Rig) -> None:
    old = self_signed("old")
    lapsed = self_signed("lapsed", not_before=_ago(7200), not_after=_ago(3600))
    app = rig.app(old)
    token = rig.token(app, old)
    rig.refused(rig.add_key(app, token, lapsed, rig.proof(app, old)), 400, "Request_BadRequest")
    rig.refused(rig.add_key(app, token, old, rig.proof(app, old)), 400, "Request_BadRequest")
    assert _current(rig, app) == [sha1_hex(old.cert)]
    outcomes = [c.outcome for c in rig.graph.key_calls(app.client_id)]
    assert "expired" in outcomes[0] and "already has this certificate" in outcomes[1]


def _ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)


# --- who may call --------------------------------------------------------------------------------------------------
def test_only_the_app_itself_or_an_application_writer_may_roll_its_keys(rig: Rig) -> None:
    old, new = self_signed("old"), self_signed("new")
    app = rig.app(old)
    stranger_pair = self_signed("other-app")
    stranger = rig.issuer.issuer.register_app(app.tenant_id, certificate=stranger_pair.cert)
    writer_pair = self_signed("writer")
    writer = rig.issuer.issuer.register_app(app.tenant_id, certificate=writer_pair.cert,
                                            roles={GRAPH: ["Application.ReadWrite.All"]})
    owner_pair = self_signed("owner")
    owner = rig.issuer.issuer.register_app(app.tenant_id, certificate=owner_pair.cert,
                                           roles={GRAPH: ["Application.ReadWrite.OwnedBy"]})
    outsider_pair = self_signed("outsider")
    outsider = rig.issuer.issuer.register_app(str(uuid.uuid4()), certificate=outsider_pair.cert,
                                              roles={GRAPH: ["Application.ReadWrite.All"]})

    denied = rig.add_key(app, rig.token(stranger, stranger_pair), new, rig.proof(app, old))
    rig.refused(denied, 403, "Authorization_RequestDenied")
    assert rig.graph.key_calls(app.client_id)[-1].caller == stranger.client_id
    # OwnedBy without being an owner: denied; as an owner: allowed
    rig.refused(rig.add_key(app, rig.token(owner, owner_pair), new, rig.proof(app, old)),
                403, "Authorization_RequestDenied")
    app.owners.add(owner.client_id)
    assert rig.add_key(app, rig.token(owner, owner_pair), new, rig.proof(app, old)).status_code == 200
    # a writer of every application still needs a proof signed by one of this app's keys
    newer = self_signed("newer")
    rig.refused(rig.add_key(app, rig.token(writer, writer_pair), newer, rig.proof(app, writer_pair)),
                401, "Authentication_MissingOrMalformed")
    assert rig.add_key(app, rig.token(writer, writer_pair), newer, rig.proof(app, new)).status_code == 200
    # another tenant's token does not see the app
    rig.refused(rig.add_key(app, rig.token(outsider, outsider_pair), self_signed("x"), rig.proof(app, old)),
                404, "Request_ResourceNotFound")
    assert len(_current(rig, app)) == 3


def test_unknown_application_bad_id_no_token_and_other_methods(rig: Rig) -> None:
    old, new = self_signed("old"), self_signed("new")
    app = rig.app(old)
    token = rig.token(app, old)
    body = {"keyCredential": key_credential(new), "passwordCredential": None, "proof": rig.proof(app, old)}
    rig.refused(rig.post(f"/applications/{uuid.uuid4()}/addKey", token, body), 404, "Request_ResourceNotFound")
    # the client id is not the object id: the id form takes the object id
    rig.refused(rig.post(f"/applications/{app.client_id}/addKey", token, body), 404, "Request_ResourceNotFound")
    rig.refused(rig.post("/applications/not-a-guid/addKey", token, body), 400, "Request_BadRequest")
    no_token = rig.http.post(f"{rig.graph.base_url}/applications/{app.object_id}/addKey", json=body, timeout=10)
    rig.refused(no_token, 401, "InvalidAuthenticationToken")
    get = rig.http.get(f"{rig.graph.base_url}/applications/{app.object_id}/addKey",
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
    rig.refused(get, 405, "Request_BadRequest")
    assert _current(rig, app) == [sha1_hex(old.cert)]
    # and the appId form of addKey works
    by_app_id = rig.post(f"/applications(appId='{app.client_id}')/addKey", token, body)
    assert by_app_id.status_code == 200, by_app_id.text


# --- failure injection and the key log -----------------------------------------------------------------------------
def test_fail_next_503_then_success(rig: Rig) -> None:
    old, new = self_signed("old"), self_signed("new")
    app = rig.app(old)
    token = rig.token(app, old)
    rig.graph.fail_next("addKey", 503, retry_after=2)
    failed = rig.add_key(app, token, new, rig.proof(app, old))
    rig.refused(failed, 503, "serviceNotAvailable")
    assert failed.headers["Retry-After"] == "2"
    assert _current(rig, app) == [sha1_hex(old.cert)], "a failed addKey adds nothing"
    retried = rig.add_key(app, token, new, rig.proof(app, old))
    assert retried.status_code == 200, retried.text
    assert _current(rig, app) == [sha1_hex(old.cert), sha1_hex(new.cert)]
    calls = rig.graph.key_calls(app.client_id)
    assert [(c.status, c.outcome) for c in calls] == [
        (503, "serviceNotAvailable: injected by fail_next('addKey', 503)"), (200, "added")]


def test_fail_next_403_on_remove_key_keeps_the_key(rig: Rig) -> None:
    old, new = self_signed("old"), self_signed("new")
    app = rig.app(old)
    token = rig.token(app, old)
    assert rig.add_key(app, token, new, rig.proof(app, old)).status_code == 200
    old_id = rig.issuer.issuer.keys(app.client_id)[0].key_id
    rig.graph.fail_next("removeKey", 403, count=2)
    for _ in range(2):
        rig.refused(rig.remove_key(app, token, old_id, rig.proof(app, new)), 403, "Authorization_RequestDenied")
    assert "access_token" in rig.result(app, old), "a refused removeKey leaves the key working"
    assert rig.remove_key(app, token, old_id, rig.proof(app, new)).status_code == 204


def test_fail_next_applied_adds_the_key_but_answers_the_failure(rig: Rig) -> None:
    """Graph's answer lost after the key was added: the caller sees 503, the app has the key (an orphan unless the
    caller finds it)."""
    old, new = self_signed("old"), self_signed("new")
    app = rig.app(old)
    rig.graph.fail_next("addKey", 503, applied=True)
    rig.refused(rig.add_key(app, rig.token(app, old), new, rig.proof(app, old)), 503, "serviceNotAvailable")
    assert _current(rig, app) == [sha1_hex(old.cert), sha1_hex(new.cert)]
    call = rig.graph.key_calls(app.client_id)[-1]
    assert call.outcome == "added, answered 503 (fail_next)"
    assert call.key_id == rig.issuer.issuer.keys(app.client_id)[-1].key_id


def test_the_key_log_records_each_call(rig: Rig) -> None:
    old, new = self_signed("old"), self_signed("new")
    app = rig.app(old)
    old_id = rig.issuer.issuer.keys(app.client_id)[0].key_id
    token = rig.token(app, old)
    before = time.time()
    added = rig.add_key(app, token, new, rig.proof(app, old)).json()
    rig.add_key(app, token, new, rig.proof(app, self_signed("stranger")))
    assert rig.remove_key(app, token, old_id, rig.proof(app, new)).status_code == 204
    calls = rig.graph.key_calls(app.object_id)
    assert calls == rig.graph.key_calls(app.client_id)
    assert [(c.op, c.status) for c in calls] == [("addKey", 200), ("addKey", 401), ("removeKey", 204)]
    ok_add, refused, removed = calls
    assert ok_add == KeyCall(ok_add.time, "addKey", app.client_id, app.object_id, app.client_id, added["keyId"],
                             sha1_hex(new.cert), sha1_hex(old.cert), 200, "added")
    assert refused.proof_thumbprint is None and refused.key_id is None and not refused.ok
    assert removed == KeyCall(removed.time, "removeKey", app.client_id, app.object_id, app.client_id, old_id,
                              sha1_hex(old.cert), sha1_hex(new.cert), 204, "removed")
    assert before <= ok_add.time <= refused.time <= removed.time <= time.time()
    keys = rig.issuer.issuer.keys(app.client_id)
    assert [(k.key_id, k.via, k.removed_at is None) for k in keys] == [(old_id, "registered", False),
                                                                        (added["keyId"], "addKey", True)]
    assert keys[0].removed_at == pytest.approx(removed.time, abs=1)


# --- reading the application's keys --------------------------------------------------------------------------------
def test_an_app_owning_itself_reads_its_key_ids(rig: Rig) -> None:
    """The keyId of a certificate a person uploaded, for removeKey: readable with Application.ReadWrite.OwnedBy over
    itself; without, Graph refuses."""
    old, new = self_signed("uploaded"), self_signed("next")
    plain = rig.app(old)
    rig.refused(rig.http.get(f"{rig.graph.base_url}/applications/{plain.object_id}",
                             headers={"Authorization": f"Bearer {rig.token(plain, old)}"}, timeout=10),
                403, "Authorization_RequestDenied")
    app = rig.app(old, roles={GRAPH: ["Application.ReadWrite.OwnedBy"]})
    app.owners.add(app.client_id)
    token = rig.token(app, old)
    added = rig.add_key(app, token, new, rig.proof(app, old)).json()
    uploaded = rig.issuer.issuer.keys(app.client_id)[0]
    for where in (f"applications/{app.object_id}", f"applications(appId='{app.client_id}')"):
        resp = rig.http.get(f"{rig.graph.base_url}/{where}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["id"], body["appId"]) == (app.object_id, app.client_id)
        assert [(k["keyId"], k["customKeyIdentifier"], k["key"]) for k in body["keyCredentials"]] == [
            (uploaded.key_id, sha1_hex(old.cert), None), (added["keyId"], sha1_hex(new.cert), None)]
