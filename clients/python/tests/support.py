"""Test support: a real keyrelay server process, a mock identity provider serving a JWKS we
control, signing keys, the AdminService, the server's metrics, and polling."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.server
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import jwt
import keyrelay
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from keyrelay.proto import admin_service_pb2 as admin_pb
from keyrelay.proto import admin_service_pb2_grpc as admin_grpc

T = TypeVar("T")
ISSUER = "https://idp.example.com"
AUDIENCE = "api"
ADMIN_TOKEN = "test-admin-token-0123456789"


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, what: str = "") -> T:
    """Polls ``predicate`` until it returns something truthy, or fails at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Signing keys.


class SigningKey:
    """A private key that signs test tokens, and its public JWK."""

    def __init__(self, kid: str, alg: str = "ES256") -> None:
        self.kid, self.alg = kid, alg
        if alg.startswith(("RS", "PS")):
            self.private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self._jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            self._jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}[alg]
            self.private = ec.generate_private_key(curve)
            self._jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)

    def jwk(self) -> dict[str, Any]:
        """The public JWK, with kid, use and alg."""
        return {**self._jwk, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, sub: str = "alice", **claims: Any) -> str:
        """A token for ``sub``, valid for an hour, issuer and audience as the tests expect."""
        now = int(time.time())
        body = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 3600}
        body.update(claims)
        return jwt.encode(body, self.private, algorithm=self.alg, headers={"kid": self.kid})


# The mock identity provider.


class MockIdP:
    """A real HTTP server on 127.0.0.1 that serves JWKS documents we set, one per path."""

    def __init__(self) -> None:
        self._documents: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.hits: dict[str, int] = {}
        idp = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                with idp._lock:
                    body = idp._documents.get(self.path)
                    idp.hits[self.path] = idp.hits.get(self.path, 0) + 1
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, path: str, keys: Iterable[SigningKey]) -> str:
        """Serves these keys' JWKS at ``path``; returns its URL."""
        return self.serve(path, json.dumps({"keys": [key.jwk() for key in keys]}).encode())

    def serve(self, path: str, document: bytes) -> str:
        """Serves ``document`` at ``path``; returns its URL."""
        with self._lock:
            self._documents[path] = document
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# The keyrelay server.


@dataclass
class Tls:
    """PEM files for a TLS listener (and, with ``client_ca``, mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass
class KeyrelayServer:
    """One keyrelay process (SQLite store in ``data_dir``); ``stop``/``start`` keep its
    ports and data, as a restart would."""

    binary: Path
    data_dir: Path
    tls: Tls | None = None
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        self.starts += 1
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{self.starts}.log"
        args = [
            str(self.binary),
            "serve",
            "--listen",
            self.address,
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            "--data-dir",
            str(self.data_dir),
            "--admin-token",
            ADMIN_TOKEN,
            "--dev-allow-http-loopback",
            "--shutdown-grace",
            "1s",
        ]
        if self.tls is not None:
            args += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
            if self.tls.client_ca is not None:
                args += ["--tls-client-ca", str(self.tls.client_ca)]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KEYRELAY_", "OTEL_")) and k != "DATABASE_URL"
        }
        env["RUST_LOG"] = "info"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        wait_until(self._ready, timeout=30, what=f"keyrelay to be ready ({self.log_path})")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"keyrelay exited at start:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url("/readyz"), timeout=2) as answer:
                if answer.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.grpc_port), timeout=2):
                return True
        except OSError:
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path else ""

    def stop(self) -> None:
        """Terminates the process (SIGTERM) and waits for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def resolve_count(self) -> int:
        """Resolve calls the server has answered, from keyrelay_rpc_requests_total."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as answer:
            text = answer.read().decode()
        total = 0
        for line in text.splitlines():
            if line.startswith("keyrelay_rpc_requests_total{") and (
                'method="keyrelay.v1.KeyService/Resolve"' in line
            ):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total


class Admin:
    """AdminService calls with the server's admin token."""

    def __init__(self, server: KeyrelayServer, credentials: Any = None) -> None:
        if credentials is None:
            self._channel = grpc.insecure_channel(server.address)
        else:
            self._channel = grpc.secure_channel(server.address, credentials)
        self._stub = admin_grpc.AdminServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

    def register(self, tenant: str, provider: str, url: str = "", *, issuer: str = "") -> Any:
        """Registers a provider by JWKS URL (or by ``issuer``) and checks that its first fetch
        (after discovery) succeeded."""
        answer = self._stub.RegisterProvider(
            admin_pb.RegisterProviderRequest(
                tenant=tenant, provider=provider, jwks_url=url, issuer=issuer
            ),
            metadata=self._metadata,
            timeout=20,
        )
        status = answer.provider.status
        assert status.version >= 1, f"first fetch of {url or issuer} failed: {status.last_error}"
        return answer.provider

    def refresh(self, tenant: str, provider: str) -> Any:
        """Fetches the provider's keys now; returns its status."""
        answer = self._stub.RefreshProvider(
            admin_pb.RefreshProviderRequest(tenant=tenant, provider=provider),
            metadata=self._metadata,
            timeout=20,
        )
        assert not answer.provider.status.last_error, answer.provider.status.last_error
        return answer.provider.status

    def revoke(self, tenant: str, provider: str, kid: str, reason: str) -> Any:
        """Revokes ``kid`` of the provider (AdminService.RevokeKey); returns the answer."""
        return self._stub.RevokeKey(
            admin_pb.RevokeKeyRequest(tenant=tenant, provider=provider, kid=kid, reason=reason),
            metadata=self._metadata,
            timeout=10,
        )

    def reinstate(self, tenant: str, provider: str, kid: str) -> Any:
        """Serves a revoked ``kid`` again (AdminService.ReinstateKey); returns the answer."""
        return self._stub.ReinstateKey(
            admin_pb.ReinstateKeyRequest(tenant=tenant, provider=provider, kid=kid),
            metadata=self._metadata,
            timeout=10,
        )

    def unregister(self, tenant: str, provider: str) -> None:
        self._stub.UnregisterProvider(
            admin_pb.UnregisterProviderRequest(tenant=tenant, provider=provider),
            metadata=self._metadata,
            timeout=10,
        )

    def require_verifier_token(self, tenant: str) -> None:
        self._stub.SetTenantAccess(
            admin_pb.SetTenantAccessRequest(tenant=tenant, verifier_token_required=True),
            metadata=self._metadata,
            timeout=10,
        )

    def verifier_token(self, tenant: str) -> str:
        answer = self._stub.CreateToken(
            admin_pb.CreateTokenRequest(
                role=admin_pb.TOKEN_ROLE_VERIFIER, tenant=tenant, description="python sdk test"
            ),
            metadata=self._metadata,
            timeout=10,
        )
        return str(answer.secret)

    def close(self) -> None:
        self._channel.close()


