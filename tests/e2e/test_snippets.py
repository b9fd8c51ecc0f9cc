"""The consumer snippets of docs/consuming-tokens.md, taken from the page itself so it cannot drift from what was
tested (each block follows a `<!-- snippet: NAME -->` marker).

- shell: run with `sh` against the bed's Graph API, with a token directory laid out as the kubelet does it,
  holding the token the operator acquired; an expired or expiring `expires_on` is refused before any request.
- python: run with the real graphcred_client and msgraph-sdk against the bed's Graph API. Only what differs from
  a pod is redirected: the mount path (/var/run/graphcred) and Graph's host (tests/graphsdk.py).
- go, java: built (gofmt, go vet, go build; javac with -Xlint:all -Werror) in the projects under tests/snippets/,
  which pin azcore and azure-core, and run by the small drivers there: the mounted token, a kubelet-style swap
  seen by the same credential object, an expired token refused with a message naming the directory, never the
  token.
- dotnet and the *-usage blocks are not compiled: no .NET SDK here; the Graph SDKs for Go and Java are large.

A missing tool (go, gofmt, mvn, java, sh, curl) fails the test: these checks must not vanish silently.
"""

from __future__ import annotations

import ast
import base64
import datetime as dt
import hashlib
import importlib
import inspect
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graphcred_testbed import jose
from graphcred_testbed.bed import Bed
from graphcred_testbed.volume import SecretVolume

from ..helpers import Env

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "consuming-tokens.md"
PROJECTS = ROOT / "tests" / "snippets"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
POD_MOUNT = "/var/run/graphcred"
BUILD_TIMEOUT = 600  # a cold module cache / Maven repository downloads first

# name -> the fence's language; every block of these languages on the page must be one of them
SNIPPET_LANGUAGES = {"python": "python", "dotnet": "csharp", "dotnet-usage": "csharp", "go": "go",
                     "go-usage": "go", "java": "java", "java-usage": "java", "shell": "sh"}
MARKED = re.compile(r"<!-- snippet: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```$", re.S | re.M)


def marked_snippets() -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for m in MARKED.finditer(DOC.read_text()):
        assert m["name"] not in found, f"two snippets named {m['name']!r} in {DOC.name}"
        found[m["name"]] = (m["lang"], m["code"])
    return found


def snippet(name: str) -> str:
    snippets = marked_snippets()
    assert name in snippets, f"no `<!-- snippet: {name} -->` block in {DOC}"
    return snippets[name][1]


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: the snippets of docs/consuming-tokens.md that need it cannot be "
                    "checked (install it; CI machines have Go, a JDK with Maven, sh and curl)")
    return path


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed ({result.returncode}) in {cwd}:\n{result.stdout}\n{result.stderr}")
    return result


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(token: str) -> str:
    return str(jose.parse(token)[1]["uti"])


def assert_absent(token: str, text: str, where: str) -> None:
    # not `assert token not in text`: pytest's report of a failing assert would print the token
    if token in text:
        pytest.fail(f"the token appeared in {where}", pytrace=False)


# --- the page -----------------------------------------------------------------------------------------------------
def test_every_consumer_snippet_is_marked() -> None:
    snippets = marked_snippets()
    assert {name: lang for name, (lang, _) in snippets.items()} == SNIPPET_LANGUAGES
    # an unmarked block in one of these languages would be published untested
    fences = re.findall(r"^```(\w+)$", DOC.read_text(), re.M)
    assert sum(lang in set(SNIPPET_LANGUAGES.values()) for lang in fences) == len(snippets)


def test_python_snippet_compiles_and_its_names_exist() -> None:
    code = snippet("python")
    tree = ast.parse(compile(code, "python snippet", "exec", ast.PyCF_ONLY_AST))
    imported: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module is not None
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                imported[alias.asname or alias.name] = getattr(module, alias.name)
    assert {"MountedTokenCredential", "GraphServiceClient"} <= set(imported)
    for node in ast.walk(tree):  # each call of an imported class matches its signature
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported:
            keywords = {k.arg: None for k in node.keywords if k.arg is not None}
            inspect.signature(imported[node.func.id]).bind(*[None] * len(node.args), **keywords)


# --- Go and Java: built, then run ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def go_driver(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """tests/snippets/go with the snippet as package graphcredtoken: gofmt-clean, vetted, built."""
    go, gofmt = tool("go"), tool("gofmt")
    module = tmp_path_factory.mktemp("go-snippet") / "module"
    shutil.copytree(PROJECTS / "go", module)
    (module / "graphcredtoken").mkdir()
    (module / "graphcredtoken" / "credential.go").write_text(snippet("go"))
    # the committed go.sum must already hold every module: a build must not resolve anything new
    env = {**os.environ, "GOFLAGS": f"{os.environ.get('GOFLAGS', '')} -mod=readonly".strip()}
    assert run([gofmt, "-l", "graphcredtoken"], module).stdout == "", "the Go snippet is not gofmt-formatted"
    run([go, "vet", "./..."], module, env)
    run([go, "build", "-o", "snippet-check", "."], module, env)
    return [str(module / "snippet-check")]


