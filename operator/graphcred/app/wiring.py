"""The composition root: what the operator's process is built from (`build`), and the one place that starts it and
stops it (`Operator.start`, `Operator.stop`). kopf's handlers (handlers.py) only call these; nothing is set on a
part after it was built, and kopf's memo carries one typed object (`OperatorMemo`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.utils.keepalive import tcp_keepalive_socket_options

from graphcred.acquire.graphkeys import GraphKeys
from graphcred.acquire.managed import ManagedIdentityTokens
from graphcred.acquire.tokens import TokenClient
from graphcred.app.config import RunConfig
from graphcred.app.stopflag import StopFlag
from graphcred.consumers.pods import PodConsumer, PodKey, reads_unrefreshably
from graphcred.consumers.podwatch import PodWatch
from graphcred.consumers.reports import ConsumerReports
from graphcred.kube.calls import Kube
from graphcred.kube.events import POSTERS, POSTERS_ON_LOOP, EventRecorder, instance_name
from graphcred.kube.loopcalls import LoopKube
from graphcred.kube.metawatch import Directory, MetadataWatch
from graphcred.kube.objectwatch import LatestPerKey, ObjectWatch
from graphcred.reconcile.apps import ClusterApps
from graphcred.reconcile.controller import Controller
from graphcred.reconcile.reconciler import Reconciler
from graphcred.telemetry.metrics import Health, Metrics

log = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 2.0


def api_client(cfg: RunConfig) -> client.ApiClient:
    configuration = client.Configuration()
    if cfg.kubeconfig or not cfg.in_cluster():
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=cfg.kubeconfig, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    # every I/O thread may hold a connection (API and token threads share the executor; Events have their own):
    # no "pool is full" churn
    configuration.connection_pool_maxsize = cfg.api_concurrency + cfg.token_concurrency + POSTERS
    # TCP keepalive notices a peer that vanished (a half-open connection) on idle sockets and watches: probes
    # after 30 s idle, dead after 3 unanswered probes 10 s apart. Calls have their own timeouts (kube/calls.py).
    configuration.socket_options = tcp_keepalive_socket_options(idle=30, interval=10, count=3)
    # one urllib3 retry (a stale pooled connection, a refused connect), not three: each would wait a timeout
    configuration.retries = urllib3.Retry(total=1)
    return client.ApiClient(configuration)


class BlockingCalls:
    """Blocking I/O in the operator's threads, awaited on the loop.

    `abandon` (the cleanup, once the workers are cancelled) ends every call still awaited: a shared token request
    or read outliving the pass that started it (shielded, so cancelling its passes does not end it) otherwise held
    kopf's exit for its 5 s grace for hung tasks while its thread waited on a slow authority. The threads are left
    to finish on their own; nothing waits for them (runner.py exits without joining them). A call made after
    `abandon`, or after the threads were shut down, is cancelled as the stop it meets: the stdlib's RuntimeError
    reached kopf, which logged a traceback and made the exit an error."""

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> None:
        self._loop, self._executor = loop, executor
        self._running: set[asyncio.Future[Any]] = set()
        self._abandoned = False

    async def __call__(self, fn: Any, *args: Any) -> Any:
        if self._abandoned:
            raise asyncio.CancelledError("the operator is stopping")
        try:
            future = self._loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise asyncio.CancelledError("the operator is stopping") from exc
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return await future

    def abandon(self) -> int:
        """Cancel every call still awaited (their threads run on, unwatched); the number cancelled."""
        self._abandoned = True
        running, self._running = list(self._running), set()
        return sum(future.cancel() for future in running)


@dataclass
class Operator:
    """One running operator: every part `build` made, started by `start` and stopped by `stop`, each once.

    `io` runs the passes' blocking calls (Kubernetes API and token requests); `event_io` posts Events, apart (when
    they are not posted on the loop, `loop_kube`): queued behind the passes' calls, a burst's Events trailed its
    Ready statuses by minutes. `watches` feed the controller (Secrets, and ServiceAccounts or pods when enabled);
    `stop_flag` asks kopf to stop once everything is down."""

    cfg: RunConfig
    health: Health
    io: ThreadPoolExecutor
    event_io: ThreadPoolExecutor
    events: EventRecorder
    reconciler: Reconciler
    controller: Controller
    consumers: ConsumerReports
    watches: list[MetadataWatch]
    calls: BlockingCalls
    stop_flag: StopFlag | None = None
    loop_kube: LoopKube | None = None  # the passes' calls made on the loop, if any
    heartbeat: asyncio.Task[None] | None = None
    _running: list[MetadataWatch] = field(default_factory=list)  # the watches started, to stop

    async def start(self) -> None:
        """Events first (a pass may post one at once), then the watches, the consumer reports and the heartbeat;
        ready last. Called on the event loop the parts were built for."""
        self.events.start()
        for watch in self.watches:
            self._running.append(watch.start())
        self.consumers.start()
        self.controller.app_status.start()
        self.heartbeat = asyncio.create_task(_heartbeat(self.health), name="graphcred:heartbeat")
        self.health.ready.set()
        cfg = self.cfg
        log.info("graphcred started: watching %s; workload identity %s; consumer warnings %s; ClusterGraphApps' "
                 "material in namespace %s",
                 ", ".join(cfg.namespaces) if cfg.namespaces else "all namespaces",
                 "enabled" if cfg.workload_identity else "disabled",
                 "enabled (watching pods)" if cfg.watch_consumers else "disabled", cfg.cluster_resource_namespace)

    async def stop(self) -> None:
        """In this order: the heartbeat; the watches (nothing new comes in); the consumer reports; the controller's
        workers, then the blocking calls they shared; the Events (after the workers: their last Events go out too);
        the calls on the loop and the threads; then kopf's stop flag. Stops only what `start` started, so it is safe
        after a start that failed half-way."""
        heartbeat, self.heartbeat = self.heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        running, self._running = self._running, []
        for watch in running:
            await asyncio.to_thread(watch.stop)
        for watch in running:  # what they handed over and the loop has not taken yet is dropped, not taken later
            if isinstance(watch, ObjectWatch):
                watch.feed.close()
        await self.consumers.stop()
        await self.controller.app_status.stop()
        await self.controller.stop()
        self.calls.abandon()  # what the cancelled passes shared (token requests, reads) ends with them
        try:
            await self.events.stop()
        finally:
            if self.loop_kube is not None:
                await self.loop_kube.close()  # after the Events: they may be posted through it
        for executor in (self.io, self.event_io):
            executor.shutdown(wait=False, cancel_futures=True)
        if self.stop_flag is not None:
            self.stop_flag.set()  # kopf's waiter for it is a task that would otherwise hold the exit for 5 s


async def _heartbeat(health: Health) -> None:
    while True:  # the leader's liveness: /healthz fails if the event loop stops ticking
        health.tick()
        await asyncio.sleep(HEARTBEAT_SECONDS)


def build(cfg: RunConfig, metrics: Metrics, health: Health, loop: asyncio.AbstractEventLoop, *,
          stop_flag: StopFlag | None = None) -> Operator:
    """Every part of the operator, connected, nothing started (no thread, no task, no request): the API client and
    token client, the I/O threads, the Event recorder, the reconciler and controller, the consumer reports and the
    watches. `loop`: the event loop they will run on (the watches' threads call back into it)."""
    api = api_client(cfg)
    tokens = TokenClient(cfg.ca_bundle, timeout=(5.0, cfg.token_timeout), authority_hosts=cfg.allowed_authorities)
    # ClusterGraphApps with managedIdentity: the host's identity endpoint (IMDS), through msal
    tokens.managed = ManagedIdentityTokens(timeout=(5.0, cfg.token_timeout)).acquire
    kube = Kube(api, timeout=cfg.api_timeouts)
    # the passes' Secret and status calls and the Events on the loop (kube/loopcalls.py), unless the kubeconfig
    # needs urllib3; as many at once as the I/O threads could make of them before, and the Event posters' besides,
    # in one queue: in a burst the Events trail the Ready statuses rather than slow them (lean-at-scale, fifth step)
    loop_kube = (LoopKube(kube, limit=cfg.api_concurrency + cfg.token_concurrency + POSTERS_ON_LOOP)
                 if LoopKube.usable(kube) else None)
    io = ThreadPoolExecutor(max_workers=cfg.api_concurrency + cfg.token_concurrency, thread_name_prefix="graphcred-io")
    event_io = ThreadPoolExecutor(max_workers=POSTERS, thread_name_prefix="graphcred-events")

    async def post_event(fn: Any, *args: Any) -> Any:
        return await loop.run_in_executor(event_io, fn, *args)

    run_blocking = BlockingCalls(loop, io)
    # Events are posted by graphcred itself, on condition transitions (kopf posts none: handlers.py)
    events = EventRecorder(kube, post_event, instance=instance_name(), on_loop=loop_kube,
                           on_lost=lambda why: metrics.events_lost.labels(why).inc())
    directory = Directory()  # filled with the Secret watches below
    reconciler = Reconciler(kube, tokens, events, secrets=directory, run_blocking=run_blocking,
                            token_concurrency=cfg.token_concurrency, metrics=metrics,
                            workload_identity=cfg.workload_identity, authority_hosts=cfg.allowed_authorities,
                            apps=ClusterApps(cfg.cluster_resource_namespace),
                            graph=GraphKeys(cfg.ca_bundle, timeout=(5.0, cfg.token_timeout),
                                            graph_hosts=(cfg.graph_endpoint,) if cfg.graph_endpoint else ()),
                            graph_endpoint=cfg.graph_endpoint,
                            kube_on_loop=loop_kube.calls() if loop_kube is not None else None)
    controller = Controller(reconciler)
    metrics.track(controller)
    # --watch-consumers: pods reading token Secrets where no refresh reaches them (fed by the pod watch); without
    # it the reports only remove counts an earlier run left
    consumers = ConsumerReports(controller, kube, events, metrics, run_blocking, watching=cfg.watch_consumers)
    controller.listen(consumers)
    # restartUnrefreshable: the workloads of the pods the consumer watch flags
    reconciler.restarter.unrefreshable = consumers.owners_of
    reconciler.restarter.reads_once = reads_unrefreshably
    reconciler.restarter.watching = cfg.watch_consumers
    consumers.on_consumers_changed = reconciler.restarter.consumers_changed
    watches = watches_for(api, cfg, controller, consumers, directory, loop)
    return Operator(cfg, health, io, event_io, events, reconciler, controller, consumers, watches, run_blocking,
                    stop_flag=stop_flag, loop_kube=loop_kube)


def watches_for(api: client.ApiClient, cfg: RunConfig, controller: Controller, consumers: ConsumerReports,
                directory: Directory, loop: asyncio.AbstractEventLoop) -> list[MetadataWatch]:
    """The watches feeding the controller, not started: the GraphAppCredentials (whole), the Namespaces (metadata:
    their labels, for ClusterGraphApps' policies; cluster-wide) and Secrets (metadata) always, the Secrets' also
    added to `directory`, which tells the reconciler which Secrets exist; ServiceAccounts (metadata) only with
    workload identity, and pods only with --watch-consumers (the RBAC grants them only then). Their threads call
    back on `loop`."""
    def on_credential(key: tuple[str, str], body: dict[str, Any] | None) -> None:
        if body is None:
            controller.forget(*key)
        else:
            controller.observe(body)

    def on_namespace(key: tuple[str, str], body: dict[str, Any] | None) -> None:
        controller.namespace_event(body or {"metadata": {"name": key[1]}}, deleted=body is None)

    def on_secret(namespace: str, name: str, resource_version: str, deleted: bool) -> None:
        loop.call_soon_threadsafe(controller.secret_event, namespace, name, resource_version, deleted)

    def on_service_account(namespace: str, name: str, resource_version: str, deleted: bool) -> None:
        loop.call_soon_threadsafe(controller.service_account_event, namespace, name, resource_version, deleted)

    def on_pod(namespace: str, name: str, consumer: PodConsumer | None) -> None:
        loop.call_soon_threadsafe(consumers.pod_changed, namespace, name, consumer)

    def on_listed(namespace: str | None, seen: frozenset[PodKey]) -> None:
        loop.call_soon_threadsafe(consumers.listed, namespace, seen)

    namespaces = cfg.namespaces or (None,)
    # ClusterGraphApps' Secrets and ServiceAccounts: in the cluster resource namespace, watched also when it is not
    # among the namespaces watched for credentials
    apps_only = () if cfg.cluster_resource_namespace in namespaces or None in namespaces \
        else (cfg.cluster_resource_namespace,)
    secrets = [MetadataWatch(api, on_secret, ns) for ns in (*namespaces, *apps_only)]
    for watch in secrets:
        directory.add(watch)
    credentials = LatestPerKey(loop, on_credential)
    watches: list[MetadataWatch] = [*(ObjectWatch.credentials(api, credentials, ns) for ns in namespaces),
                                    ObjectWatch.namespaces(api, LatestPerKey(loop, on_namespace, "Namespace")),
                                    *secrets]
    if cfg.workload_identity:
        watches += [MetadataWatch(api, on_service_account, ns, resource="serviceaccounts")
                    for ns in (*namespaces, *apps_only)]
    if cfg.watch_consumers:
        pods = [PodWatch(api, on_pod, on_listed, controller.writes_token_secret, ns) for ns in namespaces]
        consumers.attach(pods)
        watches += pods
    return watches


@dataclass
class OperatorMemo:
    """kopf's `memo` for every handler: the run's configuration and the process's metrics, health and stop flag
    (from the runner), and the operator the startup handler built. kopf copies it (shallowly) for each object."""

    config: RunConfig
    metrics: Metrics
    health: Health
    stop: StopFlag | None = None
    operator: Operator | None = None
