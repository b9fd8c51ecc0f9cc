"""graphcred's Graph key client (acquire.graphkeys) against the bed's Graph API: certificates graphcred made
(acquire.keygen) are registered with addKey and then sign tokens, old ones go with removeKey, and every refusal
reaches the caller as one line a user can act on, transient or not, with nothing secret in it. Tokens come from
graphcred's own TokenClient with the certificate as a tls Secret holds it. No control plane: the module's private
issuer and Graph API (tests/bed/conftest.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from graphcred.acquire.credentials import parse_certificate
from graphcred.acquire.graphkeys import MAX_MESSAGE, GraphKeys, KeyCallFailed, graph_scope, sign_proof
from graphcred.acquire.keygen import GeneratedKey, generate_key
from graphcred.acquire.tokens import AcquisitionError, TokenClient
from graphcred.api.model import AppIdentity, CertificateRef, Cloud
from graphcred_testbed.bed import wait_for
from graphcred_testbed.graph import GraphApi
from graphcred_testbed.issuer import App, IssuerServer

pytestmark = pytest.mark.bed

GRAPH = "https://graph.microsoft.com"
OWNED_BY = {GRAPH: ["Application.ReadWrite.OwnedBy"]}
YEAR = dt.timedelta(days=365)
DENIED = "Graph {op} answered 403 Authorization_RequestDenied: Insufficient privileges to complete the operation."
PROOF_REFUSED = "Graph addKey answered 401 Authentication_MissingOrMalformed: Access Token missing or malformed."


def new_key(name: str) -> GeneratedKey:
    return generate_key(name, YEAR, dt.datetime.now(dt.UTC))


@dataclass
class Rig:
    issuer: IssuerServer
    graph: GraphApi
    tokens: TokenClient
    keys: GraphKeys
    secrets: list[str]  # every token, proof and private key of the test: none may reach an exception or a log

    def app(self, key: GeneratedKey, **kwargs: Any) -> App:
        """A new app in a new tenant with `key`'s certificate registered (as a person uploads it)."""
        self.secrets.append(key.key_pem.decode())
        cert = x509.load_pem_x509_certificate(key.cert_pem)
        return self.issuer.issuer.register_app(str(uuid.uuid4()), certificate=cert, **kwargs)

    def token(self, app: App, key: GeneratedKey) -> str:
        """A Graph token of `app`, acquired by graphcred's TokenClient with `key` as its tls Secret holds it."""
        identity = AppIdentity.model_validate({"tenantId": app.tenant_id, "clientId": app.client_id,
                                               "authorityHost": self.issuer.base_url,
                                               "credential": {"certificate": {"name": "rotated"}}})
        secret = {"tls.crt": base64.b64encode(key.cert_pem).decode(),
                  "tls.key": base64.b64encode(key.key_pem).decode()}
        material = parse_certificate(secret, CertificateRef(name="rotated"))
        token = self.tokens.acquire(identity, [graph_scope(Cloud.AZURE_PUBLIC)], material).access_token
        self.secrets.append(token)
        return token

    def proof(self, app: App, key: GeneratedKey, iss: str | None = None) -> str:
        proof = sign_proof(key.private_key(), bytes.fromhex(key.thumbprint), iss or app.object_id,
                           int(time.time()))
        self.secrets.append(proof)
        return proof

    def add(self, app: App, signer: GeneratedKey, new: GeneratedKey, name: str = "graphcred rotation") -> str:
        """addKey of `new`, authenticated and proven with `signer`."""
        return self.keys.add_key(self.graph.url, self.token(app, signer), app.object_id, new.cert_der,
                                 self.proof(app, signer), name)

    def current(self, app: App) -> list[str]:
        """Thumbprints of the app's current keys, as Entra lists them."""
        return [k.thumbprint for k in self.issuer.issuer.keys(app.client_id) if k.removed_at is None]

    def key_id(self, app: App, key: GeneratedKey) -> str:
        return next(k.key_id for k in self.issuer.issuer.keys(app.client_id) if k.thumbprint == key.thumbprint)

    def failed(self, call: Any, *args: Any) -> KeyCallFailed:
        """The KeyCallFailed `call(*args)` raises, with nothing secret in what a user sees of it."""
        with pytest.raises(KeyCallFailed) as caught:
            call(*args)
        self.assert_nothing_secret(str(caught.value) + repr(caught.value) + caught.value.message)
        return caught.value

    def assert_nothing_secret(self, text: str) -> None:
        for secret in self.secrets:
            assert secret not in text
            assert secret.split(".")[-1][:40] not in text  # not even a signature
        assert "PRIVATE KEY" not in text


