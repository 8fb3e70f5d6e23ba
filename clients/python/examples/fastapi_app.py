"""A FastAPI application whose routes need a valid bearer token, checked by a dependency on
keyrelay.AsyncVerifier (one WatchKeys stream for the whole application, opened and closed by
the lifespan).

Run it (with uvicorn installed):
    KEYRELAY_ENDPOINT=127.0.0.1:50051 KEYRELAY_TENANT=acme KEYRELAY_AUDIENCE=api \
        uvicorn --factory fastapi_app:app_from_env
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import keyrelay
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False)


async def verified_claims(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> dict[str, Any]:
    """The claims of the request's bearer token; 401 when it is missing or refused."""
    if credentials is None:
        raise HTTPException(401, "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    verifier: keyrelay.AsyncVerifier = request.app.state.verifier
    try:
        return await verifier.verify(credentials.credentials, **request.app.state.expected)
    except keyrelay.VerifyError as refusal:
        raise HTTPException(
            401,
            {"error": "invalid_token", "kind": refusal.kind, "reason": str(refusal)},
            {"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from refusal


Claims = Annotated[dict[str, Any], Depends(verified_claims)]


def create_app(
    endpoint: str,
    tenant: str,
    *,
    audience: str | Iterable[str] | None = None,
    issuer: str | Iterable[str] | None = None,
    **settings: Any,
) -> FastAPI:
    """The application; ``settings`` go to keyrelay.AsyncVerifier (TLS, access token...)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with keyrelay.AsyncVerifier(endpoint, tenant, **settings) as verifier:
            app.state.verifier = verifier
            yield

    app = FastAPI(lifespan=lifespan)
    app.state.expected = {"audience": audience, "issuer": issuer}

    @app.get("/me")
    async def me(claims: Claims) -> dict[str, Any]:
        return {"sub": claims.get("sub"), "claims": claims}

    @app.get("/keyrelay/status")
    async def status(request: Request) -> dict[str, Any]:
        current = request.app.state.verifier.status()
        return {
            "state": current.state,
            "providers": {p.provider: p.version for p in current.providers},
        }

    return app


def app_from_env() -> FastAPI:
    """The application configured from KEYRELAY_ENDPOINT, _TENANT, _AUDIENCE, _ISSUER."""
    return create_app(
        os.environ.get("KEYRELAY_ENDPOINT", "127.0.0.1:50051"),
        os.environ["KEYRELAY_TENANT"],
        audience=os.environ.get("KEYRELAY_AUDIENCE"),
        issuer=os.environ.get("KEYRELAY_ISSUER"),
        access_token=os.environ.get("KEYRELAY_ACCESS_TOKEN"),
    )
