"""The chart's PrometheusRule fires, proven with promtool: the operator runs on the bed into each condition (a
rejected client secret, short-lived tokens with the issuer failing, refreshes failing, the operator down, a pod
reading a token through subPath), its /metrics is scraped, the samples become a `promtool test rules` input (held
constant over the test window, labelled as a ServiceMonitor scrape would label them), and promtool evaluates the
rules rendered from the chart: the alert of the condition fires with the expected labels and annotations. A healthy
run's scrape fires none of them. GraphcredCredentialExpiresSoon: a client secret whose Secret says (annotation
graphcred.io/credential-expires-on) that it expires in a day fires it; one that expires in 60 days does not.
GraphcredCertificateRenewalFailing: a certificate.rotation credential whose renewal Microsoft Graph refuses
(addKey answers 403) fires it, with the CertificateRenewal condition's reason, while the credential stays Ready.

What this does not prove: how a series moves over the window (it is held at the scraped value; the expiry and
next-refresh timestamps keep their distance to `time()` as scraped at the window's start), nor the Prometheus
Operator's translation of the PrometheusRule (its CRD is not on the bed: the rule file is the rendered spec.groups).
GraphcredWorkerDead has no test here: a worker without a task is a bug that no input can produce (the controller
restarts any worker that ends), so there is nothing honest to scrape; its expression is checked by
`promtool check rules` with the others.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from graphcred.api.keys import GROUP, PLURAL, RENEW_ANNOTATION, VERSION
from graphcred_testbed.bed import Bed, wait_for
from graphcred_testbed.operator_process import OperatorProcess

from ..helpers import GRAPH, Env
from .test_chart import RELEASE_NS, render
from .test_consumer_warnings import sub_path_pod

pytestmark = pytest.mark.bed

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 60  # seconds between input samples
# what an admin writes on a client secret's Secret: the endDateTime Entra gave the secret (docs/behaviour.md)
CREDENTIAL_EXPIRES_ON = "graphcred.io/credential-expires-on"
Sample = tuple[str, dict[str, str], float]


@cache
def promtool() -> str:
    """promtool, built once from the Go module proxy (scripts/promtool.sh caches it like the bed's binaries)."""
    out = subprocess.run([str(ROOT / "scripts" / "promtool.sh"), "--path"], capture_output=True, text=True,
                         check=True, timeout=1800)
    return out.stdout.strip()


@cache
def chart() -> tuple[list[dict[str, Any]], str]:
    """The chart's alert rules (PrometheusRule spec.groups) and the job a ServiceMonitor scrape is labelled with
    (the metrics Service's name)."""
    docs = render("--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.serviceMonitor.enabled=true")
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics"))
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups, service["metadata"]["name"]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in chart()[0] for r in g["rules"] if "alert" in r}


def seconds(duration: str) -> int:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return int(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|y|w|d|h|m|s)", duration)))


# --- scraping, labelled as Prometheus would store it -------------------------------------------------------------
def scrape(op: OperatorProcess | None) -> list[Sample]:
    """The operator's samples with the target labels a ServiceMonitor adds (honorLabels: the operator's own
    `namespace` wins), and `up`: 1 after a good scrape, 0 when there is no operator to scrape."""
    job = chart()[1]
    target = {"job": job, "instance": "10.0.0.7:8080", "namespace": RELEASE_NS, "service": job,
              "pod": "graphcred-0", "endpoint": "metrics"}
    if op is None:
        return [("up", target, 0.0)]
    with urllib.request.urlopen(op.metrics_url() + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    now = time.time()
    samples: list[Sample] = [("up", target, 1.0)]
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            # held constant over the window, a timestamp keeps its distance to the scrape time: stored relative
            # to it, as promtool's clock starts at 0
            value = s.value - now if s.name.endswith("_timestamp_seconds") else s.value
            samples.append((s.name, {**target, **s.labels}, value))
    return samples


def only(samples: list[Sample], namespace: str) -> list[Sample]:
    """The shared session operator also reports other tests' credentials: keep the per-credential series of this
    test's namespace (series without a credential, like graphcred_workers, are all kept)."""
    return [s for s in samples if s[1].get("namespace") in (namespace, RELEASE_NS)]


def series(name: str, labels: dict[str, str]) -> str:
    escaped = {k: v.replace("\\", "\\\\").replace('"', '\\"') for k, v in labels.items()}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(escaped.items())) + "}"


