"""Expiry in view: a credential's own expiry (a certificate's notAfter; a client secret's
graphcred.io/credential-expires-on annotation) in status.credentialExpiresOn and the
graphcred_credential_expiration_timestamp_seconds gauge, kept current as the credential Secret changes."""

from __future__ import annotations

import base64
import datetime as dt
import uuid

from graphcred_testbed.pki import self_signed

from .fakes import gac, secret_spec
from .harness import NS, TENANT, Rig, is_ready, run, until

ANNOTATION = "graphcred.io/credential-expires-on"


def _series(rig: Rig, name: str) -> list[str]:
    return [line for line in rig.metrics.exposition().splitlines()
            if line.startswith("graphcred_credential_expiration_timestamp_seconds{") and f'name="{name}"' in line]


def test_a_client_secrets_annotation_is_its_expiry_in_status_and_metrics() -> None:
    rig = Rig()
    rig.kube.put_client_secret(NS, "cred", "s3cret", annotations={ANNOTATION: "2027-03-01T10:00:00Z"})
    rig.metrics.track(rig.controller)

    async def scenario() -> None:
        rig.add(gac("mail", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "mail"), what="Ready")
        assert rig.kube.statuses[(NS, "mail")]["credentialExpiresOn"] == "2027-03-01T10:00:00Z"
        expected = dt.datetime(2027, 3, 1, 10, tzinfo=dt.UTC).timestamp()
        [line] = _series(rig, "mail")
        assert float(line.rsplit(" ", 1)[1]) == expected
        # the annotation removed (a new secret whose end date nobody wrote down): no longer known
        rig.kube.put_client_secret(NS, "cred", "s3cret")
        version = rig.kube.secrets[(NS, "cred")]["metadata"]["resourceVersion"]
        rig.controller.secret_event(NS, "cred", version, False)
        await until(lambda: "credentialExpiresOn" not in rig.kube.statuses[(NS, "mail")], what="expiry cleared")
        assert _series(rig, "mail") == []

    run(scenario)


def test_an_unreadable_annotation_is_no_expiry_and_no_failure() -> None:
    rig = Rig()
    rig.kube.put_client_secret(NS, "cred", "s3cret", annotations={ANNOTATION: "next spring"})

    async def scenario() -> None:
        rig.add(gac("mail", secret_spec(TENANT, str(uuid.uuid4()))))
        await until(lambda: is_ready(rig, "mail"), what="Ready")
        assert "credentialExpiresOn" not in rig.kube.statuses[(NS, "mail")]

    run(scenario)


def test_a_certificates_not_after_is_its_expiry() -> None:
    rig = Rig()
    not_after = (rig.clock.now + dt.timedelta(days=30)).replace(microsecond=0)
    pair = self_signed("cert", not_before=rig.clock.now - dt.timedelta(days=1), not_after=not_after)
    rig.kube.secrets[(NS, "cert")] = {"metadata": {"name": "cert", "namespace": NS, "resourceVersion": "7"},
                                      "data": {"tls.crt": base64.b64encode(pair.cert_pem).decode(),
                                               "tls.key": base64.b64encode(pair.key_pem).decode()}}
    spec = {"tenantId": TENANT, "clientId": str(uuid.uuid4()), "credential": {"certificate": {"name": "cert"}}}

    async def scenario() -> None:
        rig.add(gac("mail", spec))
        await until(lambda: is_ready(rig, "mail"), what="Ready")
        assert rig.kube.statuses[(NS, "mail")]["credentialExpiresOn"] == not_after.strftime("%Y-%m-%dT%H:%M:%SZ")

    run(scenario)


def test_the_end_date_as_graph_prints_it_is_read_to_the_second() -> None:
    from graphcred.base.times import parse_written
    assert parse_written("2027-03-01T10:00:05.8925536Z") == dt.datetime(2027, 3, 1, 10, 0, 5, tzinfo=dt.UTC)
    assert parse_written("2027-03-01T12:00:05+02:00") == dt.datetime(2027, 3, 1, 10, 0, 5, tzinfo=dt.UTC)
    assert parse_written("2027-03-01") == dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
    assert parse_written("next spring") is None and parse_written("") is None
