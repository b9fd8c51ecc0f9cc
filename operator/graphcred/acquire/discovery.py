"""The openid-configuration cache: bounded in bytes, with a reserved part for the clouds' own login hosts.

One msal application per acquisition must not mean one discovery request per acquisition, so documents are cached
per URL for a day (what msal itself would keep them for). Only what msal reads of a document is kept (the four
endpoint fields, re-serialised): a few hundred bytes each, whatever the authority sent. The cache has two parts,
each a least-recently-used map with a byte budget: one for the clouds' login hosts, and one for every other
(admin-allowed) host. Credentials naming an allowed private authority can create any number of tenant URLs there,
and those can evict each other, never the clouds' documents. Pure logic: the clock is given.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TTL = 24 * 3600.0
CLOUD_BUDGET = 8 * 2**20  # bytes: about 20,000 tenants' documents on the clouds' hosts
OTHER_BUDGET = 2 * 2**20  # bytes: admin-allowed hosts, whose tenant URLs a credential's author chooses
ENTRY_OVERHEAD = 200  # bytes each entry costs besides its URL and document (the map's slot, the record)
# What msal reads of a document (msal.authority.Authority.__init__); nothing else is kept.
FIELDS = ("issuer", "authorization_endpoint", "token_endpoint", "device_authorization_endpoint")
MAX_FIELD = 2048  # characters: an endpoint URL longer than this is no usable document


def usable(body: Any) -> bool:
    """A document msal can use: a JSON object naming an https token endpoint, with endpoint fields of sane size."""
    if not isinstance(body, dict):
        return False
    endpoint = body.get("token_endpoint")
    if not (isinstance(endpoint, str) and endpoint.startswith("https://") and len(endpoint) > len("https://")):
        return False
    return all(isinstance(body.get(f), str) and len(body[f]) <= MAX_FIELD for f in FIELDS if f in body)


def trimmed(body: dict[str, Any]) -> bytes:
    """The fields msal reads, as JSON."""
    return json.dumps({f: body[f] for f in FIELDS if f in body}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Entry:
    expires: float
    content: bytes
    size: int


class _Part:
    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest use first

    def put(self, url: str, entry: _Entry) -> None:
        self.pop(url)
        if entry.size > self.budget:
            return
        self.entries[url] = entry
        self.used += entry.size
        while self.used > self.budget:
            _, oldest = self.entries.popitem(last=False)
            self.used -= oldest.size

    def pop(self, url: str) -> None:
        entry = self.entries.pop(url, None)
        if entry is not None:
            self.used -= entry.size


class DiscoveryCache:
    """Not thread-safe by itself: the session holds a lock around it."""

    def __init__(self, clock: Callable[[], float], *, cloud_budget: int = CLOUD_BUDGET,
                 other_budget: int = OTHER_BUDGET, ttl: float = TTL) -> None:
        self._clock = clock
        self._ttl = ttl
        self._parts = {True: _Part(cloud_budget), False: _Part(other_budget)}

    def get(self, url: str, cloud: bool) -> bytes | None:
        part = self._parts[cloud]
        entry = part.entries.get(url)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            part.pop(url)
            return None
        part.entries.move_to_end(url)
        return entry.content

    def put(self, url: str, cloud: bool, body: dict[str, Any]) -> None:
        content = trimmed(body)
        self._parts[cloud].put(url, _Entry(self._clock() + self._ttl, content,
                                           len(url) + len(content) + ENTRY_OVERHEAD))

    def evict(self, url: str) -> None:
        for part in self._parts.values():
            part.pop(url)

    def __len__(self) -> int:
        return sum(len(p.entries) for p in self._parts.values())

    def bytes_used(self, cloud: bool) -> int:
        return self._parts[cloud].used
