"""kopf wiring only: kopf's settings, and its handlers calling the composition root (wiring.py) and the
controller. The logic lives elsewhere."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from typing import Any

import kopf

from graphcred.api.keys import APP_PLURAL, GROUP, VERSION
from graphcred.app.config import RunConfig
from graphcred.app.wiring import OperatorMemo, build
from graphcred.kube.connect import in_cluster_server


def configure_kopf(settings: kopf.OperatorSettings, cfg: RunConfig) -> None:
    """kopf's settings for this run (called by the startup handler, before anything is built)."""
    # Events are posted by graphcred itself (kube/events.py), on condition transitions: kopf posts none, not even
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


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: OperatorMemo, **_: Any) -> None:
    configure_kopf(settings, memo.config)
    memo.operator = build(memo.config, memo.metrics, memo.health, asyncio.get_running_loop(), stop_flag=memo.stop)
    await memo.operator.start()


# The GraphAppCredentials and the Namespaces are watched by graphcred (kube/objectwatch.py), not by kopf: kopf's
# per-event change detection cost a tenth of the CPU for nothing graphcred uses, and every namespace of the cluster
# went through it at each start (docs/design/2026-12-06-lean-at-scale.md).


@kopf.on.event(GROUP, VERSION, APP_PLURAL)
async def _app_event(event: kopf.RawEvent, memo: OperatorMemo, **_: Any) -> None:
    assert memo.operator is not None
    memo.operator.controller.app_event(event["object"], deleted=event["type"] == "DELETED")


@kopf.on.cleanup()
async def _cleanup(memo: OperatorMemo, **_: Any) -> None:
    if memo.operator is not None:
        await memo.operator.stop()
    elif memo.stop is not None:
        memo.stop.set()  # started nothing: only kopf's waiter for the flag to end


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
