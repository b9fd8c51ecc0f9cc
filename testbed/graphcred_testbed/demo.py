"""`python -m graphcred_testbed demo`: the whole story on a local bed, no Azure account, no cluster.

Starts the real control plane and the Entra-protocol issuer, installs the CRD, runs `graphcred run`, registers the
example app of `examples/client-secret.yaml` in the issuer, applies that example (a copy with `spec.authorityHost`
set to the local issuer), and shows the credential Ready, the token's decoded claims, a refresh on demand and the
example daemon's Graph call through the token Secret. Along the way it says where everything is (kubectl, helm,
the kubeconfig, the issuer and its CA, the operator's log and metrics) and what to try next.

`--hold` keeps everything up, printing each refresh the operator makes, until Ctrl-C (or SIGTERM). An interrupt at
any point stops everything the demo started, without a traceback.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import yaml
from kubernetes import client

from graphcred.acquire.jwt import b64url_decode
from graphcred.api.keys import GROUP, PLURAL, VERSION

from .bed import Bed, wait_for
from .binaries import binary_dir
from .operator_process import OperatorProcess, install_crd
from .pki import self_signed
from .volume import SecretVolume

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CHART = ROOT / "charts" / "graphcred"
NAMESPACE = "demo"
DOMAIN = "contoso-demo.onmicrosoft.com"
DEFAULT_LIFETIME = 120  # seconds: short, so that refreshes (at half-life) can be watched


@dataclass(frozen=True)
class Example:
    """examples/client-secret.yaml: the app the demo registers and the credential it applies."""

    tenant_id: str
    client_id: str
    client_secret: str
    credential_secret: str  # the Secret holding the client secret
    secret_key: str
    name: str  # the GraphAppCredential
    token_secret: str
    roles: tuple[str, ...]

    @classmethod
    def load(cls) -> Example:
        docs = [d for d in yaml.safe_load_all((EXAMPLES / "client-secret.yaml").read_text()) if d]
        secret = next(d for d in docs if d["kind"] == "Secret")
        gac = next(d for d in docs if d["kind"] == "GraphAppCredential")
        spec = gac["spec"]
        key = spec["credential"]["clientSecret"].get("key", "clientSecret")
        return cls(tenant_id=spec["tenantId"], client_id=spec["clientId"],
                   client_secret=secret["stringData"][key], credential_secret=secret["metadata"]["name"],
                   secret_key=key, name=gac["metadata"]["name"],
                   token_secret=spec.get("secretName") or f"{gac['metadata']['name']}-token",
                   roles=tuple(spec["requiredRoles"]))


def with_authority_host(text: str, authority_host: str) -> str:
    """An example manifest with `spec.authorityHost` added to each GraphAppCredential that names its own app and
    each ClusterGraphApp (one with `appRef` takes its app's), its comments kept (a YAML round trip would drop them,
    and they are half of what an example teaches)."""
    docs = text.split("\n---\n")
    out = []
    for doc in docs:
        padded = f"\n{doc}\n"
        if ("\nkind: GraphAppCredential\n" in padded and "\n  appRef:" not in padded) \
                or "\nkind: ClusterGraphApp\n" in padded:
            assert "\nspec:\n" in doc, "an example without a top-level spec"
            doc = doc.replace("\nspec:\n", f"\nspec:\n  authorityHost: {authority_host}  # the demo's local issuer "
                                           "(examples/ leave it out: Entra ID's global login host)\n", 1)
        out.append(doc)
    return "\n---\n".join(out)


def write_examples(directory: Path, authority_host: str) -> list[Path]:
    """Ready-to-apply copies of the examples that declare a GraphAppCredential, pointed at the local issuer."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(EXAMPLES.glob("*.yaml")):
        text = source.read_text()
        if "kind: GraphAppCredential" in text:
            target = directory / source.name
            target.write_text(with_authority_host(text, authority_host))
            written.append(target)
    return written


