"""The asyncio verifier, on ``grpc.aio``, for ASGI applications (FastAPI, Starlette)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import timedelta
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from ._base import BaseVerifier, describe
from ._proto.keyrelay.v1 import key_service_pb2_grpc as pb_grpc
from ._state import Backoff
from ._verify import DEFAULT_LEEWAY, Claims, Expectations, Key, check, checked_header
from .errors import ConnectError, NotSyncedError, UnknownKidError

__all__ = ["AsyncVerifier"]

log = logging.getLogger("keyrelay")


class AsyncVerifier(BaseVerifier):
    """Verifies JWTs with the keys keyrelay pushes, on an asyncio event loop.

    It behaves as :class:`~keyrelay.Verifier` and takes the same arguments, but its stream
    runs as a task of the loop, and its I/O starts only with :meth:`start` (or
    ``async with``, or :meth:`connect`), inside the running loop::

        async with AsyncVerifier("127.0.0.1:50051", "acme") as verifier:
            claims = await verifier.verify(token, audience="api")

    :meth:`start` waits up to ``first_sync_timeout`` seconds for the first complete view
    and raises :class:`~keyrelay.NotSyncedError` if it does not come (None: do not wait).
    """

    def _open(self) -> None:
        self._channel: Any = None
        self._stub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._synced: asyncio.Event | None = None
        self._closed = False
        self._slots: dict[tuple[str, str], asyncio.Lock] = {}

    @classmethod
    async def connect(
        cls,
        endpoint: str,
        tenant: str,
        **settings: Any,
    ) -> AsyncVerifier:
        """Creates a verifier (same arguments as the constructor) and starts it."""
        verifier = cls(endpoint, tenant, **settings)
        await verifier.start()
        return verifier

    async def start(self) -> None:
        """Opens the stream, then waits for the first complete view of the key sets."""
        if self._closed:
            raise ConnectError("this verifier is closed")
        if self._task is None:
            self._synced = asyncio.Event()
            self._channel = self._connection.aio_channel()
            self._stub = pb_grpc.KeyServiceStub(self._channel)
            self._task = asyncio.get_running_loop().create_task(
                self._follow(), name="keyrelay-watch"
            )
        if self._first_sync_timeout is not None and not await self.wait_synced(
            self._first_sync_timeout
        ):
            message = self._not_synced_message()
            await self.close()
            raise NotSyncedError(message)

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """Waits for the first complete view of the key sets; False if it did not come."""
        if self._synced is None:
            raise ConnectError("start() the verifier first")
        try:
            await asyncio.wait_for(self._synced.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def verify(
        self,
        token: str | bytes,
        *,
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float | timedelta = DEFAULT_LEEWAY,
        provider: str | None = None,
    ) -> Claims:
        """Verifies ``token`` and returns its claims, or raises a
        :class:`~keyrelay.VerifyError` subclass; as :meth:`keyrelay.Verifier.verify`."""
        if self._task is None:
            raise ConnectError("start() the verifier (or use async with) before verify()")
        expected = Expectations.of(issuer, audience, leeway)
        header = checked_header(token)
        key = await self._key_for(header.kid, provider, header.claims.get("iss"))
        return check(token, header, key, expected)

    async def _key_for(self, kid: str, provider: str | None, iss: object) -> Key:
        key = self._state.find(kid, provider, iss)
        if key is not None:
            return key
        self._refuse_revoked(kid, provider)
        for name in self._state.providers_to_ask(provider):
            await self._resolve_kid(name, kid)
            key = self._state.find(kid, provider, iss)
            if key is not None:
                return key
        scope = f"{self.tenant}/{provider}" if provider else f"tenant {self.tenant}"
        raise UnknownKidError(f"no key with kid {kid!r} for {scope}")

    async def _resolve_kid(self, provider: str, kid: str) -> None:
        """One Resolve for ``kid`` of ``provider``, shared by every concurrent caller."""
        if len(self._slots) > 10_000:
            self._slots = {k: s for k, s in self._slots.items() if s.locked()}
        slot = self._slots.setdefault((provider, kid), asyncio.Lock())
        async with slot:
            if self._closed or self._stub is None or not self._state.may_ask(provider, kid):
                return
            request = self._state.resolve_request(provider, kid)
            try:
                response = await self._stub.Resolve(
                    request, metadata=self._connection.metadata, timeout=self._resolve_timeout
                )
            except grpc.RpcError as err:
                log.debug("keyrelay: kid %r of %s not resolved: %s", kid, provider, describe(err))
                return
            self._state.on_resolved(response)

    async def _follow(self) -> None:
        """Keeps a stream open until the verifier is closed."""
        assert self._synced is not None
        backoff = Backoff(self._first_retry, self._max_retry)
        while not self._closed:
            error: str | None = None
            call: Any = None
            try:
                self._state.stream_opened()
                call = self._stub.WatchKeys(
                    self._state.request(), metadata=self._connection.metadata
                )
                async for event in call:
                    if self._state.on_event(event):
                        self._synced.set()
                error = "keyrelay ended the key stream"
            except asyncio.CancelledError:
                if call is not None:
                    call.cancel()
                self._state.stream_lost(None, closing=True)
                raise
            except grpc.RpcError as err:
                error = describe(err)
            except Exception as err:  # never let the task die: log and reconnect
                log.exception("keyrelay: unexpected error in the key stream")
                error = describe(err)
            if self._state.stream_lost(error, self._closed):
                backoff.reset()
            if self._closed:
                break
            delay = backoff.next_delay()
            log.warning("keyrelay: key stream lost (%s); reconnecting in %.2f s", error, delay)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Closes the stream and the channel. Keys held stay usable for ``verify``."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._channel is not None:
            await self._channel.close()
        self._state.closed()

    async def __aenter__(self) -> AsyncVerifier:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
