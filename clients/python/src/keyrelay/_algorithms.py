"""Which signature algorithms a key permits (rule 3 of clients/conformance/README.md).

The algorithm always comes from the key, never from the token alone. A key not meant for
signatures (``use`` other than ``sig``, ``key_ops`` without ``verify``) permits nothing. A
key naming ``alg`` permits that algorithm when it is one the SDKs verify and it fits the
key's type and curve (``Ed25519`` counts as EdDSA). A key without ``alg`` permits what its
type and curve imply. HMAC is never permitted, and neither is ES512 (no keyrelay SDK
verifies it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
VERIFIED = RSA_ALGORITHMS | {"ES256", "ES384", "EdDSA"}
# Fully-specified names (RFC 9864) of algorithms the SDKs verify.
ALIASES = {"Ed25519": "EdDSA"}


def permitted(jwk: Mapping[str, Any]) -> frozenset[str]:
    """The token ``alg`` values a token verified with ``jwk`` may have."""
    use = jwk.get("use")
    if use is not None and use != "sig":
        return frozenset()
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return frozenset()
    of_type = _of_key_type(jwk)
    named = jwk.get("alg")
    if named is None:
        return of_type
    if not isinstance(named, str):
        return frozenset()
    alg = ALIASES.get(named, named)
    if alg in VERIFIED and alg in of_type:
        return frozenset({alg})
    return frozenset()


def _of_key_type(jwk: Mapping[str, Any]) -> frozenset[str]:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        return RSA_ALGORITHMS
    if kty == "EC" and crv == "P-256":
        return frozenset({"ES256"})
    if kty == "EC" and crv == "P-384":
        return frozenset({"ES384"})
    if kty == "OKP" and crv == "Ed25519":
        return frozenset({"EdDSA"})
    return frozenset()
