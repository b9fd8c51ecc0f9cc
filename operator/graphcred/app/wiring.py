"""What the operator's process is built from: the Kubernetes API client and the threads blocking I/O runs in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.utils.keepalive import tcp_keepalive_socket_options

from graphcred.app.config import RunConfig
from graphcred.kube.events import POSTERS


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
    # after 30 s idle, dead after 3 unanswered probes 10 s apart. Calls have their own timeouts (kube.py).
    configuration.socket_options = tcp_keepalive_socket_options(idle=30, interval=10, count=3)
    # one urllib3 retry (a stale pooled connection, a refused connect), not three: each would wait a timeout
    configuration.retries = urllib3.Retry(total=1)
    return client.ApiClient(configuration)



def blocking_runner(loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor
                    ) -> Callable[..., Awaitable[Any]]:
    """Blocking I/O in the operator's threads. Once the cleanup has shut them down, a call still on its way (a
    shared token request outliving the pass that started it) is cancelled, as the stop it meets: the stdlib's
    RuntimeError reached kopf, which logged a traceback and made the exit an error."""
    async def run_blocking(fn: Any, *args: Any) -> Any:
        try:
            future = loop.run_in_executor(executor, fn, *args)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise asyncio.CancelledError("the operator is stopping") from exc
        return await future

    return run_blocking
