"""The checker's part for cluster apps: whether each appRef credential is permitted, judged from the cluster itself
(the ClusterGraphApps' policies and the tenant namespaces' labels, as listed in the same poll, read by
cluster.refusal), and the invariants that follow (docs/soak.md):

- `token-not-permitted`: a token Secret of an appRef credential holds a token while the credential's namespace or
  scopes are not permitted by the app's current policy, or the app is gone, for longer than `revoke_grace`
  (counted from when a leader could act: not while the apiserver restarts or the Lease is between holders);
  `ready-not-permitted`: likewise for a Ready=True status;
- `app-status-wrong`: a ClusterGraphApp's status.users/permitted not matching the cluster for `app_status_within`;
- a refused credential is "in its expected state" (the ready map's "") only when Ready=False with the reason the
  cluster gives (AppNotFound or NotPermitted) and no token Secret: the `not-ready-*` checks hold it to that.

Revocations are timed: from the change that withdrew permission (when the harness's call returned) to the first
poll that found the token Secret gone; polls are about a second apart, so each figure is within a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .cluster import refusal

if TYPE_CHECKING:
    from .run import Soak

# A Secret of an appRef credential that disappears this soon after a change to its app or namespace was revoked
# (and perhaps given back since), not lost.
RECENT_CHANGE = 30.0


@dataclass
class _Revocation:
    start: float  # the change that withdrew permission (wall clock)
    refused_since: float  # the first poll that saw it refused


def app_ref(obj: dict[str, Any]) -> str | None:
    ref = (obj.get("spec") or {}).get("appRef") or {}
    name = ref.get("name") if isinstance(ref, dict) else None
    return str(name) if name else None


class _ClusterChecker:
    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.apps: dict[str, dict[str, Any]] = {}  # name -> ClusterGraphApp object (this poll)
        self.labels: dict[str, dict[str, str]] = {}  # tenant namespace -> labels (this poll)
        self.refusals: dict[str, str | None] = {}  # credential uid -> why refused (None: permitted); appRef only
        self.refused_since: dict[str, float] = {}
        self.last_refused: dict[str, float] = {}
        self.open: dict[str, _Revocation] = {}
        self.revocations: list[float] = []  # seconds from the change to the Secret found gone
        self.restored_first = 0  # permission given back before the Secret was deleted (nothing to time)
        self.status_wrong_since: dict[str, float] = {}
        self.had_token: dict[str, bool] = {}  # credential uid -> its Secret held a token in the previous poll

    @property
    def enabled(self) -> bool:
        return bool(self.soak.cluster.apps)

    def observe(self, apps: list[dict[str, Any]], namespaces: list[dict[str, Any]],
                live: dict[str, dict[str, Any]], t0: float) -> None:
        """This poll's truth: each appRef credential permitted or why not."""
        names = {a.name for a in self.soak.cluster.apps}
        self.apps = {a["metadata"]["name"]: a for a in apps
                     if a["metadata"]["name"] in names and not a["metadata"].get("deletionTimestamp")}
        self.labels = {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in namespaces}
        self.refusals = {}
        for uid, obj in live.items():
            name = app_ref(obj)
            if name is None:
                continue
            scopes = list((obj.get("spec") or {}).get("scopes") or [])
            why = refusal(self.apps.get(name), self.labels.get(obj["metadata"]["namespace"]), scopes)
            self.refusals[uid] = why
            if why is None:
                self.refused_since.pop(uid, None)
            else:
                self.refused_since.setdefault(uid, t0)
                self.last_refused[uid] = t0

    def is_app_credential(self, obj: dict[str, Any]) -> bool:
        return obj["metadata"]["uid"] in self.refusals

    def refusal_of(self, obj: dict[str, Any]) -> str | None:
        return self.refusals.get(obj["metadata"]["uid"])

    def expected_spec(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The spec a token must match: an appRef credential's tenant and client are its app's."""
        spec = dict(obj.get("spec") or {})
        name = app_ref(obj)
        app = self.apps.get(name) if name else None
        if app is not None:
            spec["tenantId"], spec["clientId"] = app["spec"]["tenantId"], app["spec"]["clientId"]
        return spec

    def recently_changed(self, obj: dict[str, Any], t0: float) -> bool:
        """Its permission was (or may have been) withdrawn lately: a Secret gone now was revoked, not lost."""
        uid = obj["metadata"]["uid"]
        if t0 - self.last_refused.get(uid, -1e9) < RECENT_CHANGE:
            return True
        cred = self.soak.by_ref.get(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}")
        with self.soak.lock:
            return cred is not None and any(t0 - t < RECENT_CHANGE and app in cred.apps_ever
                                            for t, app in self.soak.cluster_changes)

    def _overdue(self, since: float, t0: float) -> float:
        """Seconds beyond the grace, counted from `since` or the end of a gap in which no leader could act."""
        able = max(since, self.soak.operator_gap_end(since, t0) or since)
        return t0 - able - self.soak.cfg.revoke_grace

    def judge_tokens(self, live: dict[str, dict[str, Any]], tokens: dict[str, tuple[dict[str, Any], str | None]],
                     t0: float) -> None:
        """Invariant 1 for the token Secrets, and the revocation times."""
        for uid, why in self.refusals.items():
            held = tokens.get(uid)
            token = held[1] if held is not None else None
            had, self.had_token[uid] = self.had_token.get(uid, False), bool(token)
            if why is None:
                if self.open.pop(uid, None) is not None:
                    self.restored_first += 1
                continue
            self.soak.checker.checks["permission"] += 1
            obj = live[uid]
            ref = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            since = self.refused_since[uid]
            if since == t0 and had and uid not in self.open:
                # the first poll that sees it refused; the poll before saw a token: a revocation to time, even
                # when the operator was quicker than the poll and the Secret is already gone
                self._open(uid, since)
            if not token:
                revocation = self.open.pop(uid, None)
                if revocation is not None:
                    self.revocations.append(t0 - revocation.start)
                continue
            if uid not in self.open:
                self._open(uid, since)
            if self._overdue(since, t0) > 0:
                self.soak.violation("token-not-permitted", ref, f"its token Secret still holds a token "
                                    f"{t0 - self.open[uid].start:.0f} s after the change that withdrew permission "
                                    f"({why})", dedup="its token Secret")

    def _open(self, uid: str, since: float) -> None:
        """A revocation begins: at the last change the harness made before the poll that saw it refused."""
        with self.soak.lock:
            changes = [t for t, _ in self.soak.cluster_changes if t <= since]
        self.open[uid] = _Revocation(max(changes, default=since), since)

    def refused_state(self, obj: dict[str, Any], has_token: bool, why: str, ready: bool, t0: float) -> str:
        """A refused credential: "" when it says so (Ready=False with the cluster's reason) and holds no token;
        else what it shows. Ready=True beyond the grace is `ready-not-permitted`."""
        meta = obj["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        conditions = (obj.get("status") or {}).get("conditions") or []
        cond: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        if ready and self._overdue(self.refused_since[meta["uid"]], t0) > 0:
            self.soak.violation("ready-not-permitted", ref, f"Ready=True while refused by the cluster ({why})",
                                dedup="Ready=True")
        reason = why.split(":")[0]
        if cond.get("status") == "False" and cond.get("reason") == reason and not has_token:
            return ""
        return (f"refused by the cluster ({why}), shows Ready={cond.get('status', 'absent')} "
                f"{cond.get('reason', '')}" + (" and holds a token" if has_token else ""))

    def judge_app_status(self, live: dict[str, dict[str, Any]], t0: float) -> None:
        """Invariant 3: status.users/permitted match the credentials naming the app, and the cluster's permission."""
        for name, app in self.apps.items():
            users = [uid for uid, obj in live.items() if app_ref(obj) == name]
            truth = (len(users), sum(1 for uid in users if self.refusals.get(uid) is None))
            status = app.get("status") or {}
            shown = (status.get("users", 0), status.get("permitted", 0))
            self.soak.checker.checks["app-status"] += 1
            if shown == truth:
                self.status_wrong_since.pop(name, None)
                continue
            since = self.status_wrong_since.setdefault(name, t0)
            able = max(since, self.soak.operator_gap_end(since, t0) or since)
            if self.soak.checker.soak_started and t0 - able > self.soak.cfg.app_status_within:
                self.soak.violation("app-status-wrong", f"ClusterGraphApp {name}",
                                    f"status users/permitted {shown[0]}/{shown[1]}, the cluster's "
                                    f"{truth[0]}/{truth[1]}, for {t0 - since:.0f} s", dedup="status users")
