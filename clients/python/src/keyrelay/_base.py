"""What the thread-based and the asyncio verifiers have in common: their settings, their
state, and ``status()``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import grpc

from ._connection import Connection, PemSource
from ._state import FIRST_RETRY, MAX_RETRY, RESOLVE_TIMEOUT, State
from .errors import RevokedError
from .status import Status


def describe(err: BaseException) -> str:
    """A gRPC error as ``CODE: details``."""
    if isinstance(err, grpc.RpcError) and callable(getattr(err, "code", None)):
        code = err.code()
        name = getattr(code, "name", str(code))
        return f"{name}: {err.details()}"
    return f"{type(err).__name__}: {err}"


class BaseVerifier:
    """Settings and state shared by :class:`~keyrelay.Verifier` and
    :class:`~keyrelay.AsyncVerifier` (see their docs for the arguments)."""

    def __init__(
        self,
        endpoint: str,
        tenant: str,
        *,
        providers: Iterable[str] = (),
        access_token: str | None = None,
        tls: bool | None = None,
        ca_certificate: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        server_name: str | None = None,
        first_sync_timeout: float | None = 10.0,
        first_retry_delay: float = FIRST_RETRY,
        max_retry_delay: float = MAX_RETRY,
        resolve_timeout: float = RESOLVE_TIMEOUT,
        channel_options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        if isinstance(providers, str):
            providers = (providers,)
        self._state = State(tenant, providers)
        self._connection = Connection.of(
            endpoint,
            tls=tls,
            ca_certificate=ca_certificate,
            client_certificate=client_certificate,
            client_key=client_key,
            server_name=server_name,
            access_token=access_token,
            first_retry=first_retry_delay,
            max_retry=max_retry_delay,
            extra_options=tuple(channel_options),
        )
        self._first_sync_timeout = first_sync_timeout
        self._first_retry = first_retry_delay
        self._max_retry = max_retry_delay
        self._resolve_timeout = resolve_timeout
        self._open()

    def _open(self) -> None:
        """Sets up what the subclass needs to follow the stream (the last step of __init__)."""
        raise NotImplementedError

    @property
    def tenant(self) -> str:
        """The tenant whose tokens this verifier checks."""
        return self._state.tenant

    def status(self) -> Status:
        """Whether the stream is up, and the key sets held with their versions and age."""
        return self._state.status()

    def _refuse_revoked(self, kid: str, provider: str | None) -> None:
        """Rule 2 for a kid no held key has: raises :class:`~keyrelay.RevokedError` when a
        held set of the providers ``provider`` allows (None: any) lists it as revoked, so
        that it is refused without a Resolve. Both verifiers call it before resolving."""
        revoked_by = self._state.revoked_by(kid, provider)
        if revoked_by is not None:
            scope = f"{self.tenant}/{revoked_by}"
            raise RevokedError(
                f"kid {json.dumps(kid, ensure_ascii=False)} of {scope} "
                "was revoked by a keyrelay administrator",
                kid=kid,
                provider=scope,
            )

    def _not_synced_message(self) -> str:
        status = self._state.status()
        why = f" (last error: {status.last_error})" if status.last_error else ""
        return (
            f"no key sets from keyrelay at {self._connection.target} "
            f"within {self._first_sync_timeout} s{why}"
        )
