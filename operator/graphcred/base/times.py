"""RFC 3339 timestamps as the Kubernetes API writes them (UTC, whole seconds, "Z")."""

from __future__ import annotations

import datetime as dt


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(moment: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds (Kubernetes' MicroTime; two moments within a second still differ)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def parse_written(text: str | None) -> dt.datetime | None:
    """A time a person or a tool wrote (an annotation): ISO 8601 as Graph's endDateTime has it
    (`2027-03-01T10:00:05.8925536Z`), an offset, or a bare date (midnight); no zone means UTC. As UTC, whole
    seconds; None if it cannot be read."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).replace(microsecond=0)
