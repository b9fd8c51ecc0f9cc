"""No token, client secret or private key in any operator log, event or status: the main paths under a text-format
DEBUG operator, scanned here with everything written so far. The whole session's logs, events and statuses are
scanned again when it ends (tests/conftest.py's leak_corpus), so this test need not run last."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from graphcred_testbed.issuer import FederatedCredential
from graphcred_testbed.operator_process import OperatorProcess
from graphcred_testbed.pki import self_signed

from ..conftest import LeakCorpus
from ..helpers import Env, find_leaks

pytestmark = pytest.mark.bed


def _text_operator_scenario(env: Env, logdir: Path) -> OperatorProcess:
    """The main paths once more, under a text-format DEBUG operator."""
    env.operator.stop()
    text_op = OperatorProcess(env.bed, logdir, "--token-timeout=3", "--workload-identity",
                              f"--workload-identity-authority={env.bed.authority_host}", name="graphcred-text",
                              log_format="text", log_level="DEBUG").start()
    pair = self_signed("leak-check")
    app = env.secret_app("leak-check", secret_name="ok", certificate=pair.cert)
    env.client_secret("wrong", "not-the-secret")
    env.tls_secret("cert", pair)
    env.create("ok", app, {"clientSecret": {"name": "ok"}})
    env.create("wrong", app, {"clientSecret": {"name": "wrong"}})
    env.create("cert", app, {"certificate": {"name": "cert"}})
    # workload identity: a ServiceAccount token presented, and one refused for another subject
    federated = env.register_app(federated=[FederatedCredential(
        env.bed.control_plane.sa_issuer, f"system:serviceaccount:{env.namespace}:reader")])
    for account in ("reader", "stranger"):
        env.bed.core.create_namespaced_service_account(env.namespace, client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name=account,
                                         annotations={"azure.workload.identity/client-id": federated.client_id})))
    env.create("wi", federated, {"workloadIdentity": {"serviceAccountName": "reader"}})
    env.create("wi-stranger", federated, {"workloadIdentity": {"serviceAccountName": "stranger"}})
    env.wait_ready("ok")
    env.wait_ready("cert")
    env.wait_ready("wi")
    env.wait_condition("wi-stranger", "False", "Unauthorized")
    env.wait_condition("wrong", "False", "Unauthorized")
    env.bed.issuer.fail(app.client_id, status=429, retry_after=1, times=1)
    env.patch_spec("ok", {"scopes": ["https://vault.azure.net/.default"]})
    env.wait_ready("ok", timeout=30)
    return text_op


def test_no_secret_material_anywhere(env: Env, leak_corpus: LeakCorpus, operator_logdir: Path) -> None:
    text_op = _text_operator_scenario(env, operator_logdir)
    try:
        texts = list(leak_corpus.texts)
        for event in env.bed.core.list_namespaced_event(env.namespace).items:
            texts.append(f"{event.reason}: {event.message}")
        for log in sorted(operator_logdir.glob("*.log")):
            texts.append(log.read_text(errors="replace"))
    finally:
        text_op.stop()
        env.operator.start()
    tokens = env.bed.issuer.issued_tokens
    secrets = leak_corpus.secrets | set(env._values.values()) | set(env.bed.issuer.registered_secrets())
    assert len(tokens) >= 2 and len(secrets) >= 2, "the scanner must have something to look for"
    assert sum(len(t) for t in texts) > 2_500, "and somewhere to look"
    corpus = "\n".join(texts)
    # ServiceAccount tokens the operator minted for workload identity (the scenario's, and any test's before it)
    assertions = env.bed.issuer.presented_assertions
    assert assertions, "the workload identity tests presented ServiceAccount tokens"
    leaks = find_leaks(corpus, tokens=tokens, secrets=secrets, assertions=assertions)
    leaked_tokens, leaked_assertions, leaked_secrets = leaks.tokens, leaks.assertions, leaks.secrets
    assert not leaked_tokens, f"tokens found in logs/events/status: {leaked_tokens[:3]}"
    assert not leaked_secrets, f"client secrets found in logs/events/status: {leaked_secrets[:3]}"
    assert not leaked_assertions, f"ServiceAccount tokens found in logs/events/status: {leaked_assertions[:3]}"
    assert "PRIVATE KEY" not in corpus
