"""The keys and tokens every SDK bench verifies (scripts/bench_sdks.sh), so that the three
SDKs and their JOSE libraries check the very same tokens.

Usage: python fixture.py OUT.json [--providers N] [--cache KEYS.json]

- ``bench``: one provider's JWKS with three keys, RSA 2048 (RS256), P-256 (ES256) and
  Ed25519 (EdDSA), each with ``kid``, ``use`` and ``alg``, and one token per key. The tokens
  carry the claims of a typical access token and are valid for 12 hours from now.
- ``memory``: N key sets (default 1000) of two keys each, RSA 2048 and P-256, for the memory
  measurement, and a token signed by the P-256 key of the middle provider, to verify with
  all N sets held. Generating 1000 RSA keys takes about a minute, so the keys are kept in
  ``--cache`` (test keys only) and reused while it holds enough of them.

Needs PyJWT and cryptography (the Python SDK's environment has both).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.bench.example/oauth2/default"
AUDIENCE = "api://bench"
LIFETIME = 12 * 3600


def _pem(private: Any) -> str:
    return str(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def _key(alg: str, kid: str) -> tuple[dict[str, Any], str]:
    """A new key for ``alg``: its public JWK and its private key in PEM."""
    private: Any
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        public = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        public = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**public, "kid": kid, "use": "sig", "alg": alg}, _pem(private)


def _provider_keys(index: int) -> dict[str, Any]:
    """The two keys of memory provider ``index``: RSA 2048 and P-256."""
    rsa_jwk, _ = _key("RS256", f"p{index:04d}-rs256-{uuid.uuid4().hex[:12]}")
    ec_jwk, ec_pem = _key("ES256", f"p{index:04d}-es256-{uuid.uuid4().hex[:12]}")
    return {"jwks": {"keys": [rsa_jwk, ec_jwk]}, "es256_pem": ec_pem}


def _token(pem: str, alg: str, kid: str, now: int) -> str:
    claims = {
        "iss": ISSUER,
        "sub": "00u1a2b3c4d5e6f7g8h9",
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + LIFETIME,
        "jti": f"AT.{uuid.uuid4().hex}",
        "cid": "0oa1b2c3d4e5f6g7h8i9",
        "uid": "00u1a2b3c4d5e6f7g8h9",
        "scp": ["openid", "profile", "email", "api:read"],
        "email": "alice@example.com",
    }
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid, "typ": "JWT"})  # type: ignore[arg-type]


def _memory_keys(count: int, cache: Path | None) -> list[dict[str, Any]]:
    held: list[dict[str, Any]] = []
    if cache is not None and cache.exists():
        held = json.loads(cache.read_text())
    if len(held) < count:
        started = time.monotonic()
        with ProcessPoolExecutor() as pool:
            held += list(pool.map(_provider_keys, range(len(held), count)))
        print(f"fixture: {count} memory key sets made in {time.monotonic() - started:.0f} s")
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(held))
    return held[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--providers", type=int, default=1000)
    parser.add_argument("--cache", type=Path)
    args = parser.parse_args()
    now = int(time.time())
    bench_keys, tokens = [], {}
    for alg in ("RS256", "ES256", "EdDSA"):
        jwk, pem = _key(alg, f"bench-{alg.lower()}-{uuid.uuid4().hex[:12]}")
        bench_keys.append(jwk)
        tokens[alg] = _token(pem, alg, jwk["kid"], now)
    memory = _memory_keys(args.providers, args.cache)
    middle = len(memory) // 2
    es256 = memory[middle]["jwks"]["keys"][1]
    fixture = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "created": now,
        "bench": {"tenant": "bench", "provider": "idp", "jwks": {"keys": bench_keys}},
        "tokens": tokens,
        "memory": {
            "tenant": "mem",
            "single_tenant": "mem1",
            "providers": [f"p{index:04d}" for index in range(len(memory))],
            "jwks": [entry["jwks"] for entry in memory],
            "token_provider": f"p{middle:04d}",
            "token_alg": "ES256",
            "token": _token(memory[middle]["es256_pem"], "ES256", es256["kid"], now),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1))
    sizes = ", ".join(f"{alg} {len(token)} B" for alg, token in tokens.items())
    print(f"fixture: {args.out} (tokens: {sizes}; {len(memory)} memory key sets)")


if __name__ == "__main__":
    main()
