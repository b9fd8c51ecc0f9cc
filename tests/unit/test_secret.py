from __future__ import annotations

import base64
import datetime as dt

from graphcred import secret
from graphcred.secret import Owner

OWNER = Owner("mail", "batch", "uid-1")
EXP = dt.datetime(2026, 11, 24, 21, 3, 11, tzinfo=dt.UTC)


def test_render_matches_the_design_layout() -> None:
    body = secret.render("mail-token", OWNER, "eyJ0.eyJ1.sig", EXP)
    assert body["type"] == "Opaque"
    meta = body["metadata"]
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "graphcred"}
    assert meta["annotations"] == {"graphcred.io/credential": "mail", "graphcred.io/expires-on": "2026-11-24T21:03:11Z"}
    assert meta["ownerReferences"] == [{"apiVersion": "graphcred.io/v1alpha1", "kind": "GraphAppCredential",
                                        "name": "mail", "uid": "uid-1", "controller": True,
                                        "blockOwnerDeletion": True}]
    data = {k: base64.b64decode(v).decode() for k, v in body["data"].items()}
    assert data == {"access_token": "eyJ0.eyJ1.sig", "token_type": "Bearer", "expires_on": "2026-11-24T21:03:11Z",
                    "authorization": "Bearer eyJ0.eyJ1.sig"}


def test_only_a_secret_controlled_by_this_credential_is_ours() -> None:
    ours = secret.render("t", OWNER, "x", EXP)["metadata"]
    assert secret.is_ours(ours, OWNER)
    # same name, another uid: left by a deleted namesake, pending garbage collection: adopted
    assert secret.is_ours(ours, Owner("mail", "batch", "uid-2"))
    assert not secret.is_ours(ours, Owner("other", "batch", "uid-2"))  # another credential's Secret
    assert not secret.is_ours({}, OWNER)
    not_controller = {"ownerReferences": [{**ours["ownerReferences"][0], "controller": False}]}
    assert not secret.is_ours(not_controller, OWNER)


def test_stored_expiry_round_trips() -> None:
    meta = secret.render("t", OWNER, "x", EXP)["metadata"]
    assert secret.stored_expiry(meta) == EXP
    assert secret.stored_expiry({"annotations": {"graphcred.io/expires-on": "garbage"}}) is None
