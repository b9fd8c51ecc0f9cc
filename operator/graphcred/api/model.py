"""The GraphAppCredential resource: spec and status models, the single source of truth.

The CRD's OpenAPI schema is generated from these models (`graphcred.api.crd`), so every rule here is enforced twice:
by the apiserver when a manifest is applied, and by the operator when it reads an object (which catches objects
stored under an older, looser CRD).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graphcred.api.keys import GROUP, MANAGED_BY_LABEL, TOKEN_KEYS
from graphcred.api.template import FIELDS, FILTERS, MAX_TEMPLATE_CHARS, TemplateError, compile_template

GUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
DOMAIN_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
TENANT_PATTERN = f"({GUID_PATTERN})|({DOMAIN_PATTERN})"
SCOPE_PATTERN = r"^\S+/\.default$"
AUTHORITY_HOST_PATTERN = r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# Entra access tokens live 60 to 90 minutes (at most a day under a token lifetime policy): asking to refresh more
# than a day ahead has no use, and a bound keeps every later computation with the value finite.
MAX_REFRESH_BEFORE = timedelta(hours=24)
MAX_REFRESH_BEFORE_TEXT = "24h"
TOKEN_SECRET_SUFFIX = "-token"
# A Secret's name is at most 253 characters: the default <metadata.name>-token needs a name of at most 247.
MAX_NAME_FOR_DEFAULT_SECRET = 253 - len(TOKEN_SECRET_SUFFIX)
GRAPH_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"


def _cel(rule: str, message: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


class Cloud(StrEnum):
    AZURE_PUBLIC = "AzurePublic"
    AZURE_US_GOVERNMENT = "AzureUSGovernment"
    AZURE_CHINA = "AzureChina"


AUTHORITY_HOSTS: dict[Cloud, str] = {
    Cloud.AZURE_PUBLIC: "https://login.microsoftonline.com",
    Cloud.AZURE_US_GOVERNMENT: "https://login.microsoftonline.us",
    Cloud.AZURE_CHINA: "https://login.chinacloudapi.cn",
}


class _Strict(BaseModel):
    # Unknown fields are errors, never silently ignored: a typo must not mean "use the default".
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


DnsName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]


class ClientSecretRef(_Strict):
    """A key of a Secret in the same namespace that holds the app's client secret."""

    name: DnsName = Field(description="Name of the Secret (same namespace) holding the client secret.")
    key: str = Field(default="clientSecret", min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN,
                     description="Key in the Secret's data. Default clientSecret.")


# Certificates graphcred generates and renews (credential.certificate.rotation): a validity between two minutes
# (short ones are for trying it out) and two years; renewal starts renewBefore ahead of notAfter (default: a
# third of validity).
MIN_ROTATION_VALIDITY = timedelta(minutes=2)
MIN_RENEW_BEFORE = timedelta(minutes=1)  # time for the steps and Entra's replication before notAfter
MAX_ROTATION_VALIDITY = timedelta(days=730)
DEFAULT_ROTATION_VALIDITY = "2160h"  # 90 days


class CertificateRotation(_Strict):
    """graphcred generates the certificate's key pair (it never leaves the cluster) and renews it in Entra itself,
    with Microsoft Graph addKey and removeKey (docs/certificate-rotation.md)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!has(self.validity) || (duration(self.validity) >= duration('2m') && duration(self.validity) <= "
                 "duration('17520h'))",
         "message": "validity must be between 2m and 17520h"},
        {"rule": "!has(self.renewBefore) || (duration(self.renewBefore) >= duration('1m') && "
                 "duration(self.renewBefore) < duration(has(self.validity) ? self.validity : "
                 f"'{DEFAULT_ROTATION_VALIDITY}'))",
         "message": "renewBefore must be at least 1m and shorter than validity"},
    ]})

    object_id: str = Field(alias="objectId", pattern=GUID_PATTERN,
                           description="Object ID of the app registration (not its client ID): az ad app show --id "
                           "CLIENT_ID --query id -o tsv. addKey and removeKey name the application by it, and the "
                           "proof of possession they require is issued in its name.")
    validity: str = Field(default=DEFAULT_ROTATION_VALIDITY, pattern=DURATION_PATTERN, max_length=32,
                          description="Validity of each certificate graphcred generates, a duration (default 2160h, "
                          "90 days; at least 2m, at most 17520h).")
    renew_before: str | None = Field(default=None, alias="renewBefore", pattern=DURATION_PATTERN, max_length=32,
                                     description="How long before the certificate's notAfter graphcred starts "
                                     "renewing it (default: a third of validity). Shorter than validity.")
    key_id: str | None = Field(default=None, alias="keyId", pattern=GUID_PATTERN,
                               description="keyId in Entra of the certificate a person uploaded (az ad app "
                               "credential list --id CLIENT_ID --cert shows it), so that "
                               "graphcred can remove it once it has renewed it. Without it that first key stays on "
                               "the app (the operator's log names it); keys graphcred added itself need none.")

    @model_validator(mode="after")
    def _renew_inside_validity(self) -> Self:
        validity = self.validity_delta()
        if not MIN_ROTATION_VALIDITY <= validity <= MAX_ROTATION_VALIDITY:
            raise ValueError("validity must be between 2m and 17520h")
        if self.renew_before is not None and not (
                MIN_RENEW_BEFORE <= parse_duration(self.renew_before, validity) < validity):
            raise ValueError("renewBefore must be at least 1m and shorter than validity")
        return self

    def validity_delta(self) -> timedelta:
        return parse_duration(self.validity, MAX_ROTATION_VALIDITY)

    def renew_before_delta(self) -> timedelta:
        if self.renew_before is None:
            return self.validity_delta() / 3
        return parse_duration(self.renew_before, self.validity_delta())


class CertificateRef(_Strict):
    """A kubernetes.io/tls Secret (tls.crt + tls.key, PEM) whose certificate is registered on the app."""

    name: DnsName = Field(description="Name of the kubernetes.io/tls Secret (same namespace): tls.crt and tls.key.")
    send_x5c: bool = Field(default=False, alias="sendX5c",
                           description="Send the certificate chain (x5c) for subject-name/issuer authentication.")
    rotation: CertificateRotation | None = Field(
        default=None, description="Let graphcred generate the key pair and renew the certificate in Entra before it "
        "expires. If the Secret does not exist graphcred creates it; its first certificate must be uploaded to the "
        "app once by a person (status.certificate.pem; graphcred status prints the command).")


class WorkloadIdentityRef(_Strict):
    """Workload identity federation: a short-lived ServiceAccount token (same namespace) is the client assertion."""

    service_account_name: DnsName = Field(alias="serviceAccountName",
                                          description="ServiceAccount (same namespace) whose token is federated. "
                                          "It must carry the annotation azure.workload.identity/client-id equal to "
                                          "spec.clientId.")
    # Only Entra's token-exchange audiences (public, US Government, China clouds): a ServiceAccount token for any
    # other audience might be accepted by the cluster's own apiserver, and must never be minted for someone else.
    audience: str = Field(default="api://AzureADTokenExchange", pattern=r"^api://AzureADTokenExchange(USGov|China)?$",
                          description="Audience of the ServiceAccount token: api://AzureADTokenExchange (default), "
                          "api://AzureADTokenExchangeUSGov or api://AzureADTokenExchangeChina, as in the app's "
                          "federated credential.")


class Credential(_Strict):
    """Exactly one way to authenticate the app."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            "[has(self.clientSecret), has(self.certificate), has(self.workloadIdentity)]"
            ".filter(x, x).size() == 1",
            "exactly one of clientSecret, certificate or workloadIdentity must be set",
        )
    )
    _ONE_OF: ClassVar[str] = "exactly one of clientSecret, certificate or workloadIdentity must be set"

    client_secret: ClientSecretRef | None = Field(default=None, alias="clientSecret")
    certificate: CertificateRef | None = None
    workload_identity: WorkloadIdentityRef | None = Field(default=None, alias="workloadIdentity")

    def _kinds(self) -> tuple[object | None, ...]:
        return self.client_secret, self.certificate, self.workload_identity

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if sum(x is not None for x in self._kinds()) != 1:
            raise ValueError(self._ONE_OF)
        return self

    @property
    def secret_name(self) -> str | None:
        """The Secret this credential reads, if any."""
        if self.client_secret is not None:
            return self.client_secret.name
        if self.certificate is not None:
            return self.certificate.name
        return None

    def for_app(self) -> AppCredential:
        return AppCredential(client_secret=self.client_secret, certificate=self.certificate,
                             workload_identity=self.workload_identity)


