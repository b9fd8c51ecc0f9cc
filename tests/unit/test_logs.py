"""Log levels as an SRE reads them: kopf's retried API attempts are warnings, what it gives up on stays an error."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from graphcred.app.logs import configure


@pytest.fixture
def root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_kopf_retries_during_an_apiserver_outage_are_warnings(root_logger: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "INFO")  # in the test: it writes to sys.stderr as capsys replaced it
    watching = logging.getLogger("kopf._cogs.clients.watching")
    url = "GET https://10.0.0.1/apis/graphcred.io/v1alpha1/graphappcredentials?watch=true"
    watching.error(f"Request attempt #1/9 failed; will retry: {url} -> ClientConnectorError()")
    watching.error(f"Request attempt #2/9 failed; TCP closed; will re-authenticate: {url}")
    watching.error(f"Request attempt #3/9 failed; SSL closed; will re-authenticate: {url}")
    watching.error(f"Request attempt #9/9 failed; escalating: {url} -> ClientConnectorError()")
    logging.getLogger("kopf.objects").error("Handler '_credential_event' failed with an exception. Will retry.")
    logging.getLogger("graphcred.reconcile.controller").error("Request attempt #1/9 failed; will retry: not kopf's")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["level"] for line in lines] == [
        "warning", "warning", "warning",
        "error",  # kopf gave up on the request: a genuine error
        "error",  # a handler failed
        "error",  # only kopf's own messages are demoted
    ]


FORGED = ("invalid_client\r\n2031-01-01 00:00:00,000 ERROR   graphcred.reconcile.reconciler: forged line"
          "\x1b[2J\x9b\u2028end")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_tenant_controlled_text_cannot_forge_a_log_line(fmt: str, root_logger: None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # an authority's error text echoed into a log line wrote a line of its own
    configure(fmt, "INFO")
    log = logging.getLogger("graphcred.reconcile.reconciler")
    log.warning("%s/%s: Unauthorized: %s", "ns", "mail", FORGED)
    try:
        raise ValueError("boom\nforged too")
    except ValueError:
        log.exception("a pass failed for %s", "ns/mail\n")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    messages = [json.loads(line)["message"] for line in lines] if fmt == "json" else lines
    assert messages[0].endswith(r"Unauthorized: invalid_client\r\n2031-01-01 00:00:00,000 ERROR   "
                                r"graphcred.reconcile.reconciler: forged line\x1b[2J\x9b\u2028end")
    assert messages[1].endswith(r"a pass failed for ns/mail\n [ValueError: boom\nforged too]")
    for text in messages:
        assert not any(ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029" for c in text)
