"""Workload identity federation in the reconciler: the ServiceAccount's consent, when a TokenRequest is made (only
for an acquisition, once per shared acquisition), what its failures report, and that its token goes nowhere but the
token request. The real Reconciler and SharedTokens over in-memory I/O ports and a fake clock."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest

from graphcred.kube.calls import SERVICE_ACCOUNT_TOKEN_SECONDS
from graphcred.kube.errors import Forbidden, KubeError
from graphcred.reconcile.memory import Memory

from .fakes import FakeKubeWithServiceAccounts, federated_spec
from .harness import NS, TENANT, Rig, run

DEFAULT_AUDIENCE = "api://AzureADTokenExchange"


def _client() -> str:
    return str(uuid.uuid4())


# --- the ServiceAccount's consent ------------------------------------------------------------------------------
@pytest.mark.parametrize("annotation", [None, "other", "garbage"], ids=["missing", "another-app", "not-a-guid"])
def test_a_service_account_that_does_not_name_the_app_is_refused_without_a_token_request(annotation: str | None
                                                                                          ) -> None:
    rig = Rig(workload_identity=True)
    client = _client()
    value = {None: None, "other": _client(), "garbage": "not a guid"}[annotation]
    rig.kube.put_service_account(NS, "reader", client_id=value)
    snap = rig.snapshot("a", federated_spec(TENANT, client))

    async def scenario() -> None:
        delay = await rig.reconciler.reconcile(snap, Memory())
        cond = rig.condition("a")
        assert (cond["status"], cond["reason"]) == ("False", "ServiceAccountNotAuthorized"), cond
        assert "azure.workload.identity/client-id" in cond["message"] and "kubectl annotate" in cond["message"]
        fragment = {None: "has no annotation", "other": f"names another client id ({value})",
                    "garbage": "not a client id"}[annotation]
        assert fragment in cond["message"], cond["message"]
        assert rig.kube.token_requests == [] and rig.tokens.requests == 0, "no TokenRequest without consent"
        assert delay is not None and 250 <= delay <= 350, "needs the user: the slow retry, never parked"
        assert ("a", "Warning", "ServiceAccountNotAuthorized") in [e[:3] for e in rig.emitted]

    run(scenario)


def test_the_annotation_matches_the_client_id_in_any_case() -> None:
    rig = Rig(workload_identity=True)
    client = _client()
    rig.kube.put_service_account(NS, "reader", client_id=client.upper())
    snap = rig.snapshot("a", federated_spec(TENANT, client))

    async def scenario() -> None:
        await rig.reconciler.reconcile(snap, Memory())
        assert rig.condition("a")["status"] == "True", rig.condition("a")

    run(scenario)


# --- the flow ---------------------------------------------------------------------------------------------------
def test_an_acquisition_presents_a_fresh_service_account_token_for_the_audience() -> None:
    rig = Rig(workload_identity=True)
    client = _client()
    account = rig.kube.put_service_account(NS, "reader", client_id=client)
    snap = rig.snapshot("a", federated_spec(TENANT, client))

    async def scenario() -> None:
        await rig.reconciler.reconcile(snap, Memory())
        cond = rig.condition("a")
        assert (cond["status"], cond["reason"]) == ("True", "TokenIssued"), cond
        assert rig.kube.token_requests == [(NS, "reader", DEFAULT_AUDIENCE)]
        assert rig.tokens.assertions == rig.kube.issued_service_account_tokens, "the token request presents it"
        assert rig.status("a")["credentialVersion"] == account["metadata"]["resourceVersion"]
        assert rig.kube.token_in(NS, "a-token")

    run(scenario)


def test_a_custom_audience_is_requested() -> None:
    rig = Rig(workload_identity=True)
    _, spec = rig.consenting()
    spec["credential"]["workloadIdentity"]["audience"] = "api://AzureADTokenExchangeChina"
    snap = rig.snapshot("a", spec)

    async def scenario() -> None:
        await rig.reconciler.reconcile(snap, Memory())
        assert rig.kube.token_requests == [(NS, "reader", "api://AzureADTokenExchangeChina")]

    run(scenario)


def test_the_token_request_asks_for_the_shortest_lifetime_kubernetes_allows() -> None:
    # k8s.io/kubernetes pkg/apis/authentication/validation: MinTokenAgeSec = 10 * 60
    assert SERVICE_ACCOUNT_TOKEN_SECONDS == 600


def test_keeping_a_valid_token_makes_no_token_request() -> None:
    rig = Rig(workload_identity=True)
    client, spec = rig.consenting()
    mem = Memory()

    async def scenario() -> None:
        await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)
        assert len(rig.kube.token_requests) == 1
        rig.clock.advance(60)
        await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)  # a wake-up that changed nothing
        # a metadata change of the ServiceAccount (a label; same annotation): kept, its new version recorded
        touched = rig.kube.put_service_account(NS, "reader", client_id=client, annotations={"team": "mail"})
        await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)
        assert rig.status("a")["credentialVersion"] == touched["metadata"]["resourceVersion"]
        # a restart: a new process with empty memory resumes from the status
        successor = rig.successor()
        await successor.reconciler.reconcile(successor.snapshot("a", spec), Memory())
        assert len(rig.kube.token_requests) == 1, rig.kube.token_requests
        assert rig.tokens.requests == 1 and successor.tokens.requests == 0
        assert rig.condition("a")["status"] == "True"

    run(scenario)


def test_a_refresh_and_a_renew_request_each_make_one_new_token_request() -> None:
    rig = Rig(workload_identity=True)
    _, spec = rig.consenting()
    mem = Memory()

    async def scenario() -> None:
        await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)
        rig.clock.advance(1900)  # past the refresh time (half of an hour)
        await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)
        mem.renew.requested = True
        rig.clock.advance(10)
        await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)
        assert len(rig.kube.token_requests) == 3 and rig.tokens.requests == 3
        assert len(set(rig.tokens.assertions)) == 3, "every acquisition presents a token of its own"

    run(scenario)


# --- sharing ----------------------------------------------------------------------------------------------------
def test_credentials_federating_one_service_account_share_one_token_request() -> None:
    rig = Rig(workload_identity=True)
    _, spec = rig.consenting()

    async def scenario() -> None:
        rig.tokens.gate.clear()
        first = asyncio.create_task(rig.reconciler.reconcile(rig.snapshot("a", spec), Memory()))
        await asyncio.to_thread(rig.tokens.entered.wait, 5)
        second = asyncio.create_task(rig.reconciler.reconcile(rig.snapshot("b", spec), Memory()))
        await asyncio.sleep(0.05)  # b joins a's acquisition in flight
        rig.tokens.gate.set()
        await asyncio.gather(first, second)
        assert rig.condition("a")["status"] == rig.condition("b")["status"] == "True"
        assert len(rig.kube.token_requests) == 1 and rig.tokens.requests == 1
        assert rig.kube.token_in(NS, "a-token") == rig.kube.token_in(NS, "b-token")
        # and a third one a moment later is handed the recent token: still no TokenRequest of its own
        await rig.reconciler.reconcile(rig.snapshot("c", spec), Memory())
        assert len(rig.kube.token_requests) == 1 and rig.tokens.requests == 1

    run(scenario)


def test_credentials_federating_different_service_accounts_never_share() -> None:
    rig = Rig(workload_identity=True)
    client = _client()
    for name in ("reader", "writer"):
        rig.kube.put_service_account(NS, name, client_id=client)

    async def scenario() -> None:
        await rig.reconciler.reconcile(rig.snapshot("a", federated_spec(TENANT, client, "reader")), Memory())
        await rig.reconciler.reconcile(rig.snapshot("b", federated_spec(TENANT, client, "writer")), Memory())
        assert [r[1] for r in rig.kube.token_requests] == ["reader", "writer"]
        assert rig.tokens.requests == 2
        assert rig.kube.token_in(NS, "a-token") != rig.kube.token_in(NS, "b-token")

    run(scenario)


def test_a_service_account_recreated_under_the_same_name_does_not_share_with_the_old_one() -> None:
    rig = Rig(workload_identity=True)
    client, spec = rig.consenting()

    async def scenario() -> None:
        await rig.reconciler.reconcile(rig.snapshot("a", spec), Memory())
        rig.kube.delete_service_account(NS, "reader")
        rig.kube.put_service_account(NS, "reader", client_id=client)  # a new uid
        await rig.reconciler.reconcile(rig.snapshot("b", spec), Memory())
        assert len(rig.kube.token_requests) == 2 and rig.tokens.requests == 2

    run(scenario)


# --- failures ---------------------------------------------------------------------------------------------------
def test_a_deleted_service_account_is_not_ready_and_the_last_token_stays() -> None:
    rig = Rig(workload_identity=True)
    _, spec = rig.consenting()
    mem = Memory()

    async def scenario() -> None:
        await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)
        token = rig.kube.token_in(NS, "a-token")
        rig.kube.delete_service_account(NS, "reader")
        rig.clock.advance(30)
        delay = await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)
        cond = rig.condition("a")
        assert (cond["status"], cond["reason"]) == ("False", "CredentialNotFound"), cond
        assert cond["message"].startswith(f"ServiceAccount reader not found in namespace {NS}"), cond["message"]
        assert "stays valid until" in cond["message"]
        assert rig.kube.token_in(NS, "a-token") == token, "the last token stays in the Secret until it expires"
        assert mem.credential.version == "", "a missing ServiceAccount is remembered as such (for its watch)"
        assert delay is not None and delay <= 400, "needs the user: retried slowly"
        assert len(rig.kube.token_requests) == 1

    run(scenario)


def test_a_service_account_deleted_just_before_the_token_request_is_not_found() -> None:
    rig = Rig(workload_identity=True)
    client = _client()
    rig.kube.put_service_account(NS, "reader", client_id=client)
    rig.kube.token_request_status = 404

    async def scenario() -> None:
        await rig.reconciler.reconcile(rig.snapshot("a", federated_spec(TENANT, client)), Memory())
        cond = rig.condition("a")
        assert (cond["status"], cond["reason"]) == ("False", "CredentialNotFound"), cond
        assert "ServiceAccount reader not found" in cond["message"]
        assert rig.tokens.requests == 0

    run(scenario)


def test_a_forbidden_token_request_names_the_missing_permission() -> None:
    rig = Rig(workload_identity=True)
    client = _client()
    rig.kube.put_service_account(NS, "reader", client_id=client)
    rig.kube.token_request_status = 403

    async def scenario() -> None:
        delay = await rig.reconciler.reconcile(rig.snapshot("a", federated_spec(TENANT, client)), Memory())
        cond = rig.condition("a")
        assert (cond["status"], cond["reason"]) == ("False", "WorkloadIdentityDisabled"), cond
        assert "create serviceaccounts/token" in cond["message"]
        assert "workloadIdentity.enabled" in cond["message"]
        assert delay is not None and 250 <= delay <= 350, "needs the user: retried slowly"
        assert rig.tokens.requests == 0

    run(scenario)


def test_a_forbidden_service_account_read_names_the_missing_permission() -> None:
    rig = Rig(workload_identity=True)
    client = _client()

    def forbidden(namespace: str, name: str) -> dict[str, Any] | None:
        raise Forbidden("read ServiceAccount", 403, "Forbidden")

    rig.kube.read_service_account = forbidden  # type: ignore[method-assign]

    async def scenario() -> None:
        await rig.reconciler.reconcile(rig.snapshot("a", federated_spec(TENANT, client)), Memory())
        cond = rig.condition("a")
        assert (cond["status"], cond["reason"]) == ("False", "WorkloadIdentityDisabled"), cond
        assert "may not get serviceaccounts in namespace ns" in cond["message"], cond["message"]
        assert rig.kube.token_requests == []

    run(scenario)


@pytest.mark.parametrize("status", [429, 503])
def test_an_apiserver_outage_on_the_token_request_is_ridden_out(status: int) -> None:
    rig = Rig(workload_identity=True)
    client = _client()
    rig.kube.put_service_account(NS, "reader", client_id=client)
    rig.kube.token_request_status = status
    snap = rig.snapshot("a", federated_spec(TENANT, client))
    mem = Memory()

    async def scenario() -> None:
        with pytest.raises(KubeError) as caught:
            await rig.reconciler.reconcile(snap, mem)
        assert caught.value.outage and f"create ServiceAccount token failed: HTTP {status}" in str(caught.value)
        delay = await rig.reconciler.internal_error(snap, mem, caught.value)  # what the controller does
        cond = rig.condition("a")
        assert (cond["status"], cond["reason"]) == ("False", "InternalError"), cond
        assert delay < 10, "transient: backoff, not the slow schedule"
        assert rig.tokens.requests == 0
        rig.kube.token_request_status = None
        rig.clock.advance(delay)
        await rig.reconciler.reconcile(snap, mem)
        assert rig.condition("a")["status"] == "True"

    run(scenario)


@pytest.mark.parametrize("audience", ["https://kubernetes.default.svc", "https://kubernetes.default.svc.cluster.local",
                                      "api://AzureADTokenExchange/../x", "sts.amazonaws.com", ""])
def test_an_audience_the_apiserver_could_accept_is_refused_by_the_schema(audience: str) -> None:
    # Whoever may create a GraphAppCredential must not get a ServiceAccount token that works against the cluster.
    from pydantic import ValidationError

    from graphcred.api.model import GraphAppCredentialSpec

    spec = federated_spec(TENANT, _client())
    spec["credential"]["workloadIdentity"]["audience"] = audience
    with pytest.raises(ValidationError, match="audience"):
        GraphAppCredentialSpec.model_validate(spec)


def test_a_custom_authority_host_gets_no_service_account_token_unless_the_operator_allows_it() -> None:
    # A ServiceAccount token sent to a host the spec's author chose could be exchanged there, at Entra, for the
    # token of any app that trusts the ServiceAccount.
    client = _client()
    spec = federated_spec(TENANT, client, authorityHost="https://login.example.net")

    async def scenario() -> None:
        refused = Rig(workload_identity=True)
        refused.kube.put_service_account(NS, "reader", client_id=client)
        delay = await refused.reconciler.reconcile(refused.snapshot("a", spec), Memory())
        cond = refused.condition("a")
        assert (cond["status"], cond["reason"]) == ("False", "AuthorityNotAllowed"), cond
        assert "login.example.net" in cond["message"] and "--authority-host" in cond["message"]
        assert delay is None
        assert refused.kube.service_account_reads == 0 and refused.kube.token_requests == []
        assert refused.tokens.requests == 0

        allowed = Rig(workload_identity=True, authority_hosts=("https://login.example.net/",))
        allowed.kube.put_service_account(NS, "reader", client_id=client)
        await allowed.reconciler.reconcile(allowed.snapshot("a", spec), Memory())
        assert allowed.condition("a")["status"] == "True"
        assert len(allowed.kube.token_requests) == 1

    run(scenario)


def test_without_the_flag_a_federated_credential_is_refused_without_reading_the_service_account() -> None:
    rig = Rig(workload_identity=False)
    client = _client()
    rig.kube.put_service_account(NS, "reader", client_id=client)

    async def scenario() -> None:
        delay = await rig.reconciler.reconcile(rig.snapshot("a", federated_spec(TENANT, client)), Memory())
        cond = rig.condition("a")
        assert (cond["status"], cond["reason"]) == ("False", "WorkloadIdentityDisabled"), cond
        assert "workloadIdentity.enabled" in cond["message"] and "--workload-identity" in cond["message"]
        assert delay is None, "only a change (or a restart with the flag) can help: no retries"
        assert rig.kube.service_account_reads == 0 and rig.kube.token_requests == [] and rig.tokens.requests == 0

    run(scenario)


# --- secrecy ----------------------------------------------------------------------------------------------------
def test_the_service_account_token_never_reaches_status_events_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    from graphcred.acquire.tokens import AcquisitionError
    from graphcred.api.model import Reason

    rig = Rig(workload_identity=True)
    _, spec = rig.consenting()
    mem = Memory()

    async def scenario() -> None:
        await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)  # issued
        rig.tokens.failure = AcquisitionError(Reason.UNAUTHORIZED, "Entra ID refused the request (AADSTS70021)",
                                              permanent=True, code=70021)
        mem.renew.requested = True
        await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)  # refused by Entra
        rig.tokens.failure = None
        rig.kube.token_request_status = 503
        mem.renew.requested = True
        with pytest.raises(KubeError) as caught:
            await rig.reconciler.reconcile(rig.snapshot("a", spec), mem)
        await rig.reconciler.internal_error(rig.snapshot("a", spec), mem, caught.value)
        rig.kube.token_request_status = None
        rig.kube.put_service_account(NS, "reader", client_id=_client())  # consent withdrawn
        await rig.reconciler.reconcile(rig.snapshot("a", spec), Memory())

    with caplog.at_level(logging.DEBUG):
        run(scenario)
    issued = rig.kube.issued_service_account_tokens
    assert len(issued) == 2 and len(rig.tokens.assertions) == 2
    seen = " ".join([caplog.text, repr(rig.kube.statuses), repr(rig.emitted), repr(mem)])
    for token in issued:
        assert token not in seen
        assert token.split(".")[1] not in seen, "not even the token's claims"


# --- seams found in review ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", ["annotation-removed", "re-created"])
def test_consent_withdrawn_while_the_pass_runs_mints_no_token(change: str) -> None:
    # The pass reads the consent first and requests the token later (after the breaker, sharing): a ServiceAccount
    # whose annotation was removed, or that was re-created under the same name, in between gets no token minted.
    class Changing(FakeKubeWithServiceAccounts):
        def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
            found = super().read_service_account(namespace, name)
            if self.service_account_reads == 1:
                if change == "re-created":
                    self.delete_service_account(namespace, name)
                    self.put_service_account(namespace, name, client_id=client)
                else:
                    self.put_service_account(namespace, name, client_id=None)
            return found

    client = _client()
    rig = Rig(workload_identity=True, kube=Changing())
    rig.kube.put_service_account(NS, "reader", client_id=client)

    async def scenario() -> None:
        await rig.reconciler.reconcile(rig.snapshot("a", federated_spec(TENANT, client)), Memory())
        cond = rig.condition("a")
        expected = "ServiceAccountNotAuthorized" if change == "annotation-removed" else "CredentialNotFound"
        assert (cond["status"], cond["reason"]) == ("False", expected), cond
        assert rig.kube.token_requests == [] and rig.tokens.requests == 0

    run(scenario)


def test_a_slow_token_request_holds_no_slot_other_credentials_need() -> None:
    # token_concurrency 1: a TokenRequest hanging on a browned-out apiserver must not stall a client secret's refresh
    import threading

    from .fakes import secret_spec

    release = threading.Event()

    class Slow(FakeKubeWithServiceAccounts):
        def request_service_account_token(self, namespace: str, name: str, audience: str) -> str:
            release.wait(10)
            return super().request_service_account_token(namespace, name, audience)

    client = _client()
    rig = Rig(workload_identity=True, kube=Slow(), token_concurrency=1)
    rig.kube.put_service_account(NS, "reader", client_id=client)
    rig.kube.put_client_secret(NS, "cred", "s3cret")

    async def scenario() -> None:
        federated = asyncio.create_task(rig.reconciler.reconcile(
            rig.snapshot("wi", federated_spec(TENANT, client)), Memory()))
        await asyncio.sleep(0.1)  # the federated pass is now waiting on its TokenRequest
        try:
            await asyncio.wait_for(rig.reconciler.reconcile(
                rig.snapshot("plain", secret_spec(TENANT, _client())), Memory()), timeout=5)
            assert rig.condition("plain")["status"] == "True"
        finally:
            release.set()
        await federated
        assert rig.condition("wi")["status"] == "True"

    run(scenario)


def test_the_token_request_sent_to_the_apiserver() -> None:
    # Kube.request_service_account_token's own request body: audience, the shortest lifetime, bound to nothing
    from graphcred.kube.calls import Kube

    calls: list[tuple[str, str, dict[str, str], Any]] = []

    class Response:
        data = b'{"status": {"token": "t.o.k", "expirationTimestamp": "2026-01-01T00:00:00Z"}}'

        def release_conn(self) -> None:
            pass

    def send(method: str, path: str, params: dict[str, str], *, body: Any = None, **_: Any) -> Response:
        calls.append((method, path, params, body))
        return Response()

    kube = Kube.__new__(Kube)
    kube._send = send  # type: ignore[method-assign]
    kube.timeout = (1.0, 1.0)
    assert kube.request_service_account_token("ns", "reader", "api://AzureADTokenExchange") == "t.o.k"
    ((method, path, params, body),) = calls
    assert (method, path, params) == ("POST", "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                                      {"namespace": "ns", "name": "reader"})
    assert body["spec"] == {"audiences": ["api://AzureADTokenExchange"], "expirationSeconds": 600}, body
