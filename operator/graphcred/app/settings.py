"""`graphcred run`'s settings: each one a flag and an environment variable (the chart sets the variables), parsed and
checked once, before anything starts. A flag wins over its variable. A bad value is a SettingsError: one line per
bad setting, naming the flag or variable it came from, the value and what is allowed; the CLI prints it and exits 2.

Conventions, the same for every setting of a kind:
- time: seconds (`15`, `1.5`) or a Go duration (`15s`, `1m30s`, `500ms`);
- switches: what Kubernetes tools accept (Go's strconv.ParseBool: 1 t T TRUE true True, 0 f F FALSE false False),
  and yes/no as before; anything else (on, enabled, y) is refused rather than read as false;
- lists: the flag repeated or comma-separated, the variable comma-separated;
- files: must exist and be readable (a CA bundle must hold PEM certificates).
An empty variable counts as unset (the chart sets GRAPHCRED_NAMESPACES="" for "all namespaces").
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from graphcred.api.model import parse_duration
from graphcred.app.config import RunConfig

ENV_PREFIX = "GRAPHCRED_"
NAMESPACE_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1123 label
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})  # Go's strconv.ParseBool
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
DURATION_HELP = "seconds or a duration such as 30s, 1m30s or 500ms"


class SettingsError(Exception):
    """Bad settings: one line each, ready to print."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


# --- one value ------------------------------------------------------------------------------------------------

def seconds(value: Any) -> Any:
    """`15`, `1.5` or a Go duration, in seconds; other types are left to the field's own check."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    try:
        return parse_duration(text).total_seconds()
    except ValueError:
        raise ValueError(f"expected {DURATION_HELP}") from None


def switch(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text in _TRUE or text.lower() == "yes":
        return True
    if text in _FALSE or text.lower() == "no":
        return False
    raise ValueError("expected true or false (also 1/0, t/f, yes/no)")


def _items(value: Any) -> list[str]:
    """A comma list, or several (a repeated flag), each possibly a comma list."""
    parts: Iterable[Any] = [value] if isinstance(value, str) else value if isinstance(value, Iterable) else [value]
    return [item.strip() for part in parts for item in str(part).split(",") if item.strip()]


def namespace_list(value: Any) -> tuple[str, ...]:
    names = _items(value)
    for name in names:
        if not NAMESPACE_PATTERN.fullmatch(name):
            raise ValueError(f"{name!r} is not a namespace name (lower-case letters, digits and '-', at most 63; "
                             "several: comma-separated or the flag repeated)")
    return tuple(dict.fromkeys(names))


def namespace_name(value: Any) -> Any:
    if isinstance(value, str) and not NAMESPACE_PATTERN.fullmatch(value.strip()):
        raise ValueError("expected a namespace name (lower-case letters, digits and '-', at most 63)")
    return value.strip() if isinstance(value, str) else value


def authority_host(value: str) -> str:
    """An allowed authority host as spec.authorityHost is compared with it (authority.origin): https://host[:port],
    lower case. A mistyped one must fail at start, not silently refuse every credential that names the intended
    host."""
    from graphcred.acquire.authority import parse_allowed

    try:
        return parse_allowed(value)
    except ValueError:
        raise ValueError(f"{value.strip()!r} is not an authority host: expected https://host[:port]") from None


def authority_list(value: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(authority_host(host) for host in _items(value)))


def _readable_file(path: str) -> str:
    if not os.path.exists(path):
        raise ValueError("no such file")
    if os.path.isfile(path) and not os.access(path, os.R_OK):
        raise ValueError("not readable by this process")
    return path


def ca_bundle_file(value: Any) -> Any:
    """A PEM file (or an OpenSSL hashed directory) of CA certificates, loaded now as the token client will."""
    if not isinstance(value, str):
        return value
    path = _readable_file(value.strip())
    if os.path.isdir(path):
        return path
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except (ssl.SSLError, UnicodeDecodeError, ValueError):
        raise ValueError("holds no PEM certificate (expected a PEM file of CA certificates)") from None
    return path


def kubeconfig_file(value: Any) -> Any:
    """A kubeconfig file; a KUBECONFIG-style list needs one that exists (kubectl skips missing ones)."""
    if not isinstance(value, str):
        return value
    paths = [p for p in value.split(os.pathsep) if p.strip()]
    if len(paths) == 1:
        _readable_file(os.path.expanduser(paths[0]))
    elif paths and not any(os.path.isfile(os.path.expanduser(p)) for p in paths):
        raise ValueError("none of these files exists")
    return value


# --- the settings ---------------------------------------------------------------------------------------------

Seconds = Annotated[float, BeforeValidator(seconds)]
Switch = Annotated[bool, BeforeValidator(switch)]


class RunSettings(BaseSettings):
    """Flags are passed by field name; the environment is read by pydantic-settings (GRAPHCRED_<FIELD>, or the
    alias given)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True,
                                      validate_by_name=True, validate_by_alias=True)

    kubeconfig: Annotated[str | None, BeforeValidator(kubeconfig_file)] = Field(
        None, validation_alias=AliasChoices(f"{ENV_PREFIX}KUBECONFIG", "KUBECONFIG"))
    namespaces: Annotated[tuple[str, ...], NoDecode, BeforeValidator(namespace_list)] = ()
    ca_bundle: Annotated[str | None, BeforeValidator(ca_bundle_file)] = None
    log_format: Annotated[Literal["text", "json"], BeforeValidator(lambda v: v.strip().lower()
                                                                   if isinstance(v, str) else v)] = "text"
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"],
                         BeforeValidator(lambda v: v.strip().upper() if isinstance(v, str) else v)] = "INFO"
    token_concurrency: int = Field(16, ge=1, le=1024)
    token_timeout: Seconds = Field(30.0, gt=0, le=3600)
    api_timeout: Seconds = Field(30.0, gt=0, le=3600)
    metrics_port: int = Field(8080, ge=-1, le=65535)
    leader_election: Switch = False
    leader_election_namespace: Annotated[str, BeforeValidator(namespace_name)] = Field(
        "default", validation_alias=AliasChoices(f"{ENV_PREFIX}LEADER_ELECTION_NAMESPACE", "POD_NAMESPACE"))
    lease_duration: Seconds = Field(15.0, ge=1, le=3600)
    workload_identity: Switch = False
    workload_identity_authorities: Annotated[tuple[str, ...], NoDecode, BeforeValidator(authority_list)] = ()
    authority_hosts: Annotated[tuple[str, ...], NoDecode, BeforeValidator(authority_list)] = ()
    watch_consumers: Switch = False
    cluster_resource_namespace: Annotated[str, BeforeValidator(namespace_name)] = Field(
        "graphcred-system",
        validation_alias=AliasChoices(f"{ENV_PREFIX}CLUSTER_RESOURCE_NAMESPACE", "POD_NAMESPACE"))
    graph_endpoint: Annotated[str | None, BeforeValidator(lambda v: authority_host(v) if isinstance(v, str) else v)
                              ] = None

    def to_config(self) -> RunConfig:
        return RunConfig(kubeconfig=self.kubeconfig, namespaces=self.namespaces, ca_bundle=self.ca_bundle,
                         log_format=self.log_format, log_level=self.log_level,
                         token_concurrency=self.token_concurrency, token_timeout=self.token_timeout,
                         api_timeout=self.api_timeout, metrics_port=self.metrics_port,
                         leader_election=self.leader_election,
                         leader_election_namespace=self.leader_election_namespace,
                         lease_seconds=self.lease_duration, workload_identity=self.workload_identity,
                         workload_identity_authorities=self.workload_identity_authorities,
                         authority_hosts=self.authority_hosts, watch_consumers=self.watch_consumers,
                         cluster_resource_namespace=self.cluster_resource_namespace,
                         graph_endpoint=self.graph_endpoint)