class ManagedIdentityRef(_Strict):
    """The managed identity of the node or pod the operator runs on: user-assigned by its client id, or the
    system-assigned one ({})."""

    client_id: str | None = Field(default=None, alias="clientId", pattern=GUID_PATTERN,
                                  description="Client ID of a user-assigned managed identity; absent: the "
                                  "system-assigned identity.")

    @field_validator("client_id")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value is not None else None


class AppCredential(Credential):
    """A ClusterGraphApp's credential: exactly one way to authenticate the app. Secrets and ServiceAccounts it
    names live in the operator's cluster resource namespace, never in a tenant's."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "[has(self.clientSecret), has(self.certificate), has(self.workloadIdentity), "
                 "has(self.managedIdentity)].filter(x, x).size() == 1",
         "message": "exactly one of clientSecret, certificate, workloadIdentity or managedIdentity must be set"},
        {"rule": "!has(self.certificate) || !has(self.certificate.rotation)",
         "message": "certificate.rotation is not supported on a ClusterGraphApp yet"},
    ]})
    _ONE_OF: ClassVar[str] = ("exactly one of clientSecret, certificate, workloadIdentity or managedIdentity must "
                              "be set")

    managed_identity: ManagedIdentityRef | None = Field(
        default=None, alias="managedIdentity",
        description="The managed identity of the node or pod the operator runs on (IMDS; App Service and Arc as "
        "MSAL detects them). Only on a ClusterGraphApp: it belongs to the operator's host, not to a namespace.")

    def _kinds(self) -> tuple[object | None, ...]:
        return *super()._kinds(), self.managed_identity

    @property
    def kind(self) -> str:
        return ("clientSecret" if self.client_secret is not None
                else "certificate" if self.certificate is not None
                else "workloadIdentity" if self.workload_identity is not None else "managedIdentity")


class AppIdentity(_Strict):
    """Who asks for tokens: the tenant, the app and its credential. A direct GraphAppCredential carries its own
    (`GraphAppCredentialSpec.identity`); one with an appRef borrows its ClusterGraphApp's."""

    tenant_id: str = Field(alias="tenantId", max_length=253, pattern=TENANT_PATTERN,
                           description="Directory (tenant) ID, a GUID, or a verified domain such as "
                           "contoso.onmicrosoft.com.")
    client_id: str = Field(alias="clientId", pattern=GUID_PATTERN,
                           description="Application (client) ID of the app registration, a GUID (for a managed "
                           "identity: the identity's client ID, as tokens name it).")
    cloud: Cloud = Field(default=Cloud.AZURE_PUBLIC,
                         description="National cloud: AzurePublic, AzureUSGovernment or AzureChina.")
    authority_host: str | None = Field(default=None, alias="authorityHost", max_length=253,
                                       pattern=AUTHORITY_HOST_PATTERN,
                                       description="https URL overriding the cloud's login host (private "
                                       "endpoints, tests).")
    credential: AppCredential

    @field_validator("tenant_id", "client_id")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    def authority_base(self) -> str:
        return (self.authority_host or AUTHORITY_HOSTS[self.cloud]).rstrip("/")

    def authority(self) -> str:
        return f"{self.authority_base()}/{self.tenant_id}"


