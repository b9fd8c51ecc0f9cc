"""Restart targets: restarts the workloads of a credential (spec.restartTargets, and with restartUnrefreshable those
of the pods the consumer watch flags) once for each new token, right after the pass that wrote it.

The passes tell it (`track`) which targets a credential has and which token its Secret holds; what is due is
decided by `reconcile.restarts` (pure). One task per credential with something due: it reads each due workload,
waits while the rollout graphcred started last is still in progress (polling it, never stacking a second rollout on
a stuck one), patches the pod template's annotation, and writes `status.restarts` (its own field: the passes' status
patches leave it alone) and an Event per restart or per new problem. The records in status are what a restarted
operator or a new leader starts from, so neither restarts anything for a token already served; the marker each
restart leaves on the workload (`graphcred.io/restarted-for`) covers a restart made but not yet recorded (the
process stopped between the two).

restartUnrefreshable's workloads come from the consumer watch, once it has listed the namespace (until then they
are neither restarted nor forgotten), at most MAX_RESTART_TARGETS of them, each restarted only if its own pod
template reads the token Secret where no refresh reaches (a pod's ownerReference is its author's to write).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphcred.api.keys import RESTARTED_FOR_ANNOTATION
from graphcred.api.model import MAX_RESTART_TARGETS, RestartOutcome, RestartStatus, WorkloadKind
from graphcred.base.backoff import backoff
from graphcred.kube.errors import Forbidden, Gone, KubeError
from graphcred.reconcile.ports import EventSink, WorkloadPort
from graphcred.reconcile.restarts import (
    Action,
    Target,
    action,
    adopted,
    generation_of,
    marker,
    not_restarted,
    pod_spec,
    records_of,
    restart_patch,
    restarted,
    rollout_in_progress,
    status_list,
    targets,
    template_annotations,
)
from graphcred.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

Key = tuple[str, str]  # a GraphAppCredential: namespace, name
STATUS_FIELD = "restarts"
WAITING_POLL = 10.0  # seconds until the first look again at a rollout graphcred waits for; doubling, to FAILURE_CAP
FAILURE_CAP = 300.0
UNSETTLED_RETRY = 5.0  # restartUnrefreshable before the pod watch has listed the credential's namespace
CONCURRENCY = 4  # workloads read or patched at once, over all credentials
OWNER_KINDS = {"StatefulSet": WorkloadKind.STATEFUL_SET, "DaemonSet": WorkloadKind.DAEMON_SET}


# restartUnrefreshable: the credential's token Secret and the controllers ("Kind/name") of the pods reading it
# where no refresh reaches them; None until the pod watch has listed the credential's namespace
Unrefreshable = Callable[[Key], tuple[str, set[str]] | None]
# does a pod spec read the named Secret where no refresh reaches it (consumers.pods)?
ReadsOnce = Callable[[Mapping[str, Any], str], bool]


@dataclass
class _Job:
    ref: dict[str, Any]  # the GraphAppCredential, for Events
    named: list[tuple[str, str]]
    unrefreshable: bool
    token_time: str | None
    records: dict[tuple[str, str], RestartStatus]
    written: list[dict[str, Any]] | None  # status.restarts as the object holds it (or as last written)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    failures: int = 0
    waits: int = 0  # looks in a row at a rollout still in progress
    owners: dict[str, str | None] = field(default_factory=dict)  # ReplicaSet -> its Deployment (None: none)
    told: set[str] = field(default_factory=set)  # one-off warnings already given


@dataclass
class _Derived:
    secret: str  # the token Secret the workloads' templates must read
    targets: list[tuple[str, str]]
    complete: bool  # every owner resolved (a ReplicaSet read failed: not)


class Restarter:
    """Restarts restart targets for new tokens (the module's docstring says when). Runs on the event loop; its
    blocking calls go through `run_blocking`. Only the acting replica runs it, as everything the passes start."""

    def __init__(self, kube: WorkloadPort, run_blocking: Callable[..., Awaitable[Any]], emit: EventSink,
                 metrics: Metrics, clock: Callable[[], dt.datetime], rng: random.Random | None = None) -> None:
        self.kube = kube
        self._run_blocking = run_blocking
        self.emit = emit
        self.metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter only
        self.unrefreshable: Unrefreshable = lambda _key: None  # the consumer reports, when pods are watched
        self.reads_once: ReadsOnce = lambda _spec, _secret: False
        self.watching = False  # --watch-consumers: without it restartUnrefreshable finds nothing, and says so
        self._jobs: dict[Key, _Job] = {}
        self._io = asyncio.Semaphore(CONCURRENCY)
        self._stopping = False

    def track(self, key: Key, ref: dict[str, Any], status: Mapping[str, Any], named: Sequence[tuple[str, str]],
              unrefreshable: bool, token_time: str | None) -> None:
        """After each pass: the credential's targets and the token its Secret holds (its lastRefreshTime; None: no
        token). The first call for a credential starts from the records its status holds."""
        job = self._jobs.get(key)
        if job is None:
            stored = status.get(STATUS_FIELD)
            if not named and not unrefreshable and not stored:
                return
            job = _Job(ref, list(named), unrefreshable, token_time, records_of(stored),
                       stored if isinstance(stored, list) else None)
            self._jobs[key] = job
        elif (job.named, job.unrefreshable, job.token_time) == (list(named), unrefreshable, token_time):
            return  # nothing new: a task that waits keeps its own schedule
        job.named, job.unrefreshable, job.token_time = list(named), unrefreshable, token_time
        self._kick(key, job)

    def tracking(self, key: Key) -> bool:
        return key in self._jobs

    def consumers_changed(self, key: Key) -> None:
        """The consumer watch found other unrefreshable pods for this credential: new workloads are adopted."""
        job = self._jobs.get(key)
        if job is not None and job.unrefreshable:
            self._kick(key, job)

    def forget(self, key: Key) -> None:
        job = self._jobs.pop(key, None)
        if job is not None and job.task is not None:
            job.task.cancel()

    async def stop(self) -> None:
        self._stopping = True
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        self._jobs.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _kick(self, key: Key, job: _Job) -> None:
        job.wake.set()
        if not self._stopping and (job.task is None or job.task.done()):
            job.task = asyncio.create_task(self._run(key, job), name=f"graphcred:restarts:{key[0]}/{key[1]}")

    async def _run(self, key: Key, job: _Job) -> None:
        while self._jobs.get(key) is job:
            job.wake.clear()
            try:
                delay = await self._turn(key, job)
            except Gone:
                self.forget(key)
                return
            except Exception as exc:  # noqa: BLE001 - one credential's trouble must not end the others' restarts
                job.failures += 1
                delay = backoff(job.failures, None, self._rng, cap=FAILURE_CAP)
                log.warning("%s/%s: restart targets: %s; trying again in %.0f s", key[0], key[1],
                            exc if isinstance(exc, KubeError) else type(exc).__name__, delay)
            if delay is None:
                if not job.wake.is_set():
                    return  # nothing due: the next track starts a task again
                continue
            # a timer that sets the wake, not asyncio.wait_for (which runs the wait in a task of its own)
            timer = asyncio.get_running_loop().call_later(delay, job.wake.set)
            try:
                await job.wake.wait()
            finally:
                timer.cancel()

    async def _turn(self, key: Key, job: _Job) -> float | None:
        """One look at every target; returns when to look again (None: nothing is due)."""
        derived = await self._derived(key, job) if job.unrefreshable else _Derived("", [], True)
        now_targets, left_out = targets(job.named, derived.targets if derived is not None else [])
        if left_out:
            self._tell_once(job, "too-many", f"restartUnrefreshable found {MAX_RESTART_TARGETS + left_out} "
                            f"workloads; only the first {MAX_RESTART_TARGETS} (by kind and name) are restarted")
        waiting = failed = False
        for target in now_targets:
            record = job.records.get(target.key)
            todo = action(record, job.token_time)
            if todo == Action.NOTHING or job.token_time is None:
                continue
            if todo == Action.ADOPT:
                job.records[target.key] = adopted(target, job.token_time)
                continue
            try:
                new = await self._restart(key, job, target, record, job.token_time,
                                          derived.secret if target.derived and derived is not None else None)
            except Gone:
                raise
            except Exception as exc:  # noqa: BLE001 - one target's trouble must not cost the others their restart
                new = self._problem(job, target, record, RestartOutcome.FAILED, job.token_time,
                                    f"{target}: {exc if isinstance(exc, KubeError) else type(exc).__name__}")
            job.records[target.key] = new
            waiting |= new.outcome == RestartOutcome.WAITING
            failed |= new.outcome in (RestartOutcome.FORBIDDEN, RestartOutcome.FAILED)
        # a derived workload's record goes only once the pod watch says its pods no longer need it
        keep = {t.key for t in now_targets}
        job.records = {k: r for k, r in job.records.items()
                       if k in keep or (r.derived and (derived is None or not derived.complete))}
        wanted = status_list([*now_targets, *[_as_target(r) for k, r in job.records.items() if k not in keep]],
                             job.records)
        if wanted != job.written:
            await self._blocking(self.kube.patch_status, key[0], key[1], {STATUS_FIELD: wanted})
            job.written = wanted
        job.failures = job.failures + 1 if failed or (derived is not None and not derived.complete) else 0
        job.waits = job.waits + 1 if waiting else 0
        delays = []
        if job.failures:
            delays.append(backoff(job.failures, None, self._rng, cap=FAILURE_CAP))
        if waiting:  # looked at less and less often: a rollout stuck for hours costs a look every 5 minutes
            delays.append(min(WAITING_POLL * 2 ** min(job.waits - 1, 10), FAILURE_CAP))
        if derived is None:  # the pod watch has not listed the namespace yet: look again soon
            delays.append(UNSETTLED_RETRY)
        return min(delays) if delays else None

    async def _restart(self, key: Key, job: _Job, target: Target, record: RestartStatus | None, token_time: str,
                       must_read: str | None) -> RestartStatus:
        """One due target. `must_read`: a derived one's token Secret, which its own template must read once."""
        namespace, credential = key
        mark = marker(credential, token_time)
        try:
            workload = await self._blocking(self.kube.read_workload, target.kind, namespace, target.name)
            if workload is None:
                return self._problem(job, target, record, RestartOutcome.NOT_FOUND, token_time,
                                     f"{target} not found in namespace {namespace}: nothing restarted")
            if template_annotations(workload).get(RESTARTED_FOR_ANNOTATION) == mark:
                # restarted for this token already, by this process or one that stopped before recording it
                return restarted(target, token_time, self._clock(), generation_of(workload),
                                 f"restarted for the token acquired at {token_time}")
            if must_read is not None and not self.reads_once(pod_spec(workload), must_read):
                return self._problem(job, target, record, RestartOutcome.REFUSED, token_time,
                                     f"{target}: its pod template does not read Secret {must_read} through env, "
                                     "envFrom or a subPath mount: not restarted (restartUnrefreshable restarts only "
                                     "workloads that need it)")
            pending = rollout_in_progress(target.kind, workload, record.generation if record else None)
            if pending is not None:
                return self._problem(job, target, record, RestartOutcome.WAITING, token_time,
                                     f"{target}: {pending}; graphcred restarts it for the newer token once that is "
                                     "done (never a second rollout on top of one in progress)")
            now = self._clock()
            patched = await self._blocking(self.kube.patch_workload, target.kind, namespace, target.name,
                                           restart_patch(now, mark))
            if patched is None:
                return self._problem(job, target, record, RestartOutcome.NOT_FOUND, token_time,
                                     f"{target} not found in namespace {namespace}: nothing restarted")
        except Forbidden as exc:
            return self._problem(job, target, record, RestartOutcome.FORBIDDEN, token_time,
                                 f"{target}: {exc}: graphcred may not read or patch it (the chart's "
                                 "restartTargets.enabled grants it)")
        except KubeError as exc:
            if isinstance(exc, Gone):
                raise
            return self._problem(job, target, record, RestartOutcome.FAILED, token_time, f"{target}: {exc}")
        self.metrics.restarts.labels(target.kind, RestartOutcome.RESTARTED.value).inc()
        message = f"restarted {target} for the new token (acquired at {token_time})"
        log.info("%s/%s: %s", namespace, credential, message)
        self.emit(job.ref, "Normal", "WorkloadRestarted", message)
        return restarted(target, token_time, now, generation_of(patched))

    def _problem(self, job: _Job, target: Target, record: RestartStatus | None, outcome: RestartOutcome,
                 token_time: str, message: str) -> RestartStatus:
        """A try that restarted nothing: counted, and told (Event, log) when the outcome is new (a wait is
        counted once, not at each look)."""
        new_outcome = record is None or record.outcome != outcome
        if outcome != RestartOutcome.WAITING or new_outcome:
            self.metrics.restarts.labels(target.kind, outcome.value).inc()
        if new_outcome:
            log.warning("%s/%s: %s", job.ref["metadata"]["namespace"], job.ref["metadata"]["name"], message)
            self.emit(job.ref, "Warning", f"Restart{outcome.value}", message)
        return not_restarted(target, record, outcome, message, token_time)

    def _tell_once(self, job: _Job, what: str, message: str) -> None:
        if what not in job.told:
            job.told.add(what)
            log.warning("%s/%s: %s", job.ref["metadata"]["namespace"], job.ref["metadata"]["name"], message)
            self.emit(job.ref, "Warning", "RestartTargetsLimited", message)

    async def _derived(self, key: Key, job: _Job) -> _Derived | None:
        """The workloads of the flagged pods (a ReplicaSet's Deployment, read once; a StatefulSet; a DaemonSet);
        None while the pod watch has not listed the namespace."""
        if not self.watching:
            if "unwatched" not in job.told:
                job.told.add("unwatched")
                message = ("restartUnrefreshable finds no workload: this operator does not watch pods (graphcred "
                           "run --watch-consumers, the chart's consumerWarnings.enabled); restartTargets still apply")
                log.warning("%s/%s: %s", key[0], key[1], message)
                self.emit(job.ref, "Warning", "RestartUnrefreshableUnwatched", message)
            return _Derived("", [], True)
        found = self.unrefreshable(key)
        if found is None:
            return None
        secret, owners = found
        job.owners = {rs: d for rs, d in job.owners.items() if f"ReplicaSet/{rs}" in owners}  # old ones go
        result = _Derived(secret, [], True)
        for owner in sorted(owners):
            kind, _, name = owner.partition("/")
            if kind in OWNER_KINDS:
                result.targets.append((OWNER_KINDS[kind].value, name))
            elif kind == "ReplicaSet" and len(job.owners) < 4 * MAX_RESTART_TARGETS:
                if name not in job.owners:
                    try:
                        body = await self._blocking(self.kube.read_workload, "ReplicaSet", key[0], name)
                    except Gone:
                        raise
                    except KubeError as exc:  # not remembered: read again on the next turn
                        log.warning("%s: cannot read ReplicaSet %s (%s): its Deployment is not restarted yet",
                                    key[0], name, exc)
                        result.complete = False
                        continue
                    job.owners[name] = _deployment_of(body)
                deployment = job.owners[name]
                if deployment is not None:
                    result.targets.append((WorkloadKind.DEPLOYMENT.value, deployment))
        return result

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with self._io:
            return await self._run_blocking(fn, *args)


def _as_target(record: RestartStatus) -> Target:
    return Target(record.kind, record.name, derived=bool(record.derived))


def _deployment_of(body: Mapping[str, Any] | None) -> str | None:
    """The Deployment controlling a ReplicaSet, if any."""
    for ref in ((body or {}).get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") and ref.get("kind") == "Deployment":
            name = ref.get("name")
            return name if isinstance(name, str) else None
    return None
