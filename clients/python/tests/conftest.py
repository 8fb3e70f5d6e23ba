"""Fixtures for the live tests: a real keyrelay server (KEYRELAY_BIN), a mock identity
provider, the AdminService, and verifiers of both kinds."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

from support import (  # noqa: E402
    HANDLES,
    Admin,
    Handle,
    KeyrelayServer,
    MockIdP,
    Tls,
)

DEFAULT_BIN = HERE.parents[2] / "target" / "debug" / "keyrelay"


@pytest.fixture(scope="session")
def keyrelay_bin() -> Path:
    """The keyrelay binary: $KEYRELAY_BIN, or target/debug/keyrelay. Missing fails."""
    binary = Path(os.environ.get("KEYRELAY_BIN") or DEFAULT_BIN)
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"no keyrelay binary at {binary} (set KEYRELAY_BIN)")
    return binary


@pytest.fixture(scope="session")
def idp() -> Iterator[MockIdP]:
    idp = MockIdP()
    yield idp
    idp.close()


@pytest.fixture(scope="session")
def server(
    keyrelay_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KeyrelayServer]:
    """One keyrelay shared by the tests that neither stop it nor need TLS."""
    server = KeyrelayServer(keyrelay_bin, tmp_path_factory.mktemp("shared") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def admin(server: KeyrelayServer) -> Iterator[Admin]:
    admin = Admin(server)
    yield admin
    admin.close()


@pytest.fixture
def make_server(keyrelay_bin: Path, tmp_path: Path) -> Iterator[Callable[..., KeyrelayServer]]:
    """Starts keyrelay servers of the test's own (stopped at the end)."""
    servers: list[KeyrelayServer] = []

    def make(tls: Tls | None = None) -> KeyrelayServer:
        server = KeyrelayServer(keyrelay_bin, tmp_path / f"server{len(servers)}" / "data", tls)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest) -> str:
    """Each scenario runs with keyrelay.Verifier and with keyrelay.AsyncVerifier."""
    return str(request.param)


@pytest.fixture
def connect(flavor: str) -> Iterator[Callable[..., Handle]]:
    """Opens verifiers of the test's flavor (closed at the end)."""
    handles: list[Handle] = []

    def open_verifier(address: str, tenant: str, **settings: Any) -> Handle:
        settings.setdefault("first_sync_timeout", 10.0)
        handle = HANDLES[flavor](address, tenant, **settings)
        handles.append(handle)
        return handle

    yield open_verifier
    for handle in handles:
        handle.close()