# What is allowed, for the errors whose message pydantic writes (a type or a bound): ours, in the user's words.
ALLOWED: Mapping[str, str] = {
    "log_format": "expected text or json",
    "log_level": "expected DEBUG, INFO, WARNING or ERROR",
    "token_concurrency": "expected a whole number from 1 to 1024",
    "token_timeout": f"expected {DURATION_HELP}, more than 0 and at most 1h",
    "api_timeout": f"expected {DURATION_HELP}, more than 0 and at most 1h",
    "metrics_port": "expected a port number from 0 (any free port) to 65535, or -1 for none",
    "lease_duration": f"expected {DURATION_HELP}, from 1s to 1h",
}

# The flag of each setting (the CLI defines them with these names) and its variables, in the order read.
FLAGS: Mapping[str, str] = {
    "kubeconfig": "--kubeconfig", "namespaces": "--namespace", "ca_bundle": "--ca-bundle",
    "log_format": "--log-format", "log_level": "--log-level", "token_concurrency": "--token-concurrency",
    "token_timeout": "--token-timeout", "api_timeout": "--api-timeout", "metrics_port": "--metrics-port",
    "leader_election": "--leader-election", "leader_election_namespace": "--leader-election-namespace",
    "lease_duration": "--lease-duration", "workload_identity": "--workload-identity",
    "workload_identity_authorities": "--workload-identity-authority", "authority_hosts": "--authority-host",
    "watch_consumers": "--watch-consumers", "cluster_resource_namespace": "--cluster-resource-namespace",
    "graph_endpoint": "--graph-endpoint",
}


def env_names(field: str) -> tuple[str, ...]:
    alias = RunSettings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return (f"{ENV_PREFIX}{field.upper()}",)


def _field_of(loc: tuple[int | str, ...]) -> str:
    key = str(loc[0]) if loc else ""
    for name in RunSettings.model_fields:
        if key == name or key in env_names(name):
            return name
    return key


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return repr(value if isinstance(value, str) else str(value))


def _lines(exc: ValidationError, flags: Mapping[str, Any]) -> list[str]:
    environ = os.environ
    lines = []
    for error in exc.errors(include_url=False):
        field = _field_of(error["loc"])
        if field in flags:
            source = FLAGS.get(field, field)
            value = flags[field]
        else:
            source = next((n for n in env_names(field) if environ.get(n)), env_names(field)[0])
            value = environ.get(source, error.get("input"))
        if error["type"] == "value_error":
            why = str(error["ctx"]["error"])
        else:
            why = ALLOWED.get(field, "not allowed here")
        line = f"{source}={_shown(value)}: {why}"
        if line not in lines:
            lines.append(line)
    return lines


def load(flags: Mapping[str, Any]) -> RunSettings:
    """The settings from `flags` (field name -> value given on the command line) over the environment. Raises
    SettingsError naming each bad one."""
    try:
        return RunSettings(**flags)
    except ValidationError as exc:
        raise SettingsError(_lines(exc, flags)) from None
