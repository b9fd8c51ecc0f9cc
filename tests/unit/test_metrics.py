"""Per-credential metrics: one graphcred_credential_ready series per credential whatever its reason history, the
next refresh as a timestamp, both gone with the credential; bounded labels (no message)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from graphcred.reconcile.controller import Controller
from graphcred.reconcile.reconciler import Reconciler
from graphcred.telemetry.metrics import CredentialStatus, Metrics

SECRET_MESSAGE = "AADSTS7000215: Invalid client secret provided for app 1234, token eyJhbGciOi.secret"


def series(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.exposition()):
        for s in family.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def status(ready: str, reason: str, refresh_at: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"conditions": [{"type": "Ready", "status": ready, "reason": reason,
                                            "message": SECRET_MESSAGE}]}
    if refresh_at:
        body["refreshAt"] = refresh_at
    return body


def test_a_reason_change_replaces_the_series_never_adds_one() -> None:
    metrics = Metrics()
    state: dict[tuple[str, str], dict[str, Any] | None] = {("team", "mail"): status("True", "TokenIssued")}
    metrics.track_credentials(lambda: [(ns, n, s) for (ns, n), s in state.items()])
    assert series(metrics, "graphcred_credential_ready") == {
        (("name", "mail"), ("namespace", "team"), ("reason", "TokenIssued")): 1.0}
    state[("team", "mail")] = status("False", "Unauthorized")
    assert series(metrics, "graphcred_credential_ready") == {
        (("name", "mail"), ("namespace", "team"), ("reason", "Unauthorized")): 0.0}
    state[("team", "mail")] = status("True", "AuthorityUnavailable")  # still valid, refresh failing
    assert series(metrics, "graphcred_credential_ready") == {
        (("name", "mail"), ("namespace", "team"), ("reason", "AuthorityUnavailable")): 1.0}


def test_the_message_is_never_a_label() -> None:
    metrics = Metrics()
    metrics.track_credentials(lambda: [("team", "mail", status("False", "Unauthorized"))])
    text = metrics.exposition()
    assert "AADSTS7000215" not in text and "eyJhbGciOi" not in text


def test_next_refresh_is_a_unix_timestamp_and_absent_when_none_is_scheduled() -> None:
    metrics = Metrics()
    creds: list[CredentialStatus] = [("team", "a", status("True", "TokenIssued", "2030-01-01T00:00:00Z")),
                                     ("team", "b", status("False", "InvalidSpec")),  # waits for a spec change
                                     ("team", "c", None)]
    metrics.track_credentials(lambda: creds)
    assert series(metrics, "graphcred_credential_next_refresh_timestamp_seconds") == {
        (("name", "a"), ("namespace", "team")): 1893456000.0}
    ready = series(metrics, "graphcred_credential_ready")
    assert ready[(("name", "c"), ("namespace", "team"), ("reason", "Pending"))] == 0.0  # before its first pass


def test_the_controller_reports_registered_credentials_and_drops_forgotten_ones() -> None:
    async def run() -> tuple[dict[Any, float], dict[Any, float]]:
        reconciler = Reconciler(None, None, lambda *a: None)  # type: ignore[arg-type]
        controller = Controller(reconciler)
        reconciler.metrics.track(controller)  # as the wiring does
        body = {"metadata": {"namespace": "team", "name": "mail", "uid": "u1", "generation": 1},
                "spec": {}, "status": status("True", "TokenIssued", "2030-01-01T00:00:00Z")}
        controller.observe(body)  # registered; its worker has not run yet: the object's status is reported
        before = series(reconciler.metrics, "graphcred_credential_ready")
        controller.forget("team", "mail")
        after = series(reconciler.metrics, "graphcred_credential_ready")
        await controller.stop()
        return before, after

    before, after = asyncio.run(run())
    assert before == {(("name", "mail"), ("namespace", "team"), ("reason", "TokenIssued")): 1.0}
    assert after == {}


def test_events_lost_is_exposed_at_zero_before_the_first_loss() -> None:
    """Review of 60ecd3e: a labelled counter that first appears at 1 shows no increase() to an alert (its first
    sample is the baseline): each `why` is there at 0 from the start."""
    exposition = Metrics().exposition()
    for why in ("queue_full", "stopped", "failed"):
        assert f'graphcred_events_lost_total{{why="{why}"}} 0.0' in exposition