class Interrupts:
    """The first Ctrl-C (SIGINT) or SIGTERM raises KeyboardInterrupt wherever the demo is; later ones are ignored,
    so that stopping what it started is never cut short."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.muted = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is None and not self.muted:
            self.received = signum
            raise KeyboardInterrupt

    def mute(self) -> None:
        """From now on (stopping everything) a signal interrupts nothing."""
        self.muted = True

    def __enter__(self) -> Interrupts:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def _kubectl(bed: Bed, *args: str, comment: str = "") -> str:
    """Run kubectl on the bed and echo it as the user would type it (with the printed KUBECONFIG exported)."""
    _say("$ kubectl " + shlex.join(args) + (f"   # {comment}" if comment else ""))
    out: str = bed.kubectl(*args).stdout
    print(out, end="" if out.endswith("\n") or not out else "\n", flush=True)
    return out


def _graphcred(bed: Bed, *args: str, comment: str = "") -> None:
    """Run the graphcred CLI (the one on the printed PATH) against the bed and echo it."""
    _say("$ graphcred " + shlex.join(args) + (f"   # {comment}" if comment else ""))
    env = {**os.environ, "KUBECONFIG": str(bed.kubeconfig)}
    run = subprocess.run([sys.executable, "-m", "graphcred", *args], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    print(run.stdout + run.stderr, end="", flush=True)


def _secret_data(bed: Bed, name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads(bed.kubectl("get", "secret", name, "-n", NAMESPACE, "-o", "json").stdout)["data"]
    return data


def _shown(path: Path) -> str:
    """A path as short as it can be and still work from here."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _gac_status(bed: Bed, name: str) -> dict[str, Any]:
    obj = cast(dict[str, Any], bed.custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name))
    status: dict[str, Any] = obj.get("status") or {}
    return status


def _ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return cast(dict[str, Any], condition)
    return {}


def _ready(status: dict[str, Any]) -> tuple[str, str]:
    condition = _ready_condition(status)
    return str(condition.get("status", "")), str(condition.get("reason", ""))


def _hhmmss(rfc3339: str | None) -> str:
    return rfc3339[11:19] if rfc3339 and len(rfc3339) >= 19 else str(rfc3339)


def demo(hold: bool, lifetime: int = DEFAULT_LIFETIME) -> int:
    """Run the demo; 0 when it ran to its end (with `hold`: until Ctrl-C or SIGTERM), 130 when interrupted before."""
    with Interrupts() as interrupts:
        try:
            _run(hold, lifetime, interrupts)
        except KeyboardInterrupt:  # before the end (with --hold: before holding); everything is stopped by now
            what = "Ctrl-C" if interrupts.received == signal.SIGINT else "SIGTERM"
            _say(f"\ndemo interrupted ({what}); stopped everything it started")
            return 130
    _say("demo stopped; nothing left running")
    return 0


