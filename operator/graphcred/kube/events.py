"""Kubernetes Events on GraphAppCredentials, posted by graphcred itself. kopf's `kopf.event` can name the component
and instance (settings.posting) but not the host, sets the action to "Action?" and counts no repeats.

- Reported by component `graphcred`, instance POD_NAME (the chart sets it from the downward API) or else the host
  name: in `source.component`/`source.host` (kubectl's "From") and in `reportingComponent`/`reportingInstance`
  (events.k8s.io/v1's `reportingController`/`reportingInstance`), with an `action` and an `eventTime`, so both
  Event APIs, `kubectl events --for gac/NAME` and event exporters find them.
- Repeats are counted as client-go's recorder counts them: the same Event again (object, type, reason, message)
  patches the one posted first (`count` + 1, `lastTimestamp`) instead of adding another; one gone meanwhile (the
  apiserver's --event-ttl, an hour by default) is posted anew. Not done: client-go's folding of similar messages
  and its per-object spam filter: graphcred posts on transitions only, never in a loop.
- Never in the way of a pass: calling the recorder only queues (bounded; beyond it Events are dropped and
  counted); a few posters post them, each Event of one object by the same poster, in order (so repeats are counted
  and an object's Events land in order). On the event loop when the operator's Kubernetes calls can be made there
  (`on_loop`: kube/loopcalls.py), else through the `run_blocking` it is given (threads of their own, not the
  passes' I/O threads): in threads, four posters fell behind a burst of 10,000 new credentials and dropped a fifth
  of its Events (bench/scale.py, docs/design/2026-12-06-lean-at-scale.md). Several posters: one at a time, with
  the apiserver and the event loop busy with thousands of refreshing credentials, posted five to ten Events a
  second and trailed a burst's Ready statuses by minutes. A failed post is retried twice if it failed for an
  apiserver outage (no answer, 429, 5xx: `KubeError.outage`), then logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import os
import socket
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from graphcred.base.times import rfc3339, rfc3339_micro
from graphcred.kube.errors import Forbidden, describe_failure, outage

log = logging.getLogger(__name__)

COMPONENT = "graphcred"
MAX_MESSAGE = 1024  # the apiserver refuses longer messages on Events with an eventTime
MAX_INSTANCE = 128  # ... and longer reportingInstance values
MAX_NAME = 253
QUEUE_SIZE = 1024
CACHE_SIZE = 4096  # Events remembered for counting repeats (client-go's recorder: the same)
RETRY_DELAYS = (1.0, 2.0)
POSTERS = 4  # Events posted at once in threads (the operator gives them as many)
POSTERS_ON_LOOP = 8  # ... and on the loop, where a poster costs no thread
# what was done when the Event happened; every reason but the consumer warning is about acquiring the token
ACTIONS = {"UnrefreshableConsumer": "CheckConsumers"}
DEFAULT_ACTION = "AcquireToken"


def instance_name(environ: Mapping[str, str] = os.environ, hostname: Callable[[], str] = socket.gethostname) -> str:
    """Who reports: the pod (POD_NAME, from the chart's downward API), else the host."""
    return (environ.get("POD_NAME") or hostname() or "unknown")[:MAX_INSTANCE]


def _cut(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    return message[:MAX_MESSAGE - 3] + "..."


def involved_object(ref: Mapping[str, Any]) -> dict[str, str]:
    """An ObjectReference from an object's apiVersion, kind and metadata (name, namespace, uid)."""
    meta = ref["metadata"]
    return {"apiVersion": ref["apiVersion"], "kind": ref["kind"], "name": meta["name"],
            "namespace": meta.get("namespace") or "", "uid": meta.get("uid", "")}


# Events about a cluster-scoped object (a ClusterGraphApp) go to this namespace, as client-go's recorder puts them
CLUSTER_EVENTS_NAMESPACE = "default"


def event_namespace(namespace: str) -> str:
    return namespace or CLUSTER_EVENTS_NAMESPACE


def event_body(ref: Mapping[str, Any], type: str, reason: str, message: str, *,  # noqa: A002
               name: str, instance: str, at: dt.datetime) -> dict[str, Any]:
    """A core/v1 Event about `ref` (a GraphAppCredential's apiVersion, kind and metadata)."""
    obj = involved_object(ref)
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": event_namespace(obj["namespace"])},
        "involvedObject": obj,
        "type": type, "reason": reason, "message": _cut(message),
        "action": ACTIONS.get(reason, DEFAULT_ACTION),
        "source": {"component": COMPONENT, "host": instance},
        "reportingComponent": COMPONENT, "reportingInstance": instance,
        "firstTimestamp": rfc3339(at), "lastTimestamp": rfc3339(at), "eventTime": rfc3339_micro(at), "count": 1,
    }


def event_name(object_name: str, nanos: int) -> str:
    """client-go's naming: the object's name and the time in hexadecimal nanoseconds."""
    suffix = f".{nanos:x}"
    return object_name[:MAX_NAME - len(suffix)] + suffix


class EventApi(Protocol):
    """`Kube`'s Event calls; they fail with a KubeError (graphcred.kube.errors)."""

    def create_event(self, namespace: str, body: dict[str, Any]) -> None: ...

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool: ...


class LoopEventApi(Protocol):
    """The same calls as coroutines on the loop (`LoopKube`'s)."""

    async def create_event(self, namespace: str, body: dict[str, Any]) -> None: ...

    async def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> bool: ...


@dataclass(frozen=True)
class _Pending:
    ref: Mapping[str, Any]
    type: str
    reason: str
    message: str
    at: dt.datetime

    def key(self) -> tuple[str, ...]:
        obj = involved_object(self.ref)
        return (obj["namespace"], obj["name"], obj["uid"], self.type, self.reason, self.message)


@dataclass
class _Posted:
    name: str
    count: int


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EventRecorder:
    """The operator's EventSink. `start()` on the event loop before the first Event; `stop()` at the end. Posts
    through `on_loop` if given, else through `api` in `run_blocking`'s threads."""

    def __init__(self, api: EventApi, run_blocking: Callable[..., Awaitable[Any]], *, instance: str,
                 on_loop: LoopEventApi | None = None, clock: Callable[[], dt.datetime] = _now,
                 queue_size: int = QUEUE_SIZE, cache_size: int = CACHE_SIZE,
                 retry_delays: Sequence[float] = RETRY_DELAYS, posters: int | None = None,
                 on_lost: Callable[[str], None] = lambda why: None) -> None:
        self.instance = instance[:MAX_INSTANCE]
        self._create: Callable[[str, dict[str, Any]], Awaitable[None]]
        self._patch: Callable[[str, str, dict[str, Any]], Awaitable[bool]]
        if on_loop is not None:
            self._create, self._patch = on_loop.create_event, on_loop.patch_event
        else:
            self._create = functools.partial(run_blocking, api.create_event)
            self._patch = functools.partial(run_blocking, api.patch_event)
        self._clock = clock
        self._queue_size, self._cache_size, self._retry_delays = queue_size, cache_size, tuple(retry_delays)
        self._posters = posters if posters is not None else POSTERS_ON_LOOP if on_loop is not None else POSTERS
        self._on_lost = on_lost  # counts each lost Event by why: queue_full, stopped, failed (a metric)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: list[asyncio.Queue[_Pending]] = []  # one a poster, `queue_size` each
        self._task: asyncio.Task[None] | None = None
        self._posted: OrderedDict[tuple[str, ...], _Posted] = OrderedDict()
        self._last_nanos = 0
        self.lost = 0  # Events not posted: dropped (queue full, stopped) or failed
        self._failing = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queues = [asyncio.Queue(self._queue_size) for _ in range(self._posters)]
        self._task = asyncio.create_task(self._run(), name="graphcred:events")

    def __call__(self, obj: dict[str, Any], type: str, reason: str, message: str) -> None:  # noqa: A002
        """Queue an Event; returns at once, from the loop or any thread."""
        pending = _Pending(obj, type, reason, message, self._clock())
        loop = self._loop
        if loop is None or loop.is_closed():
            self._lose(pending, "not started", "stopped")
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._put(pending)
        else:
            loop.call_soon_threadsafe(self._put, pending)

    def _put(self, pending: _Pending) -> None:
        if not self._queues or self._task is None or self._task.done():
            self._lose(pending, "stopped", "stopped")
            return
        obj = involved_object(pending.ref)
        shard = zlib.crc32(f"{obj['namespace']}/{obj['name']}".encode()) % len(self._queues)  # one object, one poster
        queue = self._queues[shard]
        try:
            queue.put_nowait(pending)
        except asyncio.QueueFull:
            self._lose(pending, f"{self._queue_size} Events waiting", "queue_full")

    async def _run(self) -> None:
        await asyncio.gather(*(self._poster(queue) for queue in self._queues))

    async def _poster(self, queue: asyncio.Queue[_Pending]) -> None:
        while True:
            pending = await queue.get()
            try:
                await self._post(pending)
            finally:
                queue.task_done()

    async def _post(self, pending: _Pending) -> None:
        error: BaseException | None = None
        for delay in (0.0, *self._retry_delays):
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._send(pending)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # the poster is stopped
                error = exc  # a call refused by a transport already closed: this Event is lost, the poster lives on
                break
            except Exception as exc:  # noqa: BLE001 - an Event is never worth failing anything for
                error = exc
                if outage(exc):
                    continue
                break
            if self._failing:
                self._failing = False
                log.info("posting Events again (%d not posted so far)", self.lost)
            return
        assert error is not None
        if isinstance(error, Forbidden) and error.namespace_terminating:
            # the credential's namespace is being deleted: no failure (client-go's recorder drops these quietly too)
            obj = involved_object(pending.ref)
            log.debug("%s/%s: Event %s not posted: the namespace is being deleted", obj["namespace"], obj["name"],
                      pending.reason)
            return
        self._lose(pending, describe_failure("post Event", error), "failed")

    async def _send(self, pending: _Pending) -> None:
        """One Event to the apiserver: a repeat updates the Event posted first. The Events of one object one at a
        time (their poster's), others' at the same time; what is remembered is touched on the loop only."""
        key = pending.key()
        namespace = event_namespace(key[0])
        posted = self._posted.get(key)
        if posted is not None and await self._patch(namespace, posted.name, {
                "count": posted.count + 1, "lastTimestamp": rfc3339(pending.at)}):
            posted.count += 1
            if key in self._posted:
                self._posted.move_to_end(key)
            return
        name = event_name(key[1], self._nanos(pending.at))
        await self._create(namespace, event_body(pending.ref, pending.type, pending.reason, pending.message,
                                                 name=name, instance=self.instance, at=pending.at))
        self._posted[key] = _Posted(name, 1)
        self._posted.move_to_end(key)
        while len(self._posted) > self._cache_size:
            self._posted.popitem(last=False)

    def _nanos(self, at: dt.datetime) -> int:
        """The Event's time in nanoseconds, made unique: two Events of one object in one instant get two names."""
        nanos = max(int(at.timestamp() * 1e9), self._last_nanos + 1)
        self._last_nanos = nanos
        return nanos

    def _lose(self, pending: _Pending, why: str, kind: str) -> None:
        self.lost += 1
        self._on_lost(kind)
        obj = involved_object(pending.ref)
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "%s/%s: Event %s not posted (%s)%s", obj["namespace"], obj["name"], pending.reason, why,
                "" if level == logging.DEBUG else "; until one is posted again, further losses are logged at DEBUG")

    async def stop(self, timeout: float = 2.0) -> None:
        """Post what is queued, for at most `timeout` seconds, then stop."""
        task, queues = self._task, self._queues
        if task is None or not queues:
            return
        if not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(queue.join() for queue in queues)), timeout)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for queue in queues:  # what the posters did not reach in time is lost: counted like any other loss
            while not queue.empty():
                self._lose(queue.get_nowait(), "stopped", "stopped")
