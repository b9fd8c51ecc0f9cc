"""Which credentials depend on which Secrets and ServiceAccounts: those they read (their credential) and the token
Secret they write, and the newest version the watches reported of each one read. The controller consults it to wake
the right workers when the Secret and ServiceAccount watches report a change. Bookkeeping only: no I/O, no loop.

Indexed from the raw spec, before each pass and tolerant of any shape: a change to a Secret while the pass runs (a
credential Secret created a moment after the object) must wake it, whatever validation later says of the spec.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

Key = tuple[str, str]  # namespace, name (of a GraphAppCredential, a Secret or a ServiceAccount)


class AppLookup(Protocol):
    """What the ClusterGraphApps known so far name (`reconcile.apps.ClusterApps`)."""

    namespace: str  # the cluster resource namespace, where every app's material lives

    def secret_of(self, name: str) -> str | None: ...

    def account_of(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class Named:
    """What one credential's spec names: its credential Secret or ServiceAccount (in its namespace, or for an
    appRef the app's, in the cluster resource namespace), its token Secret, and the ClusterGraphApp."""

    reads: Key | None = None  # the credential Secret
    writes: Key | None = None  # the token Secret
    account: Key | None = None  # the ServiceAccount of workload identity
    # the ClusterGraphApps whose policy concerns it: the one of spec.appRef, and the one whose token its Secret holds
    # (status.issuedByApp: another, if the spec changed since)
    apps: frozenset[str] = frozenset()


def named_by(credential: Key, spec: Mapping[str, Any], apps: AppLookup | None = None, held: str | None = None
             ) -> Named:
    namespace, name = credential
    reads, writes = _secret_names(name, spec)
    account = _service_account_name(spec)
    app = _app_name(spec)
    if app is not None:  # the app's material, as far as the app is known yet (indexed again before each pass)
        namespace = apps.namespace if apps is not None else ""
        reads = apps.secret_of(app) if apps is not None else None
        account = apps.account_of(app) if apps is not None else None
    return Named(reads=(namespace, reads) if reads else None, writes=(credential[0], writes) if writes else None,
                 account=(namespace, account) if account else None,
                 apps=_apps(app, held))


_NO_APPS: frozenset[str] = frozenset()


def _apps(*names: str | None) -> frozenset[str]:
    """Kept for each credential: most name no app, and an empty frozenset built from an iterable is a new object
    each time (216 bytes); no apps is one shared value."""
    named = [a for a in names if a]
    return frozenset(named) if named else _NO_APPS


def _app_name(spec: Mapping[str, Any]) -> str | None:
    ref = spec.get("appRef")
    name = ref.get("name") if isinstance(ref, Mapping) else None
    return name if isinstance(name, str) and name else None


