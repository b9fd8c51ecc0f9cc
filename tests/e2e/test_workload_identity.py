"""Workload identity federation on the real bed: the operator mints a ServiceAccount token with the TokenRequest
API, the issuer verifies it against the apiserver's published issuer (discovery + JWKS) as Entra does, and the
app's token lands in the Secret. No client secret and no key anywhere.

These tests run their own operator with `--workload-identity` (the session operator runs without it: two operators
must not reconcile the same objects, so it is stopped for this module and restarted after)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from graphcred.api.keys import GROUP, VERSION
from graphcred_testbed import jose
from graphcred_testbed.bed import Bed
from graphcred_testbed.issuer import App, FederatedCredential
from graphcred_testbed.operator_process import OperatorProcess

from ..conftest import LeakCorpus
from ..helpers import Env

pytestmark = pytest.mark.bed

ANNOTATION = "azure.workload.identity/client-id"


@pytest.fixture(scope="module")
def wi_operator(bed: Bed, operator: OperatorProcess, operator_logdir: Path) -> Iterator[OperatorProcess]:
    operator.stop()
    wi = OperatorProcess(bed, operator_logdir, "--token-timeout=3", "--workload-identity",
                         f"--workload-identity-authority={bed.authority_host}", name="graphcred-wi",
                         log_format="json")
    try:
        yield wi.start()
    finally:
        wi.stop()
        operator.start()


@pytest.fixture
def wenv(bed: Bed, namespace: str, wi_operator: OperatorProcess, leak_corpus: LeakCorpus) -> Iterator[Env]:
    e = Env(bed, namespace, wi_operator)
    yield e
    leak_corpus.collect(e)


def _subject(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def federated_app(env: Env, service_account: str = "reader", **kwargs: Any) -> App:
    """An app whose federated credential trusts the bed's ServiceAccount issuer for `service_account`."""
    issuer = env.bed.control_plane.sa_issuer
    return env.register_app(federated=[FederatedCredential(issuer, _subject(env.namespace, service_account))],
                            **kwargs)


def service_account(env: Env, name: str, client_id: str | None) -> None:
    annotations = {ANNOTATION: client_id} if client_id else None
    env.bed.core.create_namespaced_service_account(env.namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name=name, annotations=annotations)))


def create(env: Env, name: str, app: App, service_account: str = "reader", **spec: Any) -> None:
    env.create(name, app, {"workloadIdentity": {"serviceAccountName": service_account}}, **spec)


def ready_credential(env: Env) -> tuple[App, str]:
    """A federated app, its consenting ServiceAccount "reader", and GraphAppCredential "wi" Ready: its token."""
    app = federated_app(env)
    service_account(env, "reader", app.client_id)
    create(env, "wi", app)
    env.wait_ready("wi")
    token = env.token("wi-token")
    assert token is not None
    return app, token


def token_requests(bed: Bed) -> int:
    """TokenRequests the apiserver has served (its own metrics): `create serviceaccounts/token`."""
    metrics = bed.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("apiserver_request_total{") and 'resource="serviceaccounts"' in line \
                and 'subresource="token"' in line and 'verb="POST"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_a_service_account_token_is_exchanged_for_the_apps_token(wenv: Env, caplog: pytest.LogCaptureFixture
                                                                   ) -> None:
    caplog.set_level(logging.INFO, logger="graphcred_testbed.issuer")
    app = federated_app(wenv, roles=["Mail.Read"])
    service_account(wenv, "reader", app.client_id)
    create(wenv, "wi", app)
    obj = wenv.wait_ready("wi")
    token = wenv.token("wi-token")
    assert token is not None
    claims = wenv.verified_claims(token)
    assert (claims["appid"], claims["tid"], claims["roles"]) == (app.client_id, app.tenant_id, ["Mail.Read"])
    assert obj["status"]["appId"] == app.client_id
    assert wenv.bed.issuer.federated_requests(app.client_id) == 1
    # what the operator presented: a ServiceAccount token for Entra's audience, 10 minutes, bound to no object
    presented = jose.parse(wenv.bed.issuer.presented_assertions[-1])[1]
    assert presented["aud"] == ["api://AzureADTokenExchange"] and presented["exp"] - presented["iat"] == 600
    assert set(presented["kubernetes.io"]) == {"namespace", "serviceaccount"}, presented["kubernetes.io"]
    verified = [r.getMessage() for r in caplog.records if "federated assertion for app" in r.getMessage()]
    assert verified, "the issuer verified a federated assertion"
    for check in ("signature RS256", "iss matched", f"sub matched {_subject(wenv.namespace, 'reader')}",
                  "aud matched api://AzureADTokenExchange", "exp ok"):
        assert check in verified[-1], verified[-1]
    print(f"issuer: {verified[-1]}")  # quoted in the closing note (pytest -s)


def test_a_subject_the_app_does_not_trust_is_refused_with_entras_code(wenv: Env) -> None:
    app = federated_app(wenv, service_account="trusted")
    service_account(wenv, "other", app.client_id)  # consents, but the app's federation names another subject
    create(wenv, "wi", app, service_account="other")
    obj = wenv.wait_condition("wi", "False", "Unauthorized")
    cond = wenv.ready_condition("wi")
    assert cond is not None and "AADSTS700213" in cond["message"], cond
    assert _subject(wenv.namespace, "other") in cond["message"], "the message names the subject to register"
    # needs the user: the slow schedule (5 minutes, with jitter), not a quick transient retry
    refresh = dt.datetime.fromisoformat(obj["status"]["refreshAt"].replace("Z", "+00:00"))
    assert (refresh - dt.datetime.now(dt.UTC)).total_seconds() > 200, obj["status"]
    assert wenv.token("wi-token") is None


