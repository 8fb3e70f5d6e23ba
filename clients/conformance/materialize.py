"""Turns the conformance cases into concrete vectors: key sets of public keys, and tokens
signed now with the test-only keys of fixtures/keys.json (times in the cases are relative to
now, with margins of at least half an hour, so the vectors stay valid for the whole run).

Usage: python materialize.py OUT.json
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path

import jwt
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

HERE = Path(__file__).resolve().parent
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


class Keys:
    """The fixture keys: private ones to sign with, public JWKs to publish."""

    def __init__(self, path: Path):
        self.jwks = json.loads(path.read_text())["keys"]

    def private(self, name: str):
        jwk = json.dumps(self.jwks[name])
        kty = self.jwks[name]["kty"]
        algorithm = {"RSA": RSAAlgorithm, "EC": ECAlgorithm, "OKP": OKPAlgorithm}[kty]
        return algorithm.from_jwk(jwk)

    def public(self, entry: dict) -> dict:
        """The public JWK of `entry` (`key`, and members to add or override)."""
        name = entry["key"]
        jwk = {k: v for k, v in self.jwks[name].items() if k not in PRIVATE_MEMBERS}
        jwk["kid"] = name
        jwk.update({k: v for k, v in entry.items() if k != "key"})
        return jwk

    def public_pem(self, name: str) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return (
            self.private(name)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def claims_of(defaults: dict, overrides: dict, now: int) -> dict:
    claims = dict(defaults)
    claims.update(overrides)
    resolved = {}
    for name, value in claims.items():
        if value is None:
            continue
        if name in ("exp", "nbf", "iat") and isinstance(value, str) and value[:1] in "+-":
            value = now + int(value)
        resolved[name] = value
    return resolved


def signed(keys: Keys, spec: dict, claims: dict) -> str:
    header = {"kid": spec["key"]}
    header.update(spec.get("header", {}))
    header = {k: v for k, v in header.items() if v is not None}
    if "kid" not in header:
        # PyJWT adds no kid of its own; pass an explicit header without one.
        return jwt.encode(claims, keys.private(spec["key"]), spec["alg"], headers=header or None)
    return jwt.encode(claims, keys.private(spec["key"]), spec["alg"], headers=header)


def raw_token(keys: Keys, raw: dict, claims: dict) -> str:
    """Tokens PyJWT will not make: alg none, HMAC with a public key, odd headers."""
    if "literal" in raw:
        return raw["literal"]
    header = b64json(raw["header"])
    if "payload_text" in raw:
        payload = b64(raw["payload_text"].encode())
    else:
        payload = b64json(claims)
    signing_input = f"{header}.{payload}".encode()
    if "signature" in raw:
        return f"{header}.{payload}.{raw['signature']}"
    if "hmac_public_key" in raw:
        secret = keys.public_pem(raw["hmac_public_key"])
        digest = getattr(hashlib, raw["hash"])
        return f"{header}.{payload}.{b64(hmac.new(secret, signing_input, digest).digest())}"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signature = keys.private(raw["sign_with"]).sign(
        signing_input, padding.PKCS1v15(), hashes.SHA256()
    )
    return f"{header}.{payload}.{b64(signature)}"


def tampered(token: str, how: str) -> str:
    header, payload, signature = token.split(".")
    if how == "payload":
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["sub"] = "mallory"
        return f"{header}.{b64json(claims)}.{signature}"
    if how == "signature":
        flipped = "A" if signature[10] != "A" else "B"
        return f"{header}.{payload}.{signature[:10]}{flipped}{signature[11:]}"
    if how == "signature_garbage":
        return f"{header}.{payload}.!!not*base64!!"
    raise ValueError(f"unknown tamper {how}")


def materialize(cases: dict, keys: Keys, now: int) -> dict:
    defaults = cases["defaults"]
    vectors = []
    for case in cases["cases"]:
        spec = case.get("sign") or {}
        claims = claims_of(defaults["claims"], spec.get("claims", {}), now)
        if "raw" in case:
            token = raw_token(keys, case["raw"], claims)
        else:
            token = signed(keys, spec, claims)
        if "tamper" in case:
            token = tampered(token, case["tamper"])
        expect = dict(defaults["expect"])
        expect.update(case.get("expect", {}))
        vector = {
            "name": case["name"],
            "description": case["description"],
            "jwks": {"keys": [keys.public(entry) for entry in case["jwks"]]},
            "token": token,
            "expect": expect,
            "verdict": case["verdict"],
        }
        if case["verdict"] == "accept":
            vector["claims"] = claims
        vectors.append(vector)
    return {"materialized_at": now, "vectors": vectors}


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    cases = json.loads((HERE / "cases.json").read_text())
    keys = Keys(HERE / "fixtures" / "keys.json")
    out = materialize(cases, keys, int(time.time()))
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
    print(f"materialize: {len(out['vectors'])} vectors in {sys.argv[1]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
