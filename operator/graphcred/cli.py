"""The `graphcred` command: `run` the operator, print the `crd`; for operations `status`, `renew` and `inspect
secret` (ops.py), also as the kubectl plugin `kubectl graphcred ...` (the `kubectl-graphcred` console script)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from . import __version__
from .authority import parse_allowed
from .secret import RENEW_ANNOTATION


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"GRAPHCRED_{name}", default)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _seconds(text: str) -> float:
    """A timeout: seconds (90) or a Go duration (90s, 2m)."""
    from .model import parse_duration

    try:
        value = float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text).total_seconds()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or a duration such as 90s or 2m, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _cluster_options() -> argparse.ArgumentParser:
    """The flags kubectl users expect, for the commands that talk to the cluster as the user."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    options.add_argument("--context", help="kubeconfig context (default: the current context)")
    options.add_argument("--namespace", "-n", help="namespace (default: the context's, else default)")
    return options


def _ops_parsers(sub: Any) -> None:
    cluster = _cluster_options()
    status = sub.add_parser("status", parents=[cluster], help="show a GraphAppCredential's condition, token, "
                            "consumers and recent Events",
                            description="Show a GraphAppCredential: its Ready condition, the token's expiry and "
                            "next refresh, roles and audience, the pods that read its token Secret (and which of "
                            "them never see a refresh), and its recent Events.")
    status.add_argument("name", help="the GraphAppCredential")
    status.add_argument("--output", "-o", choices=("text", "json"), default="text", help="output format")
    renew = sub.add_parser("renew", parents=[cluster], help="acquire a new token now",
                           description=f"Ask the operator to acquire a new token at once (sets {RENEW_ANNOTATION}), "
                           "e.g. after admin consent was granted or the app was fixed in Entra, and wait for the "
                           "answer. Exit codes: 0 renewed, 1 not renewed or not Ready, 2 usage, 3 no answer in "
                           "time, 4 cluster error.")
    renew.add_argument("names", nargs="*", metavar="NAME", help="the GraphAppCredentials")
    renew.add_argument("--all", action="store_true", dest="all_objects", help="every GraphAppCredential in the "
                       "namespace (with -A: in every namespace)")
    renew.add_argument("--selector", "-l", help="those matching this label selector")
    renew.add_argument("--all-namespaces", "-A", action="store_true", help="with --all or -l: in every namespace")
    renew.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                       help="wait until the operator served the request and print the new expiry (default: wait)")
    renew.add_argument("--timeout", type=_seconds, default=60.0, help="how long to wait (default 60s)")
    inspect = sub.add_parser("inspect", help="decode what a Secret holds")
    what = inspect.add_subparsers(dest="what", required=True)
    secret = what.add_parser("secret", parents=[cluster], help="decoded JWT header and claims of a token Secret",
                             description="Decode the access token in a token Secret: its header and claims "
                             "(audience, roles, expiry, tenant, app...). Never the token or its signature.")
    secret.add_argument("name", help="the token Secret")
    secret.add_argument("--output", "-o", choices=("text", "json"), default="text", help="output format")


def _parser(prog: str = "graphcred") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Keeps Entra ID app-only tokens fresh in "
                                     "Kubernetes Secrets.")
    parser.add_argument("--version", action="version", version=f"graphcred {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--kubeconfig", default=_env("KUBECONFIG", os.environ.get("KUBECONFIG")),
                     help="kubeconfig file (default: in-cluster config, else $KUBECONFIG / ~/.kube/config)")
    run.add_argument("--namespace", "-n", action="append", dest="namespaces",
                     help="namespace to watch; repeat for several (default: all; env GRAPHCRED_NAMESPACES, "
                     "comma-separated)")
    run.add_argument("--ca-bundle", default=_env("CA_BUNDLE"),
                     help="extra CA bundle (PEM) for private authority hosts (env GRAPHCRED_CA_BUNDLE)")
    run.add_argument("--log-format", choices=("text", "json"), default=_env("LOG_FORMAT", "text"),
                     help="log format (env GRAPHCRED_LOG_FORMAT)")
    run.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                     type=str.upper, default=_env("LOG_LEVEL", "INFO"), help="log level (env GRAPHCRED_LOG_LEVEL)")
    run.add_argument("--token-concurrency", type=int, default=int(_env("TOKEN_CONCURRENCY", "16") or 16),
                     help="at most this many token requests in flight (env GRAPHCRED_TOKEN_CONCURRENCY)")
    run.add_argument("--token-timeout", type=float, default=float(_env("TOKEN_TIMEOUT", "30") or 30),
                     help="seconds to wait for the token endpoint's answer (env GRAPHCRED_TOKEN_TIMEOUT)")
    run.add_argument("--api-timeout", type=_positive, default=_env("API_TIMEOUT", "30"),
                     help="seconds to wait for the Kubernetes API's answer to one call (connecting: at most 10 s; "
                     "env GRAPHCRED_API_TIMEOUT)")
    run.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", "8080") or 8080),
                     help="port for /metrics, /healthz and /readyz (env GRAPHCRED_METRICS_PORT); -1 disables, "
                     "0 picks a free port")
    run.add_argument("--leader-election", action=argparse.BooleanOptionalAction,
                     default=(_env("LEADER_ELECTION", "false") or "").lower() in ("1", "true", "yes"),
                     help="run as one of several replicas: only the Lease holder acts (env GRAPHCRED_LEADER_ELECTION)")
    run.add_argument("--workload-identity", action=argparse.BooleanOptionalAction,
                     default=(_env("WORKLOAD_IDENTITY", "false") or "").lower() in ("1", "true", "yes"),
                     help="serve spec.credential.workloadIdentity: read and watch ServiceAccounts and request their "
                     "tokens; needs that RBAC (the chart's workloadIdentity.enabled; env "
                     "GRAPHCRED_WORKLOAD_IDENTITY)")
    run.add_argument("--authority-host", action="append", dest="authority_hosts", metavar="URL",
                     help="an authority host (https://host[:port]) besides the clouds' own login hosts that "
                     "credentials may name in spec.authorityHost (a private endpoint); others are refused "
                     "(AuthorityNotAllowed) and never contacted; repeat for several (env GRAPHCRED_AUTHORITY_HOSTS, "
                     "comma-separated)")
    run.add_argument("--workload-identity-authority", action="append", dest="workload_identity_authorities",
                     metavar="URL",
                     help="the older name of --authority-host: its hosts are allowed for every credential "
                     "(env GRAPHCRED_WORKLOAD_IDENTITY_AUTHORITIES, comma-separated)")
    run.add_argument("--watch-consumers", action=argparse.BooleanOptionalAction,
                     default=(_env("WATCH_CONSUMERS", "false") or "").lower() in ("1", "true", "yes"),
                     help="watch pods and warn about those that read a token Secret where no refresh reaches them "
                     "(a subPath mount, env, envFrom): a Warning Event, status.unrefreshableConsumers, a metric; "
                     "needs pods get/list/watch (the chart's consumerWarnings.enabled; env "
                     "GRAPHCRED_WATCH_CONSUMERS)")
    run.add_argument("--leader-election-namespace",
                     default=_env("LEADER_ELECTION_NAMESPACE", os.environ.get("POD_NAMESPACE", "default")),
                     help="namespace of the Lease (env GRAPHCRED_LEADER_ELECTION_NAMESPACE, else POD_NAMESPACE)")
    run.add_argument("--lease-duration", type=float, default=float(_env("LEASE_DURATION", "15") or 15),
                     help="seconds a leader's Lease lasts without renewal: the takeover time after a crash "
                     "(env GRAPHCRED_LEASE_DURATION)")
    crd = sub.add_parser("crd", help="print the GraphAppCredential CRD (YAML)")
    crd.add_argument("--helm", action="store_true", help="as the chart's templates/crd.yaml")
    _ops_parsers(sub)
    return parser


