"""Checking one token against one key, by the rules every keyrelay SDK follows
(clients/conformance/README.md), in their order:

1. the token's shape (three base64url parts, a JSON object header with a string ``alg`` that
   is not ``none``, a string ``kid`` if any, no ``crit``, a JSON object payload);
2. the key, found by ``kid`` (``no_kid`` without one, even when a single key is held);
3. the algorithm, which the key must permit;
4. the signature, then 5. ``exp`` (required) and ``nbf``, with leeway, 6. the issuer and
   7. the audience when expected: all three with PyJWT.

:class:`keyrelay.Verifier`, :class:`keyrelay.AsyncVerifier` and :func:`verify_with_key_set`
share this code.
"""

from __future__ import annotations

import binascii
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import jwt

from . import _algorithms
from .errors import (
    AlgorithmNotPermittedError,
    AudienceError,
    ClaimsError,
    ExpiredError,
    IssuerError,
    MalformedError,
    NoKidError,
    NotYetValidError,
    SignatureError,
    UnknownKidError,
    VerifyError,
)

DEFAULT_LEEWAY = 60.0
_BASE64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _base64url_to_base64() -> bytes:
    """A translation of base64url to base64 for binascii's strict mode: ``-`` and ``_``
    become ``+`` and ``/``, while ``+``, ``/`` and ``=`` (not base64url, or padding) become
    a byte strict mode refuses, as it refuses every other byte outside the alphabet."""
    table = bytearray(range(256))
    for byte in b"+/=":
        table[byte] = ord("!")
    table[ord("-")], table[ord("_")] = ord("+"), ord("/")
    return bytes(table)


_BASE64URL_TO_BASE64 = _base64url_to_base64()
# What json.loads decodes with when given no options, and the whitespace it allows after.
_JSON = json.JSONDecoder()
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")

Claims = dict[str, Any]


@dataclass(frozen=True)
class Expectations:
    """What a token must satisfy beyond its signature: the issuers and audiences accepted
    (none: not checked) and the clock skew allowed on ``exp`` and ``nbf``, in seconds."""

    issuers: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    leeway: float = DEFAULT_LEEWAY

    @classmethod
    def of(
        cls,
        issuer: str | Iterable[str] | None = None,
        audience: str | Iterable[str] | None = None,
        leeway: float | timedelta = DEFAULT_LEEWAY,
    ) -> Expectations:
        """Expectations from one value or several for each of issuer and audience."""
        # The same arguments give equal (frozen) expectations: those of immutable types are
        # made once, as verify passes the same ones on every call.
        memo = (
            (cls, issuer, audience, leeway)
            if type(issuer) in _IMMUTABLE
            and type(audience) in _IMMUTABLE
            and type(leeway) in _IMMUTABLE
            else None
        )
        if memo is not None:
            made = _MADE.get(memo)
            if made is not None:
                return made
        if isinstance(leeway, timedelta):
            leeway = leeway.total_seconds()
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        made = cls(_strings(issuer, "issuer"), _strings(audience, "audience"), float(leeway))
        if memo is not None:
            if len(_MADE) >= 256:
                _MADE.clear()
            _MADE[memo] = made
        return made


# Argument types Expectations.of keeps what it made for (tuples of strings, or it raises).
_IMMUTABLE = frozenset({str, tuple, type(None), int, float, timedelta})
_MADE: dict[tuple[Any, ...], Expectations] = {}


def _strings(value: str | Iterable[str] | None, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    values = tuple(value)
    if not all(isinstance(item, str) for item in values):
        raise TypeError(f"{what} must be a string or an iterable of strings")
    return values


class Header(NamedTuple):
    """What verification needs of a well-shaped token: its header's ``alg`` and ``kid``,
    and its payload as decoded (``payload``) and parsed (``claims``) by rule 1."""

    alg: str
    kid: str
    payload: bytes
    claims: dict[str, Any]


def _check_base64url(part: str, what: str) -> None:
    """Rule 1's base64url: the url-safe alphabet without padding, and a length that decodes
    (not 1 modulo 4). Such a part always decodes."""
    if (
        not part.isascii()
        or len(part) % 4 == 1
        or part.encode("ascii").translate(None, _BASE64URL_ALPHABET)
    ):
        raise MalformedError(f"the {what} is not base64url")


def _b64decode(part: str, what: str) -> bytes:
    """A part checked as :func:`_check_base64url` does, decoded as base64.urlsafe_b64decode
    does (trailing bits are ignored), both in one pass of binascii's strict mode."""
    if not part.isascii() or len(part) % 4 == 1:
        raise MalformedError(f"the {what} is not base64url")
    data = part.encode("ascii").translate(_BASE64URL_TO_BASE64) + b"=" * (-len(part) % 4)
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError) as err:
        raise MalformedError(f"the {what} is not base64url") from err


