"""Hostile or garbled token files and the example daemon in other clouds: the credential refuses clearly and the
token never reaches an error message, a traceback's locals or a log (regressions found by the review of 31b2c5d)."""


from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from azure.core.exceptions import ClientAuthenticationError

from graphcred_client import AsyncMountedTokenCredential, MountedTokenCredential
from graphcred_testbed.volume import SecretVolume

from ..client.tokens import GRAPH_SCOPE, Mount, make_jwt, secrets_of, shows_no_token

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    directory = tmp_path / "graphcred"
    with SecretVolume(directory) as volume:
        yield Mount(directory, volume)


def _daemon() -> ModuleType:
    spec = importlib.util.spec_from_file_location("graph_daemon", ROOT / "examples" / "consumer" / "graph_daemon.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def listener() -> Iterator[int]:
    """A plain TCP listener on 127.0.0.1 that accepts and then says nothing (the request never gets that far)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
        for conn in held:
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    server.close()


# --- F1: a token with a line break is handed out; httpx then puts it in its exception message ------------------------
def test_a_token_with_a_line_break_never_reaches_an_error_message(mount: Mount, listener: int) -> None:
    """A token Secret written by hand or wrapped at 76 columns: the credential hands the broken token to the SDK,
    and h11 refuses the header with `Illegal header value b'Bearer <the token>'`, which the example daemon prints."""
    good = make_jwt(exp=int(time.time()) + 3600)
    wrapped = good[:76] + "\n" + good[76:]
    mount.write(token=wrapped)
    daemon = _daemon()

    async def call() -> str:
        async with AsyncMountedTokenCredential(mount.directory) as credential:
            graph = daemon.graph_client(credential, f"http://127.0.0.1:{listener}/v1.0", None)
            try:
                await graph.users.get()
            except ClientAuthenticationError as exc:
                return f"refused: {exc}"
            except Exception as exc:  # what the daemon prints
                return f"Graph call failed: {type(exc).__name__}: {exc}"
        return "no error"

    message = asyncio.run(call())
    if not shows_no_token(message, good):
        pytest.fail("the token's signature appeared in the error the daemon prints", pytrace=False)
    assert message.startswith("refused: ") and str(mount.directory) in message


# --- F2: the example daemon asks for global Graph whatever GRAPH_BASE_URL says ----------------------------------------
@pytest.mark.parametrize("host", ["graph.microsoft.us", "dod-graph.microsoft.us", "microsoftgraph.chinacloudapi.cn"])
def test_the_daemon_works_against_a_national_cloud_graph(mount: Mount, host: str) -> None:
    """GRAPH_BASE_URL=https://graph.microsoft.us/v1.0 is documented in the daemon; graphcred's token for that cloud
    has aud https://graph.microsoft.us, and the daemon asks for https://graph.microsoft.com/.default: refused."""
    token = mount.write(aud=f"https://{host}")
    daemon = _daemon()

    async def authorization() -> str:
        async with AsyncMountedTokenCredential(mount.directory) as credential:
            graph = daemon.graph_client(credential, f"https://{host}/v1.0", None)
            provider = graph.request_adapter._authentication_provider.access_token_provider
            got: str = await provider.get_authorization_token(f"https://{host}/v1.0/users")
            return got

    assert asyncio.run(authorization()) == token


# --- F3: a garbled exp escapes as ValueError / OverflowError instead of the credential's refusal ----------------------
@pytest.mark.parametrize("exp", [float("nan"), float("inf"), 1e300], ids=["NaN", "Infinity", "1e300"])
@pytest.mark.parametrize("with_expires_on", [True, False])
def test_a_garbled_exp_claim_is_a_clear_refusal_or_ignored(mount: Mount, exp: float, with_expires_on: bool) -> None:
    token = make_jwt(exp=exp)  # type: ignore[arg-type]  # JSON NaN / Infinity / 1e300, as a garbled payload has
    expires_on = int(time.time()) + 3600
    mount.write(token=token, expires_on=expires_on, with_expires_on=with_expires_on)
    credential = MountedTokenCredential(mount.directory)
    if with_expires_on:  # the file's expiry is usable: the token is handed out with it
        assert credential.get_token(GRAPH_SCOPE).expires_on == expires_on
    else:
        with pytest.raises(ClientAuthenticationError) as caught:
            credential.get_token(GRAPH_SCOPE)
        assert "No expiry" in str(caught.value)


# --- F4: refusals raised while parsing keep the token in their traceback's frame locals ---------------------------
def test_a_refusal_traceback_does_not_hold_the_token_in_its_locals(mount: Mount) -> None:
    """Error reporters capture frame locals (Sentry does by default; its scrubber knows `token`, not `raw`)."""
    token = mount.write()
    (mount.directory / "..data" / "expires_on").chmod(0o644)
    real = Path(mount.directory / "..data").resolve() / "expires_on"
    real.write_text("soon")  # a garbled expires_on, the version's own file
    with pytest.raises(ClientAuthenticationError) as caught:
        MountedTokenCredential(mount.directory).get_token(GRAPH_SCOPE)
    assert shows_no_token(str(caught.value), token)
    leaked = sorted({f"{Path(frame.filename).name}:{frame.name}:{name}"
                     for exc in _chain(caught.value) for frame in _library_frames(exc)
                     for name, value in (frame.locals or {}).items()
                     if any(part in value for part in secrets_of(token))})
    if leaked:
        pytest.fail(f"the token is in the traceback's locals: {leaked}", pytrace=False)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _library_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The frames of the credential's own code (the test's frame holds the token it wrote, of course)."""
    stack = traceback.StackSummary.extract(traceback.walk_tb(exc.__traceback__), capture_locals=True)
    return [frame for frame in stack if "graphcred_client" in frame.filename]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
