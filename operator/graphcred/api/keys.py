"""The names graphcred's API is known by: the resource, and every label, annotation and field manager graphcred
reads or writes on Kubernetes objects. Kept together so that a reader finds the whole vocabulary in one place."""

from __future__ import annotations

# --- the GraphAppCredential resource
GROUP = "graphcred.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "GraphAppCredential"
PLURAL = "graphappcredentials"
SINGULAR = "graphappcredential"
SHORT_NAMES = ("gac",)
# the cluster-scoped ClusterGraphApp: one app identity for many namespaces, under its policy
APP_KIND = "ClusterGraphApp"
APP_PLURAL = "clustergraphapps"
APP_SINGULAR = "clustergraphapp"
APP_SHORT_NAMES = ("cga",)
# on a GraphAppCredential: any new value acquires a new token at once (`graphcred renew`)
RENEW_ANNOTATION = f"{GROUP}/renew-requested-at"

# --- on the token Secret
# The keys graphcred always writes into the token Secret; a template can add keys, never replace these.
TOKEN_KEYS = ("access_token", "token_type", "expires_on", "authorization")
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "graphcred"
FIELD_MANAGER = "graphcred"  # every write of the token Secret is made as this field manager
CREDENTIAL_ANNOTATION = f"{GROUP}/credential"
# on a client-secret credential Secret: when the secret expires in Entra (RFC 3339; `az ad app credential reset`
# prints it as endDateTime), for status.credentialExpiresOn and the CredentialExpiresSoon alert
CREDENTIAL_EXPIRES_ANNOTATION = f"{GROUP}/credential-expires-on"
EXPIRES_ON_ANNOTATION = f"{GROUP}/expires-on"

# --- on a ServiceAccount used for workload identity (the names Azure Workload Identity uses)
CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
TENANT_ID_ANNOTATION = "azure.workload.identity/tenant-id"
