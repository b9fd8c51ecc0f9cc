"""The demo's Ctrl-C handling (graphcred_testbed.demo.Interrupts): the first SIGINT or SIGTERM interrupts what the
demo is doing, so that it stops everything it started; a second one, or one while it is stopping, must not cut the
stopping short (tests/e2e/test_demo.py checks the whole demo)."""

from __future__ import annotations

import signal

import pytest

from graphcred_testbed.demo import Interrupts


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_interrupts_and_later_ones_do_not(signum: int) -> None:
    # what was there before (SIG_IGN, not Python's handler, in a process started in the background by a shell)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with Interrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signum)
        signal.raise_signal(signal.SIGINT)  # while stopping: nothing happens
        signal.raise_signal(signal.SIGTERM)
    assert interrupts.received == signum
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # the previous handlers


def test_no_signal_interrupts_once_muted() -> None:
    with Interrupts() as interrupts:
        interrupts.mute()
        signal.raise_signal(signal.SIGINT)
    assert interrupts.received is None