@pytest.mark.parametrize("annotation", ["missing", "another-app"])
def test_a_service_account_that_does_not_consent_gets_no_token_request(wenv: Env, annotation: str) -> None:
    app = federated_app(wenv)
    service_account(wenv, "reader", None if annotation == "missing" else str(uuid.uuid4()))
    before = token_requests(wenv.bed)
    create(wenv, "wi", app)
    cond = wenv.wait_condition("wi", "False", "ServiceAccountNotAuthorized")["status"]["conditions"][0]
    assert ANNOTATION in cond["message"]
    assert token_requests(wenv.bed) == before, "no TokenRequest for a ServiceAccount that did not consent"
    assert wenv.bed.issuer.federated_requests(app.client_id) == 0


def test_consent_added_later_is_noticed_within_seconds(wenv: Env) -> None:
    app = federated_app(wenv)
    service_account(wenv, "reader", None)
    create(wenv, "wi", app)
    wenv.wait_condition("wi", "False", "ServiceAccountNotAuthorized")
    t0 = time.monotonic()
    wenv.bed.core.patch_namespaced_service_account("reader", wenv.namespace,
                                                   {"metadata": {"annotations": {ANNOTATION: app.client_id}}})
    # the needs-the-user retry is 5 minutes away: only the ServiceAccount watch can make this quick
    wenv.wait_ready("wi", timeout=15)
    print(f"consent to Ready: {time.monotonic() - t0:.2f} s")


def test_a_deleted_service_account_is_not_ready_and_the_last_token_stays(wenv: Env) -> None:
    _, token = ready_credential(wenv)
    wenv.bed.core.delete_namespaced_service_account("reader", wenv.namespace)
    obj = wenv.wait_condition("wi", "False", "CredentialNotFound", timeout=15)
    cond = obj["status"]["conditions"][0]
    assert "ServiceAccount reader not found" in cond["message"] and "stays valid until" in cond["message"], cond
    assert wenv.token("wi-token") == token, "the last token stays in the Secret until it expires"


def _apply(bed: Bed, namespace: str, workload_identity: dict[str, Any]) -> str:
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GraphAppCredential", "metadata": {"name": "bad"},
                "spec": {"tenantId": str(uuid.uuid4()), "clientId": str(uuid.uuid4()),
                         "credential": {"workloadIdentity": workload_identity}}}
    result = bed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)
    assert result.returncode != 0, "kubectl accepted it"
    return result.stderr


def test_no_service_account_of_another_namespace_and_no_apiserver_audience(wenv: Env) -> None:
    err = _apply(wenv.bed, wenv.namespace, {"serviceAccountName": "reader", "namespace": "kube-system"})
    assert re.search(r'unknown field "spec\.credential\.workloadIdentity\.namespace"', err), err
    err = _apply(wenv.bed, wenv.namespace, {"serviceAccountName": "reader",
                                             "audience": wenv.bed.control_plane.sa_issuer})
    assert "spec.credential.workloadIdentity.audience" in err, err


def test_sharing_follows_the_service_account(wenv: Env) -> None:
    app = federated_app(wenv)
    wenv.bed.issuer.add_federated(app.client_id, FederatedCredential(wenv.bed.control_plane.sa_issuer,
                                                                     _subject(wenv.namespace, "second")))
    service_account(wenv, "reader", app.client_id)
    service_account(wenv, "second", app.client_id)
    create(wenv, "a", app)
    create(wenv, "b", app, secretName="b-token")
    create(wenv, "c", app, service_account="second", secretName="c-token")
    for name in ("a", "b", "c"):
        wenv.wait_ready(name)
    # a and b federate one ServiceAccount with identical specs (but the Secret's name): they may share a request;
    # c federates another ServiceAccount and never shares
    tokens = {name: wenv.token(f"{name}-token") for name in ("a", "b", "c")}
    assert tokens["c"] not in (tokens["a"], tokens["b"])
    subjects = [jose.parse(a)[1]["sub"] for a in wenv.bed.issuer.presented_assertions[-3:]]
    assert _subject(wenv.namespace, "second") in subjects, "c presented its own ServiceAccount's token"


def test_consent_withdrawn_is_noticed_within_seconds_and_the_last_token_stays(wenv: Env) -> None:
    _, token = ready_credential(wenv)
    before = token_requests(wenv.bed)
    wenv.bed.core.patch_namespaced_service_account("reader", wenv.namespace,
                                                   {"metadata": {"annotations": {ANNOTATION: None}}})
    obj = wenv.wait_condition("wi", "False", "ServiceAccountNotAuthorized", timeout=15)
    assert "stays valid until" in obj["status"]["conditions"][0]["message"]
    # documented: withdrawing consent stops new tokens; the one already issued stays until it expires
    assert wenv.token("wi-token") == token
    assert token_requests(wenv.bed) == before
