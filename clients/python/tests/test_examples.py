"""The framework examples (examples/) against a real keyrelay: a FastAPI dependency with
AsyncVerifier, driven by fastapi.testclient, and a Flask decorator with Verifier, driven by
Flask's test client."""

from __future__ import annotations

from typing import Any

import fastapi_app
import flask_app
from fastapi.testclient import TestClient
from support import AUDIENCE, ISSUER, Admin, KeyrelayServer, MockIdP, SigningKey, new_tenant


def setup(admin: Admin, idp: MockIdP) -> tuple[str, SigningKey]:
    tenant, key = new_tenant(), SigningKey("k1")
    admin.register(tenant, "okta", idp.publish(f"/{tenant}/jwks", [key]))
    return tenant, key


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def check_refusals(get: Any, key: SigningKey) -> None:
    missing = get({})
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    expired = get(bearer(key.sign(exp=1)))
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    for answer, kind in [
        (expired, "expired"),
        (get(bearer(key.sign(aud="billing"))), "audience"),
        (get(bearer(SigningKey("k1").sign())), "signature"),
        (get(bearer("not.a.token")), "malformed"),
    ]:
        body = answer.json()
        body = body.get("detail", body)
        assert answer.status_code == 401 and body["kind"] == kind, body


def test_the_fastapi_dependency(server: KeyrelayServer, admin: Admin, idp: MockIdP) -> None:
    tenant, key = setup(admin, idp)
    app = fastapi_app.create_app(server.address, tenant, audience=AUDIENCE, issuer=ISSUER)
    with TestClient(app) as client:
        answer = client.get("/me", headers=bearer(key.sign("alice")))
        assert answer.status_code == 200, answer.text
        assert answer.json()["sub"] == "alice"
        check_refusals(lambda headers: client.get("/me", headers=headers), key)
        status = client.get("/keyrelay/status").json()
        assert status == {"state": "connected", "providers": {"okta": 1}}
    assert app.state.verifier.status().state == "closed"


def test_the_flask_decorator(server: KeyrelayServer, admin: Admin, idp: MockIdP) -> None:
    tenant, key = setup(admin, idp)
    app = flask_app.create_app(server.address, tenant, audience=AUDIENCE, issuer=ISSUER)
    try:
        client = app.test_client()
        answer = client.get("/me", headers=bearer(key.sign("bob")))
        assert answer.status_code == 200, answer.text
        assert answer.get_json()["sub"] == "bob"
        check_refusals(lambda headers: _FlaskAnswer(client.get("/me", headers=headers)), key)
    finally:
        app.extensions["keyrelay"].close()


class _FlaskAnswer:
    """A Flask test response with the ``json()`` of an httpx one."""

    def __init__(self, response: Any) -> None:
        self.status_code = response.status_code
        self.headers = response.headers
        self._response = response

    def json(self) -> Any:
        return self._response.get_json()
