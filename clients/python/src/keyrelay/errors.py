"""Why a token was refused, and why a verifier could not start.

Every refusal is a :class:`VerifyError`; each kind of refusal has its own subclass, whose
``kind`` is the verdict string of the conformance rules (clients/conformance/README.md).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlgorithmNotPermittedError",
    "AudienceError",
    "ClaimsError",
    "ConnectError",
    "ExpiredError",
    "IssuerError",
    "MalformedError",
    "NoKidError",
    "NotSyncedError",
    "NotYetValidError",
    "RevokedError",
    "SignatureError",
    "UnknownKidError",
    "VerifyError",
]


class VerifyError(Exception):
    """A token was refused. ``kind`` names the refusal (``"expired"``, ``"audience"``, ...)."""

    kind: ClassVar[str] = "invalid"


class MalformedError(VerifyError):
    """Not a JWT, or a header no SDK accepts (``alg`` missing or ``none``, ``crit``, ...)."""

    kind = "malformed"


class NoKidError(VerifyError):
    """The token's header names no ``kid`` (refused even when a single key is held)."""

    kind = "no_kid"


class RevokedError(VerifyError):
    """A keyrelay administrator revoked the token's ``kid`` (AdminService.RevokeKey): no held
    key has it, and a held key set lists it in ``revoked_kids``. Refused without asking
    keyrelay. ``kid`` is the token's kid, ``provider`` the ``tenant/provider`` that lists it."""

    kind = "revoked"

    def __init__(self, message: str, *, kid: str = "", provider: str = "") -> None:
        super().__init__(message)
        self.kid = kid
        self.provider = provider


class UnknownKidError(VerifyError):
    """No held key has the token's ``kid``, even after asking keyrelay."""

    kind = "unknown_kid"


class AlgorithmNotPermittedError(VerifyError):
    """The token's ``alg`` is not one that its key permits."""

    kind = "algorithm_not_permitted"


class SignatureError(VerifyError):
    """The signature does not verify."""

    kind = "signature"


class ExpiredError(VerifyError):
    """``exp`` has passed, beyond the leeway."""

    kind = "expired"


class NotYetValidError(VerifyError):
    """``nbf`` is in the future, beyond the leeway."""

    kind = "not_yet_valid"


class IssuerError(VerifyError):
    """``iss`` is missing or not one of the expected issuers."""

    kind = "issuer"


class AudienceError(VerifyError):
    """``aud`` is missing or names none of the expected audiences."""

    kind = "audience"


class ClaimsError(VerifyError):
    """``exp`` is missing, or ``exp``/``nbf`` is not a number."""

    kind = "claims"


class ConnectError(Exception):
    """A verifier could not be set up (bad endpoint or TLS settings)."""


class NotSyncedError(ConnectError):
    """No complete view of the key sets arrived from keyrelay in time."""
