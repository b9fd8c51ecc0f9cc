"""The invariant checker: lists GraphAppCredentials and token Secrets about every second and records a violation
on anything a user would notice (docs/soak.md: each invariant, and why it has no false positives)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import requests
from kubernetes import client

from graphcred.acquire.jwt import b64url_decode
from graphcred.api.keys import APP_PLURAL, GROUP, MANAGED_BY, MANAGED_BY_LABEL, PLURAL, VERSION
from graphcred.api.model import GRAPH_DEFAULT_SCOPE, parse_duration
from graphcred.tokensecret.render import controller_uid

from ..hostile import scheduled_refresh
from .apiserver import _api_client
from .cluster import RUN_LABEL
from .clustercheck import _ClusterChecker
from .rotationcheck import _RotationChecker
from .world import _Cred

if TYPE_CHECKING:
    from .run import Soak

LEASE_NAME = "graphcred-leader"
# A token Secret controlled by a deleted credential of ANOTHER name blocks a credential that names it (SecretConflict)
# until the garbage collector deletes it: Kubernetes' job, so such a wait is noted, not counted. (A re-created
# namesake adopts its predecessor's Secret: waiting for the GC there is a violation.)
GC_PENDING = "controlled by an object that no longer exists"


def _claims(token: str) -> dict[str, Any] | None:
    """A JWT's payload, not verified (header.payload.signature, base64url)."""
    try:
        payload = json.loads(b64url_decode(token.split(".")[1]))
    except (IndexError, ValueError, TypeError):
        return None
    return payload if isinstance(payload, dict) else None


def _ready_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return dict(cond)
    return None


def _ready_for_generation(obj: dict[str, Any]) -> bool:
    """Ready=True for the object's current generation (a condition for an older generation says nothing yet)."""
    cond = _ready_condition(obj)
    if cond is None or cond.get("status") != "True":
        return False
    observed = cond.get("observedGeneration", (obj.get("status") or {}).get("observedGeneration"))
    return bool(observed == obj["metadata"].get("generation"))


def _observed(obj: dict[str, Any]) -> int | None:
    cond = _ready_condition(obj) or {}
    value = cond.get("observedGeneration", (obj.get("status") or {}).get("observedGeneration"))
    return int(value) if isinstance(value, int) else None


def _secret_name(obj: dict[str, Any]) -> str:
    return str((obj.get("spec") or {}).get("secretName") or f"{obj['metadata']['name']}-token")


