"""verify_with_key_set and the settings, without a server (the conformance vectors cover the
verification rules; these cover the API around them)."""

from __future__ import annotations

import json
from datetime import timedelta

import keyrelay
import pytest
from support import AUDIENCE, ISSUER, SigningKey

KINDS = {
    keyrelay.MalformedError: "malformed",
    keyrelay.NoKidError: "no_kid",
    keyrelay.UnknownKidError: "unknown_kid",
    keyrelay.AlgorithmNotPermittedError: "algorithm_not_permitted",
    keyrelay.SignatureError: "signature",
    keyrelay.ExpiredError: "expired",
    keyrelay.NotYetValidError: "not_yet_valid",
    keyrelay.IssuerError: "issuer",
    keyrelay.AudienceError: "audience",
    keyrelay.ClaimsError: "claims",
}


def test_each_refusal_has_its_class_and_kind() -> None:
    for cls, kind in KINDS.items():
        assert issubclass(cls, keyrelay.VerifyError)
        assert cls.kind == kind
        assert cls("why").kind == kind


def test_a_key_set_as_dict_or_json_text() -> None:
    key = SigningKey("k1", "ES384")
    jwks = {"keys": [key.jwk()]}
    token = key.sign("alice")
    for document in (jwks, json.dumps(jwks), json.dumps(jwks).encode()):
        claims = keyrelay.verify_with_key_set(token, document, issuers=ISSUER, audiences=AUDIENCE)
        assert claims["sub"] == "alice"
    with pytest.raises(keyrelay.MalformedError):
        keyrelay.verify_with_key_set(token, {"no": "keys"})


def test_leeway_in_seconds_or_as_a_timedelta() -> None:
    key = SigningKey("k1")
    jwks = {"keys": [key.jwk()]}
    import time

    token = key.sign(exp=int(time.time()) - 30)
    assert keyrelay.verify_with_key_set(token, jwks)["sub"] == "alice"  # default 60 s
    with pytest.raises(keyrelay.ExpiredError):
        keyrelay.verify_with_key_set(token, jwks, leeway=5)
    with pytest.raises(keyrelay.ExpiredError):
        keyrelay.verify_with_key_set(token, jwks, leeway=timedelta(seconds=5))
    with pytest.raises(ValueError):
        keyrelay.verify_with_key_set(token, jwks, leeway=-1)


def test_audience_and_issuer_only_when_expected() -> None:
    key = SigningKey("k1")
    jwks = {"keys": [key.jwk()]}
    token = key.sign(aud="someone-else", iss="https://other")
    assert keyrelay.verify_with_key_set(token, jwks)["aud"] == "someone-else"
    with pytest.raises(keyrelay.AudienceError):
        keyrelay.verify_with_key_set(token, jwks, audiences=["api", "billing"])
    with pytest.raises(keyrelay.IssuerError):
        keyrelay.verify_with_key_set(token, jwks, issuers=[ISSUER])
    assert keyrelay.verify_with_key_set(token, jwks, audiences=["api", "someone-else"])


@pytest.mark.parametrize(
    ("endpoint", "settings", "why"),
    [
        ("http://127.0.0.1:1", {"ca_certificate": b"x"}, "https://"),
        ("ftp://127.0.0.1:1", {}, "endpoint"),
        ("127.0.0.1:1", {"client_certificate": b"x"}, "key"),
        ("127.0.0.1:1", {"access_token": "two\nlines"}, "metadata"),
        ("127.0.0.1:1", {"ca_certificate": "/nonexistent/ca.pem"}, "cannot read"),
    ],
)
def test_settings_that_cannot_work_are_refused(endpoint: str, settings: dict, why: str) -> None:
    with pytest.raises(keyrelay.ConnectError, match=why):
        keyrelay.Verifier(endpoint, "acme", first_sync_timeout=None, **settings)


def test_no_server_means_not_synced_in_time() -> None:
    from support import free_port

    with pytest.raises(keyrelay.NotSyncedError, match="UNAVAILABLE"):
        keyrelay.Verifier(f"127.0.0.1:{free_port()}", "acme", first_sync_timeout=0.5)


def test_reconnect_delays_back_off_exponentially_with_full_jitter() -> None:
    from keyrelay._state import Backoff

    backoff = Backoff(0.1, 1.0)
    bounds = []
    for _ in range(6):
        bound = backoff.bound
        delay = backoff.next_delay()
        assert 0 <= delay <= bound
        bounds.append(bound)
    assert bounds == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.bound == 0.1
    delays = {round(Backoff(1.0, 1.0).next_delay(), 6) for _ in range(20)}
    assert len(delays) > 1, "the delays are jittered"


def test_an_async_verifier_must_be_started_first() -> None:
    import asyncio

    async def unstarted() -> None:
        verifier = keyrelay.AsyncVerifier("127.0.0.1:1", "acme")
        with pytest.raises(keyrelay.ConnectError, match="start"):
            await verifier.verify("a.b.c")
        await verifier.close()

    asyncio.run(unstarted())
