"""Logging setup: text or JSON lines, with a last-line-of-defence filter that redacts anything token-shaped.

The code never logs secrets on purpose; the filter catches what a library might (an error echoing a request).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

# JWTs (three base64url segments starting with eyJ) and "Bearer ..." / client_secret=... / assertion=... values
_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)((?:client_secret|client_assertion|access_token|private_key)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
]
REDACTED = "<redacted>"
# C0 controls (CR, LF, ESC, ...), DEL, C1 controls and the Unicode line and paragraph separators: in a message they
# could end the line and forge another one, or drive the reader's terminal. Names, reasons and error texts in log
# messages come from tenants (and from the authorities they name), so every one is escaped, in both formats.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`text` on one line, its control characters written as escapes (\\n, \\x1b, \\u2028)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts anything token-shaped and escapes control characters, so each record is one line of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            # Tracebacks can quote local values from libraries; keep the type and a redacted message only.
            exc = record.exc_info[1]
            message = f"{message} [{type(exc).__name__}: {exc!s}]"
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = escape_controls(redact(message)), None
        return True


# kopf logs every failed attempt of an API request at ERROR, though it retries it (an apiserver restart, a
# dropped connection): that would page someone while the operator copes. Attempts kopf will repeat are demoted to
# WARNING; a request it gives up on ("escalating") and every other error stay at ERROR.
_KOPF_RETRYING = re.compile(r"Request attempt #\S+ failed; (?:will retry|(?:TCP|SSL) closed; will re-authenticate)")


class TransientKopfFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno == logging.ERROR and record.name.split(".")[0] == "kopf"
                and _KOPF_RETRYING.match(record.getMessage())):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for attr in ("k8s_skip", "k8s_ref"):
            entry.pop(attr, None)
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and ref.get("name"):
            entry["object"] = f"{ref.get('namespace', '')}/{ref['name']}"
        return json.dumps(entry, separators=(",", ":"))


def configure(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TransientKopfFilter())
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        text = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        text.converter = __import__("time").gmtime
        handler.setFormatter(text)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter at INFO is noise for cluster operators; their warnings still show.
    for noisy in ("kopf.activities", "kopf.objects", "urllib3", "msal", "kubernetes", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