# --- spec.secretTemplate ---------------------------------------------------------------------------------------
# Label and annotation keys that are graphcred's own: a template may not set them (tools rely on their meaning).
RESERVED_KEY_HINT = f"{MANAGED_BY_LABEL} and keys under {GROUP}/ are graphcred's own"
# A qualified name (Kubernetes label and annotation keys): an optional DNS-subdomain prefix and '/', then a name.
QUALIFIED_NAME_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                          r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
SECRET_TYPE_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$"
DEFAULT_SECRET_TYPE = "Opaque"
BASIC_AUTH_TYPE = "kubernetes.io/basic-auth"
MAX_TEMPLATE_KEYS = 32
MAX_TEMPLATE_ANNOTATION_BYTES = 64 * 1024  # the apiserver allows 256 KiB for all of a Secret's annotations
_CEL_RESERVED = f"!self.exists(k, k == '{MANAGED_BY_LABEL}' || k.matches(r'^([^/]*[.])?graphcred[.]io/'))"
_SPECIAL_TYPE_HINT = (f"is one Kubernetes treats specially; use {DEFAULT_SECRET_TYPE}, {BASIC_AUTH_TYPE} or a type of "
                      "your own such as example.com/graph-token")
_CEL_ORDINARY_TYPE = (f"self == '{BASIC_AUTH_TYPE}' || !(self.startsWith('kubernetes.io/') "
                      "|| self.startsWith('k8s.io/') || self.contains('.kubernetes.io/'))")
_CEL_BASIC_AUTH = (f"!has(self.type) || self.type != '{BASIC_AUTH_TYPE}' "
                   "|| (has(self.data) && ('username' in self.data || 'password' in self.data))")


def _reserved(key: str) -> bool:
    prefix = key.split("/", 1)[0] if "/" in key else ""
    return key == MANAGED_BY_LABEL or prefix == GROUP or prefix.endswith(f".{GROUP}")


def _refuse_reserved(keys: dict[str, str]) -> dict[str, str]:
    taken = sorted(k for k in keys if _reserved(k))
    if taken:
        raise ValueError(f"{', '.join(taken)}: {RESERVED_KEY_HINT} and cannot be set by secretTemplate")
    return keys


def _template(source: str) -> str:
    try:
        compile_template(source)
    except TemplateError as exc:
        raise ValueError(str(exc)) from None
    return source


QualifiedName = Annotated[str, Field(max_length=317, pattern=QUALIFIED_NAME_PATTERN)]
TemplateText = Annotated[str, Field(max_length=MAX_TEMPLATE_CHARS), AfterValidator(_template)]
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]


class SecretTemplateMetadata(_Strict):
    """Labels and annotations graphcred adds to the token Secret (static: metadata is not secret)."""

    labels: dict[QualifiedName, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict, max_length=MAX_TEMPLATE_KEYS,
        description=f"Labels to add to the token Secret. {RESERVED_KEY_HINT}.",
        json_schema_extra=_cel(_CEL_RESERVED, f"{RESERVED_KEY_HINT} and cannot be set by secretTemplate"))
    annotations: dict[QualifiedName, Annotated[str, Field(max_length=16384)]] = Field(
        default_factory=dict, max_length=MAX_TEMPLATE_KEYS,
        description=f"Annotations to add to the token Secret. {RESERVED_KEY_HINT}.",
        json_schema_extra=_cel(_CEL_RESERVED, f"{RESERVED_KEY_HINT} and cannot be set by secretTemplate"))

    @field_validator("labels")
    @classmethod
    def _labels_not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        return _refuse_reserved(value)

    @field_validator("annotations")
    @classmethod
    def _annotations_allowed(cls, value: dict[str, str]) -> dict[str, str]:
        if sum(len(k.encode()) + len(v.encode()) for k, v in value.items()) > MAX_TEMPLATE_ANNOTATION_BYTES:
            raise ValueError(f"annotations total more than {MAX_TEMPLATE_ANNOTATION_BYTES} bytes")
        return _refuse_reserved(value)


class SecretTemplate(_Strict):
    """How the token Secret looks besides its four token keys: labels, annotations, type and extra keys."""

    model_config = ConfigDict(json_schema_extra=_cel(_CEL_BASIC_AUTH, f"type {BASIC_AUTH_TYPE} needs data.username "
                                                     "or data.password"))
    metadata: SecretTemplateMetadata = Field(default_factory=SecretTemplateMetadata)
    type: str = Field(default=DEFAULT_SECRET_TYPE, max_length=253, pattern=SECRET_TYPE_PATTERN,
                      description="Type of the token Secret: Opaque (default), kubernetes.io/basic-auth (data must "
                      "render username or password) or a type of your own such as example.com/graph-token. "
                      "Changing it deletes and re-creates the Secret (the type of a Secret is immutable).",
                      json_schema_extra=_cel(_CEL_ORDINARY_TYPE, f"this type {_SPECIAL_TYPE_HINT}"))
    data: dict[SecretKey, TemplateText] = Field(
        default_factory=dict, max_length=MAX_TEMPLATE_KEYS,
        description="Extra keys of the token Secret, each a template rendered from the token, e.g. "
        "'Authorization: Bearer {{ .accessToken }}'. Fields: " + ", ".join("." + f for f in FIELDS)
        + "; filters: " + ", ".join(FILTERS) + ". The keys " + ", ".join(TOKEN_KEYS) + " are always graphcred's.",
        json_schema_extra=_cel(f"!self.exists(k, k in {list(TOKEN_KEYS)})",
                               f"the keys {', '.join(TOKEN_KEYS)} are graphcred's own token keys"))

    @field_validator("data")
    @classmethod
    def _not_token_keys(cls, value: dict[str, str]) -> dict[str, str]:
        shadowed = [k for k in TOKEN_KEYS if k in value]
        if shadowed:
            raise ValueError(f"{', '.join(shadowed)}: graphcred's own token keys cannot be set by secretTemplate")
        return value

    @field_validator("type")
    @classmethod
    def _ordinary_type(cls, value: str) -> str:
        # The apiserver gives kubernetes.io/* types (and bootstrap tokens) meanings of their own: a token
        # controller filling or deleting the Secret, node bootstrap credentials, required keys of other formats.
        if value != BASIC_AUTH_TYPE and (value.startswith("kubernetes.io/") or value.startswith("k8s.io/")
                                         or ".kubernetes.io/" in value):
            raise ValueError(f"type {value} {_SPECIAL_TYPE_HINT}")
        return value

    @model_validator(mode="after")
    def _basic_auth_keys(self) -> SecretTemplate:
        # the apiserver refuses a basic-auth Secret without either key; say so before any token is requested
        if self.type == BASIC_AUTH_TYPE and not ({"username", "password"} & set(self.data)):
            raise ValueError(f"type {BASIC_AUTH_TYPE} needs data.username or data.password")
        return self


