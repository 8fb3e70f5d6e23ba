"""A Flask application whose routes need a valid bearer token, checked by a decorator with
keyrelay.Verifier (one WatchKeys stream for the whole process, in a background thread).

Run it:
    KEYRELAY_ENDPOINT=127.0.0.1:50051 KEYRELAY_TENANT=acme KEYRELAY_AUDIENCE=api \
        flask --app flask_app:app_from_env run
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

import keyrelay
from flask import Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

View = TypeVar("View", bound=Callable[..., ResponseReturnValue])


def require_token(
    audience: str | Iterable[str] | None = None,
    issuer: str | Iterable[str] | None = None,
) -> Callable[[View], View]:
    """Refuses requests without a valid bearer token (401); puts its claims in ``g.claims``."""

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return (
                    jsonify(error="a bearer token is required"),
                    401,
                    {"WWW-Authenticate": "Bearer"},
                )
            verifier: keyrelay.Verifier = current_app.extensions["keyrelay"]
            try:
                g.claims = verifier.verify(token, audience=audience, issuer=issuer)
            except keyrelay.VerifyError as refusal:
                body = jsonify(error="invalid_token", kind=refusal.kind, reason=str(refusal))
                return body, 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}
            return view(*args, **kwargs)

        return cast(View, wrapper)

    return decorator


def create_app(
    endpoint: str,
    tenant: str,
    *,
    audience: str | Iterable[str] | None = None,
    issuer: str | Iterable[str] | None = None,
    **settings: Any,
) -> Flask:
    """The application; ``settings`` go to keyrelay.Verifier (TLS, access token...)."""
    app = Flask(__name__)
    verifier = keyrelay.Verifier(endpoint, tenant, **settings)
    atexit.register(verifier.close)
    app.extensions["keyrelay"] = verifier

    @app.get("/me")
    @require_token(audience=audience, issuer=issuer)
    def me() -> ResponseReturnValue:
        return {"sub": g.claims.get("sub"), "claims": g.claims}

    return app


def app_from_env() -> Flask:
    """The application configured from KEYRELAY_ENDPOINT, _TENANT, _AUDIENCE, _ISSUER."""
    return create_app(
        os.environ.get("KEYRELAY_ENDPOINT", "127.0.0.1:50051"),
        os.environ["KEYRELAY_TENANT"],
        audience=os.environ.get("KEYRELAY_AUDIENCE"),
        issuer=os.environ.get("KEYRELAY_ISSUER"),
        access_token=os.environ.get("KEYRELAY_ACCESS_TOKEN"),
    )
