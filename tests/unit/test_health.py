"""/healthz and /readyz as the kubelet sees them, with a fake clock."""

from __future__ import annotations

import pytest
import requests

from graphcred.telemetry.metrics import Health, Metrics, serve

from .fakes import MonotonicClock


def test_liveness_follows_the_ticks_of_whatever_drives_the_process() -> None:
    clock = MonotonicClock()
    health = Health(stale_after=30.0, clock=clock)
    server = serve(0, Metrics(), health, host="127.0.0.1")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for _ in range(5):  # a standby's election loop ticks every couple of seconds, for as long as it waits
            clock.now += 20
            health.tick()
            assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        clock.now += 30  # no tick for 30 s: stalled
        answer = requests.get(f"{base}/healthz", timeout=5)
        assert answer.status_code == 503 and "no progress" in answer.text
        # readiness is separate: not ready until the process says it can act or take over
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 503
        health.ready.set()
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
    finally:
        server.shutdown()


def test_a_prober_that_hangs_up_leaves_no_traceback_in_the_log(capfd: pytest.CaptureFixture[str]) -> None:
    """A probe that times out and closes its connection made the stdlib server print a traceback to stderr (seen
    in the hostile soak's replica logs) for each one."""
    from graphcred.telemetry.metrics import Health, Metrics, serve

    server = serve(0, Metrics(), Health(), host="127.0.0.1")
    try:
        for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"), TimeoutError()):
            try:
                raise error
            except OSError:
                server.handle_error(None, ("127.0.0.1", 1))
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err