# --- promtool -----------------------------------------------------------------------------------------------------
def expected_annotations(rule: dict[str, Any], labels: dict[str, str], value: float) -> dict[str, str]:
    """The rule's annotations for an alert with these labels and value: the templates use only $labels.X and
    $value, which is all this expands."""
    def expand(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
        return text.replace("{{ $value }}", f"{value:g}")

    return {k: expand(v) for k, v in rule.get("annotations", {}).items()}


def promtool_test(tmp_path: Path, samples: list[Sample], expected: dict[str, list[dict[str, Any]]]) -> str:
    """Run `promtool test rules` on the chart's rules with `samples` held constant; `expected` maps each alert to
    the alerts (labels, value) that must be firing once its `for` has passed. Returns promtool's output."""
    rules = alert_rules()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": chart()[0]}))
    window = max(seconds(r.get("for", "0s")) for r in rules.values()) + 5 * INTERVAL
    steps = window // INTERVAL
    tests: list[dict[str, Any]] = []
    for alert, firing in expected.items():
        rule = rules[alert]
        exp = [{"exp_labels": {**a["labels"], **rule.get("labels", {})},
                "exp_annotations": expected_annotations(rule, {**a["labels"], **rule.get("labels", {})}, a["value"])}
               for a in firing]
        tests.append({"eval_time": f"{seconds(rule.get('for', '0s')) + 2 * INTERVAL}s", "alertname": alert,
                      "exp_alerts": exp})
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": f"{INTERVAL}s", "tests": [{
        "interval": f"{INTERVAL}s",
        "input_series": [{"series": series(name, labels), "values": f"{value:.6f}+0x{steps}"}
                         for name, labels, value in samples],
        "alert_rule_test": tests}]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, f"promtool test rules failed:\n{out.stdout}\n{out.stderr}"
    # shown with -s (the closing notes quote it): what was expected to fire, and promtool's verdict
    for alert, firing in expected.items():
        print(f"{alert}: " + (", ".join(series(alert, a["labels"]) for a in firing) if firing else "silent"))
    print((out.stdout + out.stderr).strip())
    return out.stdout + out.stderr


def quiet(*except_: str) -> dict[str, list[dict[str, Any]]]:
    """Every alert expected silent, but the ones named."""
    return {a: [] for a in alert_rules() if a not in except_}


