"""The credential step of a pass: the material a spec names, read from its Secret or ServiceAccount.

A client secret or certificate comes from a Secret in the credential's namespace, read once per pass and shared by
the passes reading it at the same time (`SharedReads`); a certificate is parsed once per version of its Secret, off
the event loop. For workload identity the ServiceAccount is read and its consent checked; its token is requested
only when a token is (`with_assertion`), and the consent is checked again then.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from graphcred.acquire import credentials
from graphcred.acquire.credentials import CredentialError, Federation, ManagedIdentity, Material
from graphcred.api.failures import Failure
from graphcred.api.model import AppIdentity, CertificateRef, Reason, WorkloadIdentityRef
from graphcred.base.times import parse_written
from graphcred.kube.errors import Forbidden, NotFound
from graphcred.kube.metawatch import Seen
from graphcred.kube.reads import SharedReads
from graphcred.reconcile.calls import KubeCalls
from graphcred.reconcile.memory import CredentialMemory
from graphcred.reconcile.policy import Retry
from graphcred.reconcile.ports import SecretDirectory

T = TypeVar("T")
# the credential version of a managed identity: there is no object to read, and nothing that changes
MANAGED_IDENTITY_VERSION = "managedIdentity"

# The RBAC each ServiceAccount call of workload identity needs (granted by the chart's workloadIdentity.enabled).
_RBAC_VERBS = {"read ServiceAccount": "get serviceaccounts",
               "create ServiceAccount token": "create serviceaccounts/token"}


def _consented(account: dict[str, Any], identity: AppIdentity, ref: WorkloadIdentityRef, namespace: str
               ) -> Federation:
    """The ServiceAccount as federation material if it consents to this identity's app (and tenant); else the pass
    ends with the reason and message saying how to fix it."""
    return credentials.federation(account, ref, identity.client_id, namespace, identity.tenant_id)


class CredentialReader:
    """Reads credential material for passes. `secrets`: what the Secret watch knows (reads it answers are skipped)."""

    def __init__(self, calls: KubeCalls, secrets: SecretDirectory | None = None) -> None:
        self.calls = calls
        self.secrets = secrets
        self.reads = SharedReads()
        # certificates parsed from credential Secrets, per Secret and resourceVersion (`_parsed_certificate`)
        self.certificates: credentials.VersionCache[asyncio.Future[credentials.Certificate]] = \
            credentials.VersionCache()

    def seen(self, namespace: str, name: str) -> Seen | None:
        return self.secrets.lookup(namespace, name) if self.secrets is not None else None

    async def read(self, namespace: str, identity: AppIdentity, mem: CredentialMemory, now: dt.datetime,
                   held: contextlib.AsyncExitStack) -> tuple[Material, str]:
        """The material and the version of the Secret (or ServiceAccount) it came from, in `namespace` (the
        credential's own, or for a ClusterGraphApp the cluster resource namespace); records the version read.
        The Secret's read stays shared with other passes while `held` is open."""
        credential = identity.credential
        mem.expires, mem.expiry_read = None, True  # known to expire only if the read below says when
        if credential.managed_identity is not None:  # nothing to read: the host's identity
            mem.version = MANAGED_IDENTITY_VERSION
            return ManagedIdentity(credential.managed_identity.client_id), MANAGED_IDENTITY_VERSION
        if credential.workload_identity is not None:
            return await self._federation(namespace, identity, credential.workload_identity, mem)
        kube = self.calls.kube
        name = credential.secret_name
        assert name is not None  # a Secret for every other kind of credential
        secret = await held.enter_async_context(self.reads.read(
            (namespace, name), lambda: self.calls("read Secret", kube.read_secret, namespace, name),
            self.seen(namespace, name)))
        if secret is None:
            mem.version = ""
            raise Failure(Reason.CREDENTIAL_NOT_FOUND,
                          f"Secret {name} not found in namespace {namespace}", retry=Retry.NEEDS_USER)
        version = secret.version
        mem.version = version
        try:
            if credential.client_secret is not None:
                mem.expires = parse_written(secret.expires_on)
                return credentials.client_secret(secret.data, credential.client_secret), version
            ref = credential.certificate
            assert ref is not None
            parsed = await self._parsed_certificate((namespace, name), version, secret.data, ref)
            mem.expires = parsed.leaf.not_valid_after_utc
            return credentials.usable(parsed, ref, now), version
        except CredentialError as exc:
            if exc.usable_from is not None:
                wait = (exc.usable_from - now).total_seconds() + 1.0
                raise Failure(exc.reason, exc.message, retry=Retry.TRANSIENT, retry_after=wait) from None
            raise

    async def _parsed_certificate(self, key: tuple[str, str], version: str, data: dict[str, Any],
                                  ref: CertificateRef) -> credentials.Certificate:
        """The Secret's certificate and key, parsed in the executor (validating a key costs CPU the event loop
        must not spend) once per version of the Secret, however many credentials use it at once or later."""
        parse = self.certificates.get(key, version)
        if parse is None:
            parse = asyncio.ensure_future(self.calls.blocking(credentials.parse_certificate, data, ref))
            parse.add_done_callback(lambda t: t.cancelled() or t.exception())  # no "never retrieved" warning
            self.certificates.put(key, version, parse)
        try:
            return await asyncio.shield(parse)
        except CredentialError:
            raise  # a verdict on this version's data: kept, like a parse that worked
        except BaseException:
            self.certificates.drop(key, version, parse)  # not a verdict (cancelled, executor gone): parse again
            raise

    async def _federation(self, namespace: str, identity: AppIdentity, ref: WorkloadIdentityRef,
                          mem: CredentialMemory) -> tuple[Federation, str]:
        """The ServiceAccount to federate, if it allows this app; its resourceVersion is the credential version.
        Its token is not requested here: only an acquisition needs one (`with_assertion`)."""
        name = ref.service_account_name
        account = await self._service_account_call("read ServiceAccount", namespace, name,
                                                   self.calls.kube.read_service_account, namespace, name)
        if account is None:
            mem.version = ""
            raise Failure(Reason.CREDENTIAL_NOT_FOUND, f"ServiceAccount {name} not found in namespace {namespace}",
                          retry=Retry.NEEDS_USER)
        version = str(account["metadata"].get("resourceVersion", ""))
        mem.version = version
        return _consented(account, identity, ref, namespace), version

    async def with_assertion(self, identity: AppIdentity, material: Material) -> Material:
        """For federation, a copy of the material carrying a ServiceAccount token made for this acquisition alone;
        the caller drops it with the acquisition. Other material as it is.
        The consent is checked again first: the pass read it before waiting for the breaker and for sharing, and
        a ServiceAccount whose annotation was removed, or that was re-created under the same name, in between
        must not have a token minted."""
        if not isinstance(material, Federation):
            return material
        ref = identity.credential.workload_identity
        assert ref is not None
        kube = self.calls.kube
        account = await self._service_account_call(
            "read ServiceAccount", material.namespace, material.service_account,
            kube.read_service_account, material.namespace, material.service_account)
        if account is None or str(account["metadata"].get("uid", "")) != material.uid:
            raise Failure(Reason.CREDENTIAL_NOT_FOUND, f"ServiceAccount {material.service_account} not found in "
                          f"namespace {material.namespace} (deleted or re-created since the pass began)",
                          retry=Retry.NEEDS_USER)
        _consented(account, identity, ref, material.namespace)
        token = await self._service_account_call(
            "create ServiceAccount token", material.namespace, material.service_account,
            kube.request_service_account_token, material.namespace, material.service_account, material.audience)
        return material.with_assertion(token)

    async def _service_account_call(self, what: str, namespace: str, name: str, fn: Callable[..., T], *args: Any
                                    ) -> T:
        """A ServiceAccount call: 404 means the ServiceAccount is gone; 403 that the operator was not given the
        workload identity RBAC (the chart's workloadIdentity.enabled). Both need the user; the rest as `KubeCalls`."""
        try:
            return await self.calls(what, fn, *args)
        except NotFound:
            raise Failure(Reason.CREDENTIAL_NOT_FOUND, f"ServiceAccount {name} not found in namespace {namespace}",
                          retry=Retry.NEEDS_USER) from None
        except Forbidden:
            raise Failure(Reason.WORKLOAD_IDENTITY_DISABLED,
                          f"{what} was refused (HTTP 403): the operator may not {_RBAC_VERBS[what]} in namespace "
                          f"{namespace}; install the chart with workloadIdentity.enabled=true (and this namespace "
                          "among watchNamespaces, if set)", retry=Retry.NEEDS_USER) from None

