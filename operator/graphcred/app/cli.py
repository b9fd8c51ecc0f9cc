"""The `graphcred` command: `run` the operator, print the `crd`; for operations `status`, `renew`, `inspect secret`
and `version` (graphcred.ops), also as the kubectl plugin `kubectl graphcred ...` (the `kubectl-graphcred` console
script); `completion bash|zsh|fish` prints a shell completion script.

Built on click (kopf's own CLI library): consistent usage errors (exit 2) and shell completion. `run`'s settings are
parsed and checked by `graphcred.app.settings`: the environment is read only by `run`, so a bad GRAPHCRED_* variable
never breaks another command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource
from click.shell_completion import CompletionItem, get_completion_class

from graphcred import __version__
from graphcred.api.keys import RENEW_ANNOTATION

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 110}
OUTPUTS = ("text", "json", "yaml")
EXIT_CODES = ("Exit codes: 0 done; 1 the credential failed (renew: not renewed or not Ready; inspect: no token to "
              "decode); 2 usage; 3 no answer from the operator in time (renew --wait); 4 the cluster refused or "
              "could not be reached.")


@click.group(context_settings=CONTEXT, help="Keeps Entra ID app-only tokens fresh in Kubernetes Secrets.")
@click.version_option(__version__, "--version", prog_name="graphcred", message="%(prog)s %(version)s",
                      help="Show the client's version and exit (`graphcred version`: also the operator's).")
def cli() -> None:
    pass


# --- run ----------------------------------------------------------------------------------------------------------

def _setting(flag: str, field: str, help_text: str, metavar: str | None = None, multiple: bool = False,
             switch: bool = False, short: str | None = None) -> Callable[[F], F]:
    """A `run` option: given or not (None), the value goes to settings.load unconverted; help names the variable
    and the default."""
    from graphcred.app.settings import RunSettings, env_names

    default = RunSettings.model_fields[field].default
    if isinstance(default, float):
        shown = f"{default:g}s"
    elif isinstance(default, bool):
        shown = str(default).lower()
    else:
        shown = str(default) if default not in (None, "", ()) else ""
    variables = " or ".join(env_names(field))
    names = [f"{flag}/--no-{flag[2:]}" if switch else flag, *([short] if short else []), field]
    text = f"{help_text} [env {variables}" + (f"; default: {shown}]" if shown else "]")
    return click.option(*names, default=None, multiple=multiple, metavar=metavar, help=text, show_default=False)


RUN_OPTIONS = [
    _setting("--kubeconfig", "kubeconfig", "kubeconfig file (default: the pod's ServiceAccount in a pod, else "
             "~/.kube/config)", "FILE"),
    _setting("--namespace", "namespaces", "namespace to watch; several: repeat or comma-separate (default: all)",
             "NAMESPACE[,...]", multiple=True, short="-n"),
    _setting("--ca-bundle", "ca_bundle", "extra CA certificates (PEM file) for private authority hosts", "FILE"),
    _setting("--log-format", "log_format", "text or json", "FORMAT"),
    _setting("--log-level", "log_level", "DEBUG, INFO, WARNING or ERROR", "LEVEL"),
    _setting("--token-concurrency", "token_concurrency", "at most this many token requests in flight (1-1024)",
             "N"),
    _setting("--token-timeout", "token_timeout", "how long to wait for the token endpoint's answer (seconds or a "
             "duration: 30, 30s, 1m)", "DURATION"),
    _setting("--api-timeout", "api_timeout", "how long to wait for the Kubernetes API's answer to one call "
             "(connecting: at most 10s)", "DURATION"),
    _setting("--metrics-port", "metrics_port", "port for /metrics, /healthz and /readyz; 0 picks a free port, -1 "
             "serves none", "PORT"),
    _setting("--leader-election", "leader_election", "run as one of several replicas: only the Lease holder acts",
             switch=True),
    _setting("--leader-election-namespace", "leader_election_namespace", "namespace of the Lease", "NAMESPACE"),
    _setting("--lease-duration", "lease_duration", "how long a leader's Lease lasts without renewal: the takeover "
             "time after a crash (1s-1h)", "DURATION"),
    _setting("--workload-identity", "workload_identity", "serve spec.credential.workloadIdentity: read and watch "
             "ServiceAccounts and request their tokens; needs that RBAC (the chart's workloadIdentity.enabled)",
             switch=True),
    _setting("--workload-identity-authority", "workload_identity_authorities", "an authority host besides the "
             "clouds' own login hosts that may receive ServiceAccount tokens, for credentials whose "
             "spec.authorityHost names it; several: repeat or comma-separate", "https://HOST[:PORT]", multiple=True),
    _setting("--authority-host", "authority_hosts", "an authority host besides the clouds' own login hosts that "
             "credentials may name in spec.authorityHost; several: repeat or comma-separate", "https://HOST[:PORT]",
             multiple=True),
    _setting("--watch-consumers", "watch_consumers", "warn about pods that read a token Secret where no refresh "
             "reaches them (subPath, env, envFrom); needs pods get/list/watch (the chart's "
             "consumerWarnings.enabled)", switch=True),
    _setting("--cluster-resource-namespace", "cluster_resource_namespace", "namespace of the Secrets and "
             "ServiceAccounts ClusterGraphApps name (default: the operator's own, POD_NAMESPACE; else "
             "graphcred-system)", "NAMESPACE"),
    _setting("--graph-endpoint", "graph_endpoint", "Microsoft Graph base URL (https://host[:port]) for certificate "
             "rotation's addKey and removeKey (default: the credential's cloud's Graph)", "URL"),
]


def _run_options(fn: F) -> F:
    for option in reversed(RUN_OPTIONS):
        fn = option(fn)
    return fn


@cli.command(context_settings=CONTEXT, help="Run the operator. Every setting is a flag and an environment variable "
             "(the flag wins); all are checked before anything starts: a bad one is one line naming it, and exit "
             "code 2. Times are seconds or durations (15, 15s, 1m30s); switches true/false (1/0, t/f, yes/no). "
             "Exit codes: 0 stopped; 1 could not start (e.g. the metrics port is taken) or lost leadership; 2 a "
             "bad setting or a file that cannot be used.")
@_run_options
@click.pass_context
def run(ctx: click.Context, /, **given: Any) -> int:
    from graphcred.app.config import startup_failed
    from graphcred.app.settings import SettingsError, load

    flags = {field: value for field, value in given.items()
             if ctx.get_parameter_source(field) is ParameterSource.COMMANDLINE}
    try:
        settings = load(flags)
    except SettingsError as exc:
        for line in exc.lines:
            startup_failed(line, 2, prog=ctx.command_path)
        raise SystemExit(2) from None  # as a usage error
    from graphcred.app import runner  # kopf and the handlers: only once the settings are good

    return runner.run(settings.to_config())


@cli.command(context_settings=CONTEXT, help="Print a CRD of graphcred's (YAML): GraphAppCredential by default.")
@click.option("--helm", is_flag=True, help="as the chart's templates/crd*.yaml")
@click.option("--kind", type=click.Choice(["graphappcredentials", "clustergraphapps"]), default="graphappcredentials",
              show_default=True, help="which CRD, by its plural")
def crd(helm: bool, kind: str) -> int:
    from graphcred.api.crd import crd_helm_template, crd_yaml

    sys.stdout.write(crd_helm_template(kind) if helm else crd_yaml(kind))
    return 0


# --- operations ---------------------------------------------------------------------------------------------------

def _complete_credentials(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """GraphAppCredential names for the shell, from the cluster (nothing if it cannot be asked quickly)."""
    from graphcred.ops import commands as ops

    try:
        cluster = ops.Cluster.connect(ctx.params.get("kubeconfig"), ctx.params.get("context"),
                                      ctx.params.get("namespace"))
        names = [o["metadata"]["name"] for o in cluster.credentials(None, False)]
    except Exception:  # noqa: BLE001 - completion offers nothing rather than an error in the user's prompt
        return []
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def _complete_status(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A credential's name, or after `cga/` a ClusterGraphApp's."""
    from graphcred.ops import commands as ops

    given, slash, rest = incomplete.partition("/")
    if not slash or given.lower() not in ops.KINDS["app"]:
        return _complete_credentials(ctx, param, incomplete)
    try:
        cluster = ops.Cluster.connect(ctx.params.get("kubeconfig"), ctx.params.get("context"),
                                      ctx.params.get("namespace"))
        names = [o["metadata"]["name"] for o in cluster.apps()]
    except Exception:  # noqa: BLE001 - completion offers nothing rather than an error in the user's prompt
        return []
    return [CompletionItem(f"{given}/{n}") for n in names if n.startswith(rest)]