class AppRef(_Strict):
    """A ClusterGraphApp whose identity this credential borrows, under that app's policy."""

    name: DnsName = Field(description="Name of the ClusterGraphApp (cluster-scoped).")


class WorkloadKind(StrEnum):
    DEPLOYMENT = "Deployment"
    STATEFUL_SET = "StatefulSet"
    DAEMON_SET = "DaemonSet"


MAX_RESTART_TARGETS = 16
_OTHER_NAMESPACE = ("a restart target is in the credential's own namespace: leave out namespace (graphcred never "
                    "restarts workloads of another namespace)")


class RestartTarget(_Strict):
    """A workload whose pods read the token once: graphcred restarts it right after it writes a new token."""

    kind: WorkloadKind = Field(description="Deployment, StatefulSet or DaemonSet.")
    name: DnsName = Field(description="Name of the workload, in the credential's namespace.")
    # only to be refused with a clear message: left out of the schema, the apiserver would silently drop it
    namespace: str | None = Field(default=None, max_length=63, description="Not allowed: a restart target is in the "
                                  "credential's own namespace.", json_schema_extra=_cel("false", _OTHER_NAMESPACE))

    @field_validator("namespace")
    @classmethod
    def _same_namespace(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(_OTHER_NAMESPACE)
        return value


_IDENTITY_FIELDS = ("tenantId", "clientId", "authorityHost", "credential")
_CEL_ONE_FORM = (
    "has(self.appRef) ? (" + " && ".join(f"!has(self.{f})" for f in _IDENTITY_FIELDS)
    + " && (!has(self.cloud) || self.cloud == 'AzurePublic'))"
    " : (has(self.tenantId) && has(self.clientId) && has(self.credential))")
_ONE_FORM_MESSAGE = ("set either appRef (the app's identity: leave out tenantId, clientId, cloud, authorityHost and "
                     "credential) or tenantId, clientId and credential")


class GraphAppCredentialSpec(_Strict):
    """Which Entra app to get an app-only token for, with which credential, and where to put it. The app is named
    here (tenantId, clientId, credential) or borrowed from a ClusterGraphApp (appRef)."""

    model_config = ConfigDict(json_schema_extra=_cel(_CEL_ONE_FORM, _ONE_FORM_MESSAGE))

    app_ref: AppRef | None = Field(default=None, alias="appRef",
                                   description="Use this ClusterGraphApp's identity, if its policy permits this "
                                   "namespace and these scopes (else Ready=False, reason NotPermitted). Instead of "
                                   "tenantId, clientId, cloud, authorityHost and credential.")
    tenant_id: str | None = Field(default=None, alias="tenantId", max_length=253, pattern=TENANT_PATTERN,
                                  description="Directory (tenant) ID, a GUID, or a verified domain such as "
                                  "contoso.onmicrosoft.com.")
    client_id: str | None = Field(default=None, alias="clientId", pattern=GUID_PATTERN,
                                  description="Application (client) ID of the app registration, a GUID.")
    # No default in the schema: with appRef the app's cloud applies. Objects stored under older CRDs carry the old
    # default (AzurePublic), which an appRef tolerates so that switching to one needs no edit of a defaulted field.
    cloud: Cloud | None = Field(default=None,
                                description="National cloud: AzurePublic (default), AzureUSGovernment or "
                                "AzureChina.")
    authority_host: str | None = Field(default=None, alias="authorityHost", max_length=253,
                                       pattern=AUTHORITY_HOST_PATTERN,
                                       description="https URL overriding the cloud's login host (private "
                                       "endpoints, tests).")
    scopes: list[Annotated[str, Field(max_length=1024, pattern=SCOPE_PATTERN)]] = Field(
        default_factory=lambda: [GRAPH_DEFAULT_SCOPE],
        min_length=1,
        max_length=8,
        description="Scopes to request, each '<resource>/.default', all for one resource. "
        "Default https://graph.microsoft.com/.default.",
        json_schema_extra={"default": [GRAPH_DEFAULT_SCOPE],
                           **_cel("self.all(s, s == self[0])",
                                  "scopes must name exactly one resource ('<resource>/.default')")},
    )
    credential: Credential | None = Field(default=None, description="Exactly one way to authenticate the app; "
                                          "Secrets and ServiceAccounts it names are in this namespace.")
    secret_name: DnsName | None = Field(default=None, alias="secretName",
                                        description="Name of the token Secret to write (same namespace). "
                                        "Default <metadata.name>-token.")
    refresh_before_expiry: str | None = Field(default=None, alias="refreshBeforeExpiry", max_length=64,
                                              pattern=DURATION_PATTERN,
                                              description="Refresh this long before expiry (e.g. 10m), at most "
                                              f"{MAX_REFRESH_BEFORE_TEXT}. Default: at half the token's lifetime.",
                                              json_schema_extra=_cel(
                                                  f"duration(self) <= duration('{MAX_REFRESH_BEFORE_TEXT}')",
                                                  f"refreshBeforeExpiry must be at most {MAX_REFRESH_BEFORE_TEXT}"))
    required_roles: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, alias="requiredRoles", max_length=64,
        description="Ready only if the token's roles claim holds all of these application permissions.",
    )
    secret_template: SecretTemplate | None = Field(
        default=None, alias="secretTemplate",
        description="Extra labels, annotations and keys of the token Secret, and its type. Labels, annotations, "
        "finalizers and keys other tools add to the Secret are kept either way.")

    restart_targets: list[RestartTarget] = Field(
        default_factory=list, alias="restartTargets", max_length=MAX_RESTART_TARGETS,
        description="Workloads (in this namespace) whose pods read the token once and cannot pick up a refresh: "
        "right after graphcred writes a new token it restarts each (the pod template's annotation "
        "graphcred.io/restarted-at), at most once per token, never on its own restart or a leader change, and not "
        "while the rollout it started last is still in progress. Needs the chart's restartTargets.enabled (RBAC).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["kind", "name"]})
    restart_unrefreshable: bool = Field(
        default=False, alias="restartUnrefreshable",
        description="Also restart, with the same rules, the workloads (Deployment, StatefulSet, DaemonSet) of the "
        "pods the consumer watch finds reading the token where no refresh reaches them. Needs graphcred run "
        "--watch-consumers (the chart's consumerWarnings.enabled).")

    @field_validator("tenant_id", "client_id")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _one_form(self) -> GraphAppCredentialSpec:
        if self.app_ref is not None:
            if (self.tenant_id, self.client_id, self.authority_host, self.credential) != (None,) * 4 or \
                    self.cloud not in (None, Cloud.AZURE_PUBLIC):
                raise ValueError(_ONE_FORM_MESSAGE)
        elif self.tenant_id is None or self.client_id is None or self.credential is None:
            raise ValueError(_ONE_FORM_MESSAGE)
        return self

    def identity(self) -> AppIdentity | None:
        """The app's identity as this spec names it; None with an appRef (the ClusterGraphApp's applies)."""
        if self.app_ref is not None or self.tenant_id is None or self.client_id is None or self.credential is None:
            return None
        return AppIdentity(tenant_id=self.tenant_id, client_id=self.client_id, cloud=self.cloud or Cloud.AZURE_PUBLIC,
                           authority_host=self.authority_host, credential=self.credential.for_app())

    @field_validator("refresh_before_expiry")
    @classmethod
    def _bounded_duration(cls, value: str | None) -> str | None:
        # parsed here, when the spec is read, so a bad value never gets as far as a token request
        if value is not None and parse_duration(value, MAX_REFRESH_BEFORE) > MAX_REFRESH_BEFORE:
            raise ValueError(f"must be at most {MAX_REFRESH_BEFORE_TEXT}")
        return value

    @field_validator("scopes")
    @classmethod
    def _one_resource(cls, value: list[str]) -> list[str]:
        if any(s != value[0] for s in value):
            raise ValueError("scopes must name exactly one resource ('<resource>/.default')")
        return value

    def effective_secret_name(self, credential_name: str) -> str:
        return self.secret_name or f"{credential_name}{TOKEN_SECRET_SUFFIX}"

    def secret_name_problem(self, credential_name: str) -> str | None:
        """Why the token Secret's name would be invalid (the default name of a long metadata.name), or None."""
        if self.secret_name is None and len(credential_name) > MAX_NAME_FOR_DEFAULT_SECRET:
            return (f"metadata.name is {len(credential_name)} characters, so the default token Secret name "
                    f"<metadata.name>{TOKEN_SECRET_SUFFIX} would exceed 253: set spec.secretName, or use a name of at "
                    f"most {MAX_NAME_FOR_DEFAULT_SECRET} characters")
        return None

    def issued_for(self, credential_name: str, identity: AppIdentity) -> str:
        """Digest of the fields a token is acquired for: a token only answers for a spec with the same digest.
        `identity`: this spec's own, or its ClusterGraphApp's (whose name is part of the digest)."""
        parts = [identity.authority_base(), identity.tenant_id, identity.client_id, identity.credential.kind,
                 " ".join(sorted(self.scopes)), self.effective_secret_name(credential_name)]
        if self.app_ref is not None:
            parts.append(f"app {self.app_ref.name}")
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def refresh_before(self) -> timedelta | None:
        if not self.refresh_before_expiry:
            return None
        return min(parse_duration(self.refresh_before_expiry, MAX_REFRESH_BEFORE), MAX_REFRESH_BEFORE)


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_LONGEST = timedelta(days=10**8)  # well inside what a timedelta holds (and a float measures exactly enough)


def parse_duration(text: str, ceiling: timedelta | None = None) -> timedelta:
    """Go-style duration ('1h30m', '90s', '500ms') as used across Kubernetes APIs. Never overflows: a value longer
    than `ceiling` (or than a timedelta holds) is returned as just over `ceiling` (or raises ValueError)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use a Go duration such as 10m or 1h30m")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
    limit = ceiling if ceiling is not None else _LONGEST
    if not math.isfinite(seconds) or seconds > limit.total_seconds():
        if ceiling is None:
            raise ValueError("duration too long")
        return ceiling + timedelta(seconds=1)
    return timedelta(seconds=seconds)


# --- ClusterGraphApp ------------------------------------------------------------------------------------------
LABEL_KEY_PATTERN = QUALIFIED_NAME_PATTERN
MAX_ALLOWED_SCOPES = 32


class SelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(_Strict):
    """One requirement on a namespace's labels, as in metav1.LabelSelectorRequirement."""

    model_config = ConfigDict(json_schema_extra=_cel(
        "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) "
        ": (!has(self.values) || size(self.values) == 0)",
        "In and NotIn need values; Exists and DoesNotExist take none"))

    key: str = Field(max_length=317, pattern=LABEL_KEY_PATTERN, description="The label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=list, max_length=64, description="For In and NotIn: the values.")

    @model_validator(mode="after")
    def _values_fit(self) -> LabelSelectorRequirement:
        if self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN) and not self.values:
            raise ValueError(f"operator {self.operator.value} needs values")
        if self.operator in (SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST) and self.values:
            raise ValueError(f"operator {self.operator.value} takes no values")
        return self

    def holds(self, labels: Mapping[str, str]) -> bool:
        if self.operator == SelectorOperator.IN:
            return labels.get(self.key) in self.values
        if self.operator == SelectorOperator.NOT_IN:
            return labels.get(self.key) not in self.values
        if self.operator == SelectorOperator.EXISTS:
            return self.key in labels
        return self.key not in labels


class NamespaceSelector(_Strict):
    """Which namespaces may use the app, by their labels (metav1.LabelSelector: all requirements must hold; {}
    selects every namespace)."""

    match_labels: dict[Annotated[str, Field(max_length=317, pattern=LABEL_KEY_PATTERN)],
                       Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict, alias="matchLabels", max_length=64,
        description="Labels a namespace must carry, with these values.")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, alias="matchExpressions", max_length=64,
        description="Requirements on the namespace's labels; all must hold.")

    def selects(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels.items())
                and all(r.holds(labels) for r in self.match_expressions))


