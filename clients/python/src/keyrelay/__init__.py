"""Verify JWTs with keys from keyrelay.

A :class:`Verifier` (threads, for WSGI) or an :class:`AsyncVerifier` (asyncio, for ASGI)
opens one WatchKeys stream for a tenant, or some of its providers, and holds the key sets in
memory; every rotation arrives as it happens. ``verify`` checks a token against them by the
rules every keyrelay SDK follows (clients/conformance/README.md): the algorithm comes from
the key, never from the token alone (``none`` and HMAC are refused), ``exp`` is required,
``exp``/``nbf`` are checked with a leeway (60 s by default), and ``iss``/``aud`` when
expected. A token whose kid is unknown triggers one Resolve for that kid, shared by
concurrent callers, unless a held key set lists the kid as revoked by a keyrelay
administrator: that token is refused at once (:class:`RevokedError`). The stream
reconnects with backoff and resumes from the versions held; while disconnected,
verification goes on with the keys held, whose age ``status()`` reports.

:func:`verify_with_key_set` applies the same rules to a JWKS document, without a server.
Every refusal is a :class:`VerifyError`, whose ``kind`` names it.
"""

from ._verify import Expectations, verify_with_key_set
from .aio import AsyncVerifier
from .errors import (
    AlgorithmNotPermittedError,
    AudienceError,
    ClaimsError,
    ConnectError,
    ExpiredError,
    IssuerError,
    MalformedError,
    NoKidError,
    NotSyncedError,
    NotYetValidError,
    RevokedError,
    SignatureError,
    UnknownKidError,
    VerifyError,
)
from .status import ProviderStatus, Status
from .sync import Verifier

__version__ = "0.1.0"

__all__ = [
    "AlgorithmNotPermittedError",
    "AsyncVerifier",
    "AudienceError",
    "ClaimsError",
    "ConnectError",
    "Expectations",
    "ExpiredError",
    "IssuerError",
    "MalformedError",
    "NoKidError",
    "NotSyncedError",
    "NotYetValidError",
    "ProviderStatus",
    "RevokedError",
    "SignatureError",
    "Status",
    "UnknownKidError",
    "Verifier",
    "VerifyError",
    "verify_with_key_set",
]