def _authority_hosts(given: list[str] | None, env: str, flag: str) -> tuple[str, ...]:
    """Allowed authority hosts from the flag, else from the environment (comma-separated)."""
    values = given or [a for a in (_env(env) or "").split(",") if a.strip()]
    return tuple(parse_allowed(a, flag) for a in values)


def _ops(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import ops

    if args.command == "renew":
        chosen = sum((bool(args.names), args.all_objects, args.selector is not None))
        if chosen != 1:
            parser.error("renew: give NAMEs, --all or --selector (one of them)")
        if args.all_namespaces and args.names:
            parser.error("renew: -A goes with --all or --selector, not with names")
    try:
        cluster = ops.Cluster.connect(args.kubeconfig, args.context, args.namespace)
        if args.command == "status":
            return ops.status(cluster, args.name, output=args.output, out=sys.stdout)
        if args.command == "renew":
            return ops.renew(cluster, args.names, selector=args.selector, all_namespaces=args.all_namespaces,
                             wait=args.wait, timeout=args.timeout, out=sys.stdout, err=sys.stderr)
        return ops.inspect_secret(cluster, args.name, output=args.output, out=sys.stdout, err=sys.stderr)
    except ops.OpsError as exc:
        sys.stderr.write(f"{parser.prog}: {exc}\n")
        return exc.code


def kubectl_main(argv: list[str] | None = None) -> int:
    """`kubectl graphcred ...`: kubectl runs the `kubectl-graphcred` executable it finds on PATH."""
    return main(argv, prog="kubectl graphcred")


def main(argv: list[str] | None = None, prog: str = "graphcred") -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.command in ("status", "renew", "inspect"):
        return _ops(parser, args)
    if args.command == "crd":
        from .crd import crd_helm_template, crd_yaml

        sys.stdout.write(crd_helm_template() if args.helm else crd_yaml())
        return 0
    from .config import RunConfig
    from .runner import run

    namespaces = args.namespaces or [n for n in (_env("NAMESPACES") or "").split(",") if n.strip()]
    try:
        authority_hosts = _authority_hosts(args.authority_hosts, "AUTHORITY_HOSTS", "--authority-host")
        authorities = _authority_hosts(args.workload_identity_authorities, "WORKLOAD_IDENTITY_AUTHORITIES",
                                       "--workload-identity-authority")
    except ValueError as exc:
        parser.error(str(exc))
    cfg = RunConfig(kubeconfig=args.kubeconfig, namespaces=tuple(n.strip() for n in namespaces),
                    ca_bundle=args.ca_bundle, log_format=args.log_format, log_level=args.log_level,
                    token_concurrency=args.token_concurrency, token_timeout=args.token_timeout,
                    api_timeout=args.api_timeout,
                    metrics_port=args.metrics_port, leader_election=args.leader_election,
                    leader_election_namespace=args.leader_election_namespace, lease_seconds=args.lease_duration,
                    workload_identity=args.workload_identity,
                    authority_hosts=authority_hosts, workload_identity_authorities=authorities,
                    watch_consumers=args.watch_consumers)
    return run(cfg)
