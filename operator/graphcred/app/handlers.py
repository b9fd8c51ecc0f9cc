"""kopf wiring only: watch events in, calls to the controller out. The logic lives elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes import client

from graphcred.acquire.tokens import TokenClient
from graphcred.api.keys import GROUP, PLURAL, VERSION
from graphcred.app.config import RunConfig
from graphcred.app.stopflag import StopFlag
from graphcred.app.wiring import api_client, blocking_runner
from graphcred.consumers.pods import PodConsumer, PodKey
from graphcred.consumers.podwatch import PodWatch
from graphcred.consumers.reports import ConsumerReports
from graphcred.kube.calls import Kube
from graphcred.kube.connect import in_cluster_server
from graphcred.kube.events import POSTERS, EventRecorder, instance_name
from graphcred.kube.metawatch import Directory, MetadataWatch
from graphcred.reconcile.controller import Controller
from graphcred.reconcile.reconciler import Reconciler
from graphcred.telemetry.metrics import Health, Metrics

log = logging.getLogger(__name__)


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg: RunConfig = memo["config"]
    # Events are posted by graphcred itself (events.py), on condition transitions: kopf posts none, not even
    # from its logs.
    settings.posting.enabled = False
    settings.posting.level = logging.CRITICAL + 1
    # kopf's aiohttp sockets have no TCP keepalive: the client timeout is what notices a dead watch stream, so
    # keep it short (a watch resumes from its resourceVersion: no re-list).
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.watching.connect_timeout = cfg.api_timeouts[0]
    settings.networking.connect_timeout = cfg.api_timeouts[0]
    settings.networking.request_timeout = 60
    # Named namespaces: the chart grants Roles there and no cluster-wide namespace list. Declare that restricted
    # mode to kopf, or it retries the forbidden list for about a minute before falling back to the same names.
    # (It also stops watching CRDs then: the CRD must exist when the operator starts, as the chart installs it.)
    settings.scanning.disabled = bool(cfg.namespaces)
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=cfg.api_concurrency + cfg.token_concurrency,
                                  thread_name_prefix="graphcred-io")
    memo["executor"] = executor

    run_blocking = blocking_runner(loop, executor)

    # Events are posted from threads of their own: queued behind the passes' calls in the shared threads, each
    # waited its turn and, while thousands of credentials refreshed, a burst's Events trailed its Ready statuses
    # by minutes (bench/scale.py, N=1000, one credential per app).
    event_thread = ThreadPoolExecutor(max_workers=POSTERS, thread_name_prefix="graphcred-events")
    memo["event_thread"] = event_thread

    async def post_event(fn: Any, *args: Any) -> Any:
        return await loop.run_in_executor(event_thread, fn, *args)

    api = api_client(cfg)
    tokens = TokenClient(cfg.ca_bundle, timeout=(5.0, cfg.token_timeout), authority_hosts=cfg.allowed_authorities)
    metrics: Metrics = memo["metrics"]
    health: Health = memo["health"]
    kube = Kube(api, timeout=cfg.api_timeouts)
    events = EventRecorder(kube, post_event, instance=instance_name(),
                           on_lost=lambda why: metrics.events_lost.labels(why).inc())
    events.start()
    memo["events"] = events
    reconciler = Reconciler(kube, tokens, events, run_blocking=run_blocking,
                            token_concurrency=cfg.token_concurrency, metrics=metrics,
                            workload_identity=cfg.workload_identity,
                            authority_hosts=cfg.allowed_authorities)
    controller = Controller(reconciler)
    memo["controller"] = controller
    # --watch-consumers: pods reading token Secrets where no refresh reaches them (fed by the pod watch); without
    # it the reports only remove counts an earlier run left
    consumers = ConsumerReports(controller, kube, events, metrics, run_blocking, watching=cfg.watch_consumers)
    controller.listen(consumers)
    memo["consumers"] = consumers

    memo["watches"] = _watches(api, cfg, controller, consumers, loop)
    consumers.start()

    async def heartbeat() -> None:
        while True:  # the leader's liveness: /healthz fails if the event loop stops ticking
            health.tick()
            await asyncio.sleep(2)

    memo["heartbeat"] = asyncio.create_task(heartbeat())
    health.ready.set()
    log.info("graphcred started: watching %s; workload identity %s; consumer warnings %s",
             ", ".join(cfg.namespaces) if cfg.namespaces else "all namespaces",
             "enabled" if cfg.workload_identity else "disabled",
             "enabled (watching pods)" if cfg.watch_consumers else "disabled")


def _watches(api: client.ApiClient, cfg: RunConfig, controller: Controller, consumers: ConsumerReports,
             loop: asyncio.AbstractEventLoop) -> list[MetadataWatch]:
    """Watches feeding the controller: Secrets (metadata) always, also telling the reconciler which Secrets exist;
    ServiceAccounts (metadata) only with workload identity, and pods only with --watch-consumers (the RBAC grants
    them only then)."""
    def on_secret(namespace: str, name: str, resource_version: str, deleted: bool) -> None:
        loop.call_soon_threadsafe(controller.secret_event, namespace, name, resource_version, deleted)

    def on_service_account(namespace: str, name: str, resource_version: str, deleted: bool) -> None:
        loop.call_soon_threadsafe(controller.service_account_event, namespace, name, resource_version, deleted)

    def on_pod(namespace: str, name: str, consumer: PodConsumer | None) -> None:
        loop.call_soon_threadsafe(consumers.pod_changed, namespace, name, consumer)

    def on_listed(namespace: str | None, seen: frozenset[PodKey]) -> None:
        loop.call_soon_threadsafe(consumers.listed, namespace, seen)

    namespaces = cfg.namespaces or (None,)
    watches = [MetadataWatch(api, on_secret, ns) for ns in namespaces]
    directory = Directory()
    for watch in watches:
        directory.add(watch)
    controller.reconciler.secrets = directory
    if cfg.workload_identity:
        watches += [MetadataWatch(api, on_service_account, ns, resource="serviceaccounts") for ns in namespaces]
    if cfg.watch_consumers:
        pods = [PodWatch(api, on_pod, on_listed, controller.writes_token_secret, ns) for ns in namespaces]
        consumers.attach(pods)
        watches += pods
    return [watch.start() for watch in watches]


@kopf.on.event(GROUP, VERSION, PLURAL)
async def _credential_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller = memo["controller"]
    body = event["object"]
    if event["type"] == "DELETED":
        controller.forget(body["metadata"]["namespace"], body["metadata"]["name"])
    else:
        controller.observe(body)


@kopf.on.cleanup()
async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    heartbeat: asyncio.Task[None] | None = memo.get("heartbeat")
    if heartbeat is not None:
        heartbeat.cancel()
    for watch in memo.get("watches") or []:
        await asyncio.to_thread(watch.stop)
    consumers: ConsumerReports | None = memo.get("consumers")
    if consumers is not None:
        await consumers.stop()
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.stop()
    events: EventRecorder | None = memo.get("events")
    if events is not None:
        await events.stop()  # after the workers: their last Events go out too
    for name in ("executor", "event_thread"):
        executor: ThreadPoolExecutor | None = memo.get(name)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
    stop: StopFlag | None = memo.get("stop")
    if stop is not None:
        stop.set()  # kopf's waiter for it is a task that would otherwise hold the exit for 5 s ("hung tasks")


@kopf.on.login()
def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # In a pod: the mounted ServiceAccount; elsewhere: KUBECONFIG (set from --kubeconfig by the CLI).
    if RunConfig.in_cluster():
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
        server = in_cluster_server(os.environ)
        if info is not None and server is not None:
            info = dataclasses.replace(info, server=server)
    else:
        info = kopf.login_with_kubeconfig(**kwargs)
    return info
