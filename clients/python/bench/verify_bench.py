"""verify() of the Python SDK against bare PyJWT on the same tokens, in one run (a bench, not a
test; scripts/bench_sdks.sh runs it with the other SDKs' benches).

Usage: python verify_bench.py KEYRELAY_BIN FIXTURE.json RESULTS.json [--rounds R] [--seconds S]
       [--clock wall|cpu]

The bench starts KEYRELAY_BIN on 127.0.0.1 (embedded store in a temporary directory), serves
the fixture's JWKS documents from a local IdP, registers them, and connects a ``Verifier``
and an ``AsyncVerifier``, which then hold the keys keyrelay pushed. For each algorithm it
times, in R rounds of S seconds each, alternating the order from one round to the next:

- ``Verifier.verify`` and ``AsyncVerifier.verify`` on the held keys;
- ``verify_with_key_set`` on the JWKS document (which it parses on every call);
- bare PyJWT: ``jwt.decode(token, key=PyJWK(jwk).key, algorithms=[alg], audience=...,
  issuer=..., leeway=60)`` with the key built once.

Each verification runs after the previous one, on one thread. The ratio of a round is the
SDK's rate over PyJWT's in that round; the results are the medians over the rounds. Rates
are per second of wall-clock time; ``--clock cpu`` counts this thread's CPU time instead,
which other processes on a busy machine disturb less. Then
the memory: tracemalloc's traced bytes added by a ``Verifier`` holding N key sets, less
those of one holding a single set, over N - 1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jwt
import keyrelay

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import Admin, KeyrelayServer, MockIdP  # noqa: E402

Batch = Callable[[int], object]
"""Runs n verifications."""


CLOCK = time.perf_counter


def calibrate(run: Batch, seconds: float) -> int:
    """How many verifications take about ``seconds``."""
    n = 16
    while True:
        started = CLOCK()
        run(n)
        elapsed = CLOCK() - started
        if elapsed >= 0.05:
            return max(16, int(n * seconds / elapsed))
        n *= 2


def compare(variants: dict[str, Batch], rounds: int, seconds: float) -> dict[str, list[float]]:
    """Verifications per second of each variant, per round, the order alternating."""
    n = calibrate(variants["bare"], seconds)
    for run in variants.values():
        run(max(1, n // 10))
    rates: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            started = CLOCK()
            variants[name](n)
            rates[name].append(n / (CLOCK() - started))
    return rates


def rows_of(
    rates: dict[str, list[float]], alg: str, library: str, note: str = ""
) -> list[dict[str, Any]]:
    bare = rates["bare"]
    rows = []
    for name, values in rates.items():
        if name == "bare":
            continue
        ratios = [sdk / base for sdk, base in zip(values, bare, strict=True)]
        rows.append(
            {
                "sdk": "Python",
                "path": name + note,
                "alg": alg,
                "bare": library,
                "sdk_ops": statistics.median(values),
                "bare_ops": statistics.median(bare),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "rounds": len(values),
            }
        )
    return rows


def register_all(admin: Admin, sets: list[tuple[str, str, str]]) -> None:
    """Registers (tenant, provider, JWKS URL) at once, eight at a time."""
    with ThreadPoolExecutor(8) as pool:
        for _ in pool.map(lambda s: admin.register(*s), sets):
            pass


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keyrelay", type=Path)
    parser.add_argument("fixture", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--seconds", type=float, default=0.1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.thread_time
    fixture = json.loads(args.fixture.read_text())
    issuer, audience = fixture["issuer"], fixture["audience"]
    bench, memory = fixture["bench"], fixture["memory"]
    library = f"PyJWT {version('PyJWT')}"

    idp = MockIdP()
    bench_url = idp.serve("/bench.json", json.dumps(bench["jwks"]).encode())
    memory_urls = [
        idp.serve(f"/{provider}.json", json.dumps(jwks).encode())
        for provider, jwks in zip(memory["providers"], memory["jwks"], strict=True)
    ]
    workdir = tempfile.TemporaryDirectory(prefix="keyrelay-py-bench-")
    server = KeyrelayServer(binary=args.keyrelay, data_dir=Path(workdir.name) / "data")
    server.start()
    admin = Admin(server)
    loop = asyncio.new_event_loop()
    rows: list[dict[str, Any]] = []
    try:
        started = time.monotonic()
        register_all(admin, [(bench["tenant"], bench["provider"], bench_url)])
        providers = list(zip(memory["providers"], memory_urls, strict=True))
        register_all(
            admin,
            [(memory["tenant"], provider, url) for provider, url in providers]
            + [(memory["single_tenant"], *providers[0])],
        )
        elapsed = time.monotonic() - started
        print(f"python: {len(providers) + 2} providers registered in {elapsed:.1f} s")

        verifier = keyrelay.Verifier(server.address, bench["tenant"])
        averifier = loop.run_until_complete(
            keyrelay.AsyncVerifier.connect(server.address, bench["tenant"])
        )
        by_kid = {key["kid"]: key for key in bench["jwks"]["keys"]}
        for alg, token in fixture["tokens"].items():
            kid = jwt.get_unverified_header(token)["kid"]
            bare_key = jwt.PyJWK(by_kid[kid]).key
            jwks = bench["jwks"]
            rows += rows_of(
                compare(
                    variants(verifier, averifier, loop, token, jwks, bare_key, alg, fixture),
                    args.rounds,
                    args.seconds,
                ),
                alg,
                library,
            )

        n = len(memory["providers"])
        tracemalloc.start()
        before = traced()
        single = keyrelay.Verifier(server.address, memory["single_tenant"])
        one = traced() - before
        before = traced()
        many = keyrelay.Verifier(server.address, memory["tenant"])
        assert len(many.status().providers) == n, "not every key set arrived"
        held = traced() - before
        tracemalloc.stop()
        per_set = (held - one) / (n - 1)
        rows.append(
            {
                "sdk": "Python",
                "kind": "memory",
                "sets": n,
                "keys_per_set": 2,
                "bytes_per_set": per_set,
                "verifier_one_set": one,
                "verifier_all_sets": held,
                "method": "tracemalloc: (traced bytes with N sets - with 1 set) / (N - 1)",
            }
        )
        memory_kid = jwt.get_unverified_header(memory["token"])["kid"]
        memory_jwk = next(
            key
            for key in memory["jwks"][memory["providers"].index(memory["token_provider"])]["keys"]
            if key["kid"] == memory_kid
        )
        rates = compare(
            {
                "Verifier.verify": lambda count: sdk_loop(
                    many, memory["token"], issuer, audience, count
                ),
                "bare": bare_batch(
                    memory["token"], jwt.PyJWK(memory_jwk).key, memory["token_alg"], fixture
                ),
            },
            args.rounds,
            args.seconds,
        )
        rows += rows_of(rates, memory["token_alg"], library, note=f", {n} sets held")
        single.close()
        many.close()
        verifier.close()
        loop.run_until_complete(averifier.close())
    finally:
        loop.close()
        admin.close()
        server.stop()
        idp.close()
        workdir.cleanup()

    meta = {
        "sdk": "Python",
        "kind": "meta",
        "runtime": f"CPython {platform.python_version()}",
        "library": library,
        "cryptography": version("cryptography"),
        "keyrelay": str(args.keyrelay),
        "clock": args.clock,
        "rounds": args.rounds,
        "seconds_per_batch": args.seconds,
    }
    args.out.write_text(json.dumps([meta, *rows], indent=1))
    for row in rows:
        if row.get("kind") == "memory":
            print(f"python: {row['bytes_per_set']:,.0f} B per key set held ({row['sets']} sets)")
        else:
            print(
                f"python: {row['path']:<34} {row['alg']:<6} {row['sdk_ops']:>8,.0f}/s "
                f"bare {row['bare_ops']:>8,.0f}/s ratio {row['ratio']:.3f} "
                f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
            )


def sdk_loop(verifier: keyrelay.Verifier, token: str, issuer: str, audience: str, n: int) -> None:
    for _ in range(n):
        verifier.verify(token, audience=audience, issuer=issuer)


def bare_batch(token: str, key: Any, alg: str, fixture: dict[str, Any]) -> Batch:
    issuer, audience = fixture["issuer"], fixture["audience"]

    def run(n: int) -> None:
        for _ in range(n):
            jwt.decode(
                token, key=key, algorithms=[alg], audience=audience, issuer=issuer, leeway=60
            )

    return run


def variants(
    verifier: keyrelay.Verifier,
    averifier: keyrelay.AsyncVerifier,
    loop: asyncio.AbstractEventLoop,
    token: str,
    jwks: dict[str, Any],
    bare_key: Any,
    alg: str,
    fixture: dict[str, Any],
) -> dict[str, Batch]:
    """The SDK's paths and bare PyJWT, for one token; checks that they agree first."""
    issuer, audience = fixture["issuer"], fixture["audience"]

    async def averify(n: int) -> None:
        for _ in range(n):
            await averifier.verify(token, audience=audience, issuer=issuer)

    def with_key_set(n: int) -> None:
        for _ in range(n):
            keyrelay.verify_with_key_set(token, jwks, issuers=issuer, audiences=audience)

    bare = bare_batch(token, bare_key, alg, fixture)
    claims = jwt.decode(token, key=bare_key, algorithms=[alg], audience=audience, issuer=issuer)
    assert verifier.verify(token, audience=audience, issuer=issuer) == claims
    assert (
        loop.run_until_complete(averifier.verify(token, audience=audience, issuer=issuer)) == claims
    )
    assert keyrelay.verify_with_key_set(token, jwks, issuers=issuer, audiences=audience) == claims
    return {
        "Verifier.verify": lambda n: sdk_loop(verifier, token, issuer, audience, n),
        "AsyncVerifier.verify": lambda n: loop.run_until_complete(averify(n)),
        "verify_with_key_set": with_key_set,
        "bare": bare,
    }


if __name__ == "__main__":
    main()
