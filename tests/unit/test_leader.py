from __future__ import annotations

import datetime as dt

from graphcred.leader import _micro, _parse


def test_microtime_round_trips_in_both_spellings() -> None:
    moment = dt.datetime(2026, 11, 25, 12, 0, 1, 250000, tzinfo=dt.UTC)
    assert _parse(_micro(moment)) == moment
    assert _parse(moment.isoformat()) == moment  # how the Python client serializes datetimes
    assert _parse(None) is None and _parse("garbage") is None
