"""A ClusterGraphApp's status: how many credentials use it and may, whether its credential works, and when its
certificate expires.

The passes of the credentials naming an app record how they ended (`AppOutcomes`); `app_status` (pure) turns
that into the status; `AppStatusWriter` writes it, a moment after a change (one patch for a burst of passes, not
one per pass), and posts an Event when Ready changes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from graphcred.api.keys import API_VERSION, APP_KIND
from graphcred.api.model import ClusterGraphAppStatus, Condition, Reason
from graphcred.base.backoff import backoff
from graphcred.base.times import rfc3339
from graphcred.kube.calls import Gone
from graphcred.kube.errors import KubeError
from graphcred.reconcile.apps import App, ClusterApps
from graphcred.reconcile.calls import KubeCalls
from graphcred.reconcile.ports import EventSink
from graphcred.reconcile.reporting import status_patch

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name of a GraphAppCredential
WRITE_DELAY = 1.0  # seconds a change waits for others before the status is written
# How a credential's refusal reads on the app: refusals are the tenant's business, not the app's health
UNUSED = "Unused"


@dataclass(frozen=True)
class Use:
    """How the last pass of one credential naming the app ended: whether the policy permitted it, and what it learnt
    of the app (`news`: TokenIssued, or the failure reading the app's material or requesting its token, with its
    whole message; None if the pass ended for the tenant's own reasons, which say nothing of the app)."""

    permitted: bool
    news: tuple[str, str] | None
    at: dt.datetime

    @property
    def about_the_app(self) -> bool:
        return self.news is not None


class AppOutcomes:
    """The last outcome of each credential naming each app, the app's last token and certificate expiry.
    `changed(app)` is called after each change (the writer's wake-up)."""

    def __init__(self) -> None:
        self._uses: dict[str, dict[Key, Use]] = {}
        self._app_of: dict[Key, str] = {}
        self.last_token: dict[str, dt.datetime] = {}
        self.credential_expiry: dict[str, dt.datetime] = {}
        self.changed: Callable[[str], None] = lambda app: None

    def uses(self, app: str) -> dict[Key, Use]:
        return dict(self._uses.get(app, {}))

    def token(self, app: str, issued_at: dt.datetime, credential_expiry: dt.datetime | None) -> None:
        """A token was acquired with the app (`credential_expiry`: its certificate's notAfter, if it has one)."""
        self.last_token[app] = issued_at
        if credential_expiry is not None:
            self.credential_expiry[app] = credential_expiry

    def record(self, app: str, key: Key, permitted: bool, news: tuple[str, str] | None, now: dt.datetime) -> None:
        """How a pass of credential `key` naming `app` ended (`Use`)."""
        use = Use(permitted, news, now)
        before = self._app_of.get(key)
        if before is not None and before != app:
            self.forget(key)
        self._app_of[key] = app
        uses = self._uses.setdefault(app, {})
        old = uses.get(key)
        uses[key] = use
        if old is None or (old.permitted, old.news) != (use.permitted, use.news):
            self.changed(app)

    def forget(self, key: Key) -> None:
        """The credential is gone, or names another app (or none) now."""
        app = self._app_of.pop(key, None)
        if app is not None and self._uses.get(app, {}).pop(key, None) is not None:
            if not self._uses[app]:
                del self._uses[app]
            self.changed(app)

    def drop_app(self, app: str) -> None:
        """The app was deleted: its expiry, last token and failures are its old object's."""
        self.last_token.pop(app, None)
        self.credential_expiry.pop(app, None)



def app_status(previous: ClusterGraphAppStatus, app: App, uses: Iterable[Use], last_token: dt.datetime | None,
               credential_expiry: dt.datetime | None, now: dt.datetime) -> ClusterGraphAppStatus:
    """The app's status from how its users' passes ended. Ready: True when the latest pass of a permitted user got a
    token; False with that pass's reason when it failed, or when the app's spec is invalid; Unknown while no
    credential it permits uses it."""
    all_uses = list(uses)
    permitted = [u for u in all_uses if u.permitted]
    state: Literal["True", "False", "Unknown"]
    if app.spec is None:
        state, reason, message = "False", Reason.INVALID_SPEC.value, f"spec is invalid: {app.problem}"
    elif not permitted:
        refused = len(all_uses)
        state, reason = "Unknown", UNUSED
        message = (f"no GraphAppCredential its policy permits uses it ({refused} refused)" if refused
                   else "no GraphAppCredential uses it yet")
    elif not any(u.about_the_app for u in permitted):
        state, reason = "Unknown", UNUSED
        message = "no credential using it has asked for a token yet"
    else:
        latest = max((u for u in permitted if u.about_the_app), key=lambda u: u.at)
        assert latest.news is not None
        if latest.news[0] == Reason.TOKEN_ISSUED.value:
            state, reason = "True", latest.news[0]
            message = f"tokens issued for {len(permitted)} credential(s)"
        else:
            state, (reason, message) = "False", latest.news
    before = previous.ready()
    kept = before.last_transition_time if before is not None and before.status == state else None
    ready = Condition(status=state, reason=reason, message=message, observed_generation=app.generation,
                      last_transition_time=kept or rfc3339(now))
    return ClusterGraphAppStatus(
        conditions=[ready, *(c for c in previous.conditions if c.type != "Ready")],
        observed_generation=app.generation, users=len(all_uses), permitted=len(permitted),
        credential_expires_on=rfc3339(credential_expiry) if credential_expiry is not None else None,
        last_token_time=rfc3339(last_token) if last_token is not None else None)


class AppStatusWriter:
    """Writes the status of the apps whose users' outcomes (or own spec) changed, WRITE_DELAY after the change;
    posts an Event when Ready changes. Runs on the event loop: `start`, `stop`."""

    def __init__(self, apps: ClusterApps, outcomes: AppOutcomes, calls: KubeCalls, emit: EventSink,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.apps = apps
        self.outcomes = outcomes
        self.calls = calls
        self.emit = emit
        self._clock = clock
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._written: dict[str, dict[str, Any]] = {}  # status as last written, per app
        self._task: asyncio.Task[None] | None = None
        self._failures: dict[str, int] = {}  # consecutive failed writes per app: retried with backoff
        outcomes.changed = self.changed

    def changed(self, app: str) -> None:
        self._dirty.add(app)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="graphcred:app-status")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # a burst of passes (a refresh of twenty namespaces) becomes one write per app
            await asyncio.sleep(WRITE_DELAY)
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for name in sorted(dirty):
                try:
                    await self.write(name)
                except Exception as exc:  # noqa: BLE001 - one app's status must not stop the others'
                    failures = self._failures[name] = self._failures.get(name, 0) + 1
                    delay = backoff(failures, None)
                    log.warning("ClusterGraphApp %s: status not written (%s); retrying in %.0f s", name,
                                str(exc) if isinstance(exc, KubeError) else type(exc).__name__, delay)
                    asyncio.get_running_loop().call_later(delay, self.changed, name)
                else:
                    self._failures.pop(name, None)

    async def write(self, name: str) -> None:
        app = self.apps.app(name)
        if app is None:
            self._written.pop(name, None)
            return
        before = self._written.get(name)
        previous = ClusterGraphAppStatus.model_validate(before or {})
        status = app_status(previous, app, self.outcomes.uses(name).values(), self.outcomes.last_token.get(name),
                            self.outcomes.credential_expiry.get(name), self._clock())
        body = status.to_k8s()
        patch = status_patch(before, body)
        if patch is None:
            return
        try:
            await self.calls("patch ClusterGraphApp status", self.calls.kube.patch_app_status, name, patch)
        except Gone:
            self._written.pop(name, None)
            return
        self._written[name] = body
        self._announce(app, previous.ready(), status.ready())

    def seen(self, name: str, status: dict[str, Any] | None, generation: int) -> None:
        """The app's status as the watch reports it: the base of the next write (after a restart, the status the
        previous leader wrote keeps its lastTransitionTime). Written now only if it has none yet or describes an
        older generation: otherwise its users' passes say what changes (a restart must not report an app unused
        until they ran)."""
        if name not in self._written and status:
            self._written[name] = dict(status)
        written = self._written.get(name) or {}
        if not written or written.get("observedGeneration") != generation:
            self.changed(name)

    def forget(self, name: str) -> None:
        self._written.pop(name, None)
        self._failures.pop(name, None)
        self._dirty.discard(name)
        self.outcomes.drop_app(name)

    def _announce(self, app: App, before: Condition | None, now: Condition | None) -> None:
        if now is None or (before is not None and (before.status, before.reason) == (now.status, now.reason)):
            return
        if now.status == "Unknown" and before is None:
            return  # a new app nobody uses yet: nothing to say
        ref = {"apiVersion": API_VERSION, "kind": APP_KIND, "metadata": {"name": app.name, "uid": app.uid}}
        self.emit(ref, "Normal" if now.status != "False" else "Warning", now.reason, now.message)
