"""Start graphcred: logging, the Kubernetes client's configuration, the metrics/health server, leader election
(optional), then kopf.

What can only fail at start fails here, before kopf: the kubeconfig that does not load, the metrics port that is
taken. Each ends the process with one line naming the cause (also written to /dev/termination-log, which the
kubelet shows as the container's termination message), never kopf's retry-every-60-s loop that a kubelet turns
into a CrashLoopBackOff with an unnamed `[Errno 2]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
from typing import NoReturn

import kopf

from graphcred.app import handlers  # noqa: F401 - registers the handlers
from graphcred.app.config import RunConfig, startup_failed
from graphcred.app.logs import configure
from graphcred.app.stopflag import StopFlag
from graphcred.app.wiring import OperatorMemo, api_client
from graphcred.kube.connect import kubeconfig_errors, kubeconfig_problem, kubeconfig_source
from graphcred.telemetry.metrics import Health, Metrics, serve

log = logging.getLogger(__name__)
BAD_SETTING, CANNOT_START = 2, 1


class StartupError(Exception):
    """Start-up cannot go on: one line naming the cause, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def check_kubeconfig(cfg: RunConfig) -> None:
    """Load the client configuration once, as every client of this process will: a missing or malformed
    kubeconfig ends the start here, naming the file."""
    try:
        api_client(cfg).close()  # type: ignore[no-untyped-call]
    except kubeconfig_errors() as exc:
        raise StartupError(f"{kubeconfig_source(cfg.kubeconfig)}: {kubeconfig_problem(exc)}", BAD_SETTING) from None


def serve_metrics(cfg: RunConfig, metrics: Metrics, health: Health) -> None:
    try:
        serve(cfg.metrics_port, metrics, health)
    except OSError as exc:
        cause = (exc.strerror or str(exc)).lower()
        raise StartupError(f"--metrics-port {cfg.metrics_port} (GRAPHCRED_METRICS_PORT): cannot listen there: "
                           f"{cause} (another port, 0 for any free one, or -1 for none)", CANNOT_START) from None


# Container objects allocated, net, between collections of the youngest generation (CPython's default: 700). A pass
# allocates a few thousand, nearly all gone when it ends; at 700 the collector ran several times per pass and
# promoted the pass's objects to older generations, walked again and again with every credential's state: a burst
# of 5,000 new credentials (unit rig) spent 1.9 of its 7.0 CPU seconds in the collector, 0.4 s with this and the
# freeze below.
YOUNG_COLLECTION_THRESHOLD = 10_000


def settle_collector() -> None:
    """Before the work begins: what start-up made (modules, classes, the client's models) is frozen out of the
    collector's walks, and the youngest generation collected less often (YOUNG_COLLECTION_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def run(cfg: RunConfig) -> int:
    configure(cfg.log_format, cfg.log_level)
    # Until kopf installs its own handler, SIGTERM (a rollout, a scale-down) ends the process cleanly: a standby
    # just leaves, a leader still releases its Lease on the way out (the `finally` below).
    signal.signal(signal.SIGTERM, _terminate)
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig  # for kopf's own login
    metrics, health = Metrics(), Health()
    try:
        check_kubeconfig(cfg)
        if cfg.metrics_port >= 0:
            serve_metrics(cfg, metrics, health)
    except StartupError as exc:
        return startup_failed(str(exc), exc.code)
    stop = StopFlag()
    lost = threading.Event()
    elector = None
    try:  # from the election on: a SIGTERM anywhere in it still releases a Lease this process holds
        if cfg.leader_election:
            from graphcred.app.leader import LeaseElector

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
        memo = OperatorMemo(cfg, metrics, health, stop=stop)

        async def operate() -> None:
            # From the loop's first step, SIGTERM asks kopf to stop, as kopf's own handler will once installed: the
            # SystemExit of `_terminate` raised inside the loop skipped the cleanup (threads, watches) on its way.
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await kopf.operator(
                clusterwide=not cfg.namespaces,
                namespaces=list(cfg.namespaces),
                standalone=True,  # exclusivity comes from the Lease, not from kopf's peering objects
                stop_flag=stop.bind(),
                memo=memo,
            )

        settle_collector()
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            asyncio.run(operate())  # what kopf.run does, with a stop flag awaited on the loop
    finally:
        # asyncio.run has restored SIGTERM's default action: a second SIGTERM must not cut the release short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if elector is not None and not lost.is_set():
            elector.release()
    code = 0
    if lost.is_set():
        log.error("lost leadership: exiting so that a restart comes back as a standby")
        code = 1
    _leave(code)


def _leave(code: int) -> NoReturn:
    """Exit now that kopf has stopped and the Lease is released. A thread still inside a blocking call (a token
    request to an authority that answers late: up to --token-timeout) holds nothing needed any more, but the
    interpreter's exit joins every worker thread: a leader SIGTERMed while one waited outlived its grace period."""
    logging.shutdown()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(0)  # no logging here: the signal may have interrupted a write to the log


def _exit_lost() -> None:
    log.error("lost leadership and still running: exiting now")
    logging.shutdown()
    os._exit(1)
