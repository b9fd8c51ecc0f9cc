"""Which pods read a token Secret in a way that never sees a refresh, and the bookkeeping of those found.

Pure: a pod (as the apiserver's JSON) in, findings out. The kubelet updates a Secret volume in place (a symlink
swap), but never a `subPath` (or `subPathExpr`) mount of one, and environment variables (`env[].valueFrom.
secretKeyRef`, `envFrom[].secretRef`) are set once, when the container starts: such a consumer keeps the first token
and fails when it expires. A plain volume mount of the Secret is fine. `optional: true` changes nothing: it only
matters while the Secret is missing.

A regular init container runs to completion before the app starts, within seconds of reading the token: not
flagged. A sidecar (an init container with `restartPolicy: Always`) runs as long as the pod: flagged.

`ConsumerIndex` holds what the pod watch found for the token Secrets in use: per pod its uid, controller and findings
(never its spec), per Secret the pods that read it, and which credentials were already warned about each group of
pods (a controller's pods: one template, one mistake, one Event).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

PodKey = tuple[str, str]  # namespace, pod name
SecretKey = tuple[str, str]  # namespace, Secret name
FINISHED_PHASES = ("Succeeded", "Failed")  # their containers run no more: they cannot fail later
MAX_LISTED = 4  # uses named in one Event message; the rest are counted (kopf cuts messages at 1024 characters)


class How(StrEnum):
    SUB_PATH = "subPath"
    SUB_PATH_EXPR = "subPathExpr"
    ENV = "env"
    ENV_FROM = "envFrom"


@dataclass(frozen=True, slots=True)
class Finding:
    """One use of a Secret that never sees a refresh. `detail`: the mount path (subPath), the variable (env), the
    prefix (envFrom, often empty)."""

    secret: str
    container: str
    kind: str  # "container", "sidecar container" or "ephemeral container"
    how: How
    detail: str = ""

    def who(self) -> str:
        return f"{self.kind} {self.container}"

    def how_text(self) -> str:
        """'a subPath mount at /etc/token', 'environment variable TOKEN', 'envFrom' (names only, never a value)."""
        if self.how in (How.SUB_PATH, How.SUB_PATH_EXPR):
            return f"a {self.how.value} mount at {self.detail}"
        if self.how == How.ENV:
            return f"environment variable {self.detail}"
        return "envFrom" + (f" (prefix {self.detail})" if self.detail else "")

    @property
    def mounted(self) -> bool:
        return self.how in (How.SUB_PATH, How.SUB_PATH_EXPR)


@dataclass(frozen=True, slots=True)
class PodConsumer:
    """A pod's findings about the token Secrets in use, its uid (a re-created pod of the same name is another pod)
    and its controller, "Kind/name" ("" if none): a ReplicaSet's 1,000 pods are one mistake, reported once."""

    uid: str
    findings: tuple[Finding, ...]
    owner: str = ""

    def secrets(self) -> frozenset[str]:
        return frozenset(f.secret for f in self.findings)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _top(path: str) -> str:
    """A path's first component inside the volume ("./token/a" -> "token")."""
    while path.startswith("./"):
        path = path[2:]
    return path.split("/", 1)[0]


def _item_paths(source: Mapping[str, Any]) -> frozenset[str] | None:
    """The top-level paths a projected source puts files at; None: not known from the spec (a Secret or ConfigMap
    source without items projects every key it has)."""
    if "path" in source:  # serviceAccountToken, clusterTrustBundle
        return frozenset({_top(_str(source.get("path")))})
    items = _list(source.get("items"))
    return frozenset(_top(_str(item.get("path"))) for item in items) if items else None


