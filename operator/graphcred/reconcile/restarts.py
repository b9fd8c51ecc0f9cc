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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from graphcred.api.keys import RESTARTED_AT_ANNOTATION
from graphcred.api.model import RestartOutcome, RestartStatus, WorkloadKind
from graphcred.base.times import rfc3339

# the outcomes after which the target's pods hold the token its record names: nothing to retry until a newer one
SETTLED = (RestartOutcome.CURRENT, RestartOutcome.RESTARTED, RestartOutcome.NOT_FOUND)


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


def targets(named: Iterable[tuple[str, str]], derived: Iterable[tuple[str, str]]) -> list[Target]:
    """The spec's targets in its order, then those the consumer watch found that the spec does not name."""
    result = [Target(kind, name) for kind, name in named]
    seen = {t.key for t in result}
    for kind, name in sorted(set(derived)):
        if (kind, name) not in seen:
            result.append(Target(kind, name, derived=True))
    return result


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


def restarted(target: Target, token_time: str, now: dt.datetime) -> RestartStatus:
    return RestartStatus(kind=target.kind, name=target.name, token_time=token_time, last_restart_time=rfc3339(now),
                         outcome=RestartOutcome.RESTARTED,
                         message=f"restarted for the token acquired at {token_time}", derived=target.derived or None)


def not_restarted(target: Target, record: RestartStatus | None, outcome: RestartOutcome, message: str,
                  token_time: str) -> RestartStatus:
    """A try that did not restart: the record keeps the token it last restarted for, so the target stays due (a
    missing workload is the exception: one created later starts with the token the Secret then holds)."""
    kept = token_time if outcome == RestartOutcome.NOT_FOUND else (record.token_time if record else None)
    return RestartStatus(kind=target.kind, name=target.name, token_time=kept or token_time,
                         last_restart_time=record.last_restart_time if record else None, outcome=outcome,
                         message=message, derived=target.derived or None)


def restart_patch(now: dt.datetime) -> dict[str, Any]:
    """The merge patch that makes the workload's controller roll its pods (what `kubectl rollout restart` does).
    Microseconds: two restarts within a second must still differ, or the second would roll nothing."""
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}}


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def rollout_in_progress(kind: str, workload: Mapping[str, Any]) -> str | None:
    """What is still rolling out, if graphcred restarted this workload before (its template carries
    graphcred.io/restarted-at) and that rollout is not complete; None otherwise. The checks are those of `kubectl
    rollout status`. A workload updated OnDelete rolls nothing by itself: never waited for."""
    meta, spec, status = _map(workload.get("metadata")), _map(workload.get("spec")), _map(workload.get("status"))
    annotations = _map(_map(_map(spec.get("template")).get("metadata")).get("annotations"))
    if RESTARTED_AT_ANNOTATION not in annotations:
        return None
    since = f"the rollout graphcred started at {annotations[RESTARTED_AT_ANNOTATION]}"
    if _int(status.get("observedGeneration"), -1) < _int(meta.get("generation")):
        return f"{since} is not yet seen by the {kind} controller"
    if kind == WorkloadKind.DEPLOYMENT:
        if spec.get("paused") is True:
            return f"{since} waits: the Deployment is paused"
        want = _int(spec.get("replicas"), 1)
        updated, total = _int(status.get("updatedReplicas")), _int(status.get("replicas"))
        available = _int(status.get("availableReplicas"))
        if updated < want:
            return f"{since} is in progress: {updated} of {want} pods updated"
        if total > updated:
            return f"{since} is in progress: {total - updated} old pods still terminating"
        if available < updated:
            return f"{since} is in progress: {available} of {updated} updated pods available"
        return None
    strategy = _map(spec.get("updateStrategy"))
    if strategy.get("type") == "OnDelete":
        return None
    if kind == WorkloadKind.STATEFUL_SET:
        want = _int(spec.get("replicas"), 1)
        partition = _int(_map(strategy.get("rollingUpdate")).get("partition"))
        updated, ready = _int(status.get("updatedReplicas")), _int(status.get("readyReplicas"))
        if updated < want - partition:
            return f"{since} is in progress: {updated} of {want - partition} pods updated"
        if ready < want:
            return f"{since} is in progress: {ready} of {want} pods ready"
        return None
    desired = _int(status.get("desiredNumberScheduled"))
    updated, available = _int(status.get("updatedNumberScheduled")), _int(status.get("numberAvailable"))
    if updated < desired:
        return f"{since} is in progress: {updated} of {desired} pods updated"
    if available < desired:
        return f"{since} is in progress: {available} of {desired} pods available"
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
