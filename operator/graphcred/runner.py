"""Start graphcred: logging, the metrics/health server, leader election (optional), then kopf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading

import kopf

from . import handlers  # noqa: F401 - registers the handlers
from .config import RunConfig
from .logs import configure
from .metrics import Health, Metrics, serve

log = logging.getLogger(__name__)


def run(cfg: RunConfig) -> int:
    configure(cfg.log_format, cfg.log_level)
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig  # for kopf's own login
    metrics, health = Metrics(), Health()
    if cfg.metrics_port >= 0:
        serve(cfg.metrics_port, metrics, health)
    stop = threading.Event()
    lost = threading.Event()
    elector = None
    if cfg.leader_election:
        from .handlers import api_client
        from .leader import LeaseElector

        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaseElector(api_client(cfg), cfg.leader_election_namespace, cfg.leader_election_name,
                               identity, lease_seconds=cfg.lease_seconds, renew_seconds=cfg.lease_seconds / 3)
        health.ready.set()  # a standby is ready: it serves metrics and is waiting to take over
        if not elector.wait_until_leader():
            return 0

        def on_lost() -> None:
            lost.set()
            stop.set()

        elector.keep_renewing(on_lost)
    try:
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            kopf.run(
                clusterwide=not cfg.namespaces,
                namespaces=list(cfg.namespaces),
                standalone=True,  # exclusivity comes from the Lease, not from kopf's peering objects
                stop_flag=stop,
                memo=kopf.Memo(config=cfg, metrics=metrics, health=health),
            )
    finally:
        if elector is not None and not lost.is_set():
            elector.release()
    if lost.is_set():
        log.error("lost leadership: exiting so that a restart comes back as a standby")
        return 1
    return 0
