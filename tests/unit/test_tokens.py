from __future__ import annotations

from graphcred.logs import redact
from graphcred.model import Reason
from graphcred.tokens import classify_error_response


def test_aadsts_codes_are_permanent_with_advice() -> None:
    err = classify_error_response({"error": "invalid_client", "error_codes": [7000215]}, 401, None)
    assert (err.reason, err.permanent, err.code) == (Reason.UNAUTHORIZED, True, 7000215)
    assert "AADSTS7000215" in err.message and "Value (not its ID)" in err.message
    assert classify_error_response({"error_codes": [1002012]}, 400, None).reason == Reason.INVALID_SPEC


def test_throttling_and_unavailability_are_transient() -> None:
    throttled = classify_error_response({"error": "temporarily_unavailable"}, 429, 30.0)
    assert (throttled.reason, throttled.permanent, throttled.retry_after) == (Reason.THROTTLED, False, 30.0)
    unknown = classify_error_response({"error": "invalid_request", "error_codes": [99999]}, 400, None)
    assert not unknown.permanent


def test_redaction_of_token_shaped_strings() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2dyYXBoIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
    assert jwt not in redact(f"got {jwt} back")
    assert "hunter2hunter2" not in redact("client_secret=hunter2hunter2&scope=x")
    assert "abcdefgh12345" not in redact("Authorization: Bearer abcdefgh12345")
    assert redact("nothing to see") == "nothing to see"