def _run(hold: bool, lifetime: int, interrupts: Interrupts) -> None:
    example = Example.load()
    _say("graphcred demo: starting the test bed (the first run builds Kubernetes from source: minutes)")
    with contextlib.ExitStack() as stack:
        bed = stack.enter_context(Bed())
        install_crd(bed)
        version = json.loads(bed.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
        tools = binary_dir()
        venv_bin = Path(sys.executable).parent  # graphcred and kubectl-graphcred, installed with the venv
        cli = (venv_bin / "graphcred").exists()
        _say(f"control plane: Kubernetes {version} at {bed.control_plane.server} "
             f"(up in {bed.control_plane.startup_seconds:.1f} s)",
             f"  kubectl and helm: {tools}/ (built for the bed; not on your PATH)"
             + (f"; graphcred and kubectl-graphcred: {venv_bin}/" if cli else ""),
             f"  export PATH={tools}{f':{venv_bin}' if cli else ''}:$PATH",
             f"  export KUBECONFIG={bed.kubeconfig}")

        bed.issuer.add_tenant(example.tenant_id, DOMAIN)
        examples = bed.control_plane.dir / "examples"
        write_examples(examples, bed.authority_host)
        # examples/certificate.yaml's credential: a certificate "uploaded to the app" and its key, ready for a Secret
        certificate = self_signed("mail-reader-demo")
        cert_file, key_file = certificate.write(bed.control_plane.dir, "app")
        bed.issuer.register_app(example.tenant_id, example.client_id, secret=example.client_secret,
                                certificate=certificate.cert,
                                # exactly what the example declares: the demo must not grant what a user would lack
                                roles={"https://graph.microsoft.com": list(example.roles)}, lifetime=lifetime)
        _say(f"token issuer (Entra ID's v2.0 protocol): authorityHost {bed.authority_host}",
             f"  CA certificate: {bed.issuer_ca_file} (the operator trusts it through --ca-bundle)",
             f"  tenant {example.tenant_id} ({DOMAIN}); app (clientId) {example.client_id} with the application "
             f"roles {', '.join(example.roles)}",
             f"  the app's client secret is the one in examples/client-secret.yaml: Secret "
             f"{NAMESPACE}/{example.credential_secret}, key {example.secret_key}",
             f"  the app's certificate (for examples/certificate.yaml): {cert_file}, its private key {key_file}",
             f"  tokens live {lifetime} s, so the operator refreshes them about every {lifetime // 2} s")

        op = OperatorProcess(bed, bed.control_plane.dir, log_level="INFO")
        if hold:  # the bed's directory goes when the demo stops; its operator log is worth keeping
            stack.callback(_keep_log, op)  # runs after the operator stopped (entered below), before the bed goes
        stack.enter_context(op)
        stack.callback(interrupts.mute)  # the first thing done on the way out: stopping is never interrupted
        _say(f"operator: graphcred run (pid {op.process.popen.pid if op.process.popen else '?'}), "
             f"log {op.logfile}, metrics {op.metrics_url()}/metrics")

        _say(f"examples/ with spec.authorityHost set to this issuer (every GraphAppCredential on this bed needs "
             f"it), ready to apply: {examples}/",
             "")
        _kubectl(bed, "create", "namespace", NAMESPACE)
        manifest = examples / "client-secret.yaml"
        _kubectl(bed, "apply", "-n", NAMESPACE, "-f", str(manifest),
                 comment="examples/client-secret.yaml + authorityHost")
        t0 = time.monotonic()
        wait_for(lambda: _ready(_gac_status(bed, example.name))[0] == "True", timeout=60,
                 what=f"{example.name} to become Ready")
        _say(f"Ready after {time.monotonic() - t0:.2f} s")
        _kubectl(bed, "get", "gac", "-n", NAMESPACE)
        data = _secret_data(bed, example.token_secret)
        token = base64.b64decode(data["access_token"]).decode()
        header, claims = (json.loads(b64url_decode(p)) for p in token.split(".")[:2])
        _say(f"$ kubectl get secret {example.token_secret} -n {NAMESPACE}   # keys: " + ", ".join(sorted(data)),
             "decoded access_token header: " + json.dumps(header),
             "decoded access_token claims: " + json.dumps(claims, indent=2))

        status = _gac_status(bed, example.name)
        _say(f"\nthe token expires at {status.get('expiresOn')}; the operator refreshes it at "
             f"{status.get('refreshAt')} (half its lifetime, a little earlier at random). A refresh on demand:")
        _graphcred(bed, "renew", example.name, "-n", NAMESPACE)
        _consume(bed, _secret_data(bed, example.token_secret))

        _say("", "try it (in another shell, with the two exports above):" if hold else
             f"to try it yourself, keep the bed up: {_shown(Path(sys.executable))} -m graphcred_testbed demo --hold; "
             "then:",
             f"  graphcred status {example.name} -n {NAMESPACE}            # condition, expiry, next refresh, "
             "roles, consumers, events",
             f"  graphcred renew {example.name} -n {NAMESPACE}             # a new token now; waits for it",
             f"  graphcred inspect secret {example.token_secret} -n {NAMESPACE}   # the token's claims, never "
             "the token",
             f"  kubectl get gac -n {NAMESPACE} -o wide -w                  # follow refreshes",
             f"  kubectl create secret tls mail-reader-cert -n {NAMESPACE} --cert={cert_file} --key={key_file} && "
             f"kubectl apply -n {NAMESPACE} -f {examples}/certificate.yaml   # the certificate example",
             f"  kubectl apply -n {NAMESPACE} -f {examples}/secret-template.yaml   # shaped token Secrets "
             "(its second app is not registered here: see the Unauthorized reason)",
             f"  helm template graphcred {CHART} | less   # the chart (the bed runs the operator as a process)")
        if hold:
            with contextlib.suppress(KeyboardInterrupt):  # the way to end a held demo: not an interruption
                _say(f"\nbed and operator are up; demo pid {os.getpid()}: Ctrl-C (or kill {os.getpid()}) stops "
                     "everything it started. Refreshes as the operator makes them:")
                _follow(bed)
            _say("\nstopping the operator and the bed ...")


def _follow(bed: Bed) -> None:
    """Print each refresh (a new expiry) and each change of Ready of the credentials in the demo namespace, until
    interrupted: what `kubectl get gac -w` would show, with the old and new expiry side by side."""
    seen: dict[str, tuple[str | None, tuple[str, str]]] = {}
    first = True
    while True:
        items: list[dict[str, Any]] = []
        with contextlib.suppress(client.ApiException):  # the user may be changing things; the next poll will tell
            listed = bed.custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
            items = cast(dict[str, Any], listed)["items"]
        for obj in items:
            name, status = obj["metadata"]["name"], obj.get("status") or {}
            expires, ready = status.get("expiresOn"), _ready(status)
            before = seen.get(name)
            seen[name] = (expires, ready)
            if first or before == (expires, ready):
                continue
            now = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
            if before is None:
                _say(f"{now} {name}: new" + (f"; Ready={ready[0]} {ready[1]}" if ready[0] else ""))
            elif expires != before[0] and expires:
                change = f"refreshed: expires {_hhmmss(before[0])} -> " if before[0] else "issued: expires "
                _say(f"{now} {name}: token {change}{_hhmmss(expires)} UTC; next refresh at "
                     f"{_hhmmss(status.get('refreshAt'))}")
            if before is not None and ready != before[1]:
                _say(f"{now} {name}: Ready={ready[0]} {ready[1]}: {_ready_condition(status).get('message', '')}")
        first = False
        time.sleep(1)


def _keep_log(op: OperatorProcess) -> None:
    kept = Path(tempfile.gettempdir()) / f"graphcred-demo-{os.getpid()}-operator.log"
    with contextlib.suppress(OSError):
        shutil.copyfile(op.logfile, kept)
        _say(f"operator log kept: {kept}")


def _consume(bed: Bed, data: dict[str, str]) -> None:
    """The last mile: examples/consumer/graph_daemon.py (the pod of examples/pod.yaml) reads the token Secret
    mounted as the kubelet mounts it and lists users through the bed's Graph API with the Graph SDK."""
    with tempfile.TemporaryDirectory(prefix="graphcred-demo-") as tmp:
        volume = SecretVolume(Path(tmp) / "token")
        volume.write({key: base64.b64decode(value) for key, value in data.items()})
        _say("\n$ python examples/consumer/graph_daemon.py --count 1   # the pod of examples/pod.yaml, with the "
             "Secret mounted kubelet-style and the bed's Graph API for graph.microsoft.com")
        env = {**os.environ, "GRAPHCRED_TOKEN_DIR": str(volume.directory), "GRAPH_BASE_URL": bed.graph.base_url,
               "GRAPH_CA_BUNDLE": str(bed.issuer_ca_file)}
        run = subprocess.run([sys.executable, str(EXAMPLES / "consumer" / "graph_daemon.py"), "--count", "1"],
                             env=env, capture_output=True, text=True, timeout=120, check=False)
        print(run.stdout + run.stderr, end="", flush=True)
