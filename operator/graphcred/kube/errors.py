"""Kubernetes API errors, typed at one boundary.

Every call `Kube` makes fails, if it fails, with a `KubeError`, and the metadata watches translate theirs with the
same `translated`: no exception of the kubernetes client or urllib3 reaches the rest of the operator, and nothing
else reads HTTP statuses. Subclasses name the answers graphcred acts on (NotFound, Forbidden, Conflict, Invalid,
TooManyRequests, ServerError); a `Gone` is the GraphAppCredential itself no longer existing. The client's own
exception stays chained as the cause (`__cause__`), for the metric of internal errors by type.

What an error says (`str`, and so status, Events and logs) is the call and the HTTP status with its reason phrase,
"read Secret failed: HTTP 403 Forbidden": never a response body, which can echo a Secret's data. Of a body only a
Status's causes are kept (their reasons, such as NamespaceTerminating, truncated), and only if it is one.

An outage, which the operator rides out (a warning, a retry with backoff; an Event retried) rather than reports as
a fault, is one thing everywhere (`KubeError.outage`, `outage`): the apiserver gave no answer (a connection refused
or reset, a timeout, a failed TLS handshake: `NoAnswer`), or answered 429 or 5xx. Anything else is not: another
status is an answer to act on, and an exception that is no `KubeError` is a bug. (The reconciler used to call an
error without a status an outage only if it was a connection error, the Event recorder any such error; a bug now
gets neither retries nor a mere warning.)
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import urllib3
from kubernetes.client import ApiException

MAX_REASON = 64  # characters of a reason phrase or a cause's reason: a name, not a text
MAX_CAUSES = 8
MAX_STATUS_BODY = 64 * 1024  # a larger body is not parsed for causes: no Status is that long
NAMESPACE_TERMINATING = "NamespaceTerminating"

# What a request that got no answer raises: the socket's errors (refused, reset, timeouts, TLS), urllib3's
# (its retries exhausted, a read timeout, a connection dropped mid-answer) and http.client's
_NO_ANSWER = (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException)


def _name(text: object) -> str:
    """A short, single-line name from a text of the peer's (a reason phrase, a cause's reason)."""
    line = str(text or "").strip().split("\n", 1)[0].strip()
    return line if len(line) <= MAX_REASON else line[:MAX_REASON - 3] + "..."


class KubeError(Exception):
    """A Kubernetes API call failed. `call` names it ("read Secret"); `status` is the HTTP status the apiserver
    answered with, None if it gave no answer; `reason` the reason phrase ("Forbidden"), or for no answer what
    happened instead ("MaxRetryError"); `causes` the reasons of a Status answer's causes."""

    STATUS: ClassVar[int | None] = None  # the status a subclass stands for, if it is constructed without one

    def __init__(self, call: str, status: int | None = None, reason: str = "", causes: Sequence[str] = ()) -> None:
        self.call = call
        self.status = status if status is not None else self.STATUS
        self.reason = _name(reason)
        self.causes = tuple(_name(c) for c in causes[:MAX_CAUSES])
        super().__init__(self.describe())

    @property
    def outage(self) -> bool:
        """An apiserver outage to ride out: no answer, 429 or 5xx (the one definition; see the module)."""
        return self.status is None or self.status == 429 or self.status >= 500

    def describe(self, call: str | None = None) -> str:
        """"read Secret failed: HTTP 403 Forbidden" (`call` instead of this error's own name for the call)."""
        what = call or self.call
        if self.status is None:
            return f"{what} failed: {self.reason or 'no answer'}"
        return f"{what} failed: HTTP {self.status}" + (f" {self.reason}" if self.reason else "")

    def __str__(self) -> str:
        return self.describe()


class NoAnswer(KubeError):
    """The apiserver gave no answer: the connection failed or broke, or the call timed out. An outage."""


class NotFound(KubeError):
    STATUS = 404


class Gone(NotFound):
    """The GraphAppCredential no longer exists (HTTP 404 on its status): its worker must end, not re-create a
    Secret the garbage collector is deleting."""


class Forbidden(KubeError):
    STATUS = 403

    @property
    def namespace_terminating(self) -> bool:
        """The namespace is being deleted: the apiserver refuses every create in it."""
        return NAMESPACE_TERMINATING in self.causes


class Conflict(KubeError):
    """The object changed or appeared under us (HTTP 409: a stale resourceVersion or precondition, or
    AlreadyExists)."""

    STATUS = 409


class Invalid(KubeError):
    """The apiserver refused the object as invalid (HTTP 422): sending it again cannot succeed."""

    STATUS = 422


class TooManyRequests(KubeError):
    STATUS = 429


class ServerError(KubeError):
    STATUS = 500


class Unreadable(KubeError):
    """The apiserver answered (2xx) but not as its API says: a body that is no JSON, or lacks what the call
    needs. Not an outage."""

    def describe(self, call: str | None = None) -> str:
        return f"{call or self.call} failed: an unreadable answer (HTTP {self.status})"


_BY_STATUS: dict[int, type[KubeError]] = {404: NotFound, 403: Forbidden, 409: Conflict, 422: Invalid,
                                          429: TooManyRequests}


def error(call: str, status: int | None, reason: str = "", causes: Sequence[str] = ()) -> KubeError:
    """The error for an answer with `status` (None: no answer)."""
    if status is None:
        return NoAnswer(call, None, reason)
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else KubeError)
    return cls(call, status, reason, causes)


def answered(call: str, status: int, reason: str, body: bytes) -> KubeError:
    """The error for an answer other than 2xx, with its Status's causes (never the body itself)."""
    return error(call, status, reason, _causes(body))


def _causes(body: Any) -> tuple[str, ...]:
    """The reasons of a Status answer's causes; nothing from a body that is no Status."""
    if isinstance(body, bytes | bytearray):
        body = bytes(body).decode("utf-8", "replace")
    if not isinstance(body, str) or len(body) > MAX_STATUS_BODY:
        return ()
    try:
        status = json.loads(body)
    except ValueError:
        return ()
    if not isinstance(status, dict) or status.get("kind") != "Status":
        return ()
    details = status.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    if not isinstance(causes, list):
        return ()
    return tuple(c["reason"] for c in causes if isinstance(c, dict) and isinstance(c.get("reason"), str))


def translated(call: str, exc: BaseException) -> KubeError | None:
    """`exc`, raised by the kubernetes client during `call`, as a KubeError; None if it is none of the client's
    failures (a bug: let it be)."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        status = exc.status if isinstance(exc.status, int) else 0
        if status <= 0:  # the client's own status for a failed TLS handshake ("SSLError" and its text)
            return NoAnswer(call, None, _name(exc.reason) or type(exc).__name__)
        return error(call, status, exc.reason or "", _causes(exc.body))
    if isinstance(exc, _NO_ANSWER):
        return NoAnswer(call, None, type(exc).__name__)
    return None


def outage(exc: BaseException) -> bool:
    """Is `exc` an apiserver outage to ride out? Only a KubeError can be one (`KubeError.outage`)."""
    return isinstance(exc, KubeError) and exc.outage


def describe_failure(what: str, exc: BaseException) -> str:
    """What failed, for status and logs: the call and its HTTP status; of anything else only its type. Never a
    response body (those can echo Secret data) nor an exception's text."""
    if isinstance(exc, KubeError):
        return exc.describe(what)
    return f"{what} failed: {type(exc).__name__}"
