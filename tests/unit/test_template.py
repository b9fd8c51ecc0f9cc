"""The template language of spec.secretTemplate.data, and the checks on spec.secretTemplate when a spec is read."""

from __future__ import annotations

import base64
import builtins
import json
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from graphcred.api.model import GraphAppCredentialSpec
from graphcred.api.template import FIELDS, FILTERS, MAX_TEMPLATE_CHARS, TemplateError, compile_template
from graphcred.reconcile.outcome import spec_error_message

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2dyYXBoLm1pY3Jvc29mdC5jb20ifQ.c2ln"
VALUES: dict[str, str | int] = {
    "accessToken": TOKEN, "tokenType": "Bearer", "expiresOn": "2026-11-24T21:03:11Z", "expiresOnUnix": 1795561391,
    "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "clientId": "1b4f816e-5eaf-48b9-8613-7923830595ad",
    "audience": "https://graph.microsoft.com",
}


def render(source: str, values: dict[str, str | int] = VALUES) -> str:
    return compile_template(source).render(values)


# --- the language ---------------------------------------------------------------------------------------------------
def test_the_documented_examples_render() -> None:
    assert render("GRAPH_TOKEN={{ .accessToken }}\n") == f"GRAPH_TOKEN={TOKEN}\n"
    assert render("Authorization: Bearer {{ .accessToken }}") == f"Authorization: Bearer {TOKEN}"
    assert render("username=graphcred\npassword={{.accessToken}}\n") == f"username=graphcred\npassword={TOKEN}\n"
    sdk = render('{"access_token": {{ .accessToken | json }}, "expires_on": {{ .expiresOnUnix }}}')
    assert json.loads(sdk) == {"access_token": TOKEN, "expires_on": 1795561391}


def test_fields_and_filters() -> None:
    assert render("{{ .tokenType }} {{ .expiresOn }} {{ .tenantId }} {{ .clientId }} {{ .audience }}") == \
        f"Bearer 2026-11-24T21:03:11Z {VALUES['tenantId']} {VALUES['clientId']} https://graph.microsoft.com"
    assert render("{{ .expiresOnUnix | json }}") == "1795561391"
    assert render("{{ .accessToken | base64 }}") == base64.b64encode(TOKEN.encode()).decode()
    # filters apply left to right
    assert render("{{ .tokenType | base64 | json }}") == '"QmVhcmVy"'
    assert render('{{ "a \u00e9 b" | json }}') == '"a \\u00e9 b"'


def test_text_is_copied_as_it_is() -> None:
    # nothing but {{ ... }} means anything: no ${}, %, {} formatting, no escapes, a lone }} is text
    text = "${HOME} %s {0} \\n }} {single} {{ \"{{\" }} done"
    assert render(text) == "${HOME} %s {0} \\n }} {single} {{ done"
    assert compile_template("").render({}) == ""


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ .accessTokn }}", "line 1, column 4: unknown field .accessTokn; fields: .accessToken, "),
    ("{{ .accessToken | upper }}", "line 1, column 19: unknown filter upper; filters: json, base64"),
    ("a\nb {{ .accessToken", "line 2, column 3: unterminated action"),
    ("{{ }}", "line 1, column 1: empty action"),
    ("{{- .accessToken -}}", "trim markers"),
    ("{{ .accessToken .tokenType }}", "expected | or }}"),
    ("{{ .accessToken | }}", "expected a filter name after |"),
    ("{{ . }}", "expected a field name after ."),
    ("{{ accessToken }}", "expected a field such as .accessToken"),
    ('{{ "open }}', "unterminated string"),
    ("{{ .Values.token }}", "unknown field .Values"),  # no attribute access, whatever the name
    ("{{ .accessToken.__class__ }}", "expected | or }}"),
    ("{{ __import__('os').system('id') }}", "expected a field such as .accessToken"),
    ("{% for x in y %}{{ x }}{% endfor %}", "expected a field such as .accessToken"),
])
def test_errors_say_where_and_what(source: str, expected: str) -> None:
    with pytest.raises(TemplateError) as raised:
        compile_template(source)
    assert expected in str(raised.value)


