"""AsyncMountedTokenCredential: the same behaviours, through asyncio."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncSupportsTokenInfo, AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError

from graphcred_client import AsyncMountedTokenCredential

from .tokens import GRAPH_APP_ID, GRAPH_SCOPE, TENANT, Mount, shows_no_token


def test_reads_swaps_caches_and_refuses(mount: Mount) -> None:
    async def scenario() -> None:
        first = mount.write()
        async with AsyncMountedTokenCredential(mount.directory) as credential:
            assert isinstance(credential, AsyncTokenCredential) and isinstance(credential, AsyncSupportsTokenInfo)
            got = await credential.get_token(GRAPH_SCOPE)
            assert isinstance(got, AccessToken) and got.token == first
            assert (await credential.get_token(GRAPH_SCOPE)).token is got.token  # not read again
            second = mount.write()
            assert (await credential.get_token_info(GRAPH_SCOPE)).token == second  # the swap, same object

            with pytest.raises(ClientAuthenticationError) as caught:
                await credential.get_token("https://vault.azure.net/.default")
            assert "'https://vault.azure.net'" in str(caught.value) and shows_no_token(str(caught.value), second)
            with pytest.raises(ClientAuthenticationError, match="tenant"):
                await credential.get_token_info(GRAPH_SCOPE, options={"tenant_id": GRAPH_APP_ID})
            assert (await credential.get_token(GRAPH_SCOPE, tenant_id=TENANT)).token == second
            with pytest.raises(ClientAuthenticationError, match="claims challenge"):
                await credential.get_token(GRAPH_SCOPE, claims='{"access_token":{}}')

            expired = mount.write(lifetime=-30)
            with pytest.raises(ClientAuthenticationError) as caught:
                await credential.get_token(GRAPH_SCOPE)
            assert "expired at" in str(caught.value) and shows_no_token(str(caught.value), expired)
        assert repr(credential) == f"AsyncMountedTokenCredential(directory={str(mount.directory)!r})"

    asyncio.run(scenario())


def test_a_missing_mount(tmp_path: Path) -> None:
    async def scenario() -> str:
        with pytest.raises(ClientAuthenticationError) as caught:
            await AsyncMountedTokenCredential(tmp_path / "absent").get_token(GRAPH_SCOPE)
        return str(caught.value)

    assert "No token directory at" in asyncio.run(scenario())


def test_many_tasks_share_one_read(mount: Mount) -> None:
    async def scenario() -> set[str]:
        credential = AsyncMountedTokenCredential(mount.directory)
        results = await asyncio.gather(*(credential.get_token(GRAPH_SCOPE) for _ in range(50)))
        return {r.token for r in results}

    token = mount.write()
    assert asyncio.run(scenario()) == {token}