_tenants = iter(range(1, 1_000_000))


def new_tenant() -> str:
    """A tenant name no other test uses."""
    return f"t{next(_tenants)}-{os.getpid()}"


# One interface over Verifier and AsyncVerifier, so that each scenario runs on both.


class Handle:
    """A started verifier of either kind, driven from the test's thread."""

    kind = ""
    verifier: Any

    def verify(self, token: str, **expected: Any) -> dict[str, Any]:
        raise NotImplementedError

    def verify_concurrently(self, token: str, count: int, **expected: Any) -> list[Any]:
        """``count`` verify calls at once; each result is claims or the exception raised."""
        raise NotImplementedError

    def status(self) -> keyrelay.Status:
        status: keyrelay.Status = self.verifier.status()
        return status

    def close(self) -> None:
        raise NotImplementedError


class SyncHandle(Handle):
    kind = "sync"

    def __init__(self, address: str, tenant: str, **settings: Any) -> None:
        self.verifier = keyrelay.Verifier(address, tenant, **settings)

    def verify(self, token: str, **expected: Any) -> dict[str, Any]:
        claims: dict[str, Any] = self.verifier.verify(token, **expected)
        return claims

    def verify_concurrently(self, token: str, count: int, **expected: Any) -> list[Any]:
        start = threading.Barrier(count)

        def one() -> Any:
            start.wait()
            try:
                return self.verifier.verify(token, **expected)
            except keyrelay.VerifyError as err:
                return err

        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: one(), range(count)))

    def close(self) -> None:
        self.verifier.close()


class AsyncHandle(Handle):
    """An AsyncVerifier on an event loop of its own thread (as a server's loop would be)."""

    kind = "async"

    def __init__(self, address: str, tenant: str, **settings: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.verifier = self.run(keyrelay.AsyncVerifier.connect(address, tenant, **settings))
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def verify(self, token: str, **expected: Any) -> dict[str, Any]:
        claims: dict[str, Any] = self.run(self.verifier.verify(token, **expected))
        return claims

    def verify_concurrently(self, token: str, count: int, **expected: Any) -> list[Any]:
        async def all_at_once() -> list[Any]:
            calls = [self.verifier.verify(token, **expected) for _ in range(count)]
            return list(await asyncio.gather(*calls, return_exceptions=True))

        return self.run(all_at_once())

    def close(self) -> None:
        self.run(self.verifier.close())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


HANDLES: dict[str, type[Handle]] = {"sync": SyncHandle, "async": AsyncHandle}


def stderr_tail(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)[-3000:]
