"""The soak's world, drawn from the seed: apps registered in the issuer, the keys (credential Secrets) and the
GraphAppCredentials that use them, and the spans in which a credential pointed at an app."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field

from graphcred.api.model import parse_duration

from ..issuer import App, Issuer
from ..pki import KeyPair, self_signed
from .config import SoakConfig

GRAPH = "https://graph.microsoft.com"
RESOURCES = (GRAPH, "https://vault.azure.net", "https://management.azure.com", "api://graphcred-soak")


@dataclass
class _App:
    index: int
    app: App
    kind: str  # "secret" | "certificate"
    lifetime: int

    @property
    def client_id(self) -> str:
        return self.app.client_id

    @property
    def tenant(self) -> str:
        return self.app.tenant_id


@dataclass
class _Key:
    """A credential Secret and the material in it (a client secret or a certificate)."""

    namespace: str
    name: str
    kind: str
    value: str | None = None
    pair: KeyPair | None = None
    apps: list[_App] = field(default_factory=list)  # where the material is registered

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def register(self, app: _App) -> None:
        """Entra side: add the current material to the app (a secret or certificate may be on several apps)."""
        if self.value is not None and self.value not in app.app.secrets:
            app.app.secrets.append(self.value)
        if self.pair is not None and self.pair.cert not in app.app.certificates:
            app.app.certificates.append(self.pair.cert)
        if app not in self.apps:
            self.apps.append(app)

    def string_data(self) -> dict[str, str]:
        if self.kind == "secret":
            assert self.value is not None
            return {"clientSecret": self.value}
        assert self.pair is not None
        return {"tls.crt": self.pair.cert_pem.decode(), "tls.key": self.pair.key_pem.decode()}


@dataclass
class _Cred:
    namespace: str
    name: str
    key: _Key
    app: _App
    resource: str = GRAPH
    rbe: str | None = None  # refreshBeforeExpiry
    group: int | None = None  # sharing group (same key as its partners)
    require_roles: bool = False  # spec.requiredRoles: [Mail.Read] (granted): a spec change that keeps the token
    cluster: int | None = None  # index of the ClusterGraphApp it names in spec.appRef (cluster.py); key is its secret
    rotating: int | None = None  # index of its rotating app (rotating.py); key is the Secret graphcred generates
    apps_ever: set[str] = field(default_factory=set)
    tenants_ever: set[str] = field(default_factory=set)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def point_at(self, app: _App) -> None:
        self.app = app
        self.apps_ever.add(app.client_id)
        self.tenants_ever.add(app.tenant)

    def refresh_period(self) -> float:
        """Seconds between refreshes this credential may ask for, jitter included (the request bound's unit)."""
        lifetime = float(self.app.lifetime)
        before = parse_duration(self.rbe).total_seconds() if self.rbe else None
        wait = lifetime - before if before is not None and before < lifetime else lifetime / 2
        return max(0.9 * wait, 1.0)

@dataclass
class _Assignment:
    """A credential pointed at an app from `start` to `end` (the request bound is summed over these)."""

    cred: str
    app: str
    key: str
    period: float
    start: float
    end: float | None = None

class _World:
    """Apps (registered in the issuer), keys and credentials, drawn from the seed (the key material is not)."""

    def __init__(self, cfg: SoakConfig, rng: random.Random, issuer: Issuer, namespaces: list[str]) -> None:
        self.cfg, self.rng, self.issuer, self.namespaces = cfg, rng, issuer, namespaces
        self.apps: list[_App] = []
        self.spare: list[_App] = []  # apps in a tenant nobody uses at first (for the discovery fault)
        self.keys: dict[str, _Key] = {}
        self.creds: list[_Cred] = []
        self.groups: dict[int, list[int]] = {}

    def _id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def build(self) -> _World:
        cfg, rng = self.cfg, self.rng
        tenants = [self._id() for _ in range(cfg.tenants)]
        for i in range(cfg.apps):
            kind = "certificate" if i < round(cfg.apps * cfg.certificates) else "secret"
            reg = self.issuer.register_app(tenants[i % len(tenants)], self._id(), roles={GRAPH: ["Mail.Read"]},
                                           lifetime=rng.choice(cfg.lifetimes))
            self.apps.append(_App(i, reg, kind, reg.lifetime))
        fresh = self._id()
        for j, kind in enumerate(("secret", "certificate")):
            reg = self.issuer.register_app(fresh, self._id(), lifetime=cfg.lifetimes[0])
            self.spare.append(_App(cfg.apps + j, reg, kind, reg.lifetime))
        self._credentials()
        # the credentials were made app by app: put them in a seeded order so that indexes spread over apps
        rng.shuffle(self.creds)
        index = {id(c): i for i, c in enumerate(self.creds)}
        self.groups = {g: sorted(index[id(c)] for c in self.creds if c.group == g) for g in self.groups}
        return self

    def _credentials(self) -> None:
        """Each app gets a block of credentials; some join the previous one's key (a sharing group)."""
        cfg, rng = self.cfg, self.rng
        group = 0
        for i in range(cfg.credentials):
            app = self.apps[i * len(self.apps) // cfg.credentials]
            prev = self.creds[-1] if self.creds else None
            if prev is not None and prev.app is app and rng.random() < cfg.sharing and (
                    prev.group is None or len(self.groups[prev.group]) < 3):
                if prev.group is None:
                    prev.group, group = group, group + 1
                    self.groups[prev.group] = [len(self.creds) - 1]
                cred = _Cred(prev.namespace, f"c-{i:03d}", prev.key, app, group=prev.group)
                self.groups[prev.group].append(i)
            else:
                ns = rng.choice(self.namespaces)
                key = self._new_key(ns, f"key-{i:03d}", app.kind)
                key.register(app)
                cred = _Cred(ns, f"c-{i:03d}", key, app)
                if rng.random() < cfg.near_lifetime:
                    cred.rbe = f"{app.lifetime - 5}s"
            cred.point_at(app)
            self.creds.append(cred)

    def _new_key(self, ns: str, name: str, kind: str) -> _Key:
        key = _Key(ns, name, kind)
        if kind == "secret":
            key.value = f"soak-{name}~{uuid.uuid4().hex[:16]}"
        else:
            key.pair = self_signed(f"soak-{name}")
        self.keys[key.ref] = key
        return key
