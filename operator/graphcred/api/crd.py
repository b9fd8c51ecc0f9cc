"""Generate the GraphAppCredential CRD from the pydantic models.

pydantic emits JSON Schema with $refs and anyOf-null; a CRD needs a structural OpenAPI v3 schema: every node typed,
references inlined, `nullable` instead of `anyOf: [X, null]`, no titles. `graphcred crd` prints the result and
`crds/graphappcredentials.yaml` is that output, committed (a test fails if they drift).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from graphcred.api import keys, model

_KEEP = {
    "type", "properties", "items", "required", "description", "pattern", "enum", "default", "format",
    "minLength", "maxLength", "minItems", "maxItems", "minimum", "maximum", "x-kubernetes-validations",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "maxProperties",
}


def _map_values(node: dict[str, Any]) -> dict[str, Any]:
    """A map (dict[str, X] in the models): a CRD has no patternProperties or propertyNames, so the values' schema
    becomes additionalProperties and the rules on keys become CEL rules."""
    patterns = node.get("patternProperties") or {}
    if len(patterns) > 1:
        raise ValueError(f"cannot express patternProperties {patterns} structurally")
    values = next(iter(patterns.values()), None) or node.get("additionalProperties")
    if not isinstance(values, dict):
        return node
    rules = list(node.get("x-kubernetes-validations", []))
    for pattern in patterns:
        rules.append({"rule": f"self.all(k, k.matches(r'{pattern}'))", "message": f"keys must match {pattern}"})
    names = node.get("propertyNames") or {}
    if "maxLength" in names:
        rules.append({"rule": f"self.all(k, size(k) <= {names['maxLength']})",
                      "message": f"keys must be at most {names['maxLength']} characters"})
    if names.get("minLength", 0) > 0:
        rules.append({"rule": "self.all(k, size(k) > 0)", "message": "keys must not be empty"})
    rest = {k: v for k, v in node.items() if k not in ("patternProperties", "propertyNames", "additionalProperties")}
    return {**rest, "additionalProperties": values, **({"x-kubernetes-validations": rules} if rules else {})}


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    any_of = node.get("anyOf")
    if any_of is not None:
        others = [n for n in any_of if n.get("type") != "null"]
        if len(others) != 1:
            raise ValueError(f"cannot express anyOf {any_of} structurally")
        # Optional fields: drop the null branch; absent is how "unset" is spelled in Kubernetes.
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _structural({**others[0], **rest}, defs)
    if node.get("type") == "object" and "properties" not in node:
        node = _map_values(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "additionalProperties" and isinstance(value, dict):
            out[key] = _structural(value, defs)
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def openapi_schema(cls: type[BaseModel], mode: JsonSchemaMode = "validation") -> dict[str, Any]:
    schema = cls.model_json_schema(by_alias=True, mode=mode)
    return _structural(schema, schema.get("$defs", {}))


_READY = '.status.conditions[?(@.type=="Ready")]'

# `kubectl get gac` shows the first five; `-o wide` adds the priority-1 columns after Age (as `kubectl get pods -o
# wide` does), the free-text message last. Times are strings (RFC 3339): a `date` column prints an age, and a
# future time as "<invalid>".
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status",
     "description": "True while the token Secret holds a valid token for this spec."},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason", "description": "Why, in one word."},
    {"name": "Expires", "type": "string", "jsonPath": ".status.expiresOn",
     "description": "When the token in the Secret expires."},
    {"name": "Secret", "type": "string", "jsonPath": ".status.secretName", "description": "The token Secret."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Refresh At", "type": "string", "jsonPath": ".status.refreshAt", "priority": 1,
     "description": "When graphcred next acquires a token or retries."},
    {"name": "Audience", "type": "string", "jsonPath": ".status.audience", "priority": 1,
     "description": "The token's aud claim."},
    {"name": "Credential Expires", "type": "string", "jsonPath": ".status.credentialExpiresOn", "priority": 1,
     "description": "When the client secret or certificate itself expires, where known."},
    {"name": "Message", "type": "string", "jsonPath": f"{_READY}.message", "priority": 1,
     "description": "What happened and what to do about it."},
]


APP_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": f"{_READY}.status",
     "description": "True while the app's credential works for the credentials using it."},
    {"name": "Reason", "type": "string", "jsonPath": f"{_READY}.reason", "description": "Why, in one word."},
    {"name": "Users", "type": "integer", "jsonPath": ".status.users",
     "description": "GraphAppCredentials naming this app."},
    {"name": "Permitted", "type": "integer", "jsonPath": ".status.permitted",
     "description": "Of those, the ones the policy permits."},
    {"name": "Credential Expires", "type": "string", "jsonPath": ".status.credentialExpiresOn",
     "description": "When the app's certificate expires, where known."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Client", "type": "string", "jsonPath": ".spec.clientId", "priority": 1,
     "description": "The app's client ID."},
    {"name": "Message", "type": "string", "jsonPath": f"{_READY}.message", "priority": 1,
     "description": "What happened and what to do about it."},
]

KINDS = ("graphappcredentials", "clustergraphapps")


def crd(kind: str = "graphappcredentials") -> dict[str, Any]:
    """The CRD of one of graphcred's kinds (KINDS, by plural)."""
    if kind == keys.APP_PLURAL:
        return _crd(keys.APP_KIND, keys.APP_PLURAL, keys.APP_SINGULAR, keys.APP_SHORT_NAMES, "Cluster",
                    model.ClusterGraphAppSpec, model.ClusterGraphAppStatus, APP_PRINTER_COLUMNS,
                    "One Entra app identity for many namespaces, under the cluster admin's policy: "
                    "GraphAppCredentials name it in spec.appRef.", [])
    # the default token Secret <metadata.name>-token must itself be a valid name (253 at most)
    name_rule = [{
        "rule": f"has(self.spec.secretName) || size(self.metadata.name) <= {model.MAX_NAME_FOR_DEFAULT_SECRET}",
        "message": f"metadata.name longer than {model.MAX_NAME_FOR_DEFAULT_SECRET} characters needs "
                   f"spec.secretName: the default <metadata.name>{model.TOKEN_SECRET_SUFFIX} would exceed 253",
    }]
    return _crd(keys.KIND, keys.PLURAL, keys.SINGULAR, keys.SHORT_NAMES, "Namespaced", model.GraphAppCredentialSpec,
                model.GraphAppCredentialStatus, PRINTER_COLUMNS,
                "An Entra ID app-only token, kept fresh in a Secret by graphcred.", name_rule)