@pytest.fixture(scope="module")
def java_driver(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """tests/snippets/java with the snippet in its package: compiled without warnings, classpath resolved."""
    mvn, java = tool("mvn"), tool("java")
    project = tmp_path_factory.mktemp("java-snippet") / "project"
    shutil.copytree(PROJECTS / "java", project)
    code = snippet("java")
    package = re.search(r"^package ([\w.]+);", code, re.M)
    public_class = re.search(r"^public (?:final )?class (\w+)", code, re.M)
    assert package and public_class, "the Java snippet needs a package and a public class"
    source = project / "src" / "main" / "java" / Path(*package[1].split(".")) / f"{public_class[1]}.java"
    source.parent.mkdir(parents=True)
    source.write_text(code)
    run([mvn, "-q", "-B", "-Dstyle.color=never", "compile", "dependency:build-classpath",
         "-Dmdep.outputFile=classpath.txt"], project)
    classpath = os.pathsep.join([str(project / "target" / "classes"), (project / "classpath.txt").read_text().strip()])
    return [java, "-cp", classpath, "io.graphcred.snippets.SnippetCheck"]


class Driver:
    """A snippet driver (tests/snippets/*): each line sent is one token request, each line back its answer."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, bufsize=1)
        self.answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.answers.put(line.rstrip("\n"))

    def ask(self, timeout: float = 30) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        try:
            return self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.argv[0]} gave no answer within {timeout:.0f} s "
                                 f"(exit code {self.process.poll()})") from None

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def token_files(token: str, expires_on: dt.datetime) -> dict[str, bytes]:
    return {"access_token": token.encode(), "authorization": f"Bearer {token}".encode(),
            "token_type": b"Bearer", "expires_on": rfc3339(expires_on).encode()}


@pytest.fixture(params=["go", "java"])
def driver_argv(request: pytest.FixtureRequest) -> list[str]:
    argv: list[str] = request.getfixturevalue(f"{request.param}_driver")
    return argv


@pytest.mark.timeout(BUILD_TIMEOUT + 60)
def test_compiled_credential_follows_the_mounted_token(driver_argv: list[str], tmp_path: Path) -> None:
    # the Go and Java credentials do not parse the token: any opaque string will do
    first, refreshed, expired = (f"eyJ.{secrets.token_urlsafe(32)}.sig" for _ in range(3))
    volume = SecretVolume(tmp_path / "token")
    volume.write(token_files(first, expiry := now() + dt.timedelta(hours=1)))
    driver = Driver([*driver_argv, str(volume.directory)])
    try:
        assert driver.ask() == f"token {digest(first)} {int(expiry.timestamp())}"
        volume.write(token_files(refreshed, expiry := now() + dt.timedelta(hours=2)))  # graphcred refreshed
        assert driver.ask() == f"token {digest(refreshed)} {int(expiry.timestamp())}"
        volume.write(token_files(expired, expiry := now() - dt.timedelta(minutes=1)))  # graphcred stopped
        for _ in range(2):  # Java: getTokenSync, then getToken's Mono
            answer = driver.ask()
            assert answer.startswith("error "), answer
            assert "expired" in answer and str(volume.directory) in answer, answer
            assert_absent(expired, answer, "the error")
            assert_absent(refreshed, answer, "the error")
    finally:
        driver.close()


# --- shell and Python: run against the bed's Graph API ------------------------------------------------------------
def operator_token(env: Env, roles: list[str]) -> dict[str, bytes]:
    """The token Secret's files for a credential whose app has `roles`, as the operator wrote them."""
    app = env.secret_app("app-secret", roles=roles)
    env.create("reader", app, {"clientSecret": {"name": "cred"}})
    env.wait_ready("reader")
    secret = env.secret("reader-token")
    assert secret is not None and secret.data
    return {key: base64.b64decode(value) for key, value in secret.data.items()}


def mounted(tmp_path: Path, files: dict[str, bytes]) -> Path:
    volume = SecretVolume(tmp_path / "token")
    volume.write(files)
    return volume.directory


def run_shell_snippet(bed: Bed, directory: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """The shell snippet as a pod would run it, pointed at the bed's Graph API; also curl's arguments, recorded by a
    wrapper in front of the real curl ("" if curl never ran)."""
    sh, curl = tool("sh"), tool("curl")
    script = tmp_path / "list-users.sh"
    script.write_text(snippet("shell") + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    argv_log = tmp_path / "curl-argv"
    wrapper = bin_dir / "curl"
    wrapper.write_text(f'#!/bin/sh\nprintf \'%s\\n\' "$@" >> "{argv_log}"\nexec "{curl}" "$@"\n')
    wrapper.chmod(0o755)
    # a clean environment: no proxy settings between curl and 127.0.0.1
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "LC_ALL": "C",
           "GRAPHCRED_DIR": str(directory), "GRAPH_URL": bed.graph.url, "CURL_CA_BUNDLE": str(bed.issuer_ca_file)}
    result = subprocess.run([sh, str(script)], env=env, capture_output=True, text=True, timeout=60)
    return result, argv_log.read_text() if argv_log.exists() else ""


@pytest.mark.bed
def test_shell_snippet_lists_users_with_the_mounted_token(env: Env, tmp_path: Path) -> None:
    files = operator_token(env, ["User.Read.All"])
    token = files["access_token"].decode()
    before = len(env.bed.graph.calls())
    result, curl_argv = run_shell_snippet(env.bed, mounted(tmp_path, files), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Adele Vance" in [user["displayName"] for user in json.loads(result.stdout)["value"]]
    calls = env.bed.graph.calls()[before:]
    assert [(c.method, c.path, c.status, c.token_id) for c in calls] == [
        ("GET", "/v1.0/users", 200, token_id(token))]
    assert curl_argv, "the wrapper saw no curl call"
    assert_absent(token, curl_argv, "curl's command line")
    assert_absent(token, result.stdout + result.stderr, "the output")


@pytest.mark.bed
def test_shell_snippet_shows_graphs_error_for_a_token_without_the_role(env: Env, tmp_path: Path) -> None:
    files = operator_token(env, ["Mail.Read"])
    token = files["access_token"].decode()
    result, _ = run_shell_snippet(env.bed, mounted(tmp_path, files), tmp_path)
    assert result.returncode == 22, result.stderr  # curl --fail-with-body: HTTP error
    assert json.loads(result.stdout)["error"]["code"] == "Authorization_RequestDenied"
    assert_absent(token, result.stdout + result.stderr, "the output")


@pytest.mark.bed
@pytest.mark.parametrize("seconds_left", [-60, 30], ids=["expired", "expiring-within-a-minute"])
def test_shell_snippet_refuses_an_old_token_before_calling(env: Env, tmp_path: Path, seconds_left: int) -> None:
    files = operator_token(env, ["User.Read.All"])  # a token the Graph API would accept: only expires_on says no
    token = files["access_token"].decode()
    expires_on = rfc3339(now() + dt.timedelta(seconds=seconds_left))
    directory = mounted(tmp_path, {**files, "expires_on": expires_on.encode()})
    before = len(env.bed.graph.calls())
    result, curl_argv = run_shell_snippet(env.bed, directory, tmp_path)
    assert result.returncode == 1
    assert f"the graphcred token in {directory} expires at {expires_on}" in result.stderr
    assert "kubectl describe gac" in result.stderr and "subPath" in result.stderr
    assert curl_argv == "" and env.bed.graph.calls()[before:] == []
    assert_absent(token, result.stdout + result.stderr, "the output")


@pytest.fixture
def python_snippet_on_the_bed(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """Redirect the two things that differ from a pod, through the real classes: the credential reads the test's
    directory instead of /var/run/graphcred, and GraphServiceClient(credentials=, scopes=) calls the bed's Graph
    API (tests/graphsdk.py) instead of graph.microsoft.com. Yields where to put the token directory."""
    import msgraph

    import graphcred_client

    from ..graphsdk import graph_service_client

    where: dict[str, Path] = {}
    real_client = msgraph.GraphServiceClient

    class MountedHere(graphcred_client.MountedTokenCredential):
        def __init__(self, directory: str = POD_MOUNT, **kwargs: Any) -> None:
            assert str(directory) == POD_MOUNT, "the page's example reads the pod's mount path"
            super().__init__(where["directory"], **kwargs)

    def graph_client_on_the_bed(*args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(real_client).bind(*args, **kwargs)
        assert bound.arguments.get("scopes") == [GRAPH_SCOPE]
        return graph_service_client(bound.arguments["credentials"], env.bed.graph, env.bed.issuer_ca_file)

    monkeypatch.setattr(graphcred_client, "MountedTokenCredential", MountedHere)
    monkeypatch.setattr(msgraph, "GraphServiceClient", graph_client_on_the_bed)
    yield where


@pytest.mark.bed
def test_python_snippet_lists_users_with_the_mounted_token(
    env: Env, tmp_path: Path, python_snippet_on_the_bed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    files = operator_token(env, ["User.Read.All"])
    token = files["access_token"].decode()
    python_snippet_on_the_bed["directory"] = mounted(tmp_path, files)
    before = len(env.bed.graph.calls())
    exec(compile(snippet("python"), f"{DOC} (python snippet)", "exec"), {"__name__": "snippet"})
    output = capsys.readouterr()
    assert "Adele Vance" in output.out.splitlines()
    calls = env.bed.graph.calls()[before:]
    assert [(c.method, c.path, c.status, c.token_id) for c in calls] == [
        ("GET", "/v1.0/users", 200, token_id(token))]
    assert_absent(token, output.out + output.err, "the output")
