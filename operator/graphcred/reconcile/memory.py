"""What the operator remembers about one GraphAppCredential between passes, in parts, each written by one owner.
Small, and no secret data: digests, versions and names only. Lost on a restart or a leader change, by design: the
object's status and the Secrets themselves are the truth, memory only saves reads and writes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from graphcred.api.model import CertificateRotation
from graphcred.tokensecret.render import TemplateKeys


@dataclass
class CredentialMemory:
    """Written by the credential read (`reading`); the controller compares the watch's versions with it."""

    secret: str | None = None  # the credential Secret the spec names (None: workload identity, or no spec yet)
    version: str | None = None  # its resourceVersion (or the ServiceAccount's) last read; "" missing; None unread
    material: str | None = None  # fingerprint (a digest) of the material the token in the Secret was acquired with
    # when the credential itself expires, as this pass read it (`expiry_read`: the credential was read this pass;
    # else the status keeps what an earlier pass read)
    expires: dt.datetime | None = None
    expiry_read: bool = False


@dataclass
class SecretMemory:
    """Written by the token Secret's writer (`writing`): what this process last wrote, so that a refresh patches the
    Secret without reading it first."""

    name: str | None = None  # the token Secret
    version: str | None = None  # its resourceVersion as we last wrote it
    type: str | None = None  # ... its type then
    keys: TemplateKeys | None = None  # ... and the template keys (names only): a patch removes those no longer rendered
    # labels and annotations of other tools to put on the token Secret when it is created again (after a change of
    # its type had to wait for other tools' finalizers)
    carried: dict[str, dict[str, str]] | None = None

    def retarget(self, name: str) -> None:
        """spec.secretName changed: nothing written to the old Secret applies to the new one."""
        if self.name != name:
            self.name, self.version, self.carried = name, None, None


@dataclass
class TokenMemory:
    """Written by the pass when a token is written or kept."""

    issued_at: dt.datetime | None = None  # of the token last written, to the microsecond (the status has seconds)
    # digest of the spec without its secretTemplate, as last reported Ready: a change of the template alone renders
    # the Secret again from the token in it
    settled_spec: str | None = None


@dataclass
class ReportMemory:
    """Written by the reports of the pass (`Reconciler._report`, `_failed`)."""

    last_status: dict[str, Any] | None = None  # the status as last written (newer than a watch event may be)
    failures: int = 0  # consecutive failed passes
    missing_roles_checks: int = 0  # consecutive tokens lacking required roles
    app: str | None = None  # the ClusterGraphApp the last pass's spec named (its status counts the pass)
    app_permitted: bool = False  # ... whether its policy permitted the credential
    # ... and what the pass learnt of the app itself (reason, message): a token, or a failure reading its material or
    # requesting its token; None when the pass ended for the tenant's own reasons before (or without) asking
    app_news: tuple[str, str] | None = None
    # (token expiry as Unix time, consecutive failures) as the last pass reported them, for the metrics (None: no
    # pass yet); the expiry stays while a later pass does not know one
    figures: tuple[float | None, int] | None = None
    # certificate.rotation: (namespace, Secret, rotation) the rotator looks after for this credential
    rotation: tuple[str, str, CertificateRotation] | None = None

    def reported(self, expires_at: float | None, failures: int) -> None:
        """What the metrics show of this credential from now on."""
        if expires_at is None and self.figures is not None:
            expires_at = self.figures[0]
        self.figures = (expires_at, failures)


@dataclass
class RenewMemory:
    """Written by the controller (a new value of the renew annotation); the pass that serves it clears `requested`."""

    requested: bool = False  # acquire a new token, no reuse
    value: str | None = None  # ... for this annotation value (recorded in status once served)
    since: dt.datetime | None = None  # when it was requested: a token issued after it answers it


@dataclass
class Memory:
    credential: CredentialMemory = field(default_factory=CredentialMemory)
    secret: SecretMemory = field(default_factory=SecretMemory)
    token: TokenMemory = field(default_factory=TokenMemory)
    report: ReportMemory = field(default_factory=ReportMemory)
    renew: RenewMemory = field(default_factory=RenewMemory)
