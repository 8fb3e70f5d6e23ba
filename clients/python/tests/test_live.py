"""The verifiers against a real keyrelay server and a mock identity provider: each scenario
runs with keyrelay.Verifier and keyrelay.AsyncVerifier (the `flavor` fixture)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
import keyrelay
import pytest
from pki import make_pki
from support import (
    AUDIENCE,
    ISSUER,
    Admin,
    Handle,
    KeyrelayServer,
    MockIdP,
    SigningKey,
    Tls,
    new_tenant,
    wait_until,
)

Connect = Callable[..., Handle]
EXPECTED = {"audience": AUDIENCE, "issuer": ISSUER}


def test_verifies_a_token_and_reports_its_keys(
    connect: Connect, server: KeyrelayServer, admin: Admin, idp: MockIdP
) -> None:
    tenant, key = new_tenant(), SigningKey("k1")
    admin.register(tenant, "okta", idp.publish(f"/{tenant}/jwks", [key]))
    verifier = connect(server.address, tenant)

    claims = verifier.verify(key.sign("alice"), **EXPECTED)
    assert claims["sub"] == "alice"

    status = verifier.status()
    assert status.connected and status.state == "connected"
    assert status.syncs == 1 and status.key_sets_received == 1
    okta = status.provider("okta")
    assert okta is not None and okta.version == 1 and okta.kids == ("k1",)
    assert okta.state == "READY" and not okta.stale
    assert okta.age is not None and 0 <= okta.age < 60

    with pytest.raises(keyrelay.AudienceError) as refused:
        verifier.verify(key.sign("alice"), audience="billing")
    assert refused.value.kind == "audience"
    with pytest.raises(keyrelay.ExpiredError):
        verifier.verify(key.sign("alice", exp=1), **EXPECTED)
    with pytest.raises(keyrelay.SignatureError):
        verifier.verify(SigningKey("k1").sign("mallory"), **EXPECTED)
    with pytest.raises(keyrelay.IssuerError):
        verifier.verify(key.sign("alice"), issuer=ISSUER + "/")


def test_a_rotation_reaches_the_verifier_over_the_stream(
    connect: Connect, server: KeyrelayServer, admin: Admin, idp: MockIdP
) -> None:
    tenant, old, new = new_tenant(), SigningKey("old"), SigningKey("new", "RS256")
    path = f"/{tenant}/jwks"
    admin.register(tenant, "okta", idp.publish(path, [old]))
    verifier = connect(server.address, tenant)
    resolves = server.resolve_count()

    idp.publish(path, [old, new])
    assert admin.refresh(tenant, "okta").version == 2
    wait_until(lambda: verifier.status().provider("okta").version == 2, what="version 2")

    assert verifier.verify(new.sign("bob"), **EXPECTED)["sub"] == "bob"
    assert verifier.verify(old.sign("carol"), **EXPECTED)["sub"] == "carol"
    assert verifier.status().key_sets_received == 2
    assert server.resolve_count() == resolves, "the new key came by WatchKeys, not Resolve"


def test_several_providers_and_a_removal(
    connect: Connect, server: KeyrelayServer, admin: Admin, idp: MockIdP
) -> None:
    tenant, a, b = new_tenant(), SigningKey("a"), SigningKey("b", "PS256")
    admin.register(tenant, "okta", idp.publish(f"/{tenant}/okta", [a]))
    admin.register(tenant, "auth0", idp.publish(f"/{tenant}/auth0", [b]))
    verifier = connect(server.address, tenant)
    assert [p.provider for p in verifier.status().providers] == ["auth0", "okta"]
    assert verifier.verify(a.sign("kim"), **EXPECTED)["sub"] == "kim"
    assert verifier.verify(b.sign("lee"), provider="auth0", **EXPECTED)["sub"] == "lee"
    with pytest.raises(keyrelay.UnknownKidError):
        verifier.verify(a.sign("kim"), provider="auth0", **EXPECTED)

    admin.unregister(tenant, "okta")
    wait_until(lambda: verifier.status().provider("okta") is None, what="okta removed")
    with pytest.raises(keyrelay.UnknownKidError):
        verifier.verify(a.sign("kim"), **EXPECTED)
    assert verifier.verify(b.sign("lee"), **EXPECTED)["sub"] == "lee"


def test_a_token_is_routed_by_its_issuer_before_its_kid(
    connect: Connect, server: KeyrelayServer, admin: Admin, idp: MockIdP
) -> None:
    tenant = new_tenant()
    ours, theirs, only_okta = SigningKey("shared"), SigningKey("shared"), SigningKey("okta-1")
    well_known = f"/{tenant}/issuer/.well-known/openid-configuration"
    issuer = idp.serve(well_known, b"").removesuffix("/.well-known/openid-configuration")
    jwks_uri = idp.publish(f"/{tenant}/okta-keys", [ours, only_okta])
    idp.serve(well_known, json.dumps({"issuer": issuer, "jwks_uri": jwks_uri}).encode())
    admin.register(tenant, "okta", issuer=issuer)
    # Named to come first: a search by kid alone in name order would pick its key.
    admin.register(tenant, "aaa-legacy", idp.publish(f"/{tenant}/legacy", [theirs]))
    verifier = connect(server.address, tenant)
    okta = verifier.status().provider("okta")
    assert okta is not None and okta.issuer == issuer

    expected = {"audience": AUDIENCE, "issuer": [issuer, ISSUER]}
    assert verifier.verify(ours.sign("kim", iss=issuer), **expected)["iss"] == issuer
    assert verifier.verify(theirs.sign("lee"), **expected)["sub"] == "lee"
    for provider in (None, "okta"):
        with pytest.raises(keyrelay.IssuerError):
            verifier.verify(only_okta.sign("kim"), provider=provider, **expected)


def test_keeps_verifying_through_an_outage_and_resumes_without_resending(
    connect: Connect, make_server: Callable[..., KeyrelayServer], idp: MockIdP
) -> None:
    server = make_server()
    admin = Admin(server)
    tenant, key, rotated = new_tenant(), SigningKey("k1"), SigningKey("k2")
    path = f"/{tenant}/jwks"
    admin.register(tenant, "okta", idp.publish(path, [key]))
    admin.close()
    verifier = connect(server.address, tenant, first_retry_delay=0.05, max_retry_delay=0.5)
    token = key.sign("dave")
    assert verifier.verify(token, **EXPECTED)["sub"] == "dave"
    before = verifier.status()
    assert before.syncs == 1 and before.key_sets_received == 1

    server.stop()
    down = wait_until(
        lambda: (s := verifier.status()).state == "disconnected" and s,
        what="the verifier to see the stream down",
    )
    assert not down.connected and down.last_error
    assert down.provider("okta").version == 1
    assert verifier.verify(token, **EXPECTED)["sub"] == "dave", "held keys still verify"
    with pytest.raises(keyrelay.UnknownKidError):
        verifier.verify(SigningKey("elsewhere").sign(), **EXPECTED)

    server.start()  # same port, same data directory
    up = wait_until(
        lambda: (s := verifier.status()).syncs == 2 and s.connected and s,
        what="the verifier to resume",
    )
    assert up.attempts >= 2
    assert up.key_sets_received == 1, "the resumed stream resent a key set already held"
    assert up.provider("okta").version == 1
    assert verifier.verify(token, **EXPECTED)["sub"] == "dave"

    # The resumed stream is live: a rotation still arrives.
    admin = Admin(server)
    idp.publish(path, [key, rotated])
    assert admin.refresh(tenant, "okta").version == 2
    admin.close()
    wait_until(lambda: verifier.status().provider("okta").version == 2, what="version 2")
    assert verifier.status().key_sets_received == 2
    assert verifier.verify(rotated.sign("erin"), **EXPECTED)["sub"] == "erin"


def test_an_unknown_kid_costs_one_resolve_for_fifty_concurrent_callers(
    connect: Connect, server: KeyrelayServer, admin: Admin, idp: MockIdP
) -> None:
    tenant, known, added = new_tenant(), SigningKey("known"), SigningKey("added")
    path = f"/{tenant}/jwks"
    admin.register(tenant, "okta", idp.publish(path, [known]))
    verifier = connect(server.address, tenant)
    idp.publish(path, [known, added])  # no refresh: keyrelay learns of it through Resolve

    before = server.resolve_count()
    results = verifier.verify_concurrently(added.sign("frank"), 50, **EXPECTED)
    assert [r["sub"] if isinstance(r, dict) else r for r in results] == ["frank"] * 50
    wait_until(lambda: server.resolve_count() >= before + 1, what="the Resolve to be counted")
    assert server.resolve_count() == before + 1
    assert verifier.status().provider("okta").kids == ("known", "added")

    # A kid that exists nowhere: one Resolve too, and every caller is refused.
    before = server.resolve_count()
    results = verifier.verify_concurrently(SigningKey("nowhere").sign(), 50, **EXPECTED)
    assert all(isinstance(r, keyrelay.UnknownKidError) for r in results), results
    wait_until(lambda: server.resolve_count() >= before + 1, what="the Resolve to be counted")
    assert server.resolve_count() == before + 1


def test_a_revoked_key_is_refused_without_a_resolve_until_reinstated(
    connect: Connect, server: KeyrelayServer, admin: Admin, idp: MockIdP
) -> None:
    tenant, kept, leaked = new_tenant(), SigningKey("kept"), SigningKey("leaked", "RS256")
    admin.register(tenant, "okta", idp.publish(f"/{tenant}/jwks", [kept, leaked]))
    verifier = connect(server.address, tenant)
    token = leaked.sign("mallory")
    assert verifier.verify(token, **EXPECTED)["sub"] == "mallory"
    okta = verifier.status().provider("okta")
    assert okta is not None and okta.version == 1 and okta.revoked_kids == ()

    answer = admin.revoke(tenant, "okta", "leaked", "the private key leaked")
    assert not answer.already_revoked and answer.in_key_set
    assert [k.kid for k in answer.provider.status.revoked_keys] == ["leaked"]
    okta = wait_until(
        lambda: (p := verifier.status().provider("okta")) is not None and p.version == 2 and p,
        what="the revocation (version 2) to reach the verifier",
    )
    assert okta.kids == ("kept",) and okta.revoked_kids == ("leaked",)

    before = server.resolve_count()
    with pytest.raises(keyrelay.RevokedError) as refused:
        verifier.verify(token, **EXPECTED)
    assert refused.value.kind == "revoked" and isinstance(refused.value, keyrelay.VerifyError)
    assert (refused.value.kid, refused.value.provider) == ("leaked", f"{tenant}/okta")
    assert str(refused.value) == (
        f'kid "leaked" of {tenant}/okta was revoked by a keyrelay administrator'
    )
    with pytest.raises(keyrelay.RevokedError):
        verifier.verify(token, provider="okta", **EXPECTED)
    results = verifier.verify_concurrently(token, 20, **EXPECTED)
    assert all(isinstance(r, keyrelay.RevokedError) for r in results), results
    assert verifier.verify(kept.sign("alice"), **EXPECTED)["sub"] == "alice"
    # A kid that exists nowhere makes one Resolve: once it is counted, any Resolve made for
    # the revoked kid before it would be too.
    with pytest.raises(keyrelay.UnknownKidError):
        verifier.verify(SigningKey("nowhere").sign(), **EXPECTED)
    wait_until(lambda: server.resolve_count() >= before + 1, what="the Resolve to be counted")
    assert server.resolve_count() == before + 1, "the revoked kid was resolved"

    answer = admin.reinstate(tenant, "okta", "leaked")
    assert answer.in_key_set and not answer.provider.status.revoked_keys
    okta = wait_until(
        lambda: (p := verifier.status().provider("okta")) is not None and p.version == 3 and p,
        what="the reinstatement (version 3) to reach the verifier",
    )
    assert sorted(okta.kids) == ["kept", "leaked"] and okta.revoked_kids == ()
    assert verifier.verify(token, **EXPECTED)["sub"] == "mallory"
    assert verifier.verify(kept.sign("alice"), **EXPECTED)["sub"] == "alice"


def test_an_access_token_opens_a_tenant_that_requires_one(
    connect: Connect, server: KeyrelayServer, admin: Admin, idp: MockIdP
) -> None:
    tenant, key = new_tenant(), SigningKey("k1")
    admin.register(tenant, "okta", idp.publish(f"/{tenant}/jwks", [key]))
    admin.require_verifier_token(tenant)
    secret = admin.verifier_token(tenant)

    without = connect(server.address, tenant, providers=["okta"], first_sync_timeout=3)
    assert without.status().provider("okta") is None
    with pytest.raises(keyrelay.UnknownKidError):
        without.verify(key.sign(), **EXPECTED)

    with_token = connect(server.address, tenant, access_token=secret)
    assert with_token.verify(key.sign("grace"), **EXPECTED)["sub"] == "grace"

    with pytest.raises(keyrelay.NotSyncedError, match="UNAUTHENTICATED"):
        connect(server.address, tenant, access_token="krt_not-a-token", first_sync_timeout=1)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_with_a_ca_bundle_and_a_client_certificate(
    connect: Connect,
    make_server: Callable[..., KeyrelayServer],
    idp: MockIdP,
    tmp_path: Path,
    mutual: bool,
) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", "another CA")
    server = make_server(Tls(pki.server_cert, pki.server_key, pki.ca if mutual else None))
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    admin = Admin(server, credentials)
    tenant, key = new_tenant(), SigningKey("k1", "EdDSA")
    admin.register(tenant, "okta", idp.publish(f"/{tenant}/jwks", [key]))
    admin.close()
    client = {"client_certificate": pki.client_cert, "client_key": pki.client_key}

    verifier = connect(f"https://{server.address}", tenant, ca_certificate=pki.ca, **client)
    assert verifier.verify(key.sign("heidi"), **EXPECTED)["sub"] == "heidi"
    assert verifier.status().connected

    # PEM given as bytes, and a bare host:port that the TLS settings switch to TLS.
    as_bytes = connect(server.address, tenant, ca_certificate=pki.ca.read_bytes(), **client)
    assert as_bytes.verify(key.sign("ivan"), **EXPECTED)["sub"] == "ivan"

    with pytest.raises(keyrelay.NotSyncedError):
        connect(f"https://{server.address}", tenant, ca_certificate=other.ca, **client,
                first_sync_timeout=1)  # fmt: skip
    with pytest.raises(keyrelay.NotSyncedError):
        connect(server.address, tenant, first_sync_timeout=1)  # plaintext to a TLS port
    if mutual:
        with pytest.raises(keyrelay.NotSyncedError):
            connect(f"https://{server.address}", tenant, ca_certificate=pki.ca,
                    first_sync_timeout=1)  # fmt: skip
    else:
        anonymous = connect(f"https://{server.address}", tenant, ca_certificate=pki.ca)
        assert anonymous.verify(key.sign("judy"), **EXPECTED)["sub"] == "judy"