@pytest.fixture
def rig(issuer_graph: tuple[IssuerServer, GraphApi, Path], caplog: pytest.LogCaptureFixture) -> Iterator[Rig]:
    issuer, graph, ca_file = issuer_graph
    caplog.set_level(logging.DEBUG)
    rig = Rig(issuer, graph, TokenClient(str(ca_file), authority_hosts=[issuer.base_url]),
              GraphKeys(str(ca_file), graph_hosts=[graph.host]), [])
    yield rig
    rig.assert_nothing_secret(caplog.text + repr(rig.keys) + repr(graph.key_calls()))


def refused_for_tokens(rig: Rig, app: App, key: GeneratedKey) -> int | None:
    """The AADSTS code Entra refuses a token signed with `key` with; None if it gives one."""
    try:
        rig.token(app, key)
    except AcquisitionError as exc:
        return exc.code
    return None


# --- rolling a certificate -----------------------------------------------------------------------------------------
def test_an_added_certificate_is_in_entra_and_signs_tokens_after_replication(rig: Rig) -> None:
    old, new = new_key("graphcred-old"), new_key("graphcred-new")
    app = rig.app(old, replication_delay=3.0)
    key_id = rig.add(app, old, new, name="graphcred: rotated 2026-05")
    assert str(uuid.UUID(key_id)) == key_id  # lower case, as Graph shows it
    added = rig.issuer.issuer.keys(app.client_id)[-1]
    assert (added.key_id, added.thumbprint, added.display_name, added.via) == (
        key_id, new.thumbprint, "graphcred: rotated 2026-05", "addKey")
    assert rig.current(app) == [old.thumbprint, new.thumbprint]
    assert refused_for_tokens(rig, app, new) == 700027, "not replicated yet: the token service does not know it"
    assert time.time() < added.usable_from, "the refusal must be seen within the replication delay"
    assert refused_for_tokens(rig, app, old) is None, "the old certificate keeps working meanwhile"
    wait_for(lambda: refused_for_tokens(rig, app, new) is None, timeout=15, interval=0.5,
             what="a token signed with the added certificate")


