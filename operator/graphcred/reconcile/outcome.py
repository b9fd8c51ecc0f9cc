"""The messages of the common ways a pass ends early. A pass ends early by raising an api.failures.Failure (the
credential readers' CredentialError and the token client's AcquisitionError are Failures, reported as they are); an
unexpected Kubernetes failure ends it as a kube.errors.KubeError. Pure."""

from __future__ import annotations

from pydantic import ValidationError

from graphcred.api.failures import Failure, Retry
from graphcred.api.model import Reason


def not_ours(name: str) -> Failure:
    return Failure(Reason.SECRET_CONFLICT, f"Secret {name} exists and is not controlled by this GraphAppCredential; "
                   "graphcred never modifies it: delete it or choose another spec.secretName", retry=Retry.NEEDS_USER)


def spec_error_message(exc: ValidationError) -> str:
    """A readable summary of what is wrong with the spec. Never echoes input values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        parts.append(f"spec.{where}: {_without_pydantic_prefix(err['msg'])}")
    return "; ".join(parts)


def _without_pydantic_prefix(message: str) -> str:
    """pydantic prefixes what our validators raise with "Value error, " (or "Assertion failed, "): noise to a user
    reading the status, who should not read a library's wording there."""
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message