class AppPolicy(_Strict):
    """Who may use the app and for what. Required: nobody may until the cluster admin says so."""

    namespace_selector: NamespaceSelector = Field(
        alias="namespaceSelector",
        description="Namespaces whose GraphAppCredentials may use this app, by label. {} selects all namespaces.")
    allowed_scopes: list[Annotated[str, Field(max_length=1024, pattern=SCOPE_PATTERN)]] = Field(
        alias="allowedScopes", min_length=1, max_length=MAX_ALLOWED_SCOPES,
        description="Scopes a GraphAppCredential may request with this app, each '<resource>/.default', compared "
        "exactly.")

    def refusal(self, namespace: str, labels: Mapping[str, str], scopes: Sequence[str]) -> str | None:
        """Why a credential in `namespace` (with `labels`) asking for `scopes` may not use the app; None if it may."""
        if not self.namespace_selector.selects(labels):
            return f"its policy does not select namespace {namespace} (policy.namespaceSelector)"
        refused = sorted({s for s in scopes if s not in self.allowed_scopes})
        if refused:
            return f"its policy does not allow the scope {', '.join(refused)} (policy.allowedScopes)"
        return None


class ClusterGraphAppSpec(AppIdentity):
    """One Entra app identity (or managed identity) for many namespaces, under the cluster admin's policy. Its
    credential's Secret or ServiceAccount lives in the operator's cluster resource namespace."""

    policy: AppPolicy

    # Checked here, not on AppCredential: a GraphAppCredential's own credential becomes one too (for_app).
    @model_validator(mode="after")
    def _no_rotation(self) -> Self:
        if self.credential.certificate is not None and self.credential.certificate.rotation is not None:
            raise ValueError("certificate.rotation is not supported on a ClusterGraphApp yet")
        return self