def test_the_old_certificate_is_removed_once_then_graph_has_no_such_key(rig: Rig,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    old, new = new_key("old"), new_key("new")
    app = rig.app(old)
    rig.add(app, old, new)
    old_id = rig.key_id(app, old)
    # switched: the new certificate gets the token and signs the proof
    assert rig.keys.remove_key(rig.graph.url, rig.token(app, new), app.object_id, old_id.upper(),
                               rig.proof(app, new)) is True
    assert rig.current(app) == [new.thumbprint]
    assert refused_for_tokens(rig, app, old) == 700027, "removed: refused at once"
    assert refused_for_tokens(rig, app, new) is None
    # again (a retry after a lost answer): already gone, not an error
    assert rig.keys.remove_key(rig.graph.url, rig.token(app, new), app.object_id, old_id,
                               rig.proof(app, new)) is False
    assert [(c.op, c.status) for c in rig.graph.key_calls(app.client_id)] == [
        ("addKey", 200), ("removeKey", 204), ("removeKey", 404)]
    # each call is logged with the ids Microsoft support asks for (the fixture checks nothing secret is)
    assert [r.getMessage().split(" (")[0] for r in caplog.records if r.name == "graphcred.acquire.graphkeys"] == [
        "graph addKey: 200", "graph removeKey: 204", "graph removeKey: 404"]


def test_remove_key_on_an_application_graph_does_not_find_is_an_error_not_already_gone(rig: Rig) -> None:
    """A wrong object id must not pass for "the old key is gone"."""
    old = new_key("old")
    app = rig.app(old)
    other = str(uuid.uuid4())
    failed = rig.failed(rig.keys.remove_key, rig.graph.url, rig.token(app, old), other, rig.key_id(app, old),
                        rig.proof(app, old))
    assert (failed.status, failed.code, failed.transient) == (404, "Request_ResourceNotFound", False)
    assert str(failed).startswith(f"Graph removeKey answered 404 Request_ResourceNotFound: Resource '{other}' "
                                  "does not exist")
    assert rig.current(app) == [old.thumbprint]


# --- what Graph refuses --------------------------------------------------------------------------------------------
def test_a_proof_signed_by_an_unregistered_key_is_refused(rig: Rig) -> None:
    old, new, stranger = new_key("old"), new_key("new"), new_key("stranger")
    app = rig.app(old)
    failed = rig.failed(rig.keys.add_key, rig.graph.url, rig.token(app, old), app.object_id, new.cert_der,
                        rig.proof(app, stranger), "graphcred")
    assert (failed.op, failed.status, failed.code, failed.transient) == (
        "addKey", 401, "Authentication_MissingOrMalformed", False)
    assert str(failed) == PROOF_REFUSED
    assert rig.current(app) == [old.thumbprint], "nothing added"
    assert "not signed by a certificate registered" in rig.graph.key_calls(app.client_id)[-1].outcome


@pytest.mark.parametrize("iss", ["client id", "another app's object id"])
def test_a_proof_naming_another_object_id_is_refused(rig: Rig, iss: str) -> None:
    old, new = new_key("old"), new_key("new")
    app = rig.app(old)
    wrong = app.client_id if iss == "client id" else rig.app(new_key("other")).object_id
    failed = rig.failed(rig.keys.add_key, rig.graph.url, rig.token(app, old), app.object_id, new.cert_der,
                        rig.proof(app, old, iss=wrong), "graphcred")
    assert (failed.status, failed.transient, str(failed)) == (401, False, PROOF_REFUSED)
    assert "iss" in rig.graph.key_calls(app.client_id)[-1].outcome
    assert rig.current(app) == [old.thumbprint]


def test_a_duplicate_certificate_is_400_and_not_transient(rig: Rig) -> None:
    old = new_key("old")
    app = rig.app(old)
    failed = rig.failed(rig.add, app, old, old)
    assert (failed.status, failed.code, failed.transient, failed.retry_after) == (
        400, "Request_BadRequest", False, None)
    assert str(failed) == ("Graph addKey answered 400 Request_BadRequest: Invalid value specified for property "
                           "'keyCredential' of resource 'Application'.")
    assert rig.current(app) == [old.thumbprint]


def test_an_unknown_application_on_add_key_is_404_and_not_transient(rig: Rig) -> None:
    old, new = new_key("old"), new_key("new")
    app = rig.app(old)
    failed = rig.failed(rig.keys.add_key, rig.graph.url, rig.token(app, old), str(uuid.uuid4()), new.cert_der,
                        rig.proof(app, old), "graphcred")
    assert (failed.status, failed.code, failed.transient) == (404, "Request_ResourceNotFound", False)


# --- Graph failing -------------------------------------------------------------------------------------------------
def test_a_503_is_transient_with_its_retry_after_and_the_retry_adds_the_key(rig: Rig) -> None:
    old, new = new_key("old"), new_key("new")
    app = rig.app(old)
    rig.graph.fail_next("addKey", 503, retry_after=2)
    failed = rig.failed(rig.add, app, old, new)
    assert (failed.status, failed.code, failed.transient, failed.retry_after) == (
        503, "serviceNotAvailable", True, 2.0)
    assert str(failed) == ("Graph addKey answered 503 serviceNotAvailable: The service is temporarily unavailable. "
                           "Please retry later.")
    assert rig.current(app) == [old.thumbprint], "a failed addKey adds nothing"
    key_id = rig.add(app, old, new)
    assert rig.key_id(app, new) == key_id


def test_a_403_on_remove_key_is_not_transient_and_the_key_stays(rig: Rig) -> None:
    old, new = new_key("old"), new_key("new")
    app = rig.app(old)
    rig.add(app, old, new)
    rig.graph.fail_next("removeKey", 403)
    failed = rig.failed(rig.keys.remove_key, rig.graph.url, rig.token(app, new), app.object_id,
                        rig.key_id(app, old), rig.proof(app, new))
    assert (failed.op, failed.status, failed.transient) == ("removeKey", 403, False)
    assert str(failed) == DENIED.format(op="removeKey")
    assert rig.current(app) == [old.thumbprint, new.thumbprint]
    assert refused_for_tokens(rig, app, old) is None, "a refused removeKey leaves the key working"


def test_an_added_key_whose_answer_was_lost_is_found_by_its_thumbprint(rig: Rig) -> None:
    """addKey carried out, answered 503: a retry would be a duplicate (400); the key is found instead."""
    old, new = new_key("old"), new_key("new")
    app = rig.app(old, roles=OWNED_BY)
    app.owners.add(app.client_id)
    rig.graph.fail_next("addKey", 503, applied=True)
    assert rig.failed(rig.add, app, old, new).transient
    found = rig.keys.find_key_id(rig.graph.url, rig.token(app, old), app.object_id, new.thumbprint)
    assert found == rig.key_id(app, new)


# --- reading the application's keys --------------------------------------------------------------------------------
def test_find_key_id_of_an_uploaded_certificate_and_of_one_not_there(rig: Rig) -> None:
    uploaded, new, absent = new_key("uploaded"), new_key("new"), new_key("absent")
    app = rig.app(uploaded, roles=OWNED_BY)
    app.owners.add(app.client_id)
    added = rig.add(app, uploaded, new)
    token = rig.token(app, uploaded)
    find = rig.keys.find_key_id
    assert find(rig.graph.url, token, app.object_id, uploaded.thumbprint.lower()) == rig.key_id(app, uploaded)
    assert find(rig.graph.url, token, app.object_id, new.thumbprint) == added
    assert find(rig.graph.url, token, app.object_id, absent.thumbprint) is None


def test_find_key_id_without_permission_to_read_the_app_is_403(rig: Rig) -> None:
    old = new_key("old")
    app = rig.app(old)
    failed = rig.failed(rig.keys.find_key_id, rig.graph.url, rig.token(app, old), app.object_id, old.thumbprint)
    assert (failed.op, failed.status, failed.code, failed.transient) == (
        "getApplication", 403, "Authorization_RequestDenied", False)
    assert str(failed) == DENIED.format(op="getApplication")


# --- refused before anything is sent --------------------------------------------------------------------------------
def test_ids_that_are_not_guids_are_refused_before_any_request(rig: Rig) -> None:
    old = new_key("old")
    app = rig.app(old)
    token, proof = rig.token(app, old), rig.proof(app, old)
    before = len(rig.graph.calls())
    url = rig.graph.url
    with pytest.raises(ValueError, match="object_id must be a GUID"):
        rig.keys.add_key(url, token, f"{app.object_id}/../../users", old.cert_der, proof, "x")
    with pytest.raises(ValueError, match="key_id must be a GUID"):
        rig.keys.remove_key(url, token, app.object_id, "1?x=", proof)
    with pytest.raises(ValueError, match="object_id must be a GUID"):
        rig.keys.find_key_id(url, token, f"appId='{app.client_id}'", old.thumbprint)
    with pytest.raises(ValueError, match="40 hex digits"):
        rig.keys.find_key_id(url, token, app.object_id, old.thumbprint_sha256)
    assert len(rig.graph.calls()) == before


def test_a_host_that_is_not_graph_is_never_called(rig: Rig) -> None:
    old = new_key("old")
    app = rig.app(old)
    before = len(rig.graph.calls())
    clouds_only = GraphKeys(timeout=(2.0, 5.0))  # the bed's Graph not among its hosts
    failed = rig.failed(clouds_only.add_key, rig.graph.url, rig.token(app, old), app.object_id, old.cert_der,
                        rig.proof(app, old), "x")
    assert (failed.status, failed.code, failed.transient) == (None, "not-allowed", False)
    assert str(failed) == (f"Graph addKey failed: {rig.graph.url} is not a Graph host graphcred may call (the "
                           "clouds' own Graph hosts, or hosts the cluster admin allows); nothing was sent")
    # the login host is no Graph host either
    assert rig.failed(rig.keys.find_key_id, rig.issuer.base_url, "t", app.object_id, old.thumbprint).code == \
        "not-allowed"
    assert len(rig.graph.calls()) == before
    with pytest.raises(ValueError, match="graph host"):
        GraphKeys(graph_hosts=["https://graph.example/v1.0"])


# --- no answer ----------------------------------------------------------------------------------------------------
def test_a_silent_or_closed_host_is_transient(rig: Rig) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        keys = GraphKeys(timeout=(1.0, 1.0), graph_hosts=[host])
        started = time.monotonic()
        failed = rig.failed(keys.find_key_id, f"https://{host}", "token", str(uuid.uuid4()), "A" * 40)
        assert time.monotonic() - started < 5
    assert (failed.status, failed.code, failed.transient) == (None, "timeout", True)
    assert str(failed) == f"Graph getApplication failed: no complete answer from https://{host} within 1 s"
    closed = rig.failed(keys.find_key_id, f"https://{host}", "token", str(uuid.uuid4()), "A" * 40)
    assert (closed.code, closed.transient) == ("connection", True)


# --- answers the bed's Graph does not give: what a user sees of them -----------------------------------------------
Answer = tuple[int, Mapping[str, str], bytes]


class _Canned(BaseAdapter):
    """Answers every request with one crafted response (a gateway's page, a hostile message), recording requests."""

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        status, headers, body = self.answer
        response = requests.Response()
        response.status_code, response._content, response.encoding = status, body, "utf-8"
        response.headers = CaseInsensitiveDict(headers)
        response.url, response.request = str(request.url), request
        return response

    def close(self) -> None:
        pass


def _canned(answer: Answer) -> tuple[GraphKeys, _Canned]:
    keys = GraphKeys()
    adapter = _Canned(answer)
    keys.session.mount("https://", adapter)
    return keys, adapter


def _graph_error(status: int, code: str, message: str, **headers: str) -> Answer:
    body = {"error": {"code": code, "message": message, "innerError": {}}}
    return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


OBJECT_ID, KEY_ID = str(uuid.uuid4()), str(uuid.uuid4())


def test_graph_of_each_cloud() -> None:
    assert [graph_scope(c) for c in Cloud] == ["https://graph.microsoft.com/.default",
                                               "https://graph.microsoft.us/.default",
                                               "https://microsoftgraph.chinacloudapi.cn/.default"]
    assert graph_scope("AzureChina") == graph_scope(Cloud.AZURE_CHINA)
    with pytest.raises(ValueError, match="unknown cloud"):
        graph_scope("AzureGermany")


def test_the_requests_graph_gets() -> None:
    keys, adapter = _canned((200, {"Content-Type": "application/json"},
                             json.dumps({"keyId": KEY_ID.upper()}).encode()))
    assert keys.add_key(GRAPH + "/", "the-token", OBJECT_ID, b"\x30\x03der", "the.proof.jwt", "name") == KEY_ID
    sent = adapter.requests[-1]
    assert (sent.method, sent.url) == ("POST", f"{GRAPH}/v1.0/applications/{OBJECT_ID}/addKey")
    assert sent.headers["Authorization"] == "Bearer the-token"
    assert sent.headers["Content-Type"] == "application/json"
    assert uuid.UUID(sent.headers["client-request-id"]).version == 4
    assert sent.body is not None and json.loads(sent.body) == {
        "keyCredential": {"type": "AsymmetricX509Cert", "usage": "Verify", "key": "MANkZXI=", "displayName": "name"},
        "passwordCredential": None, "proof": "the.proof.jwt"}
    adapter.answer = (204, {}, b"")
    assert keys.remove_key(GRAPH, "the-token", OBJECT_ID, KEY_ID, "the.proof.jwt") is True
    sent = adapter.requests[-1]
    assert sent.url == f"{GRAPH}/v1.0/applications/{OBJECT_ID}/removeKey"
    assert sent.body is not None and json.loads(sent.body) == {"keyId": KEY_ID, "proof": "the.proof.jwt"}
    adapter.answer = (200, {"Content-Type": "application/json"}, json.dumps({"keyCredentials": [
        {"keyId": KEY_ID, "customKeyIdentifier": base64.b64encode(bytes.fromhex("AB" * 20)).decode()}]}).encode())
    assert keys.find_key_id(GRAPH, "the-token", OBJECT_ID, "ab" * 20) == KEY_ID  # Edm.Binary: base64 of the digest
    assert adapter.requests[-1].method == "GET"
    assert adapter.requests[-1].url == f"{GRAPH}/v1.0/applications/{OBJECT_ID}?$select=keyCredentials"
    assert "Content-Type" not in adapter.requests[-1].headers


def test_graphs_message_is_shown_cleaned_and_cut() -> None:
    token, proof = "eyJtoken.eyJclaims.signature-of-the-token", "eyJproof.eyJpc3MiOiJ4In0.proof-signature"
    hostile = f"Denied\r\nX-Injected: 1\t\u202eevil\x00 for {token} and {proof} " + "more " * 100
    keys, _ = _canned(_graph_error(403, "Authorization_RequestDenied\nforged", hostile))
    with pytest.raises(KeyCallFailed) as caught:
        keys.add_key(GRAPH, token, OBJECT_ID, b"der", proof, "x")
    failed = caught.value
    assert failed.code == "", "a code that is not Graph's shape is not repeated"
    assert failed.message.startswith("Denied X-Injected: 1 evil for <redacted> and <redacted> more more")
    assert len(failed.message) == MAX_MESSAGE and failed.message.endswith("...")
    assert "\n" not in str(failed) and "\u202e" not in str(failed) and "\x00" not in str(failed)
    assert token not in repr(failed) and proof not in repr(failed)


def test_a_gateways_page_is_transient_and_named_by_its_media_type() -> None:
    keys, _ = _canned((502, {"Content-Type": "text/html; charset=utf-8"}, b"<html>proxy SECRET-LOOKING</html>"))
    with pytest.raises(KeyCallFailed) as caught:
        keys.remove_key(GRAPH, "t", OBJECT_ID, KEY_ID, "p")
    assert (caught.value.status, caught.value.code, caught.value.transient) == (502, "", True)
    assert str(caught.value) == "Graph removeKey answered 502: the answer is not a Graph error (text/html)"


def test_throttling_is_transient_with_an_http_date_retry_after() -> None:
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    keys, _ = _canned(_graph_error(429, "TooManyRequests", "Too many requests.", **{"Retry-After": later}))
    with pytest.raises(KeyCallFailed) as caught:
        keys.find_key_id(GRAPH, "t", OBJECT_ID, "A" * 40)
    assert (caught.value.status, caught.value.transient) == (429, True)
    assert caught.value.retry_after is not None and 100 < caught.value.retry_after <= 120


@pytest.mark.parametrize("body", [b"{}", b'{"keyId": "not-a-guid"}', b"[]", b"not json"])
def test_add_key_answered_without_a_key_id_is_a_transient_failure(body: bytes) -> None:
    keys, _ = _canned((200, {"Content-Type": "application/json"}, body))
    with pytest.raises(KeyCallFailed) as caught:
        keys.add_key(GRAPH, "t", OBJECT_ID, b"der", "p", "x")
    assert (caught.value.status, caught.value.transient) == (200, True)
    assert "names no keyId" in str(caught.value)