@dataclass(frozen=True, slots=True)
class SecretVolume:
    """A volume that shows Secrets: a Secret volume, or a projected one (its sources, to tell which a subPath
    reaches: a projected ConfigMap's file mounted by subPath is no token)."""

    secrets: tuple[str, ...]
    sources: tuple[tuple[str, frozenset[str] | None], ...] = ()  # projected: (Secret name or "", its top paths)

    def secrets_at(self, sub_path: str | None) -> tuple[str, ...]:
        """The Secrets a subPath of this volume may show (None: a subPathExpr, unknown until the pod runs)."""
        if not self.sources or sub_path is None:
            return self.secrets
        top = _top(sub_path)
        claimed = {p for secret, paths in self.sources if not secret and paths for p in paths}
        return tuple(secret for secret, paths in self.sources if secret and (
            top in paths if paths is not None else top not in claimed))


# The pod spec's container lists, in the order `containers` walks them.
CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")


def secret_volumes(spec: Mapping[str, Any]) -> dict[str, SecretVolume]:
    """Volume name -> the Secrets it shows: `secret.secretName`, or `projected.sources[].secret.name`. Volumes
    that show none are left out."""
    volumes: dict[str, SecretVolume] = {}
    for volume in _list(spec.get("volumes")):
        name = _str(volume.get("name"))
        if secret := _str(_map(volume.get("secret")).get("secretName")):
            volumes[name] = SecretVolume((secret,))
            continue
        sources = []
        for source in _list(_map(volume.get("projected")).get("sources")):
            for kind, body in source.items():
                body = _map(body)
                sources.append((_str(body.get("name")) if kind == "secret" else "", _item_paths(body)))
        if any(secret for secret, _ in sources):
            volumes[name] = SecretVolume(tuple(secret for secret, _ in sources if secret), tuple(sources))
    return volumes


def containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every container of a pod spec with the field that lists it (`CONTAINER_FIELDS`), in the spec's order: the
    one walk of a pod's containers, for the findings here and for what `graphcred status` shows."""
    for field in CONTAINER_FIELDS:
        for container in _list(spec.get(field)):
            yield field, container