# --- status ---------------------------------------------------------------------------------------------------

class Reason(StrEnum):
    TOKEN_ISSUED = "TokenIssued"
    CREDENTIAL_NOT_FOUND = "CredentialNotFound"
    INVALID_CREDENTIAL = "InvalidCredential"
    INVALID_SPEC = "InvalidSpec"
    UNAUTHORIZED = "Unauthorized"
    MISSING_ROLES = "MissingRoles"
    SECRET_CONFLICT = "SecretConflict"
    AUTHORITY_UNAVAILABLE = "AuthorityUnavailable"
    THROTTLED = "Throttled"
    INTERNAL_ERROR = "InternalError"
    PENDING = "Pending"
    # workload identity: the ServiceAccount does not name this app (its azure.workload.identity/client-id)
    SERVICE_ACCOUNT_NOT_AUTHORIZED = "ServiceAccountNotAuthorized"
    # workload identity: the operator runs without it (--workload-identity) or lacks the RBAC it needs
    WORKLOAD_IDENTITY_DISABLED = "WorkloadIdentityDisabled"
    # spec.authorityHost is not a host graphcred may contact (--authority-host), or its token endpoint is elsewhere
    AUTHORITY_NOT_ALLOWED = "AuthorityNotAllowed"
    # appRef: the ClusterGraphApp's policy does not select this namespace, or does not allow these scopes
    NOT_PERMITTED = "NotPermitted"
    # appRef: no ClusterGraphApp of that name (yet)
    APP_NOT_FOUND = "AppNotFound"
    # certificate.rotation: Entra does not know the certificate graphcred generated (yet): a person uploads it once
    CERTIFICATE_NOT_REGISTERED = "CertificateNotRegistered"


# metav1.Condition's limits (k8s.io/apimachinery/pkg/apis/meta/v1 types.go, as controller-gen renders them), so
# kubectl, kstatus and other tools read graphcred's conditions as they read anyone's.
CONDITION_TYPE_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                          r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_MESSAGE_MAX = 32768


