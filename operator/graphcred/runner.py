"""Start kopf with graphcred's handlers and configuration."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import kopf

from . import handlers  # noqa: F401 - registers the handlers
from .config import RunConfig
from .logs import configure

log = logging.getLogger(__name__)


def run(cfg: RunConfig) -> int:
    configure(cfg.log_format, cfg.log_level)
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig  # for kopf's own login
    liveness = f"http://0.0.0.0:{cfg.health_port}/healthz" if cfg.health_port else None
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        kopf.run(
            clusterwide=not cfg.namespaces,
            namespaces=list(cfg.namespaces),
            standalone=True,
            liveness_endpoint=liveness,
            memo=kopf.Memo(config=cfg),
        )
    return 0