def test_an_unknown_name_is_shown_shortened() -> None:
    with pytest.raises(TemplateError) as raised:
        compile_template("{{ ." + "x" * 500 + " }}")
    assert len(str(raised.value)) < 300


def test_limits() -> None:
    with pytest.raises(TemplateError, match="longer than"):
        compile_template("x" * (MAX_TEMPLATE_CHARS + 1))
    with pytest.raises(TemplateError, match="more than 256 actions"):
        compile_template("{{ .tokenType }}" * 257)
    assert compile_template("{{ .tokenType }}" * 256).fields == {"tokenType"}


# --- fuzzing: only TemplateError, never code --------------------------------------------------------------------
@contextmanager
def no_evaluation() -> Iterator[None]:
    """eval, exec, compile and __import__ fail loudly while the template code runs (only then: hypothesis itself
    may need them)."""
    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the template language evaluated or imported code")

    names = ("eval", "exec", "compile", "__import__")
    saved = {name: getattr(builtins, name) for name in names}
    for name in names:
        setattr(builtins, name, refuse)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(builtins, name, value)


PIECES = st.sampled_from(["{{", "}}", "{", "}", ".", "|", '"', " ", "\n", "-", "\\", "accessToken", "json",
                          "base64", "tokenType", "x", "__class__", "()", "'", "$", "%"])
SOURCES = st.one_of(st.text(max_size=200), st.lists(PIECES, max_size=40).map("".join))
ANY_VALUES = st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.text(max_size=50), st.integers()))


@settings(max_examples=1000, deadline=None)
@given(source=SOURCES, values=ANY_VALUES)
def test_any_text_compiles_or_raises_template_error_and_runs_no_code(source: str,
                                                                     values: dict[str, str | int]) -> None:
    outcome: Exception | str
    with no_evaluation():
        try:
            outcome = compile_template(source).render(values)
        except Exception as exc:  # which exception it is, is the point
            outcome = exc
    if isinstance(outcome, str):
        return
    assert isinstance(outcome, TemplateError), f"{type(outcome).__name__}: {outcome}"
    # a syntax error says where; rendering fails only for a field without a value
    assert str(outcome).startswith("line ") or "has no value" in str(outcome)


# Valid templates built from parts: rendering equals what the parts say, so text is never interpreted.
TEXT = st.text(max_size=20).filter(lambda t: "{{" not in t and not t.endswith("{"))
ACTION = st.tuples(st.sampled_from(FIELDS), st.lists(st.sampled_from(list(FILTERS)), max_size=3))


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(st.one_of(TEXT, ACTION), max_size=12))
def test_rendering_is_text_plus_filtered_fields(parts: list[Any]) -> None:
    source, expected = "", ""
    for part in parts:
        if isinstance(part, str):
            source += part
            expected += part
            continue
        name, filters = part
        source += "{{ ." + name + "".join(f" | {f}" for f in filters) + " }}"
        value: str | int = VALUES[name]
        for f in filters:
            value = FILTERS[f](value)
        expected += str(value)
    assert render(source) == expected


# --- spec.secretTemplate ----------------------------------------------------------------------------------------
def spec(template: dict[str, Any]) -> GraphAppCredentialSpec:
    return GraphAppCredentialSpec.model_validate({
        "tenantId": str(uuid.uuid4()), "clientId": str(uuid.uuid4()),
        "credential": {"clientSecret": {"name": "app"}}, "secretTemplate": template})


