"""The thread-based verifier, for WSGI applications (Flask, Django) and scripts."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import timedelta
from types import TracebackType
from typing import Any

import grpc

from ._base import BaseVerifier, describe
from ._proto.keyrelay.v1 import key_service_pb2_grpc as pb_grpc
from ._state import Backoff
from ._verify import DEFAULT_LEEWAY, Claims, Expectations, Key, check, checked_header
from .errors import NotSyncedError, UnknownKidError

__all__ = ["Verifier"]

log = logging.getLogger("keyrelay")


class Verifier(BaseVerifier):
    """Verifies JWTs with the keys keyrelay pushes, from any thread.

    It opens one WatchKeys stream for ``tenant`` (or for the ``providers`` named) in a
    background thread and holds the key sets in memory; rotations arrive as they happen.
    The stream reconnects with exponential backoff and full jitter (``first_retry_delay``
    doubling up to ``max_retry_delay`` seconds) and resumes with the versions held, so
    nothing is sent twice; while it is down, verification goes on with the keys held.

    The constructor waits up to ``first_sync_timeout`` seconds for the first complete view
    and raises :class:`~keyrelay.NotSyncedError` if it does not come (None: do not wait).

    ``endpoint``: ``host:port``, ``http://host:port``, or ``https://host:port`` for a TLS
    listener. ``ca_certificate`` (the CA bundle to trust; default: the system's roots),
    ``client_certificate`` and ``client_key`` (for a server requiring client certificates)
    are PEM, as bytes, PEM text or a file path; giving any of them turns TLS on.
    ``server_name`` overrides the name checked in the server's certificate.
    ``access_token``: a verifier (or admin) token for tenants that require one, sent as
    ``authorization: Bearer``.

    Use it as a context manager, or call :meth:`close`.
    """

    def _open(self) -> None:
        self._closed = threading.Event()
        self._synced = threading.Event()
        self._call: Any = None
        self._call_lock = threading.Lock()
        self._slots: dict[tuple[str, str], threading.Lock] = {}
        self._slots_lock = threading.Lock()
        self._channel: Any = self._connection.channel()
        self._stub: Any = pb_grpc.KeyServiceStub(self._channel)
        self._thread = threading.Thread(target=self._follow, name="keyrelay-watch", daemon=True)
        self._thread.start()
        timeout = self._first_sync_timeout
        if timeout is not None and not self._synced.wait(timeout):
            message = self._not_synced_message()
            self.close()
            raise NotSyncedError(message)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Waits for the first complete view of the key sets; False if it did not come."""
        return self._synced.wait(timeout)

    def verify(
        self,
        token: str | bytes,
        *,
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float | timedelta = DEFAULT_LEEWAY,
        provider: str | None = None,
    ) -> Claims:
        """Verifies ``token`` and returns its claims, or raises a
        :class:`~keyrelay.VerifyError` subclass saying why it is refused.

        ``audience`` / ``issuer``: one value or several; when given, ``aud`` must contain one
        and ``iss`` equal one exactly. ``leeway``: seconds allowed on ``exp`` and ``nbf``.
        ``provider``: only this provider's keys may verify the token. A kid no held key has
        is refused with :class:`~keyrelay.RevokedError` when a held key set lists it as
        revoked by a keyrelay administrator; any other is asked for once (one Resolve shared
        by concurrent callers, at most once a second per provider and kid).
        """
        expected = Expectations.of(issuer, audience, leeway)
        header = checked_header(token)
        key = self._key_for(header.kid, provider, header.claims.get("iss"))
        return check(token, header, key, expected)

    def _key_for(self, kid: str, provider: str | None, iss: object) -> Key:
        key = self._state.find(kid, provider, iss)
        if key is not None:
            return key
        self._refuse_revoked(kid, provider)
        for name in self._state.providers_to_ask(provider):
            self._resolve_kid(name, kid)
            key = self._state.find(kid, provider, iss)
            if key is not None:
                return key
        scope = f"{self.tenant}/{provider}" if provider else f"tenant {self.tenant}"
        raise UnknownKidError(f"no key with kid {kid!r} for {scope}")

    def _resolve_kid(self, provider: str, kid: str) -> None:
        """One Resolve for ``kid`` of ``provider``, shared by every concurrent caller."""
        with self._slots_lock:
            if len(self._slots) > 10_000:
                self._slots = {k: s for k, s in self._slots.items() if s.locked()}
            slot = self._slots.setdefault((provider, kid), threading.Lock())
        with slot:
            if self._closed.is_set() or not self._state.may_ask(provider, kid):
                return
            request = self._state.resolve_request(provider, kid)
            try:
                response = self._stub.Resolve(
                    request, metadata=self._connection.metadata, timeout=self._resolve_timeout
                )
            except grpc.RpcError as err:
                log.debug("keyrelay: kid %r of %s not resolved: %s", kid, provider, describe(err))
                return
            except ValueError:  # the channel was closed meanwhile
                return
            self._state.on_resolved(response)

    def _follow(self) -> None:
        """Keeps a stream open until the verifier is closed."""
        backoff = Backoff(self._first_retry, self._max_retry)
        while not self._closed.is_set():
            error: str | None = None
            try:
                self._state.stream_opened()
                call = self._stub.WatchKeys(
                    self._state.request(), metadata=self._connection.metadata
                )
                with self._call_lock:
                    self._call = call
                if self._closed.is_set():
                    call.cancel()
                for event in call:
                    if self._state.on_event(event):
                        self._synced.set()
                error = "keyrelay ended the key stream"
            except grpc.RpcError as err:
                error = describe(err)
            except ValueError as err:  # the channel was closed
                error = describe(err)
            except Exception as err:  # never let the thread die: log and reconnect
                log.exception("keyrelay: unexpected error in the key stream")
                error = describe(err)
            finally:
                with self._call_lock:
                    self._call = None
            closing = self._closed.is_set()
            if self._state.stream_lost(error, closing):
                backoff.reset()
            if closing:
                break
            delay = backoff.next_delay()
            log.warning("keyrelay: key stream lost (%s); reconnecting in %.2f s", error, delay)
            self._closed.wait(delay)

    def close(self) -> None:
        """Closes the stream and the channel. Keys held stay usable for ``verify``."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()
        self._channel.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._state.closed()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