def _secret_names(name: str, spec: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(credential Secret, token Secret) named by a raw spec."""
    credential = spec.get("credential")
    read = None
    if isinstance(credential, Mapping):
        for kind in ("clientSecret", "certificate"):
            ref = credential.get(kind)
            if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
                read = ref["name"]
    target = spec.get("secretName")
    return read, target if isinstance(target, str) and target else f"{name}-token"


def _service_account_name(spec: Mapping[str, Any]) -> str | None:
    """The ServiceAccount a raw spec's workload identity names, if any."""
    credential = spec.get("credential")
    identity = credential.get("workloadIdentity") if isinstance(credential, Mapping) else None
    name = identity.get("serviceAccountName") if isinstance(identity, Mapping) else None
    return name if isinstance(name, str) and name else None


@dataclass(frozen=True)
class Moved:
    """The token Secret a credential stopped writing and the one it now writes (None: unchanged, or none)."""

    removed: Key | None = None
    added: Key | None = None


class Dependents:
    def __init__(self) -> None:
        # (namespace, Secret) -> credentials that read it as credential / write it as token Secret
        self.readers: dict[Key, set[Key]] = {}
        self.writers: dict[Key, set[Key]] = {}
        self.latest: dict[Key, str] = {}  # newest resourceVersion seen of each credential Secret in use
        # the same for ServiceAccounts (a name may be both a Secret's and a ServiceAccount's)
        self.account_readers: dict[Key, set[Key]] = {}
        self.latest_account: dict[Key, str] = {}
        self.app_users: dict[str, set[Key]] = {}  # ClusterGraphApp -> credentials naming it
        self._named: dict[Key, Named] = {}

    def index(self, credential: Key, named: Named) -> Moved:
        """Index what the credential's spec names now; which token Secret it stopped and started writing."""
        before = self._named.get(credential, Named())
        moved = Moved()
        if (named.reads, named.writes) != (before.reads, before.writes):
            changed = named.writes != before.writes
            removed = self.remove(credential)
            moved = Moved(removed if changed else None, named.writes if changed else None)
            before = Named()
            if named.reads:
                self.readers.setdefault(named.reads, set()).add(credential)
            if named.writes:
                self.writers.setdefault(named.writes, set()).add(credential)
        if named.account != before.account:
            self._remove_account(credential, before.account)
            if named.account:
                self.account_readers.setdefault(named.account, set()).add(credential)
        if named.apps != before.apps:
            self._remove_apps(credential, before.apps)
            for app in named.apps:
                self.app_users.setdefault(app, set()).add(credential)
        self._named[credential] = named
        return moved

    def reads_of(self, credential: Key) -> Key | None:
        """The credential Secret the credential reads, if any."""
        named = self._named.get(credential)
        return named.reads if named is not None else None

    def read_by_anyone(self, secret: Key) -> bool:
        return bool(self.readers.get(secret))

    def remove(self, credential: Key) -> Key | None:
        """Forget the credential; the token Secret it wrote, if any."""
        writes = self._named.get(credential, Named()).writes
        self._remove(credential)
        return writes

    def _remove(self, credential: Key) -> None:
        named = self._named.pop(credential, Named())
        self._remove_account(credential, named.account)
        self._remove_apps(credential, named.apps)
        for index, secret in ((self.readers, named.reads), (self.writers, named.writes)):
            if secret is not None and secret in index:
                index[secret].discard(credential)
                if not index[secret]:
                    del index[secret]
                    if index is self.readers:
                        self.latest.pop(secret, None)

    def _remove_account(self, credential: Key, account: Key | None) -> None:
        if account is None or account not in self.account_readers:
            return
        self.account_readers[account].discard(credential)
        if not self.account_readers[account]:
            del self.account_readers[account]
            self.latest_account.pop(account, None)

    def _remove_apps(self, credential: Key, apps: frozenset[str]) -> None:
        for app in apps:
            if app in self.app_users:
                self.app_users[app].discard(credential)
                if not self.app_users[app]:
                    del self.app_users[app]

    def users_of(self, app: str) -> Collection[Key]:
        return self.app_users.get(app, ())

    def app_users_in(self, namespace: str) -> list[Key]:
        """The credentials of `namespace` that name a ClusterGraphApp (a relabel may change what they may do)."""
        return [key for users in self.app_users.values() for key in users if key[0] == namespace]

    def writers_of(self, secret: Key) -> Collection[Key]:
        return self.writers.get(secret, ())

    def token_secret_of(self, credential: Key) -> Key | None:
        named = self._named.get(credential)
        return named.writes if named is not None else None

    def account_of(self, credential: Key) -> Key | None:
        named = self._named.get(credential)
        return named.account if named is not None else None

    def saw_secret(self, secret: Key, resource_version: str, deleted: bool) -> Collection[Key]:
        """The Secret watch reported `secret`: the credentials that read it (their newest version remembered)."""
        return self._saw(self.readers, self.latest, secret, resource_version, deleted)

    def saw_account(self, account: Key, resource_version: str, deleted: bool) -> Collection[Key]:
        """The same for a ServiceAccount."""
        return self._saw(self.account_readers, self.latest_account, account, resource_version, deleted)

    def latest_version(self, credential: Key, secret: str | None) -> str | None:
        """The newest version the watches reported of what the credential reads (for a pass that just ran)."""
        named = self._named.get(credential)
        reads = named.reads if named is not None else None
        latest = self.latest.get(reads) if reads is not None and reads[1] == secret else None
        account = self.account_of(credential)
        if latest is None and account is not None:
            latest = self.latest_account.get(account)
        return latest

    @staticmethod
    def _saw(readers: dict[Key, set[Key]], latest: dict[Key, str], where: Key, resource_version: str,
             deleted: bool) -> Collection[Key]:
        """Remember `resource_version` as the newest if a credential reads `where` (for a pass running now)."""
        reading = readers.get(where)
        if not reading:
            return ()
        if deleted:
            latest.pop(where, None)
        else:
            latest[where] = resource_version
        return reading
