"""Start graphcred: logging, the metrics/health server, leader election (optional), then kopf."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading

import kopf

from . import handlers  # noqa: F401 - registers the handlers
from .config import RunConfig
from .logs import configure
from .metrics import Health, Metrics, serve
from .stopflag import StopFlag

log = logging.getLogger(__name__)


def run(cfg: RunConfig) -> int:
    configure(cfg.log_format, cfg.log_level)
    # Until kopf installs its own handler, SIGTERM (a rollout, a scale-down) ends the process cleanly: a standby
    # just leaves, a leader still releases its Lease on the way out (the `finally` below).
    signal.signal(signal.SIGTERM, _terminate)
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig  # for kopf's own login
    metrics, health = Metrics(), Health()
    if cfg.metrics_port >= 0:
        serve(cfg.metrics_port, metrics, health)
    stop = StopFlag()
    lost = threading.Event()
    elector = None
    try:  # from the election on: a SIGTERM anywhere in it still releases a Lease this process holds
        if cfg.leader_election:
            from .handlers import api_client
            from .leader import LeaseElector

            identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
            elector = LeaseElector(api_client(cfg), cfg.leader_election_namespace, cfg.leader_election_name,
                                   identity, lease_seconds=cfg.lease_seconds)

            def standing_by(reached: bool) -> None:
                health.tick()  # the election loop is this process's progress until it leads
                if reached:
                    health.ready.set()  # it can take over

            if not elector.wait_until_leader(tick=standing_by):
                return 0

            grace = (elector.lease_seconds - elector.renew_deadline) / 2

            def on_lost() -> None:
                lost.set()
                stop.set()
                # kopf stops gracefully, but a standby may take the Lease (lease - renew deadline) from now: whatever
                # is still running by half that time is cut off, as a SIGKILL would.
                timer = threading.Timer(grace, _exit_lost)
                timer.daemon = True
                timer.start()

            elector.keep_renewing(on_lost)
        memo = kopf.Memo(config=cfg, metrics=metrics, health=health, stop=stop)

        async def operate() -> None:
            await kopf.operator(
                clusterwide=not cfg.namespaces,
                namespaces=list(cfg.namespaces),
                standalone=True,  # exclusivity comes from the Lease, not from kopf's peering objects
                stop_flag=stop.bind(),
                memo=memo,
            )

        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            asyncio.run(operate())  # what kopf.run does, with a stop flag awaited on the loop
    finally:
        # asyncio.run has restored SIGTERM's default action: a second SIGTERM must not cut the release short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if elector is not None and not lost.is_set():
            elector.release()
    if lost.is_set():
        log.error("lost leadership: exiting so that a restart comes back as a standby")
        return 1
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(0)  # no logging here: the signal may have interrupted a write to the log


def _exit_lost() -> None:
    log.error("lost leadership and still running: exiting now")
    logging.shutdown()
    os._exit(1)