class Condition(BaseModel):
    """One aspect of the credential's state, shaped as metav1.Condition. graphcred writes the Ready condition."""

    # The schema requires what metav1.Condition requires (the operator always writes all five); reading stays
    # lenient about lastTransitionTime for conditions stored under an older, looser CRD.
    model_config = ConfigDict(populate_by_name=True, frozen=True, json_schema_extra={
        "required": ["type", "status", "reason", "message", "lastTransitionTime"]})

    # Other controllers and tools may add conditions of their own; they must not break reading ours.
    type: str = Field(default="Ready", max_length=316, pattern=CONDITION_TYPE_PATTERN,
                      description="Condition type, the list's key: Ready (graphcred's), or another tool's type in "
                      "CamelCase or foo.example.com/CamelCase.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN,
                        description="Why, in one CamelCase word, for programs and alerts: TokenIssued when Ready; "
                        "else the failure, e.g. CredentialNotFound, Unauthorized, MissingRoles, "
                        "AuthorityUnavailable, Throttled (docs/troubleshooting.md lists them all).")
    message: str = Field(default="", max_length=CONDITION_MESSAGE_MAX,
                         description="For people: what happened and what to do about it. Never a token or a "
                         "secret.")
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0,
                                            json_schema_extra={"format": "int64"},
                                            description="metadata.generation of the spec this condition was set "
                                            "for: older than the object's generation means not yet reconciled.")
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime",
                                             json_schema_extra={"format": "date-time"},
                                             description="When status last changed (True/False), RFC 3339 UTC; "
                                             "a change of reason alone keeps it.")

    @field_validator("message", mode="before")
    @classmethod
    def _fit(cls, value: object) -> object:
        # An unexpectedly long message (a server's error text) is cut, never a status write the apiserver refuses.
        if isinstance(value, str) and len(value) > CONDITION_MESSAGE_MAX:
            return value[:CONDITION_MESSAGE_MAX - 1] + "…"
        return value


def conforming_conditions(value: object) -> object:
    """A condition another tool stored under an older, looser CRD that this schema refuses is left out (and so
    never written back for the apiserver to refuse): it must not cost the whole status."""
    if not isinstance(value, list):
        return value
    kept = []
    for item in value:
        try:
            kept.append(Condition.model_validate(item))
        except ValidationError:
            continue
    return kept


class CertificateStatus(BaseModel):
    """The certificate a credential with certificate.rotation authenticates with, and its renewal. Public facts
    only: never the private key."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    thumbprint: str = Field(description="SHA-1 thumbprint of the certificate (upper-case hex), as Entra shows it.")
    thumbprint_sha256: str = Field(alias="thumbprintSha256", description="SHA-256 thumbprint (upper-case hex).")
    not_after: str = Field(alias="notAfter", json_schema_extra={"format": "date-time"},
                           description="When the certificate expires, RFC 3339 UTC.")
    renew_at: str | None = Field(default=None, alias="renewAt", json_schema_extra={"format": "date-time"},
                                 description="When graphcred starts renewing it (notAfter - renewBefore).")
    key_id: str | None = Field(default=None, alias="keyId",
                               description="Its keyId in Entra, when graphcred knows it (it added the key, or "
                               "spec rotation.keyId names it).")
    next_thumbprint: str | None = Field(default=None, alias="nextThumbprint",
                                        description="SHA-1 thumbprint of the next certificate while a renewal is "
                                        "under way.")
    last_renewal_time: str | None = Field(default=None, alias="lastRenewalTime",
                                          json_schema_extra={"format": "date-time"},
                                          description="When graphcred last switched to a certificate it renewed.")
    pem: str | None = Field(default=None, max_length=8192,
                            description="The public certificate (PEM) while Entra does not know it yet: upload it to "
                            "the app once (az ad app credential reset --id CLIENT_ID --cert @FILE --append).")


class RestartOutcome(StrEnum):
    CURRENT = "Current"  # first seen: its pods are taken to hold the token in the Secret; no restart
    RESTARTED = "Restarted"
    WAITING = "Waiting"  # a newer token is written; the rollout graphcred started last is still in progress
    NOT_FOUND = "NotFound"
    REFUSED = "Refused"  # restartUnrefreshable: the workload's own template does not read the token unrefreshably
    FORBIDDEN = "Forbidden"
    FAILED = "Failed"


class RestartStatus(BaseModel):
    """One restart target (named in spec.restartTargets, or found by restartUnrefreshable) and its last restart."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    kind: str = Field(max_length=32, description="Deployment, StatefulSet or DaemonSet.")
    name: str = Field(max_length=253, description="The workload, in the credential's namespace.")
    token_time: str | None = Field(
        default=None, alias="tokenTime", json_schema_extra={"format": "date-time"},
        description="lastRefreshTime of the token the workload's pods were last restarted for (or that was in the "
        "Secret when graphcred first saw the target): a newer token restarts it once.")
    last_restart_time: str | None = Field(default=None, alias="lastRestartTime",
                                          json_schema_extra={"format": "date-time"},
                                          description="When graphcred last restarted it, RFC 3339 UTC.")
    generation: int | None = Field(default=None, ge=0, json_schema_extra={"format": "int64"},
                                   description="The workload's metadata.generation right after graphcred's last "
                                   "restart: while it is unchanged and its rollout incomplete, graphcred waits.")
    outcome: RestartOutcome = Field(description="Current (first seen, no restart), Restarted, Waiting (a newer "
                                    "token; the rollout graphcred started last is still in progress), NotFound, "
                                    "Refused (restartUnrefreshable: its own pod template does not read the token "
                                    "where no refresh reaches), Forbidden (the chart's restartTargets.enabled is "
                                    "off) or Failed.")
    message: str = Field(default="", max_length=1024, description="What happened, in a sentence.")
    derived: bool | None = Field(default=None, description="True: found by restartUnrefreshable, not named in spec.")


