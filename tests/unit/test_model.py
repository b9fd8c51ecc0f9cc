from __future__ import annotations

import datetime as dt
import uuid

import pytest
from pydantic import ValidationError

from graphcred.model import GraphAppCredentialSpec, parse_duration
from graphcred.reconciler import spec_error_message

TENANT, CLIENT = str(uuid.uuid4()), str(uuid.uuid4())


def spec(**kw: object) -> GraphAppCredentialSpec:
    data = {"tenantId": TENANT, "clientId": CLIENT, "credential": {"clientSecret": {"name": "app"}}, **kw}
    return GraphAppCredentialSpec.model_validate(data)


def test_defaults_and_authority() -> None:
    s = spec()
    assert s.scopes == ["https://graph.microsoft.com/.default"]
    assert s.authority() == f"https://login.microsoftonline.com/{TENANT}"
    assert spec(cloud="AzureUSGovernment").authority_base() == "https://login.microsoftonline.us"
    assert spec(cloud="AzureChina").authority_base() == "https://login.chinacloudapi.cn"
    assert spec(authorityHost="https://login.example.test:8443/").authority() == \
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
])
def test_invalid_specs_have_readable_messages(kw: dict[str, object], where: str) -> None:
    with pytest.raises(ValidationError) as err:
        spec(**kw)
    message = spec_error_message(err.value)
    assert where in message
    assert "input_value" not in message


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