def _status_target(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    from graphcred.ops import commands as ops

    try:
        return ops.typed_name(value, ("credential", "app"))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def _names(kinds: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        from graphcred.ops import commands as ops

        try:
            if isinstance(value, tuple):
                return tuple(ops.object_name(v, kinds) for v in value)
            return ops.object_name(value, kinds)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return check


def _cluster_options(fn: F) -> F:
    """The flags kubectl users expect, for the commands that talk to the cluster as the user."""
    fn = click.option("--namespace", "-n", help="namespace (default: the context's, else default)")(fn)
    fn = click.option("--context", help="kubeconfig context (default: the current context)")(fn)
    return click.option("--kubeconfig", metavar="FILE",
                        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")(fn)


def _output(choices: tuple[str, ...] = OUTPUTS) -> Callable[[F], F]:
    return click.option("--output", "-o", type=click.Choice(choices, case_sensitive=False), default=choices[0],
                        callback=lambda ctx, param, value: value.lower(), help="output format")


def _ops(ctx: click.Context, action: Callable[[Any], int], kubeconfig: str | None, context: str | None,
         namespace: str | None) -> int:
    """`action(cluster)`, its OpsError one line on stderr and its exit code."""
    from graphcred.ops import commands as ops

    return _guard(ctx, lambda: action(ops.Cluster.connect(kubeconfig, context, namespace)))


def _guard(ctx: click.Context, action: Callable[[], int]) -> int:
    from graphcred.ops import commands as ops
    from graphcred.ops.view import printable

    try:
        return action()
    except ops.OpsError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{ctx.find_root().info_name}: {printable(str(exc))}\n")
        return exc.code


@cli.command(context_settings=CONTEXT, short_help="Show a GraphAppCredential or a ClusterGraphApp, and its Events.",
             help="Show a GraphAppCredential (NAME or gac/NAME, in the namespace): its Ready condition, the token's "
             "expiry and next refresh, roles and audience, the pods that read its token Secret (and which of them "
             "never see a refresh), and its recent Events. Or a ClusterGraphApp (cga/NAME): its Ready condition, "
             "tenant, client, credential (what it names, never its material), policy, the GraphAppCredentials that "
             f"use it in every namespace you may list them, and its Events. {EXIT_CODES}")
@click.argument("target", metavar="NAME", callback=_status_target, shell_complete=_complete_status)
@_output()
@_cluster_options
@click.pass_context
def status(ctx: click.Context, target: tuple[str, str], output: str, kubeconfig: str | None, context: str | None,
           namespace: str | None) -> int:
    from graphcred.ops import commands as ops

    kind, name = target
    return _ops(ctx, lambda cluster: ops.status(cluster, name, kind=kind, output=output, out=sys.stdout),
                kubeconfig, context, namespace)


@cli.command(context_settings=CONTEXT, short_help="Acquire a new token now, and wait for the answer.",
             help="Ask the operator to acquire a new token at once (sets "
             f"{RENEW_ANNOTATION}), e.g. after admin consent was granted or the app was fixed in Entra, and wait for "
             f"the answer. Give NAMEs (or gac/NAME), --all or --selector. {EXIT_CODES}")
@click.argument("names", nargs=-1, metavar="[NAME]...", callback=_names("credential"),
                shell_complete=_complete_credentials)
@click.option("--all", "all_objects", is_flag=True, help="every GraphAppCredential in the namespace (with -A: in "
              "every namespace)")
@click.option("--selector", "-l", help="those matching this label selector")
@click.option("--all-namespaces", "-A", is_flag=True, help="with --all or -l: in every namespace")
@click.option("--wait/--no-wait", default=True, help="wait until the operator served the request and print the "
              "new expiry")
@click.option("--timeout", default="60s", metavar="DURATION", help="how long to wait (seconds or a duration: 90, "
              "90s, 2m)")
@_cluster_options
@click.pass_context
def renew(ctx: click.Context, names: tuple[str, ...], all_objects: bool, selector: str | None,
          all_namespaces: bool, wait: bool, timeout: str, kubeconfig: str | None, context: str | None,
          namespace: str | None) -> int:
    from graphcred.app.settings import DURATION_HELP, seconds
    from graphcred.ops import commands as ops

    if sum((bool(names), all_objects, selector is not None)) != 1:
        raise click.UsageError("give NAMEs, --all or --selector (one of them)", ctx)
    if all_namespaces and names:
        raise click.UsageError("-A goes with --all or --selector, not with names", ctx)
    try:
        wait_seconds = float(seconds(timeout))
    except ValueError:
        wait_seconds = 0.0
    if not 0 < wait_seconds <= 86400:
        raise click.BadParameter(f"{timeout!r}: expected {DURATION_HELP}, more than 0", ctx,
                                 param_hint="'--timeout'")
    return _ops(ctx, lambda cluster: ops.renew(cluster, names, selector=selector, all_namespaces=all_namespaces,
                                               wait=wait, timeout=wait_seconds, out=sys.stdout, err=sys.stderr),
                kubeconfig, context, namespace)


@cli.group(context_settings=CONTEXT, help="Decode what a Secret holds.")
def inspect() -> None:
    pass


@inspect.command("secret", context_settings=CONTEXT, short_help="Decode a token Secret's header and claims.",
                 help="Decode the access token in a token Secret: its header "
                 "and claims (audience, roles, expiry, tenant, app...). Never the token or its signature. NAME: NAME "
                 f"or secret/NAME. {EXIT_CODES}")
@click.argument("name", callback=_names("secret"))
@_output()
@_cluster_options
@click.pass_context
def inspect_secret(ctx: click.Context, name: str, output: str, kubeconfig: str | None, context: str | None,
                   namespace: str | None) -> int:
    from graphcred.ops import commands as ops

    return _ops(ctx, lambda cluster: ops.inspect_secret(cluster, name, output=output, out=sys.stdout,
                                                        err=sys.stderr, prog=ctx.find_root().info_name or ""),
                kubeconfig, context, namespace)


@cli.command(context_settings=CONTEXT, short_help="Show the client's and the operator's versions.",
             help="Show the client's version and the operator's: the image tag of each "
             "Deployment labelled app.kubernetes.io/name=graphcred (the chart's) that you may see, in every "
             "namespace if you may list them there, else in the namespace. Exit code 4 if the cluster cannot be "
             "asked (the client's version is printed first).")
@click.option("--client", "client_only", is_flag=True, help="the client's version only (no cluster needed)")
@_output()
@_cluster_options
@click.pass_context
def version(ctx: click.Context, client_only: bool, output: str, kubeconfig: str | None, context: str | None,
            namespace: str | None) -> int:
    from graphcred.ops import commands as ops

    def connect() -> ops.Cluster:
        return ops.Cluster.connect(kubeconfig, context, namespace)

    return _guard(ctx, lambda: ops.version(None if client_only else connect, output=output, out=sys.stdout))


@cli.command(context_settings=CONTEXT, help="Print a shell completion script. Bash: `source <(graphcred "
             "completion bash)`, or save it to /etc/bash_completion.d/graphcred; zsh: `source <(graphcred completion "
             "zsh)`; fish: `graphcred completion fish | source`. Needs bash 4.4 or later.")
@click.argument("shell", type=click.Choice(("bash", "zsh", "fish")))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> int:
    prog = ctx.find_root().info_name or "graphcred"
    complete_var = f"_{prog}_COMPLETE".replace("-", "_").replace(" ", "_").upper()
    shell_class = get_completion_class(shell)
    assert shell_class is not None  # one of click's own shells
    sys.stdout.write(shell_class(cli, {}, prog, complete_var).source() + "\n")
    return 0


# --- entry points -------------------------------------------------------------------------------------------------

def kubectl_main(argv: list[str] | None = None) -> int:
    """`kubectl graphcred ...`: kubectl runs the `kubectl-graphcred` executable it finds on PATH."""
    return main(argv, prog="kubectl graphcred")


def main(argv: list[str] | None = None, prog: str = "graphcred") -> int:
    """The exit code; usage errors raise SystemExit(2) after printing click's usage and the error."""
    try:
        result = cli.main(args=argv, prog_name=prog, standalone_mode=False,
                          complete_var=f"_{prog}_COMPLETE".replace("-", "_").replace(" ", "_").upper())
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except click.Abort:
        sys.stderr.write("Aborted!\n")
        return 1
    return result if isinstance(result, int) else 0
