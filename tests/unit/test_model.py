from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from graphcred.api.crd import PRINTER_COLUMNS, crd
from graphcred.api.model import (
    CONDITION_MESSAGE_MAX,
    CONDITION_REASON_PATTERN,
    Condition,
    GraphAppCredentialSpec,
    GraphAppCredentialStatus,
    Reason,
    parse_duration,
)
from graphcred.reconcile.outcome import spec_error_message

TENANT, CLIENT = str(uuid.uuid4()), str(uuid.uuid4())


def spec(**kw: object) -> GraphAppCredentialSpec:
    data = {"tenantId": TENANT, "clientId": CLIENT, "credential": {"clientSecret": {"name": "app"}}, **kw}
    return GraphAppCredentialSpec.model_validate(data)


def test_defaults_and_authority() -> None:
    s = spec()
    assert s.scopes == ["https://graph.microsoft.com/.default"]
    assert s.identity().authority() == f"https://login.microsoftonline.com/{TENANT}"
    assert spec(cloud="AzureUSGovernment").identity().authority_base() == "https://login.microsoftonline.us"
    assert spec(cloud="AzureChina").identity().authority_base() == "https://login.chinacloudapi.cn"
    assert spec(authorityHost="https://login.example.test:8443/").identity().authority() == \
        f"https://login.example.test:8443/{TENANT}"
    assert s.effective_secret_name("mail") == "mail-token"
    assert spec(secretName="x").effective_secret_name("mail") == "x"


@pytest.mark.parametrize(("kw", "where"), [
    ({"clientId": "nope"}, "spec.clientId"),
    ({"scopes": ["https://graph.microsoft.com/User.Read"]}, "spec.scopes.0"),
    ({"scopes": ["https://a/.default", "https://b/.default"]}, "one resource"),
    ({"credential": {}}, "exactly one"),
    ({"credential": {"clientSecret": {"name": "a"}, "certificate": {"name": "b"}}}, "exactly one"),
    ({"surprise": 1}, "spec.surprise"),
    ({"refreshBeforeExpiry": "soon"}, "spec.refreshBeforeExpiry"),
    ({"refreshBeforeExpiry": "24h1ms"}, "spec.refreshBeforeExpiry: must be at most 24h"),
    # accepted, then overflowed after the token was written (a write every 1.5 s)
    ({"refreshBeforeExpiry": "99999999999h"}, "spec.refreshBeforeExpiry: must be at most 24h"),
    ({"refreshBeforeExpiry": "9" * 63 + "h"}, "spec.refreshBeforeExpiry: must be at most 24h"),
])
def test_invalid_specs_have_readable_messages(kw: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as err:
        spec(**kw)
    message = spec_error_message(err.value)
    assert where in message
    assert "input_value" not in message
    assert "Value error" not in message and "Assertion failed" not in message, "pydantic's wording, not ours"


def test_error_messages_never_echo_values() -> None:
    with pytest.raises(ValidationError) as err:
        spec(clientId="SECRET-LOOKING-VALUE")
    assert "SECRET-LOOKING-VALUE" not in spec_error_message(err.value)


def test_durations() -> None:
    assert parse_duration("1h30m") == dt.timedelta(minutes=90)
    assert parse_duration("90s") == dt.timedelta(seconds=90)
    assert parse_duration("500ms") == dt.timedelta(milliseconds=500)
    assert spec(refreshBeforeExpiry="10m").refresh_before() == dt.timedelta(minutes=10)
    with pytest.raises(ValueError, match="Go duration"):
        parse_duration("10 minutes")


def test_durations_are_bounded_and_never_overflow() -> None:
    assert spec(refreshBeforeExpiry="24h").refresh_before() == dt.timedelta(hours=24)
    assert spec(refreshBeforeExpiry="23h59m60s").refresh_before() == dt.timedelta(hours=24)
    with pytest.raises(ValueError, match="duration too long"):
        parse_duration("99999999999h")
    with pytest.raises(ValueError, match="duration too long"):
        parse_duration("1" + "0" * 400 + "s")  # a float of infinity, not an OverflowError
    # an object stored under an older, looser CRD and read without validation: still finite and bounded
    stored = GraphAppCredentialSpec.model_construct(refresh_before_expiry="99999999999h")
    assert stored.refresh_before() == dt.timedelta(hours=24)


def test_a_name_too_long_for_the_default_secret_name_is_a_problem_before_any_token() -> None:
    assert spec().secret_name_problem("n" * 247) is None
    problem = spec().secret_name_problem("n" * 248)
    assert problem is not None and "set spec.secretName" in problem and "at most 247" in problem
    assert spec(secretName="short").secret_name_problem("n" * 253) is None


# --- the status schema the CRD publishes ----------------------------------------------------------------------------
def _status_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return schema


def _undescribed(node: dict[str, Any], path: str) -> Iterator[str]:
    if not node.get("description"):
        yield path
    for name, sub in node.get("properties", {}).items():
        yield from _undescribed(sub, f"{path}.{name}")
    items = node.get("items", {})
    for name, sub in items.get("properties", {}).items():
        yield from _undescribed(sub, f"{path}[].{name}")


def test_every_status_field_has_a_description() -> None:
    assert list(_undescribed(_status_schema(), "status")) == []


def test_conditions_are_metav1_conditions_in_a_list_map_keyed_by_type() -> None:
    conditions = _status_schema()["properties"]["conditions"]
    assert (conditions["x-kubernetes-list-type"], conditions["x-kubernetes-list-map-keys"]) == ("map", ["type"])
    item = conditions["items"]
    assert sorted(item["required"]) == ["lastTransitionTime", "message", "reason", "status", "type"]
    fields = item["properties"]
    assert sorted(fields) == ["lastTransitionTime", "message", "observedGeneration", "reason", "status", "type"]
    assert fields["lastTransitionTime"]["format"] == "date-time"
    assert fields["status"]["enum"] == ["True", "False", "Unknown"]
    assert (fields["observedGeneration"]["format"], fields["observedGeneration"]["minimum"]) == ("int64", 0)
    assert fields["message"]["maxLength"] == CONDITION_MESSAGE_MAX
    assert all(re.fullmatch(CONDITION_REASON_PATTERN, reason.value) for reason in Reason)


def test_a_long_message_is_cut_to_what_the_crd_accepts() -> None:
    condition = Condition(status="False", reason="Unauthorized", message="x" * 100_000)
    assert len(condition.message) == CONDITION_MESSAGE_MAX
    assert condition.message.endswith("…")
    assert Condition(status="True", reason="TokenIssued", message="short").message == "short"


def test_wide_columns_follow_the_default_ones() -> None:
    columns = [(c["name"], c.get("priority", 0)) for c in PRINTER_COLUMNS]
    assert columns == [("Ready", 0), ("Reason", 0), ("Expires", 0), ("Secret", 0), ("Age", 0),
                       ("Refresh At", 1), ("Audience", 1), ("Credential Expires", 1), ("Message", 1)]


def test_a_condition_stored_under_the_older_crd_that_the_schema_refuses_is_left_out_alone() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "TokenIssued", "message": "ok",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
    status = GraphAppCredentialStatus.model_validate({
        "conditions": [ready, {"type": "Synced", "status": "True", "reason": "in sync"}],  # a reason with spaces
        "expiresOn": "2026-01-01T01:00:00Z", "issuedFor": "abc"})
    assert status.to_k8s()["conditions"] == [ready]
    assert (status.expires_on, status.issued_for) == ("2026-01-01T01:00:00Z", "abc")