def invalid(template: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as raised:
        spec(template)
    return spec_error_message(raised.value)


def test_a_full_template_is_accepted() -> None:
    s = spec({"metadata": {"labels": {"team": "mail", "example.com/tier": "batch"},
                           "annotations": {"reloader.stakater.com/match": "true"}},
              "type": "kubernetes.io/basic-auth",
              "data": {"username": "graphcred", "password": "{{ .accessToken }}", ".env": "T={{ .accessToken }}"}})
    assert s.secret_template is not None and s.secret_template.type == "kubernetes.io/basic-auth"
    assert spec({}).secret_template is not None and spec({}).secret_template.type == "Opaque"  # type: ignore[union-attr]


def test_a_bad_template_names_the_key_and_the_problem() -> None:
    message = invalid({"data": {"GRAPH_TOKEN_HEADER": "Authorization: Bearer {{ .accessTokn }}"}})
    assert "spec.secretTemplate.data.GRAPH_TOKEN_HEADER" in message
    assert "unknown field .accessTokn" in message


@pytest.mark.parametrize(("template", "expected"), [
    ({"data": {"access_token": "x"}}, "access_token: graphcred's own token keys"),
    ({"data": {"authorization": "{{ .accessToken }}"}}, "authorization: graphcred's own token keys"),
    ({"data": {"bad key": "x"}}, "spec.secretTemplate.data.bad key"),
    ({"metadata": {"labels": {"app.kubernetes.io/managed-by": "me"}}},
     "app.kubernetes.io/managed-by: app.kubernetes.io/managed-by and keys under graphcred.io/ are graphcred's own"),
    ({"metadata": {"annotations": {"graphcred.io/expires-on": "never"}}}, "graphcred.io/expires-on: "),
    ({"metadata": {"annotations": {"x.graphcred.io/mine": "1"}}}, "x.graphcred.io/mine: "),
    ({"metadata": {"labels": {"team": "not a label value"}}}, "spec.secretTemplate.metadata.labels.team"),
    ({"metadata": {"labels": {"bad key!": "x"}}}, "spec.secretTemplate.metadata.labels.bad key!"),
    ({"type": "kubernetes.io/service-account-token"}, "Kubernetes treats specially"),
    ({"type": "bootstrap.kubernetes.io/token"}, "Kubernetes treats specially"),
    ({"type": "kubernetes.io/tls"}, "Kubernetes treats specially"),
    ({"type": "kubernetes.io/basic-auth"}, "needs data.username or data.password"),
    ({"type": "two words"}, "spec.secretTemplate.type"),
    ({"data": {f"k{i}": "x" for i in range(33)}}, "spec.secretTemplate.data"),
    ({"surprise": 1}, "spec.secretTemplate.surprise"),
])
def test_invalid_templates_are_refused_when_the_spec_is_read(template: dict[str, Any], expected: str) -> None:
    assert expected in invalid(template)


def test_annotations_are_bounded() -> None:
    assert "more than 65536 bytes" in invalid({"metadata": {"annotations": {f"a{i}": "x" * 16000 for i in range(5)}}})


def test_a_custom_type_is_accepted() -> None:
    s = spec({"type": "example.com/graph-token"})
    assert s.secret_template is not None and s.secret_template.type == "example.com/graph-token"


# --- bounded rendering (a filter chain must not grow without bound) ---------------------------------------
BOMB = "{{ .accessToken" + " | json" * 26 + " }}"  # 26 json filters took 357 MiB


def test_a_filter_chain_longer_than_four_is_refused_when_compiled() -> None:
    assert compile_template("{{ .accessToken | base64 | json | json | json }}").fields == {"accessToken"}
    with pytest.raises(TemplateError, match="line 1, column 49: more than 4 filters in one action"):
        compile_template("{{ .accessToken | base64 | json | json | json | json }}")


def test_the_template_bomb_is_refused_when_the_spec_is_read() -> None:
    message = invalid({"data": {"x": BOMB}})
    assert "spec.secretTemplate.data.x" in message and "more than 4 filters in one action" in message


def test_rendering_stops_at_its_limit_and_holds_little_memory() -> None:
    # Backslashes double with every json: 16 actions of 4 filters over 100,000 of them would render 26 MB.
    source = "{{ .accessToken | json | json | json | json }}" * 16
    values = {**VALUES, "accessToken": "\\" * 100_000}
    tracemalloc.start()
    try:
        with pytest.raises(TemplateError, match="renders to more than 1048576 characters"):
            compile_template(source).render(values)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"rendering held {peak} bytes at its peak"
    assert len(compile_template(source).render(values, limit=30 * 2**20)) > 2**20  # the limit is what stopped it