def _mismatch(claims: dict[str, Any], spec: dict[str, Any]) -> str | None:
    """Why a token was not acquired for this spec (tenant, app, resource), or None."""
    scope = (spec.get("scopes") or [GRAPH_DEFAULT_SCOPE])[0]
    wanted = {"tid": str(spec.get("tenantId", "")).lower(), "appid": str(spec.get("clientId", "")).lower(),
              "aud": str(scope).removesuffix("/.default")}
    wrong = [f"{k} is {claims.get(k)!r}, spec wants {v!r}" for k, v in wanted.items() if claims.get(k) != v]
    return "; ".join(wrong) or None


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _sample(text: str, metric: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith((metric + "{", metric + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class _Seen:
    """What the checker remembers of one token Secret (by uid)."""

    max_iat: float = 0.0
    expired_reported: set[str] = field(default_factory=set)
    iat: float = 0.0  # the token it holds now
    due: float | None = None  # when that token is due for refresh (hostile.scheduled_refresh)
    late_reported: bool = False
    polled: float = 0.0  # the last poll that saw it (a Secret of a deleted credential stops being seen)


@dataclass
class _Progress:
    """What the checker remembers of one GraphAppCredential (by uid), to notice a worker that stopped."""

    signature: str = ""
    since: float = 0.0
    pending_generation: int | None = None
    pending_since: float = 0.0
    had_secret: bool = False
    not_ready_since: float | None = None


class _Checker:
    def __init__(self, soak: Soak) -> None:
        self.soak = soak
        self.api = _api_client(soak.bed)
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.checks: Counter[str] = Counter()
        self.durations: list[float] = []
        self._by_name: dict[tuple[str, str], dict[str, Any]] = {}
        self.gc_waits: dict[str, list[float]] = {}  # credential -> [first, last] seen waiting for the GC
        self._seen_uids: set[str] = set()  # every credential uid ever seen live
        self._orphans: dict[str, tuple[float, str]] = {}  # Secret uid -> (first seen orphaned, resourceVersion)
        self._live: set[str] = set()
        self.requests = 0
        self.skipped = 0
        self.issued: set[str] = set()
        self._issued_seen = 0
        self.secrets: dict[str, _Seen] = {}
        self.lateness: list[float] = []  # seconds after its schedule each victim's refresh came
        self.late_unexcused = 0  # tokens refreshed (or not) later than schedule + slack with nothing broken
        self.progress: dict[str, _Progress] = {}
        self._claims: dict[str, dict[str, Any] | None] = {}
        self._ready: dict[str, str] = {}  # "ns/name" -> "" if ready, else why not
        self._ready_at: float = 0.0
        self._lock = threading.Lock()
        self.soak_started = False
        self.quiet_since: float | None = None
        self.peak_rate = 0
        self._last_requests: tuple[float, int] | None = None
        self.holder: str | None = None
        self.leader_changes = 0
        self.takeovers: list[float] = []
        self._killed: tuple[str, float] | None = None
        self._dead_streak = 0
        self.workers_gauge_seen = False
        self.cluster = _ClusterChecker(soak)
        self.rotation = _RotationChecker(soak)

    # --- for the main thread -------------------------------------------------------------------------------
    def mark_soak_start(self) -> None:
        self.soak_started = True

    def mark_quiet(self, since: float) -> None:
        self.quiet_since = since

    def all_ready_since(self, since: float) -> bool:
        """Every credential Ready in a poll after `since` (but for those waiting for the garbage collector)."""
        with self._lock:
            return self._ready_at > since and bool(self._ready) and all(
                v == "" or GC_PENDING in v for v in self._ready.values())

    def not_ready(self, gc_pending: bool = False) -> list[str]:
        """Credentials not Ready in the last poll: "ns/name: why" (`gc_pending`: only those waiting for the GC)."""
        with self._lock:
            return [f"{k}: {v}" for k, v in sorted(self._ready.items()) if v and (GC_PENDING in v) == gc_pending]

    def killed(self, holder: str, at: float) -> None:
        self._killed = (holder, at)

    def lease_holder(self) -> str | None:
        try:
            self.requests += 1
            lease = self.coordination.read_namespaced_lease(LEASE_NAME, self.soak.lease_namespace,
                                                            _request_timeout=10)
        except Exception:  # noqa: BLE001 - unreachable apiserver: no holder known
            return None
        return lease.spec.holder_identity if lease.spec else None

    # --- the loop ------------------------------------------------------------------------------------------
    def loop(self) -> None:
        while not self.soak.stopping.is_set():
            started = time.monotonic()
            if self.poll():
                self.durations.append(time.monotonic() - started)
            self.soak.stopping.wait(max(self.soak.cfg.poll_interval - (time.monotonic() - started), 0.05))

    def _get(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        resp = call(*args, _preload_content=False, _request_timeout=10, **kwargs)
        return json.loads(resp.data)

    def poll(self) -> bool:
        t0 = time.time()
        try:
            gacs = self._get(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)["items"]
            secrets = self._get(self.core.list_secret_for_all_namespaces,
                                label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}")["items"]
            apps: list[dict[str, Any]] = []
            namespaces: list[dict[str, Any]] = []
            if self.cluster.enabled:  # listed after the Secrets: a permission seen is as new as the tokens
                apps = self._get(self.custom.list_cluster_custom_object, GROUP, VERSION, APP_PLURAL)["items"]
                namespaces = self._get(self.core.list_namespace,
                                       label_selector=f"{RUN_LABEL}=soak-{self.soak.run_id}")["items"]
        except Exception:  # noqa: BLE001 - the apiserver is restarting (a planned fault): try again
            self.skipped += 1
            return False
        self._refresh_issued()
        self._rate(t0)
        spaces = set(self.soak.namespaces) | set(self.soak.tenant_namespaces) | set(self.soak.rotation_namespaces)
        live = {o["metadata"]["uid"]: o for o in gacs
                if o["metadata"]["namespace"] in spaces and not o["metadata"].get("deletionTimestamp")}
        tokens: dict[str, tuple[dict[str, Any], str | None]] = {}  # gac uid -> (secret, token)
        self._by_name = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in secrets
                         if s["metadata"]["namespace"] in spaces}
        self._live = set(live)
        self._seen_uids |= self._live
        self._check_orphans(secrets, spaces, t0)
        for s in secrets:
            owner = controller_uid(s["metadata"])
            if owner is None or owner not in live or s["metadata"]["name"] != _secret_name(live[owner]):
                continue  # a Secret the GC is deleting (its credential is gone), or another's
            tokens[owner] = (s, self._check_secret(s, live[owner], t0))
        if self.cluster.enabled:
            self.cluster.observe(apps, namespaces, live, t0)
            self.cluster.judge_tokens(live, tokens, t0)
            self.cluster.judge_app_status(live, t0)
        if self.rotation.enabled:  # the certificate Secrets as listed above, then the issuer's keys
            self.rotation.judge(secrets, tokens, live, t0)
        ready: dict[str, str] = {}
        for uid, obj in live.items():
            why = self._check_credential(obj, tokens.get(uid), t0)
            if "SecretConflict" in why:
                why += f"; {self.secret_state(obj)}"
            ready[f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"] = why
            self._check_recovery(obj, why, t0)
        for ref in set(self.soak.by_ref) - set(ready):
            ready[ref] = "GraphAppCredential absent"
        with self._lock:
            self._ready, self._ready_at = ready, t0
        return True

    def _check_orphans(self, secrets: list[dict[str, Any]], spaces: set[str], t0: float) -> None:
        """A token Secret whose credential is gone belongs to the garbage collector: nobody may write it any more
        (a worker that outlived its object would; the GC only deletes)."""
        current: set[str] = set()
        for s in secrets:
            meta = s["metadata"]
            owner = controller_uid(meta)
            if meta["namespace"] not in spaces or owner not in self._seen_uids or owner in self._live:
                continue
            current.add(meta["uid"])
            first, version = self._orphans.setdefault(meta["uid"], (t0, meta["resourceVersion"]))
            self.checks["orphan"] += 1
            if meta["resourceVersion"] != version and t0 - first > 5:
                self.soak.violation("zombie-write", f"{meta['namespace']}/{meta['name']}",
                                    f"written {t0 - first:.0f} s after its credential (uid {owner}) was gone",
                                    dedup="written")
                self._orphans[meta["uid"]] = (first, meta["resourceVersion"])
        for uid in set(self._orphans) - current:
            del self._orphans[uid]

    def _refresh_issued(self) -> None:
        tokens = self.soak.bed.issuer.issued_tokens
        new = tokens[self._issued_seen:]
        self._issued_seen += len(new)
        self.issued.update(new)

    def _rate(self, t: float) -> None:
        total = self.soak.bed.issuer.token_requests()
        if self._last_requests is not None and self.soak_started:
            t_prev, n_prev = self._last_requests
            if t - t_prev > 0.5:
                self.peak_rate = max(self.peak_rate, round((total - n_prev) / (t - t_prev)))
        self._last_requests = (t, total)

    def _claims_of(self, token: str) -> dict[str, Any] | None:
        if token not in self._claims:
            self._claims[token] = _claims(token)
        return self._claims[token]

    def _confirm(self, obj: dict[str, Any]) -> bool:
        """Still the same object at the same generation, not being deleted (the LISTs are not atomic)."""
        meta = obj["metadata"]
        try:
            now = self._get(self.custom.get_namespaced_custom_object, GROUP, VERSION, meta["namespace"], PLURAL,
                            meta["name"])
        except Exception:  # noqa: BLE001 - gone or unreachable: not confirmed
            return False
        m = now["metadata"]
        return bool(m["uid"] == meta["uid"] and m.get("generation") == meta.get("generation")
                    and not m.get("deletionTimestamp"))

    def _cred(self, obj: dict[str, Any]) -> _Cred | None:
        return self.soak.by_ref.get(f"{obj['metadata']['namespace']}/{obj['metadata']['name']}")

    def _check_secret(self, s: dict[str, Any], obj: dict[str, Any], t0: float) -> str | None:
        """Blanked, foreign, backwards, expired while reachable. Returns the token (None if blank)."""
        ref = f"{s['metadata']['namespace']}/{s['metadata']['name']}"
        raw = (s.get("data") or {}).get("access_token")
        token = base64.b64decode(raw).decode(errors="replace") if raw else ""
        self.checks["secret-token"] += 1
        if not token:
            if self._confirm(obj):
                self.soak.violation("secret-blanked", ref, "access_token missing or empty")
            return None
        if token not in self.issued:
            self.soak.violation("secret-foreign-token", ref, "holds something the issuer never issued")
            return None
        claims = self._claims_of(token) or {}
        iat, exp = float(claims.get("iat", 0)), float(claims.get("exp", 0))
        seen = self.secrets.setdefault(s["metadata"]["uid"], _Seen())
        if iat < seen.max_iat:
            self.soak.violation("secret-backwards", ref, f"token issued {seen.max_iat - iat:.0f} s before one it "
                                "held earlier", dedup="token issued")
        seen.max_iat = max(seen.max_iat, iat)
        self._lateness(seen, ref, obj, iat, exp, t0)
        if exp < t0 and token[-16:] not in seen.expired_reported and self.soak_started:
            seen.expired_reported.add(token[-16:])
            self._expired(ref, obj, iat, exp)
        return token

    def _lateness(self, seen: _Seen, ref: str, obj: dict[str, Any], iat: float, exp: float, t0: float) -> None:
        """How late after its schedule each victim's token was replaced (by the new token's iat). Hostile mode: a
        refresh (or its absence) later than the schedule plus the slack, with nothing it needs broken and a
        leader able to work all along, is a violation."""
        seen.polled = t0
        if iat > seen.iat and seen.iat:
            due = seen.due
            if due is not None and self.soak_started and due >= self.soak.t0:
                self.lateness.append(max(iat - due, 0.0))
                if not seen.late_reported:
                    self._judge_late(ref, obj, due, iat, "refreshed")
            seen.late_reported = False
        if iat >= seen.iat:
            seen.iat = iat
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            rbe = spec.get("refreshBeforeExpiry")
            try:
                before = parse_duration(rbe).total_seconds() if rbe else None
            except (ValueError, OverflowError):
                before = None
            seen.due = scheduled_refresh(iat, exp, before, _parse_time(status.get("refreshAt")),
                                         _parse_time(status.get("expiresOn")))
        due = seen.due
        if (due is not None and self.soak_started and due >= self.soak.t0 and not seen.late_reported
                and t0 > due + self.soak.cfg.refresh_slack):
            seen.late_reported = self._judge_late(ref, obj, due, t0, "not refreshed")

    def _judge_late(self, ref: str, obj: dict[str, Any], due: float, at: float, what: str) -> bool:
        """A violation (hostile mode; else counted) if `at` is beyond the slack and no fault or leader gap explains
        it. True: reported (once per token)."""
        late = at - due
        if late <= self.soak.cfg.refresh_slack:
            return False
        self.checks["refresh-lateness"] += 1
        if self.soak.disruption(self._cred(obj), due, at) or self.soak.operator_gap_end(due, at) is not None:
            return False
        self.late_unexcused += 1
        if not self.soak.cfg.hostile:
            return True  # a figure only: the soak without --hostile judges expiry, not lateness
        self.soak.violation("refresh-late", ref, f"due at {due - self.soak.t0:.0f} s, {what} {late:.0f} s later "
                            "with nothing it needs broken", dedup="due at")
        return True

    def overdue(self, now: float) -> list[float]:
        """Seconds past the schedule of the tokens still held at the end, that were due during the soak."""
        last = max((s.polled for s in self.secrets.values()), default=0.0)
        return [now - s.due for s in self.secrets.values() if s.due is not None and s.polled >= last - 0.5
                and self.soak.t0 <= s.due < now - self.soak.cfg.refresh_slack]

    def _expired(self, ref: str, obj: dict[str, Any], iat: float, exp: float) -> None:
        """A token expired in its Secret: fine only if something its credential needs was broken in the second
        half of its lifetime (or it was issued before the soak began and the checker cannot say)."""
        self.checks["expiry"] += 1
        half = iat + (exp - iat) / 2
        cred = self._cred(obj)
        if half < self.soak.t0:
            return  # its second half began during setup: the fault history is incomplete
        window = self.soak.disruption(cred, half, exp)
        if window is None:
            self.soak.violation("expired-while-reachable", ref, f"token (lifetime {exp - iat:.0f} s) expired at "
                                f"{exp - self.soak.t0:.0f} s; nothing it needs was broken from "
                                f"{half - self.soak.t0:.0f} s on", dedup="token")

    def _check_credential(self, obj: dict[str, Any], held: tuple[dict[str, Any], str | None] | None,
                          t0: float) -> str:
        """Honest Ready, progress. Returns "" if Ready with a good token, else why not."""
        meta = obj["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        uid = meta["uid"]
        progress = self.progress.setdefault(uid, _Progress(since=t0))
        token = held[1] if held else None
        refused = self.cluster.refusal_of(obj)
        if refused is not None:
            progress.had_secret = False  # its Secret is to be deleted: that is no loss
        if held is not None and refused is None:
            progress.had_secret = True
        elif progress.had_secret and held is None:
            self.checks["secret-token"] += 1
            if self.cluster.is_app_credential(obj) and self.cluster.recently_changed(obj, t0):
                progress.had_secret = False  # revoked (and perhaps given back since), not lost
            elif self._confirm(obj) and self._secret_gone(obj):
                self.soak.violation("secret-blanked", ref, "its token Secret disappeared (the plan never deletes "
                                    "one; the garbage collector only deletes those of deleted credentials)",
                                    dedup="its token")
                progress.had_secret = False
        self._check_progress(obj, progress, t0)
        if refused is not None:
            return self.cluster.refused_state(obj, bool(token), refused, _ready_for_generation(obj), t0)
        if not _ready_for_generation(obj):
            cond = _ready_condition(obj) or {}
            observed = _observed(obj)
            if cond.get("status") == "True" and observed != meta.get("generation"):
                return f"Ready for generation {observed}, object at {meta.get('generation')}"
            return f"Ready={cond.get('status', 'absent')} {cond.get('reason', '')}: {cond.get('message', '')[:160]}"
        self.checks["ready-token"] += 1
        claims = self._claims_of(token) if token else None
        problem = None
        if token is None or claims is None:
            problem = ("ready-no-token", "Ready=True but its token Secret is missing, blank or not issued")
        elif self._ready_outlived(float(claims.get("exp", 0)), t0):
            problem = ("ready-expired", f"Ready=True, token expired {t0 - float(claims['exp']):.0f} s ago")
        elif (why := _mismatch(claims, self.cluster.expected_spec(obj))) is not None:
            problem = ("ready-wrong-token", f"Ready=True for generation {meta.get('generation')}, token {why}")
        if problem is not None and self._confirm(obj):
            self.soak.violation(problem[0], ref, problem[1], dedup=problem[1][:20])
            return problem[1]
        if problem is not None:
            return "changed while checked"
        if claims is not None and float(claims.get("exp", 0)) <= t0:
            return "Ready=True, token expired"
        return ""

    def _ready_outlived(self, exp: float, t0: float) -> bool:
        """Ready=True outlived the token by more than the grace, counted from when a leader could write status
        (no replica can while the apiserver is down or the Lease is between holders)."""
        if exp >= t0:
            return False
        able = max(exp, self.soak.operator_gap_end(exp, t0) or exp)
        return t0 - able > self.soak.cfg.ready_expired_grace

    def _check_recovery(self, obj: dict[str, Any], why: str, t0: float) -> None:
        """Not Ready although everything it needs worked for the last `stuck_grace` seconds: the check made after
        the faults stop, made all along (a credential is retried at least every 30 s once it has no valid token)."""
        p = self.progress[obj["metadata"]["uid"]]
        if not why:
            p.not_ready_since = None
            return
        if p.not_ready_since is None or GC_PENDING in why:
            p.not_ready_since = t0  # the clock starts when the garbage collector has done its part
        if GC_PENDING in why:
            ref = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            self.gc_waits.setdefault(ref, [t0, t0])[1] = t0
        grace = self.soak.cfg.stuck_grace
        if not self.soak_started or t0 - p.not_ready_since <= grace:
            return
        self.checks["recovery"] += 1
        if self.soak.disruption(self._cred(obj), t0 - grace, t0) is None:
            meta = obj["metadata"]
            self.soak.violation("not-ready-while-reachable", f"{meta['namespace']}/{meta['name']}",
                                f"not Ready for {t0 - p.not_ready_since:.0f} s, nothing it needs broken for the last "
                                f"{grace:.0f} s: {why}", dedup="not Ready")

    def secret_state(self, obj: dict[str, Any]) -> str:
        """Who holds the credential's token Secret now (evidence for a SecretConflict that outlives its cause)."""
        meta = obj["metadata"]
        name = _secret_name(obj)
        s = self._by_name.get((meta["namespace"], name))
        if s is None:
            return f"Secret {name} absent"
        owner = controller_uid(s["metadata"])
        if owner == meta["uid"]:
            return f"Secret {name} is its own"
        age = time.time() - (_parse_time(s["metadata"].get("creationTimestamp")) or time.time())
        refs = [r for r in s["metadata"].get("ownerReferences") or [] if r.get("controller")]
        if owner not in self._live and not (refs and refs[0].get("name") == meta["name"]):
            # graphcred adopts a Secret left by a deleted namesake (same name): only another name's is the GC's job
            return f"Secret {name} (created {age:.0f} s ago) is {GC_PENDING} ({owner})"
        return f"Secret {name} (created {age:.0f} s ago) is controlled by another live object ({owner})"

    def _secret_gone(self, obj: dict[str, Any]) -> bool:
        try:
            self.requests += 1
            self.core.read_namespaced_secret(_secret_name(obj), obj["metadata"]["namespace"], _request_timeout=10)
        except client.ApiException as exc:
            return bool(exc.status == 404)
        except Exception:  # noqa: BLE001 - unreachable: cannot tell
            return False
        return False

    def _check_progress(self, obj: dict[str, Any], p: _Progress, t0: float) -> None:
        """A worker that stopped: a due refresh or a new generation does not show in status within the grace."""
        if not self.soak_started:
            return
        meta, status = obj["metadata"], obj.get("status") or {}
        ref = f"{meta['namespace']}/{meta['name']}"
        grace = self.soak.cfg.stuck_grace
        cred = self._cred(obj)
        signature = json.dumps(status, sort_keys=True)
        if signature != p.signature:
            p.signature, p.since = signature, t0
        self.checks["progress"] += 1
        refresh = _parse_time(status.get("refreshAt"))
        if (refresh is not None and t0 > refresh + grace and t0 - p.since > grace
                and self.soak.disruption(cred, t0 - grace, t0) is None):
            self.soak.violation("stuck-worker", ref, f"refresh due at {refresh - self.soak.t0:.0f} s, status "
                                f"unchanged {t0 - p.since:.0f} s later", dedup="refresh due")
        generation, observed = meta.get("generation"), _observed(obj)
        if observed is not None and observed != generation:
            if p.pending_generation != generation:
                p.pending_generation, p.pending_since = generation, t0
            elif t0 - p.pending_since > grace and self.soak.disruption(cred, t0 - grace, t0) is None:
                self.soak.violation("stuck-worker", ref, f"generation {generation} not observed "
                                    f"{t0 - p.pending_since:.0f} s after it appeared", dedup="generation")
        else:
            p.pending_generation = None

    # --- leader, workers -----------------------------------------------------------------------------------
    def follow_leader(self) -> None:
        holder = self.lease_holder()
        if holder and holder != self.holder:
            if self.holder is not None:
                self.leader_changes += 1
            if self._killed is not None and self._killed[0] != holder:
                self.takeovers.append(time.time() - self._killed[1])
                self._killed = None
            self.holder = holder
        replicas = self.soak.replicas
        if replicas is None or not self.soak_started:
            return
        op = replicas.holder(holder)
        url = replicas.url(op) if op is not None else None
        if url is None:
            return
        try:
            text = requests.get(f"{url}/metrics", timeout=5).text
        except requests.RequestException:
            return
        dead = _sample(text, "graphcred_workers", state="dead")
        if dead is None:
            if not self.workers_gauge_seen and "graphcred_workers gauge" not in " ".join(self.soak.result.notes):
                self.soak.result.notes.append("graphcred_workers gauge absent from the leader's /metrics: the dead-"
                                              "worker check relies on status progress only")
            return
        self.workers_gauge_seen = True
        self.checks["workers"] += 1
        self._dead_streak = self._dead_streak + 1 if dead > 0 else 0
        if self._dead_streak >= 2:  # two scrapes 2 s apart: not a worker between its end and its restart
            self.soak.violation("dead-worker", holder or "leader",
                                f"graphcred_workers{{state=\"dead\"}} = {dead:.0f}", dedup="graphcred_workers")
