"""Restart targets (spec.restartTargets, restartUnrefreshable): which workloads to restart for the token in the
Secret, whether the rollout graphcred started last is still in progress, and the status record of each. Pure: the
restarter (`reconcile.restarter`) reads and patches the workloads and writes the records.

A token is known by its `lastRefreshTime` (when it was acquired): a target whose record names an older token is due
for one restart; a target seen for the first time is taken to run with the token the Secret holds (its pods started
with it, or will: a pod waiting for a Secret that does not exist yet starts once it does), so adding a target, an
operator restart, a leader change or a pass that writes no new token restarts nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from graphcred.api.keys import RESTARTED_AT_ANNOTATION, RESTARTED_FOR_ANNOTATION
from graphcred.api.model import (
    DNS_SUBDOMAIN_PATTERN,
    MAX_RESTART_TARGETS,
    RestartOutcome,
    RestartStatus,
    WorkloadKind,
)
from graphcred.base.times import rfc3339, rfc3339_micro

# the outcomes after which nothing is retried until a newer token
SETTLED = (RestartOutcome.CURRENT, RestartOutcome.RESTARTED, RestartOutcome.NOT_FOUND, RestartOutcome.REFUSED)
_NAME = re.compile(DNS_SUBDOMAIN_PATTERN)


@dataclass(frozen=True, order=True)
class Target:
    kind: str
    name: str
    derived: bool = False  # found by restartUnrefreshable, not named in the spec

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


class Action(StrEnum):
    NOTHING = "nothing"
    ADOPT = "adopt"  # first seen: record the token in the Secret, restart nothing
    RESTART = "restart"


def targets(named: Iterable[tuple[str, str]], derived: Iterable[tuple[str, str]]) -> tuple[list[Target], int]:
    """The spec's targets in its order, then those the consumer watch found that the spec does not name: at most
    MAX_RESTART_TARGETS of them, named as Kubernetes names them (a pod's ownerReference is the pod author's to
    write). Returns the targets and how many derived ones were left out."""
    result = [Target(kind, name) for kind, name in named]
    seen = {t.key for t in result}
    extra = sorted({(kind, name) for kind, name in derived
                    if (kind, name) not in seen and len(name) <= 253 and _NAME.match(name)})
    result += [Target(kind, name, derived=True) for kind, name in extra[:MAX_RESTART_TARGETS]]
    return result, max(len(extra) - MAX_RESTART_TARGETS, 0)


def action(record: RestartStatus | None, token_time: str | None) -> Action:
    """What a target needs for the token acquired at `token_time` (None: the Secret holds no token)."""
    if token_time is None:
        return Action.NOTHING
    if record is None or record.token_time is None:
        return Action.ADOPT
    if record.token_time == token_time:
        # retried while the last try failed (Forbidden, Failed) or waited (Waiting): those keep the older token
        return Action.NOTHING if record.outcome in SETTLED else Action.RESTART
    return Action.RESTART


def adopted(target: Target, token_time: str) -> RestartStatus:
    return RestartStatus(kind=target.kind, name=target.name, token_time=token_time, outcome=RestartOutcome.CURRENT,
                         message="first seen: its pods are taken to hold the token in the Secret",
                         derived=target.derived or None)


def restarted(target: Target, token_time: str, now: dt.datetime, generation: int | None,
              message: str | None = None) -> RestartStatus:
    return RestartStatus(kind=target.kind, name=target.name, token_time=token_time, last_restart_time=rfc3339(now),
                         generation=generation, outcome=RestartOutcome.RESTARTED,
                         message=message or f"restarted for the token acquired at {token_time}",
                         derived=target.derived or None)


def not_restarted(target: Target, record: RestartStatus | None, outcome: RestartOutcome, message: str,
                  token_time: str) -> RestartStatus:
    """A try that did not restart: the record keeps the token it last restarted for, so the target stays due (a
    missing workload is the exception: one created later starts with the token the Secret then holds)."""
    kept = token_time if outcome == RestartOutcome.NOT_FOUND else (record.token_time if record else None)
    if outcome in (RestartOutcome.NOT_FOUND, RestartOutcome.REFUSED):
        kept = token_time
    return RestartStatus(kind=target.kind, name=target.name, token_time=kept or token_time,
                         last_restart_time=record.last_restart_time if record else None,
                         generation=record.generation if record else None, outcome=outcome, message=message,
                         derived=target.derived or None)


def marker(credential: str, token_time: str) -> str:
    """What the restart writes on the workload for this credential's token: the same marker means restarted."""
    return f"{credential}@{token_time}"


