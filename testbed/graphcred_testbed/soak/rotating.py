"""Rotating certificates in the soak (credential.certificate.rotation): a few apps, each with a certificate Secret
whose key pair graphcred generates and renews itself in Entra (Graph addKey/removeKey) every minute or two; the
first certificate "uploaded" once by the harness as a person would (issuer.add_key, then rotation.keyId); and the
plan's faults on Graph's key calls (addKey/removeKey answered 5xx, and lost answers: the call carried out, the
answer a failure).

The apps differ on purpose: one with a replication delay of a few seconds (a new key is refused meanwhile), one
whose certificate Secret two credentials share (one rotation for both), one that may read its own application (a
lost addKey answer is then resolved to its keyId; the others record it as "unknown" and leave that key on the app).

Everything here is drawn from a random.Random of its own (seeded from the soak's seed), so that adding rotating
certificates leaves the rest of the schedule as it was for the same seed. The invariants are in rotationcheck.py.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509

from graphcred.api.keys import GROUP, PLURAL, VERSION
from graphcred.api.model import parse_duration

from ..graph import KeyCall
from ..issuer import Issuer
from .config import SoakConfig
from .plan import PlanItem
from .world import GRAPH, _App, _Cred, _Key

if TYPE_CHECKING:
    from .run import Soak

ROTATION_FAULTS = ("graph_fail", "graph_lost")
KEY_OPS = ("addKey", "removeKey")
# (validity, renewBefore, replication delay in seconds, credentials sharing the Secret, may read its own application)
PROFILES: tuple[tuple[str, str, float, int, bool], ...] = (
    ("3m", "2m", 0.0, 1, True),  # renews about every 60 s; a lost addKey answer is resolved to its keyId
    ("3m", "100s", 4.0, 1, False),  # about every 80 s; a new key is refused for 4 s after addKey
    ("2m", "60s", 0.0, 2, False),  # about every 60 s; one certificate Secret, two credentials
)
# Each rotation may cost (token requests: a Graph token per step, proofs of the next key while it replicates, each
# owner's token again with the new key; Secret writes: store, adding, next keyId, switch, clear; status writes: each
# outcome, per owner); each failed Graph call a retry with a new Graph token and a status write or two.
ROTATION_REQUESTS, ROTATION_SECRET_WRITES, ROTATION_STATUS_WRITES = 10, 8, 12
FAILURE_REQUESTS, FAILURE_WRITES = 3, 3


@dataclass
class _RotatingApp:
    """An Entra app whose certificate graphcred rotates, its certificate Secret and the credentials using it."""

    index: int
    app: _App
    key: _Key  # the certificate Secret (graphcred creates it: the harness never writes it)
    validity: str
    renew_before: str
    replication_delay: float
    reads_itself: bool
    creds: list[_Cred] = field(default_factory=list)
    first_key_id: str | None = None  # the keyId of the uploaded certificate
    uploaded_at: float | None = None  # wall clock

    def rotation(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"objectId": self.app.app.object_id, "validity": self.validity,
                                "renewBefore": self.renew_before}
        if self.first_key_id is not None:
            spec["keyId"] = self.first_key_id
        return spec

    def credential(self) -> dict[str, Any]:
        return {"certificate": {"name": self.key.name, "rotation": self.rotation()}}

    def period(self) -> float:
        """Seconds between two renewals (validity - renewBefore)."""
        validity = parse_duration(self.validity).total_seconds()
        return validity - parse_duration(self.renew_before).total_seconds()


@dataclass
class _RotationWorld:
    apps: list[_RotatingApp] = field(default_factory=list)
    creds: list[_Cred] = field(default_factory=list)


def rotation_rng(cfg: SoakConfig) -> random.Random:
    return random.Random(f"rotating-certificates-{cfg.seed}")  # a reproducible schedule, not cryptography


def build_rotating(cfg: SoakConfig, rng: random.Random, issuer: Issuer, namespace: str) -> _RotationWorld:
    """`cfg.rotating_apps` apps (the profiles in turn), each in a tenant of its own, with a token lifetime of the
    longest of `cfg.lifetimes` (a rotation must never cost a consumer its token: half a lifetime of margin)."""
    world = _RotationWorld()
    if cfg.rotating_apps <= 0 or not namespace:
        return world

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    lifetime = max(cfg.lifetimes)
    for i in range(cfg.rotating_apps):
        validity, before, delay, users, reads_itself = PROFILES[i % len(PROFILES)]
        client_id = new_id()
        roles = ["Mail.Read", "Application.ReadWrite.OwnedBy"] if reads_itself else ["Mail.Read"]
        reg = issuer.register_app(new_id(), client_id, roles={GRAPH: roles}, lifetime=lifetime,
                                  replication_delay=delay, owners=[client_id] if reads_itself else [])
        app = _App(2000 + i, reg, "certificate", reg.lifetime)
        key = _Key(namespace, f"rot-{i}-cert", "certificate")
        rapp = _RotatingApp(i, app, key, validity, before, delay, reads_itself)
        key.apps.append(app)
        for j in range(users):
            cred = _Cred(namespace, f"r-{i}-{j}", key, app, rotating=i)
            cred.point_at(app)
            rapp.creds.append(cred)
            world.creds.append(cred)
        world.apps.append(rapp)
    return world


def plan_rotation(cfg: SoakConfig, rng: random.Random, world: _RotationWorld) -> list[PlanItem]:
    """Graph's key calls failing now and then: `graph_fail` (the next addKey or removeKey, whichever app makes it,
    answered 500/502/503, once or twice in a row) about every 40 s, and two `graph_lost` (the next addKey, then the
    next removeKey, carried out but answered 503: the answer lost), all in the first 85 % of the fault phase."""
    span = cfg.fault_seconds
    if not world.apps or span < 30:
        return []
    n = max(2, round(span / 40))
    kinds = [("graph_fail", KEY_OPS[i % 2]) for i in range(n)] + [("graph_lost", "addKey"), ("graph_lost", "removeKey")]
    rng.shuffle(kinds)
    lo, hi = 0.05 * span, 0.85 * span
    width = (hi - lo) / len(kinds)
    items: list[PlanItem] = []
    for i, (kind, op) in enumerate(kinds):
        at = lo + (i + rng.uniform(0.1, 0.9)) * width
        args: dict[str, Any] = {"op": op, "status": 503}
        if kind == "graph_fail":
            args["status"] = rng.choice([500, 502, 503])
            args["count"] = rng.choice([1, 1, 2])
        items.append(PlanItem(round(at, 1), kind, 0.0, tuple(sorted(args.items()))))
    return items


def inject(soak: Soak, p: PlanItem) -> None:
    """A plan item on the bed's Graph: the next call(s) of the operation fail (graph_lost: carried out first)."""
    lost = p.kind == "graph_lost"
    soak.bed.graph.fail_next(p.arg("op"), p.arg("status"), 1 if lost else p.arg("count"), applied=lost)