def _end_of_whitespace(text: str, start: int) -> int:
    match = _JSON_WHITESPACE.match(text, start)
    return start if match is None else match.end()


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        if raw[:1] == b"{" and raw[1:2] != b"\x00":
            # json.loads(raw), step by step, minus its encoding detection (which finds UTF-8
            # for such bytes) and the whitespace before (there is none).
            text = raw.decode("utf-8", "surrogatepass")
            value, end = _JSON.raw_decode(text)
            if end != len(text) and _end_of_whitespace(text, end) != len(text):
                raise ValueError("extra data after the JSON value")
        else:
            value = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise MalformedError(f"the {what} is not a JSON object") from err
    if not isinstance(value, dict):
        raise MalformedError(f"the {what} is not a JSON object")
    return value


def checked_header(token: str | bytes) -> Header:
    """Checks the token's shape (rule 1) and that it names a kid (rule 2)."""
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError as err:
            raise MalformedError("a JWT is ASCII text") from err
    if not isinstance(token, str):
        raise MalformedError("a JWT is a string")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedError("a JWT has three dot-separated parts")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    payload_raw = _b64decode(parts[1], "payload")
    # A base64url part always decodes: the signature is checked, and decoded by PyJWT.
    _check_base64url(parts[2], "signature")
    if "crit" in header:
        raise MalformedError("the header has crit extensions, which keyrelay does not support")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise MalformedError("the header has no string alg")
    if alg.lower() == "none":
        raise MalformedError("alg none is never accepted")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise MalformedError("the header's kid is not a string")
    claims = _json_object(payload_raw, "payload")
    if kid is None:
        raise NoKidError("the token header has no kid")
    return Header(alg, kid, payload_raw, claims)


class Key:
    """One public JWK, with the algorithms it permits and its PyJWT form (built once)."""

    __slots__ = ("jwk", "kid", "permitted", "_lock", "_pyjwk")

    def __init__(self, jwk: Mapping[str, Any]) -> None:
        self.jwk: dict[str, Any] = dict(jwk)
        kid = self.jwk.get("kid")
        self.kid: str | None = kid if isinstance(kid, str) else None
        self.permitted = _algorithms.permitted(self.jwk)
        self._lock = threading.Lock()
        self._pyjwk: dict[str, jwt.PyJWK] = {}

    def pyjwk(self, alg: str) -> jwt.PyJWK:
        """This key for PyJWT, for algorithm ``alg`` (one it permits)."""
        key = self._pyjwk.get(alg)
        if key is not None:
            return key
        with self._lock:
            key = self._pyjwk.get(alg)
            if key is None:
                try:
                    key = jwt.PyJWK(self.jwk, algorithm=alg)
                except jwt.PyJWTError as err:
                    raise MalformedError(f"key {self.kid!r} is not usable: {err}") from err
                self._pyjwk[alg] = key
            return key


class KeySet:
    """The keys of one JWKS document, by kid (keys without a kid can verify nothing)."""

    __slots__ = ("by_kid",)

    def __init__(self, document: Mapping[str, Any] | str | bytes) -> None:
        if isinstance(document, str | bytes):
            try:
                document = json.loads(document)
            except ValueError as err:
                raise ValueError("the key set is not JSON") from err
        keys = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(keys, list):
            raise ValueError('a key set is a JSON object with a "keys" array')
        self.by_kid: dict[str, Key] = {}
        for jwk in keys:
            if isinstance(jwk, Mapping):
                key = Key(jwk)
                if key.kid is not None:
                    self.by_kid.setdefault(key.kid, key)

    def find(self, kid: str) -> Key | None:
        """The key with this kid, if the set has one."""
        return self.by_kid.get(kid)

    def __len__(self) -> int:
        return len(self.by_kid)


def _is_number(value: object) -> bool:
    return isinstance(value, _NUMBERS) and not isinstance(value, bool)


# A tuple: isinstance checks one faster than the equivalent union (int | float).
_NUMBERS = (int, float)


class _Parsed(threading.local):
    """The payload rule 1 parsed, as bytes and claims, for the one decode running on this
    thread: ``check`` sets it right before PyJWT decodes, and clears it after."""

    payload: tuple[bytes, dict[str, Any]] | None = None


_parsed = _Parsed()