def restart_patch(now: dt.datetime, mark: str) -> dict[str, Any]:
    """The merge patch that makes the workload's controller roll its pods (what `kubectl rollout restart` does),
    with the token it was restarted for. Microseconds: two restarts within a second must still differ."""
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: rfc3339_micro(now),
                                                                RESTARTED_FOR_ANNOTATION: mark}}}}}


def template_annotations(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(_map(_map(_map(workload.get("spec")).get("template")).get("metadata")).get("annotations"))


def pod_spec(workload: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(_map(_map(workload.get("spec")).get("template")).get("spec"))


def generation_of(workload: Mapping[str, Any]) -> int | None:
    value = _map(workload.get("metadata")).get("generation")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def rollout_in_progress(kind: str, workload: Mapping[str, Any], ours: int | None) -> str | None:
    """What is still rolling out of the rollout graphcred started last, None if it is done or not graphcred's.
    `ours`: the workload's generation right after graphcred's last restart (None: graphcred restarted nothing
    yet). Ours while the controller has not seen that generation, or while it is the current one (no one changed
    the workload since) and incomplete by the checks of `kubectl rollout status`. A rollout someone else started
    later is not graphcred's to wait for; a workload updated OnDelete rolls nothing by itself: never waited for."""
    if ours is None:
        return None
    meta, spec, status = _map(workload.get("metadata")), _map(workload.get("spec")), _map(workload.get("status"))
    since = f"the rollout graphcred started at {template_annotations(workload).get(RESTARTED_AT_ANNOTATION, '?')}"
    if _int(status.get("observedGeneration"), -1) < ours:
        return f"{since} is not yet seen by the {kind} controller"
    if _int(meta.get("generation")) != ours:
        return None  # changed since by someone else: that rollout is theirs
    missing = _incomplete(kind, spec, status)
    if missing is None:
        return None
    if kind == WorkloadKind.DEPLOYMENT:
        if spec.get("paused") is True:
            return f"{since} waits: the Deployment is paused"
        for condition in status.get("conditions") or []:
            if _map(condition).get("reason") == "ProgressDeadlineExceeded":
                return f"{since} is stuck ({missing}; its progress deadline has passed)"
    return f"{since} is in progress: {missing}"


def _incomplete(kind: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> str | None:
    if kind == WorkloadKind.DEPLOYMENT:
        want = _int(spec.get("replicas"), 1)
        updated, total = _int(status.get("updatedReplicas")), _int(status.get("replicas"))
        available = _int(status.get("availableReplicas"))
        if updated < want:
            return f"{updated} of {want} pods updated"
        if total > updated:
            return f"{total - updated} old pods pending termination"
        if available < updated:
            return f"{available} of {updated} updated pods available"
        return None
    strategy = _map(spec.get("updateStrategy"))
    if strategy.get("type") == "OnDelete":
        return None
    if kind == WorkloadKind.STATEFUL_SET:
        want = _int(spec.get("replicas"), 1)
        partition = _int(_map(strategy.get("rollingUpdate")).get("partition"))
        updated, ready = _int(status.get("updatedReplicas")), _int(status.get("readyReplicas"))
        if updated < want - partition:
            return f"{updated} of {want - partition} pods updated"
        if ready < want:
            return f"{ready} of {want} pods ready"
        return None
    desired = _int(status.get("desiredNumberScheduled"))
    updated, available = _int(status.get("updatedNumberScheduled")), _int(status.get("numberAvailable"))
    if updated < desired:
        return f"{updated} of {desired} pods updated"
    if available < desired:
        return f"{available} of {desired} pods available"
    return None


def records_of(raw: Any) -> dict[tuple[str, str], RestartStatus]:
    """status.restarts as stored (a record this version cannot read is dropped: the target is then adopted)."""
    records: dict[tuple[str, str], RestartStatus] = {}
    for item in raw if isinstance(raw, list) else []:
        try:
            record = RestartStatus.model_validate(item)
        except ValueError:
            continue
        records[(record.kind, record.name)] = record
    return records


def status_list(targets_now: Sequence[Target], records: Mapping[tuple[str, str], RestartStatus]
                ) -> list[dict[str, Any]] | None:
    """status.restarts: the current targets' records, in their order (None: no target)."""
    listed = [records[t.key].model_dump(by_alias=True, exclude_none=True, mode="json")
              for t in targets_now if t.key in records]
    return listed or None
