"""The HTTP session handed to MSAL.

`requests` lets the environment (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE) override a session's `verify`, because
per-request settings taken from the environment win over session settings. A private authority host with its
own CA would then fail TLS on any machine that sets those variables, so this session pins `verify` to the
configured bundle while keeping the environment's proxy settings.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

DEFAULT_TIMEOUT = (5.0, 30.0)  # connect, read: a stuck token endpoint must not stall a worker forever


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

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if self._ca_bundle:
            settings["verify"] = self._ca_bundle
        return settings

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)