def _outliving(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The containers that outlive their first token, with their kind. A regular init container runs to completion
    before the app starts; one with restartPolicy Always is a sidecar and runs as long as the pod."""
    for field, container in containers(spec):
        if field != "initContainers":
            yield ("container" if field == "containers" else "ephemeral container"), container
        elif container.get("restartPolicy") == "Always":
            yield "sidecar container", container


def _container_findings(kind: str, container: Mapping[str, Any], volumes: Mapping[str, SecretVolume]
                        ) -> Iterator[Finding]:
    name = _str(container.get("name"))
    for mount in _list(container.get("volumeMounts")):
        how = How.SUB_PATH if mount.get("subPath") else How.SUB_PATH_EXPR if mount.get("subPathExpr") else None
        if how is None:
            continue  # a plain mount of the volume: updated in place, fine
        volume = volumes.get(_str(mount.get("name")))
        sub_path = _str(mount.get("subPath")) if how == How.SUB_PATH else None
        for secret in volume.secrets_at(sub_path) if volume is not None else ():
            yield Finding(secret, name, kind, how, _str(mount.get("mountPath")))
    for env in _list(container.get("env")):
        secret = _str(_map(_map(env.get("valueFrom")).get("secretKeyRef")).get("name"))
        if secret:
            yield Finding(secret, name, kind, How.ENV, _str(env.get("name")))
    for source in _list(container.get("envFrom")):
        secret = _str(_map(source.get("secretRef")).get("name"))
        if secret:
            yield Finding(secret, name, kind, How.ENV_FROM, _str(source.get("prefix")))


def unrefreshable(spec: Mapping[str, Any]) -> tuple[Finding, ...]:
    """Every use of any Secret by a pod spec that never sees a refresh, each once, in the spec's order. Tolerant of
    any shape (a malformed field is skipped, never an error)."""
    volumes = secret_volumes(spec)
    found: dict[Finding, None] = {}  # ordered, without duplicates (a variable set twice, two mounts of one path)
    for kind, container in _outliving(spec):
        found.update(dict.fromkeys(_container_findings(kind, container, volumes)))
    return tuple(found)


def reads_unrefreshably(spec: Mapping[str, Any], secret: str) -> bool:
    """Does a pod spec read `secret` where no refresh reaches it (restartUnrefreshable restarts only such)?"""
    return any(f.secret == secret for f in unrefreshable(spec))


def finished(pod: Mapping[str, Any]) -> bool:
    """Has the pod finished (Succeeded, Failed)? Its containers run no more, so it cannot fail later: not counted."""
    return _str(_map(pod.get("status")).get("phase")) in FINISHED_PHASES


def owner(meta: Mapping[str, Any]) -> str:
    """The pod's controller as "Kind/name" (its ReplicaSet, StatefulSet, Job...), "" if none. Interned: a
    controller's thousand pods share one string."""
    for ref in _list(meta.get("ownerReferences")):
        if ref.get("controller") is True:
            return sys.intern(f"{_str(ref.get('kind'))}/{_str(ref.get('name'))}")
    return ""


def classify(pod: Mapping[str, Any], relevant: Callable[[str, str], bool]
             ) -> tuple[PodKey, PodConsumer | None] | None:
    """What a pod says about the Secrets `relevant(namespace, name)` accepts (the token Secrets in use): None if it
    reads none of them where no refresh reaches it (nothing to report, nothing to keep); else its key and its
    findings, or None for the findings if it has finished."""
    meta = _map(pod.get("metadata"))
    namespace = _str(meta.get("namespace"))
    findings = tuple(f for f in unrefreshable(_map(pod.get("spec"))) if relevant(namespace, f.secret))
    if not findings:
        return None
    key = (namespace, _str(meta.get("name")))
    return key, None if finished(pod) else PodConsumer(_str(meta.get("uid")), findings, owner(meta))


def warning_message(namespace: str, pod: str, secret: str, findings: Iterable[Finding], *, owner: str = "",
                    pods: int = 1) -> str:
    """The Warning Event about one pod (of `pods` of its controller `owner`) reading `secret` where no refresh
    reaches it: who, how, why it will break, what to do. Names only (pod, container, path, variable): never a
    value."""
    uses = [f for f in findings if f.secret == secret]
    first, others = uses[0], uses[1:]
    kind, _, name = owner.partition("/")
    group = f" (one of {pods} pods of {kind} {name})" if owner and pods > 1 else f" (of {kind} {name})" if owner \
        else ""
    text = f"pod {namespace}/{pod}{group} {first.who()} reads {secret} through {first.how_text()}"
    also = [f"{f.who()} through {f.how_text()}" for f in others[:MAX_LISTED - 1]]
    if len(others) > len(also):
        also.append(f"{len(others) - len(also)} more")
    if also:
        text += f" (also {'; '.join(also)})"
    mounts, env = any(f.mounted for f in uses), any(not f.mounted for f in uses)
    why = "; ".join((["the kubelet never updates a subPath mount"] if mounts else [])
                    + (["environment variables are set once, when the container starts"] if env else []))
    fix = "mount the Secret as a volume" + (" without subPath" if mounts else "") \
        + (" and read the file instead of environment variables" if env else "")
    return f"{text}; it will keep the first token and fail when it expires ({why}); {fix}"


Group = tuple[str, str]  # namespace, controller ("Kind/name") or, ownerless, the pod's uid (never has a "/")


def _group(pod: PodKey, consumer: PodConsumer) -> Group:
    return pod[0], consumer.owner or consumer.uid


class _GroupState:
    """How many of a group's pods the index holds, and the credentials (uids) already warned about the group: a
    tuple, as one credential writes a Secret almost always."""

    __slots__ = ("members", "warned")

    def __init__(self) -> None:
        self.members = 0
        self.warned: tuple[str, ...] = ()


class ConsumerIndex:
    """The pods found reading token Secrets in use: pod -> (uid, owner, findings), Secret -> pods, and per group of
    pods (a controller's, else the pod alone) the credentials warned about it, kept while any of its pods is.
    Under 1 KiB a pod with one finding; nothing is kept for a pod without findings."""

    def __init__(self) -> None:
        self._pods: dict[PodKey, PodConsumer] = {}
        self._by_secret: dict[SecretKey, set[PodKey]] = {}
        self._groups: dict[Group, _GroupState] = {}

    def __len__(self) -> int:
        return len(self._pods)

    def put(self, pod: PodKey, consumer: PodConsumer | None) -> set[SecretKey]:
        """Record the pod's findings (None: it is gone or finished). Returns the Secrets whose consumers changed.
        A group keeps its warnings while any of its pods remains: a re-created ownerless pod starts afresh."""
        old = self._pods.get(pod)
        if consumer is None:
            return self.remove(pod)
        if old == consumer:
            return set()
        before = old.secrets() if old is not None else frozenset()
        self._join(_group(pod, consumer))
        if old is not None:
            self._leave(_group(pod, old))
        self._pods[pod] = consumer
        namespace = pod[0]
        for secret in before - consumer.secrets():
            self._unlink((namespace, secret), pod)
        for secret in consumer.secrets():
            self._by_secret.setdefault((namespace, secret), set()).add(pod)
        return {(namespace, s) for s in before | consumer.secrets()}

    def remove(self, pod: PodKey) -> set[SecretKey]:
        old = self._pods.pop(pod, None)
        if old is None:
            return set()
        self._leave(_group(pod, old))
        changed = {(pod[0], s) for s in old.secrets()}
        for secret in changed:
            self._unlink(secret, pod)
        return changed

    def _join(self, group: Group) -> None:
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _GroupState()
        state.members += 1

    def _leave(self, group: Group) -> None:
        state = self._groups.get(group)
        if state is not None:
            state.members -= 1
            if state.members <= 0:
                del self._groups[group]  # its warnings go with it: a group seen again is reported again

    def _unlink(self, secret: SecretKey, pod: PodKey) -> None:
        pods = self._by_secret.get(secret)
        if pods is not None:
            pods.discard(pod)
            if not pods:
                del self._by_secret[secret]

    def drop_secret(self, secret: SecretKey) -> None:
        """Forget the consumers of a Secret no credential writes any more (their pods keep other findings)."""
        for pod in list(self._by_secret.get(secret, ())):
            old = self._pods[pod]
            rest = tuple(f for f in old.findings if f.secret != secret[1])
            self.put(pod, PodConsumer(old.uid, rest, old.owner) if rest else None)

    def retain(self, namespace: str | None, seen: Iterable[PodKey]) -> set[SecretKey]:
        """After a complete list of `namespace` (None: all): drop the pods it did not see (deleted, finished or no
        longer reading a token Secret while the watch was away). Returns the Secrets whose consumers changed."""
        keep = set(seen)
        changed: set[SecretKey] = set()
        for pod in [p for p in self._pods if (namespace is None or p[0] == namespace) and p not in keep]:
            changed |= self.remove(pod)
        return changed

    def count(self, secret: SecretKey) -> int:
        return len(self._by_secret.get(secret, ()))

    def owners(self, secret: SecretKey) -> set[str]:
        """The controllers ("Kind/name") of the pods reading `secret` where no refresh reaches them (whose workloads
        restartUnrefreshable restarts); ownerless pods have none."""
        return {self._pods[pod].owner for pod in self._by_secret.get(secret, ()) if self._pods[pod].owner}

    def unwarned(self, secret: SecretKey, credential_uid: str) -> list[tuple[PodKey, PodConsumer, int]]:
        """One pod of each group reading `secret` that the credential `credential_uid` was not warned about yet,
        with the number of the group's pods reading it; each group marked as warned now."""
        groups: dict[Group, list[PodKey]] = {}
        for pod in sorted(self._by_secret.get(secret, ())):
            groups.setdefault(_group(pod, self._pods[pod]), []).append(pod)
        due = []
        for group, pods in groups.items():
            state = self._groups[group]
            if credential_uid not in state.warned:
                state.warned += (credential_uid,)
                due.append((pods[0], self._pods[pods[0]], len(pods)))
        return due
