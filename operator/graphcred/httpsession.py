"""The HTTP session handed to MSAL.

`requests` lets the environment (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE) override a session's `verify`, because
per-request settings taken from the environment win over session settings. A private authority host with its
own CA would then fail TLS on any machine that sets those variables, so this session pins `verify` to the
configured bundle while keeping the environment's proxy settings.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, read: a stuck token endpoint must not stall a worker forever
DISCOVERY_TTL = 24 * 3600.0  # what msal itself caches openid-configuration for
_DISCOVERY_SUFFIX = "/.well-known/openid-configuration"


@dataclass(frozen=True)
class LastResponse:
    """Status and Retry-After of the latest response on this thread: msal hides both from its callers."""

    status: int
    retry_after: float | None
    aadsts: int | None = None  # first AADSTS code of a 4xx error body (error bodies hold no secrets)


def _aadsts(response: requests.Response) -> int | None:
    if not 400 <= response.status_code < 500:
        return None
    try:
        codes = response.json().get("error_codes") or []
    except ValueError:
        return None
    return codes[0] if codes and isinstance(codes[0], int) else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date; rare from Entra, and the operator's own backoff applies


class PinnedCASession(requests.Session):
    def __init__(self, ca_bundle: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self._ca_bundle = ca_bundle
        self._timeout = timeout
        self.verify = ca_bundle if ca_bundle else True
        # Retries are the operator's decision (with backoff and Retry-After), not the transport's.
        adapter = HTTPAdapter(max_retries=0, pool_maxsize=32)
        self.mount("https://", adapter)
        self.mount("http://", adapter)
        # One application object per acquisition keeps tokens and assertions fresh, but must not mean one
        # discovery request per acquisition: openid-configuration is cached here, per URL, for a day.
        self._discovery: dict[str, tuple[float, requests.Response]] = {}
        self._lock = threading.Lock()
        self._last = threading.local()

    def last_response(self) -> LastResponse | None:
        last: LastResponse | None = getattr(self._last, "value", None)
        return last

    def forget_last_response(self) -> None:
        self._last.value = None

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self._ca_bundle:
            settings["verify"] = self._ca_bundle
        return settings

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        key = url if isinstance(url, str) else url.decode()
        discovery = method in ("GET", b"GET") and key.split("?")[0].endswith(_DISCOVERY_SUFFIX)
        if discovery:
            with self._lock:
                cached = self._discovery.get(key)
            if cached and cached[0] > time.monotonic():
                return cached[1]
        response = super().request(method, url, *args, **kwargs)
        self._last.value = LastResponse(response.status_code, _retry_after(response.headers.get("Retry-After")),
                                        _aadsts(response))
        if discovery and response.status_code == 200:
            with self._lock:
                self._discovery[key] = (time.monotonic() + DISCOVERY_TTL, response)
        return response
