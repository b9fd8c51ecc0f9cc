"""Which pods read a token Secret in a way that never sees a refresh, and the bookkeeping of those found.

Pure: a pod (as the apiserver's JSON) in, findings out. The kubelet updates a Secret volume in place (a symlink
swap), but never a `subPath` (or `subPathExpr`) mount of one, and environment variables (`env[].valueFrom.
secretKeyRef`, `envFrom[].secretRef`) are set once, when the container starts: such a consumer keeps the first token
and fails when it expires. A plain volume mount of the Secret is fine. `optional: true` changes nothing: it only
matters while the Secret is missing.

`ConsumerIndex` holds what the pod watch found for the token Secrets in use: per pod its uid and findings (never its
spec), per Secret the pods that read it, and which credentials were already warned about each pod.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
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
    kind: str  # "container", "init container" or "ephemeral container"
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
    """A pod's findings about the token Secrets in use, and its uid (a re-created pod of the same name is another
    pod)."""

    uid: str
    findings: tuple[Finding, ...]

    def secrets(self) -> frozenset[str]:
        return frozenset(f.secret for f in self.findings)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _volume_secrets(spec: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Volume name -> the Secrets it projects: `secret.secretName`, or `projected.sources[].secret.name`."""
    volumes: dict[str, tuple[str, ...]] = {}
    for volume in _list(spec.get("volumes")):
        names = [_str(_map(volume.get("secret")).get("secretName"))]
        names += [_str(_map(source.get("secret")).get("name"))
                  for source in _list(_map(volume.get("projected")).get("sources"))]
        if any(names):
            volumes[_str(volume.get("name"))] = tuple(n for n in names if n)
    return volumes


def _containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key, kind in (("initContainers", "init container"), ("containers", "container"),
                      ("ephemeralContainers", "ephemeral container")):
        for container in _list(spec.get(key)):
            yield kind, container


def _container_findings(kind: str, container: Mapping[str, Any], volumes: Mapping[str, tuple[str, ...]]
                        ) -> Iterator[Finding]:
    name = _str(container.get("name"))
    for mount in _list(container.get("volumeMounts")):
        how = How.SUB_PATH if mount.get("subPath") else How.SUB_PATH_EXPR if mount.get("subPathExpr") else None
        if how is None:
            continue  # a plain mount of the volume: updated in place, fine
        for secret in volumes.get(_str(mount.get("name")), ()):
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
    volumes = _volume_secrets(spec)
    found: dict[Finding, None] = {}  # ordered, without duplicates (a variable set twice, two mounts of one path)
    for kind, container in _containers(spec):
        found.update(dict.fromkeys(_container_findings(kind, container, volumes)))
    return tuple(found)


def finished(pod: Mapping[str, Any]) -> bool:
    """Has the pod finished (Succeeded, Failed)? Its containers run no more, so it cannot fail later: not counted."""
    return _str(_map(pod.get("status")).get("phase")) in FINISHED_PHASES


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
    return key, None if finished(pod) else PodConsumer(_str(meta.get("uid")), findings)


def warning_message(namespace: str, pod: str, secret: str, findings: Iterable[Finding]) -> str:
    """The Warning Event about one pod reading `secret` where no refresh reaches it: who, how, why it will break,
    what to do. Names only (pod, container, path, variable): never a value."""
    uses = [f for f in findings if f.secret == secret]
    first, others = uses[0], uses[1:]
    text = f"pod {namespace}/{pod} {first.who()} reads {secret} through {first.how_text()}"
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


@dataclass
class _Record:
    consumer: PodConsumer
    warned: set[str] = field(default_factory=set)  # uids of the credentials already warned about this pod


class ConsumerIndex:
    """The pods found reading token Secrets in use: pod -> (uid, findings, credentials warned), Secret -> pods.
    Under 1 KiB a pod with one finding (measured: ~870 bytes); nothing is kept for a pod without findings."""

    def __init__(self) -> None:
        self._pods: dict[PodKey, _Record] = {}
        self._by_secret: dict[SecretKey, set[PodKey]] = {}

    def __len__(self) -> int:
        return len(self._pods)

    def put(self, pod: PodKey, consumer: PodConsumer | None) -> set[SecretKey]:
        """Record the pod's findings (None: it is gone or finished). Returns the Secrets whose consumers changed.
        The same pod (uid) keeps its warnings; a re-created one starts afresh."""
        old = self._pods.get(pod)
        if consumer is None:
            return self.remove(pod)
        if old is not None and old.consumer == consumer:
            return set()
        before = old.consumer.secrets() if old is not None else frozenset()
        record = _Record(consumer)
        if old is not None and old.consumer.uid == consumer.uid:
            record.warned = old.warned
        self._pods[pod] = record
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
        changed = {(pod[0], s) for s in old.consumer.secrets()}
        for secret in changed:
            self._unlink(secret, pod)
        return changed

    def _unlink(self, secret: SecretKey, pod: PodKey) -> None:
        pods = self._by_secret.get(secret)
        if pods is not None:
            pods.discard(pod)
            if not pods:
                del self._by_secret[secret]

    def drop_secret(self, secret: SecretKey) -> None:
        """Forget the consumers of a Secret no credential writes any more (their pods keep other findings)."""
        for pod in list(self._by_secret.get(secret, ())):
            record = self._pods[pod]
            rest = tuple(f for f in record.consumer.findings if f.secret != secret[1])
            self.put(pod, PodConsumer(record.consumer.uid, rest) if rest else None)  # same uid: warnings kept

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

    def unwarned(self, secret: SecretKey, credential_uid: str) -> list[tuple[PodKey, PodConsumer]]:
        """The pods reading `secret` that the credential `credential_uid` was not warned about yet, each marked as
        warned now: every credential hears once about each pod."""
        due = []
        for pod in sorted(self._by_secret.get(secret, ())):
            record = self._pods[pod]
            if credential_uid not in record.warned:
                record.warned.add(credential_uid)
                due.append((pod, record.consumer))
        return due