# --- setup: the one upload a person does ------------------------------------------------------------------------

def upload(soak: Soak) -> None:
    """As a person would (and tests/e2e/test_certificate_rotation.py does): once graphcred shows the certificate it
    generated (status.certificate.pem, Ready=False CertificateNotRegistered), add it to the app and give its keyId
    to every credential using the Secret."""
    world = soak.rotating
    pending = list(world.apps)
    deadline = time.time() + soak.cfg.setup_ready_within
    while pending and time.time() < deadline and not soak.stopping.is_set():
        for rapp in list(pending):
            first = rapp.creds[0]
            try:
                obj: Any = soak.custom.get_namespaced_custom_object(GROUP, VERSION, first.namespace, PLURAL,
                                                                    first.name, _request_timeout=10)
            except Exception:  # noqa: BLE001 - not there yet, or the apiserver is slow: look again
                continue
            pem = ((obj.get("status") or {}).get("certificate") or {}).get("pem")
            if not pem:
                continue
            cert = x509.load_pem_x509_certificate(str(pem).encode())
            rapp.first_key_id = soak.bed.issuer.add_key(rapp.app.client_id, cert).key_id
            rapp.uploaded_at = time.time()
            for cred in rapp.creds:  # a merge patch; not an assignment (the soak's spans begin after setup)
                soak.faults._kube(soak.custom.patch_namespaced_custom_object, GROUP, VERSION, cred.namespace,
                                  PLURAL, cred.name, {"spec": {"credential": rapp.credential()}})
            pending.remove(rapp)
        time.sleep(0.5)
    if pending:
        soak.violation("setup", f"{len(pending)} rotating certificates", "graphcred showed no certificate to upload "
                       f"(status.certificate.pem) within {soak.cfg.setup_ready_within:.0f} s: "
                       + ", ".join(r.key.ref for r in pending))