class GraphAppCredentialStatus(BaseModel):
    """What the operator reports. Never a token, a secret, or a key."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    conditions: list[Condition] = Field(
        default_factory=list,
        description="The credential's conditions, one per type. Ready is True while the token Secret holds an "
        "unexpired token acquired for this spec with every required role; False with a reason and a message "
        "saying what to fix otherwise.",
        # A list-map keyed by type: the apiserver refuses two conditions of one type, and server-side apply
        # merges per type, so another tool can own its own condition beside Ready.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0,
                                            json_schema_extra={"format": "int64"},
                                            description="metadata.generation of the spec this status was written "
                                            "for.")
    secret_name: str | None = Field(default=None, alias="secretName",
                                    description="Name of the token Secret (same namespace): keys access_token, "
                                    "token_type, expires_on and authorization.")
    expires_on: str | None = Field(default=None, alias="expiresOn", json_schema_extra={"format": "date-time"},
                                   description="When the token in the Secret expires, RFC 3339 UTC.")
    refresh_at: str | None = Field(default=None, alias="refreshAt", json_schema_extra={"format": "date-time"},
                                   description="When graphcred next acquires a token, or retries after a failure, "
                                   "RFC 3339 UTC. Absent while it waits for the spec to change.")
    last_refresh_time: str | None = Field(default=None, alias="lastRefreshTime",
                                          json_schema_extra={"format": "date-time"},
                                          description="When the token in the Secret was acquired, RFC 3339 UTC.")
    last_refresh_reason: str | None = Field(
        default=None, alias="lastRefreshReason", max_length=256,
        description="Why the token in the Secret was requested: first token, renew requested, spec changed, "
        "credential Secret changed, ServiceAccount changed, token Secret missing, token Secret changed, retrying "
        "after <reason>, half-life reached, refreshBeforeExpiry reached or token expiring.")
    consecutive_failures: int = Field(default=0, alias="consecutiveFailures", ge=0,
                                      description="Failed attempts since the last token was acquired; 0 after a "
                                      "success.")
    roles: list[str] = Field(default_factory=list,
                             description="Application permissions granted to the app: the roles claim of the token "
                             "in the Secret. Compared with spec.requiredRoles.")
    audience: str | None = Field(default=None,
                                 description="Resource the token is for: its aud claim, e.g. "
                                 "https://graph.microsoft.com.")
    tenant_id: str | None = Field(default=None, alias="tenantId",
                                  description="Tenant that issued the token: its tid claim (a GUID, also when "
                                  "spec.tenantId is a domain).")
    app_id: str | None = Field(default=None, alias="appId",
                               description="Application the token was issued to: its appid (or azp) claim.")
    credential_version: str | None = Field(
        default=None, alias="credentialVersion",
        description="resourceVersion of the credential Secret (or, for workloadIdentity, the ServiceAccount) the "
        "current token was acquired with.")
    issued_for: str | None = Field(
        default=None, alias="issuedFor",
        description="Digest of what the token in the Secret was acquired for (authority, tenant, client, "
        "credential kind, scopes, Secret name): Ready=True is only reported for a token matching the spec.")
    credential_expires_on: str | None = Field(
        default=None, alias="credentialExpiresOn", json_schema_extra={"format": "date-time"},
        description="When the credential itself expires, RFC 3339 UTC: its certificate's notAfter, or for a client "
        "secret the graphcred.io/credential-expires-on annotation of its Secret (as Entra's endDateTime); absent "
        "where unknown. For appRef, the ClusterGraphApp's credential.")
    issued_by_app: str | None = Field(
        default=None, alias="issuedByApp",
        description="The ClusterGraphApp the token in the Secret was acquired with (spec.appRef), if any: while the "
        "Secret holds its token, the app's policy decides whether it may stay, whatever the spec says now.")
    certificate: CertificateStatus | None = Field(
        default=None, description="With certificate.rotation: the certificate in use and its renewal (the "
        "CertificateRenewal condition says how the renewal goes).")
    last_renew_request: str | None = Field(
        default=None, alias="lastRenewRequest",
        description="Value of the graphcred.io/renew-requested-at annotation last served with a new token.")
    unrefreshable_consumers: int | None = Field(
        default=None, alias="unrefreshableConsumers", ge=0,
        description="Pods that read the token Secret where no refresh reaches them: through a subPath (or "
        "subPathExpr) mount, env (secretKeyRef) or envFrom; each keeps its first token and fails when it expires. "
        "Finished pods (Succeeded, Failed) do not count. Absent when there are none. Counted only by an operator "
        "that watches pods (graphcred run --watch-consumers; the chart's consumerWarnings.enabled); each such pod "
        "also gets a Warning Event (reason UnrefreshableConsumer) on this object.")

    restarts: list[RestartStatus] | None = Field(
        default=None, max_length=2 * MAX_RESTART_TARGETS,
        description="With spec.restartTargets or restartUnrefreshable: each target's last restart and its outcome. "
        "Written only by graphcred's restarts (the token's status patches leave it alone).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["kind", "name"]})

    @field_validator("conditions", mode="before")
    @classmethod
    def _conforming(cls, value: object) -> object:
        return conforming_conditions(value)

    def ready(self) -> Condition | None:
        return next((c for c in self.conditions if c.type == "Ready"), None)

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ClusterGraphAppStatus(BaseModel):
    """What the operator reports on a ClusterGraphApp. Never a token, a secret or a key."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready: True while the app's spec is valid, its credential readable and its last token "
        "request succeeded; False with a reason and a message otherwise; Unknown while no credential uses it.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    observed_generation: int | None = Field(default=None, alias="observedGeneration", ge=0,
                                            json_schema_extra={"format": "int64"},
                                            description="metadata.generation of the spec this status was written "
                                            "for.")
    users: int = Field(default=0, ge=0, description="GraphAppCredentials that name this app in spec.appRef.")
    permitted: int = Field(default=0, ge=0, description="Of those, the ones its policy permits.")
    credential_expires_on: str | None = Field(
        default=None, alias="credentialExpiresOn", json_schema_extra={"format": "date-time"},
        description="When the app's certificate expires (its notAfter), RFC 3339 UTC; absent where unknown (a "
        "client secret's expiry is only known to Entra).")
    last_token_time: str | None = Field(default=None, alias="lastTokenTime", json_schema_extra={"format": "date-time"},
                                        description="When a token was last acquired with this app, RFC 3339 UTC.")

    @field_validator("conditions", mode="before")
    @classmethod
    def _conforming(cls, value: object) -> object:
        return conforming_conditions(value)

    def ready(self) -> Condition | None:
        return next((c for c in self.conditions if c.type == "Ready"), None)

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