class _PyJWT(jwt.PyJWT):
    """PyJWT, plus rule 5's type check: ``exp`` and ``nbf`` must be JSON numbers (PyJWT
    would take a numeric string). It runs once the signature has verified, before PyJWT
    validates the claims, so a forged token is still refused for its signature first.

    PyJWT's payload is not parsed again when it is the very bytes rule 1 parsed: their
    claims are used (``json.loads`` of equal bytes gives an equal dict)."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        parsed = _parsed.payload
        _parsed.payload = None
        if parsed is not None and parsed[0] == decoded["payload"]:
            payload = parsed[1]
        else:
            payload = super()._decode_payload(decoded)
        if "exp" not in payload or payload["exp"] is None:
            raise ClaimsError("the required claim exp is missing")
        for claim in ("exp", "nbf"):
            if claim in payload and not _is_number(payload[claim]):
                raise ClaimsError(f"claim {claim} is not a number")
        return payload


def _decoder(expected: Expectations) -> _PyJWT:
    """The decoder with PyJWT's options for ``expected``, set when it was made (so no call
    merges them again)."""
    return _DECODERS[bool(expected.issuers), bool(expected.audiences)]


def _make_options(issuers: bool, audiences: bool) -> jwt.types.Options:
    require = ["exp"]
    if issuers:
        require.append("iss")
    if audiences:
        require.append("aud")
    return {
        "verify_signature": True,
        "verify_exp": True,
        "verify_nbf": True,
        # Rule 5: iat is not checked; nor are sub and jti, which the rules leave alone.
        "verify_iat": False,
        "verify_sub": False,
        "verify_jti": False,
        "verify_iss": issuers,
        "verify_aud": audiences,
        "require": require,
    }


# A decoder for each combination of issuer and audience checks, made once.
_DECODERS = {
    (iss, aud): _PyJWT(options=_make_options(iss, aud))
    for iss in (False, True)
    for aud in (False, True)
}


def _one_or_all(values: tuple[str, ...]) -> str | tuple[str, ...] | None:
    """Issuers or audiences as PyJWT takes them: none, the one (a string, which PyJWT checks
    exactly as a one-element tuple, without the slower check of an iterable), or all."""
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def check(token: str | bytes, header: Header, key: Key, expected: Expectations) -> Claims:
    """Rules 3 to 7 for a token whose shape is checked, with the key its kid names."""
    if header.alg not in key.permitted:
        permits = ", ".join(sorted(key.permitted)) or "nothing"
        raise AlgorithmNotPermittedError(
            f"algorithm {header.alg} is not permitted by key {header.kid!r} (it permits {permits})"
        )
    _parsed.payload = (header.payload, header.claims)
    try:
        return _decoder(expected).decode(
            token,
            key.pyjwk(header.alg),
            algorithms=[header.alg],
            issuer=_one_or_all(expected.issuers),
            audience=_one_or_all(expected.audiences),
            leeway=expected.leeway,
        )
    except VerifyError:
        raise
    except jwt.InvalidSignatureError as err:
        raise SignatureError("invalid signature") from err
    except jwt.ExpiredSignatureError as err:
        raise ExpiredError("token expired") from err
    except jwt.ImmatureSignatureError as err:
        raise NotYetValidError("token not valid yet (nbf)") from err
    except jwt.InvalidIssuerError as err:
        raise IssuerError("issuer is not one of the expected") from err
    except jwt.InvalidAudienceError as err:
        raise AudienceError("audience is not one of the expected") from err
    except jwt.MissingRequiredClaimError as err:
        if err.claim == "iss":
            raise IssuerError("the token has no iss") from err
        if err.claim == "aud":
            raise AudienceError("the token has no aud") from err
        raise ClaimsError(f"missing required claim {err.claim}") from err
    except jwt.InvalidAlgorithmError as err:
        raise AlgorithmNotPermittedError(str(err)) from err
    except (jwt.DecodeError, jwt.PyJWKError, jwt.InvalidKeyError) as err:
        raise MalformedError(str(err)) from err
    except jwt.PyJWTError as err:
        raise ClaimsError(str(err)) from err
    finally:
        _parsed.payload = None


def verify_with_key_set(
    token: str | bytes,
    jwks: Mapping[str, Any] | str | bytes,
    *,
    issuers: str | Iterable[str] | None = None,
    audiences: str | Iterable[str] | None = None,
    leeway: float | timedelta = DEFAULT_LEEWAY,
) -> Claims:
    """Verifies ``token`` with the keys of the JWKS document ``jwks`` alone (a dict, or its
    JSON text), by the same rules as :meth:`keyrelay.Verifier.verify`, and returns its
    claims. A kid the set lacks is :class:`~keyrelay.UnknownKidError`; every refusal is a
    :class:`~keyrelay.VerifyError`.

    ``issuers`` / ``audiences``: one value or several; when given, ``iss`` must equal one
    of them and ``aud`` contain one. ``leeway``: seconds allowed on ``exp`` and ``nbf``.
    """
    expected = Expectations.of(issuers, audiences, leeway)
    header = checked_header(token)
    try:
        keys = KeySet(jwks)
    except ValueError as err:
        raise MalformedError(f"key set: {err}") from err
    key = keys.find(header.kid)
    if key is None:
        raise UnknownKidError(f"no key with kid {header.kid!r} in the key set")
    return check(token, header, key, expected)