def _crd(kind: str, plural: str, singular: str, short_names: tuple[str, ...], scope: str, spec_model: type[BaseModel],
         status_model: type[BaseModel], columns: list[dict[str, Any]], description: str,
         rules: list[dict[str, str]]) -> dict[str, Any]:
    spec = openapi_schema(spec_model)
    status = openapi_schema(status_model, mode="serialization")
    # Defaults belong to the operator for status; the apiserver must not invent status fields.
    _strip_defaults(status)
    root: dict[str, Any] = {"type": "object", "description": description, "required": ["spec"]}
    if rules:
        root["x-kubernetes-validations"] = rules
    root["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                          "metadata": {"type": "object"}, "spec": spec, "status": status}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{keys.GROUP}",
            "labels": {"app.kubernetes.io/name": "graphcred", "app.kubernetes.io/part-of": "graphcred"},
        },
        "spec": {
            "group": keys.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": ["graphcred"],
            },
            "versions": [{
                "name": keys.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def _strip_defaults(node: dict[str, Any]) -> None:
    node.pop("default", None)
    for sub in node.get("properties", {}).values():
        _strip_defaults(sub)
    if isinstance(node.get("items"), dict):
        _strip_defaults(node["items"])


def _flag(kind: str) -> str:
    return "" if kind == keys.PLURAL else f" --kind {kind}"


def crd_yaml(kind: str = keys.PLURAL) -> str:
    header = f"# Generated by `graphcred crd{_flag(kind)}` from operator/graphcred/api/model.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def crd_helm_template(kind: str = keys.PLURAL) -> str:
    """The chart's templates/crd*.yaml: the same CRD, behind `crds.install`, optionally kept on uninstall."""
    # Helm would evaluate a {{ in the schema's descriptions (secretTemplate's examples): print it literally
    body = yaml.safe_dump(crd(kind), sort_keys=False, width=120).replace("{{", '{{ "{{" }}')
    name_line = f"  name: {kind}.{keys.GROUP}\n"
    keep = ("  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n"
            "  {{- end }}\n")
    body = body.replace(name_line, name_line + keep, 1)
    return (f"# Generated by `graphcred crd --helm{_flag(kind)}` from operator/graphcred/api/model.py. Do not edit by "
            "hand.\n"
            "{{- if .Values.crds.install }}\n" + body + "{{- end }}\n")