# --- the conditions -----------------------------------------------------------------------------------------------
def test_the_rendered_rules_pass_promtool_check() -> None:
    rules = alert_rules()
    assert set(rules) >= {"GraphcredCredentialNotReady", "GraphcredTokenExpiresSoon", "GraphcredRefreshFailing",
                          "GraphcredWorkerDead", "GraphcredUnrefreshableConsumer", "GraphcredDown",
                          "GraphcredCredentialExpiresSoon", "GraphcredCertificateRenewalFailing"}
    docs = render("--set", "metrics.prometheusRule.enabled=true")
    groups = next(d for d in docs if d["kind"] == "PrometheusRule")["spec"]["groups"]
    out = subprocess.run([promtool(), "check", "rules", "/dev/stdin"], input=yaml.safe_dump({"groups": groups}),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in out.stdout + out.stderr, out.stderr


def test_a_healthy_run_fires_nothing(env: Env, tmp_path: Path) -> None:
    app = env.secret_app("pw", secret_name="cred")
    env.create("healthy", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("healthy")
    samples = only(scrape(env.operator), env.namespace)
    assert ("graphcred_credential_ready", "TokenIssued", 1.0) in {
        (n, lb.get("reason"), v) for n, lb, v in samples if lb.get("name") == "healthy"}
    promtool_test(tmp_path, samples, quiet())


def test_not_ready_fires_with_its_reason(env: Env, tmp_path: Path) -> None:
    app = env.register_app(secret="the-right-one")
    env.client_secret("cred", "the-wrong-one")
    env.create("rejected", app, {"clientSecret": {"name": "cred"}})
    env.wait_condition("rejected", "False", "Unauthorized")
    reason = "Unauthorized"
    samples = only(scrape(env.operator), env.namespace)
    labels = {"namespace": env.namespace, "name": "rejected", "reason": reason}
    promtool_test(tmp_path, samples, {"GraphcredCredentialNotReady": [{"labels": labels, "value": 0}],
                                      **quiet("GraphcredCredentialNotReady")})


def test_a_short_lived_token_with_the_issuer_failing_fires_expires_soon(env: Env, tmp_path: Path) -> None:
    app = env.secret_app("pw", secret_name="cred", lifetime=480)  # under the alert's 10 minutes
    env.create("expiring", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("expiring")
    env.bed.issuer.fail(app.client_id, status=503)
    # the refresh is due at half-life; ask for it now, so the failure is the operator's, not scheduled later
    env.bed.custom.patch_namespaced_custom_object(
        GROUP, VERSION, env.namespace, PLURAL, "expiring",
        {"metadata": {"annotations": {RENEW_ANNOTATION: str(time.time())}}})
    env.wait_condition("expiring", "True", "AuthorityUnavailable", timeout=30)
    samples = only(scrape(env.operator), env.namespace)
    expiry = next(v for n, lb, v in samples
                  if n == "graphcred_token_expiration_timestamp_seconds" and lb.get("name") == "expiring")
    labels = {"namespace": env.namespace, "name": "expiring"}
    # promtool's `$value` is the expression's value at the eval time: the expiry minus the clock then
    at = seconds(alert_rules()["GraphcredTokenExpiresSoon"]["for"]) + 2 * INTERVAL
    promtool_test(tmp_path, samples, {"GraphcredTokenExpiresSoon": [{"labels": labels, "value": expiry - at}],
                                      **quiet("GraphcredTokenExpiresSoon", "GraphcredRefreshFailing")})
    env.bed.issuer.heal(app.client_id)


def test_failing_refreshes_fire_refresh_failing(env: Env, tmp_path: Path) -> None:
    app = env.secret_app("pw", secret_name="cred")
    env.bed.issuer.fail(app.client_id, status=503)
    env.create("failing", app, {"clientSecret": {"name": "cred"}})
    threshold = int(re.findall(r">= (\d+)", alert_rules()["GraphcredRefreshFailing"]["expr"])[0])
    wait_for(lambda: (env.get("failing").get("status") or {}).get("consecutiveFailures", 0) >= threshold,
             timeout=90, what=f"{threshold} failed attempts in a row")
    samples = only(scrape(env.operator), env.namespace)
    failures = next(v for n, lb, v in samples if n == "graphcred_consecutive_failures" and lb.get("name") == "failing")
    labels = {"namespace": env.namespace, "name": "failing"}
    promtool_test(tmp_path, samples, {
        "GraphcredRefreshFailing": [{"labels": labels, "value": failures}],
        "GraphcredCredentialNotReady": [{"labels": {**labels, "reason": "AuthorityUnavailable"}, "value": 0}],
        **quiet("GraphcredRefreshFailing", "GraphcredCredentialNotReady")})
    env.bed.issuer.heal(app.client_id)


def test_no_operator_fires_down(operator: OperatorProcess, tmp_path: Path) -> None:
    operator.stop()
    try:
        promtool_test(tmp_path, scrape(None), {"GraphcredDown": [{"labels": {}, "value": 1}]})
    finally:
        operator.start()


def test_credential_expires_soon_fires_within_the_threshold_only(tmp_path: Path) -> None:
    """The expression alone, on synthetic samples (the operator's side is the next test): 13 days ahead is inside
    the default 14, 15 days is not, and a credential without a known expiry has no series at all."""
    job = chart()[1]
    target = {"job": job, "instance": "10.0.0.7:8080", "namespace": RELEASE_NS, "service": job}
    samples: list[Sample] = [("up", target, 1.0)] + [
        ("graphcred_credential_expiration_timestamp_seconds", {**target, "namespace": "team-a", "name": name},
         days * 86400.0) for name, days in (("thirteen", 13), ("fifteen", 15))]
    promtool_test(tmp_path, samples, {
        "GraphcredCredentialExpiresSoon": [{"labels": {"namespace": "team-a", "name": "thirteen"}, "value": 0}],
        **quiet("GraphcredCredentialExpiresSoon")})


def test_a_client_secret_expiring_in_a_day_fires_credential_expires_soon(env: Env, tmp_path: Path) -> None:
    # two credentials of one app, each with its own copy of the client secret: one Secret says it expires in a
    # day (inside the alert's 14 days), the other in 60 days
    app = env.secret_app("pw", secret_name="cred-soon")
    env.client_secret("cred-later", "pw")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for secret, days in (("cred-soon", 1), ("cred-later", 60)):
        expires = (now + dt.timedelta(days=days)).isoformat().replace("+00:00", "Z")
        env.bed.core.patch_namespaced_secret(secret, env.namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(annotations={CREDENTIAL_EXPIRES_ON: expires})))
    env.create("soon", app, {"clientSecret": {"name": "cred-soon"}})
    env.create("later", app, {"clientSecret": {"name": "cred-later"}})
    env.wait_ready("soon")
    env.wait_ready("later")

    def reported() -> list[Sample] | None:
        samples = only(scrape(env.operator), env.namespace)
        known = {lb.get("name") for n, lb, _ in samples if n == "graphcred_credential_expiration_timestamp_seconds"}
        return samples if known >= {"soon", "later"} else None

    samples = wait_for(reported, timeout=30, what="both credentials in the expiration gauge")
    expiry = {lb["name"]: v for n, lb, v in samples if n == "graphcred_credential_expiration_timestamp_seconds"}
    # stored relative to the scrape: a day and 60 days ahead, as the annotations say (to the scrape's second)
    assert abs(expiry["soon"] - 86400) < 120 and abs(expiry["later"] - 60 * 86400) < 120, expiry
    promtool_test(tmp_path, samples, {
        "GraphcredCredentialExpiresSoon": [{"labels": {"namespace": env.namespace, "name": "soon"},
                                            "value": expiry["soon"]}],
        **quiet("GraphcredCredentialExpiresSoon")})


@pytest.fixture
def consumers_env(bed: Bed, namespace: str, operator: OperatorProcess, operator_logdir: Path) -> Iterator[Env]:
    operator.stop()
    op = OperatorProcess(bed, operator_logdir, "--token-timeout=3", "--watch-consumers", name="graphcred-alerts",
                         log_format="json")
    try:
        yield Env(bed, namespace, op.start())
    finally:
        op.stop()
        operator.start()


def test_a_subpath_reader_fires_unrefreshable_consumer(consumers_env: Env, tmp_path: Path) -> None:
    env = consumers_env
    app = env.secret_app("pw", secret_name="cred")
    env.create("mail", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("mail")
    sub_path_pod(env, "reader")

    def reported() -> list[Sample] | None:
        samples = only(scrape(env.operator), env.namespace)
        hit = any(n == "graphcred_unrefreshable_consumers" and v > 0 for n, _, v in samples)
        return samples if hit else None

    samples = wait_for(reported, timeout=30, what="the subPath reader in graphcred_unrefreshable_consumers")
    labels = {"namespace": env.namespace, "name": "mail"}
    promtool_test(tmp_path, samples, {"GraphcredUnrefreshableConsumer": [{"labels": labels, "value": 1}],
                                      **quiet("GraphcredUnrefreshableConsumer")})


def test_a_refused_certificate_renewal_fires_certificate_renewal_failing(env: Env, tmp_path: Path) -> None:
    """certificate.rotation: graphcred generates the key pair, a person uploads the certificate (the bed's issuer
    learns it), the renewal is due 10 s after the key pair was made (validity 30 days, renewBefore 10 s less) and
    Graph refuses addKey. The certificate keeps serving (Ready, no failure of the token's) and expires beyond the
    14 days of GraphcredCredentialExpiresSoon: only the renewal alert fires."""
    app = env.register_app()
    env.create("renewing", app, {"certificate": {"name": "renewing-cert", "rotation": {
        "objectId": app.object_id, "validity": "720h", "renewBefore": "719h59m50s"}}},
        scopes=[f"{GRAPH}/.default"])
    env.wait_condition("renewing", "False", "CertificateNotRegistered", timeout=60)
    pem = env.get("renewing")["status"]["certificate"]["pem"]
    env.bed.graph.fail_next("addKey", 403, count=1000)
    try:
        env.bed.issuer.add_key(app.client_id, x509.load_pem_x509_certificate(pem.encode()))  # the person's upload
        env.wait_ready("renewing", timeout=60)

        def reported() -> list[Sample] | None:
            samples = only(scrape(env.operator), env.namespace)
            failing = [(lb.get("reason"), v) for n, lb, v in samples
                       if n == "graphcred_certificate_renewal_failing" and lb.get("name") == "renewing"]
            return samples if failing == [("RenewalFailed", 1.0)] else None

        samples = wait_for(reported, timeout=60, what="graphcred_certificate_renewal_failing 1, RenewalFailed")
        labels = {"namespace": env.namespace, "name": "renewing", "reason": "RenewalFailed"}
        promtool_test(tmp_path, samples, {"GraphcredCertificateRenewalFailing": [{"labels": labels, "value": 1}],
                                          **quiet("GraphcredCertificateRenewalFailing")})
    finally:
        env.bed.graph.heal()