# --- figures ----------------------------------------------------------------------------------------------------

def added(call: KeyCall) -> bool:
    """addKey that added the key (its answer may have been lost)."""
    return call.op == "addKey" and call.outcome.startswith("added")


def removed(call: KeyCall) -> bool:
    """removeKey that removed the key (its answer may have been lost)."""
    return call.op == "removeKey" and call.outcome.startswith("removed")


def injected(call: KeyCall) -> bool:
    """A failure fail_next injected (with or without the call carried out)."""
    return "fail_next" in call.outcome


def renewals(calls: list[KeyCall]) -> tuple[list[float], int]:
    """Of one app's key calls (oldest first): the time each renewal took, from the first addKey of a rotation
    (whatever its answer) to the removeKey that removed the key it replaced; and how many rotations ended without a
    removal (the previous key's keyId unknown: left on the app). An addKey of another certificate than the one
    added begins the next rotation; one of the same certificate (or unread: refused before the body was read) is a
    retry (after a lost answer Graph refuses the same certificate twice)."""
    durations: list[float] = []
    unfinished = 0
    started: float | None = None  # the first addKey call of the rotation under way
    adding: str | None = None  # the certificate that rotation added (its thumbprint), once added
    for call in calls:
        if call.op == "addKey":
            if started is not None and adding is not None and call.thumbprint not in (None, adding):
                unfinished += 1  # the previous rotation added its key and never removed the one it replaced
                started = None
            if started is None:
                started, adding = call.time, None
            if added(call):
                adding = call.thumbprint or "?"
        elif removed(call) and started is not None:
            durations.append(call.time - started)
            started, adding = None, None
    return durations, unfinished


def rotation_figures(world: _RotationWorld, calls: list[KeyCall]
                     ) -> tuple[list[str], Counter[str], float, Counter[str]]:
    """Report lines per app (rotations completed per credential), the failures injected (by op, lost answers
    apart), the longest renewal, the rotations completed by certificate Secret."""
    lines: list[str] = []
    completed: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    longest = 0.0
    for call in calls:
        if injected(call):
            lost = call.outcome.startswith(("added", "removed"))  # carried out, the answer a failure
            failures[f"{call.op}{' lost answer' if lost else ''}"] += 1
    for rapp in world.apps:
        mine = [c for c in calls if c.app_id == rapp.app.client_id]
        durations, unfinished = renewals(mine)
        longest = max([longest, *durations])
        removes = completed[rapp.key.ref] = sum(1 for c in mine if removed(c))
        adds = sum(1 for c in mine if added(c))
        users = ", ".join(c.ref for c in rapp.creds)
        lines.append(f"{rapp.key.ref} ({users}; validity {rapp.validity}, renewBefore {rapp.renew_before}"
                     + (f", replication {rapp.replication_delay:g} s" if rapp.replication_delay else "")
                     + f"): rotations completed {removes} (addKey {adds}, key calls {len(mine)}), longest renewal "
                     f"{max(durations, default=0.0):.1f} s" + (f", {unfinished} left the previous key (keyId unknown)"
                                                               if unfinished else ""))
    return lines, failures, longest, completed


def allowance(world: _RotationWorld, calls: list[KeyCall], seconds: float) -> dict[str, tuple[float, float, float]]:
    """Per rotating app (client id): the token requests, Secret writes and status writes its rotations may add to
    the soak's bounds over `seconds`: the rotations due (and two more), and each failed key call."""
    out: dict[str, tuple[float, float, float]] = {}
    for rapp in world.apps:
        due = seconds / max(rapp.period(), 1.0) + 2
        failed = sum(1 for c in calls if c.app_id == rapp.app.client_id and not c.ok)
        owners = len(rapp.creds)
        out[rapp.app.client_id] = (due * (ROTATION_REQUESTS + 2 * owners) + failed * FAILURE_REQUESTS,
                                   due * (ROTATION_SECRET_WRITES + 2 * owners) + failed * FAILURE_WRITES,
                                   (due * ROTATION_STATUS_WRITES + failed * FAILURE_WRITES) * owners)
    return out
