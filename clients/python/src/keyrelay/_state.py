"""The state both verifiers share: the key sets held by provider, the WatchKeys protocol
(requests with ``known_versions``, events ``key_set`` / ``removed`` / ``synced``), the
connection state reported by ``status()``, the rate limit on Resolve, and backoff."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ._proto.keyrelay.v1 import key_service_pb2 as pb
from ._verify import Key, KeySet
from .errors import IssuerError
from .status import ProviderStatus, Status

log = logging.getLogger("keyrelay")

FIRST_RETRY = 0.1
MAX_RETRY = 10.0
RESOLVE_COOLDOWN = 1.0
"""An unknown kid is asked for at most this often (seconds) per provider and kid."""
RESOLVE_TIMEOUT = 10.0
"""keyrelay waits up to its --unknown-kid-wait (6 s by default) for the refresh."""


def _time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    result: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return result


@dataclass(frozen=True)
class ProviderKeys:
    """One provider's key set as last received."""

    provider: str
    version: int
    keys: KeySet
    state: str
    stale: bool
    fetched_at: datetime | None
    fresh_until: datetime | None
    usable_until: datetime | None
    received_at: datetime
    revoked_kids: tuple[str, ...] = ()
    """Kids a keyrelay administrator revoked (``KeySet.revoked_kids``), never in ``keys``."""
    issuer: str = ""
    """The issuer whose tokens these keys verify (``KeySet.issuer``); empty for a provider
    registered by JWKS URL, whose keys verify a token of any ``iss``."""

    @classmethod
    def from_message(cls, key_set: Any) -> ProviderKeys:
        """Parses a KeySet message; ValueError when its JWKS does not parse."""
        return cls(
            provider=key_set.provider,
            version=key_set.version,
            keys=KeySet(json.loads(key_set.jwks_json)),
            state=pb.ProviderState.Name(key_set.state).removeprefix("PROVIDER_STATE_"),
            stale=key_set.stale,
            fetched_at=_time(key_set, "fetched_at"),
            fresh_until=_time(key_set, "fresh_until"),
            usable_until=_time(key_set, "usable_until"),
            received_at=datetime.now(UTC),
            revoked_kids=tuple(key_set.revoked_kids),
            issuer=key_set.issuer,
        )

    def status(self, now: datetime) -> ProviderStatus:
        """This set as ``status()`` reports it."""
        age = None if self.fetched_at is None else (now - self.fetched_at).total_seconds()
        return ProviderStatus(
            provider=self.provider,
            version=self.version,
            kids=tuple(self.keys.by_kid),
            state=self.state,
            stale=self.stale,
            fetched_at=self.fetched_at,
            fresh_until=self.fresh_until,
            usable_until=self.usable_until,
            received_at=self.received_at,
            age=age,
            revoked_kids=self.revoked_kids,
            issuer=self.issuer,
        )


class Backoff:
    """Exponential backoff with full jitter: each delay is uniform in [0, bound], and the
    bound doubles from ``first`` up to ``maximum``; ``reset`` once a stream synced."""

    def __init__(self, first: float, maximum: float) -> None:
        if first <= 0 or maximum < first:
            raise ValueError("retry delays must be positive, the first no larger than the max")
        self.first, self.maximum, self.bound = first, maximum, first

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        delay = random.uniform(0, self.bound)
        self.bound = min(self.bound * 2, self.maximum)
        return delay

    def reset(self) -> None:
        """Start again from the first delay."""
        self.bound = self.first


class State:
    """Key sets by provider and the stream's state, shared by the stream's thread or task
    and the callers of ``verify`` (guarded by one lock; every update is small)."""

    def __init__(self, tenant: str, providers: Iterable[str]) -> None:
        self.tenant = tenant
        self.providers = tuple(providers)
        if not tenant:
            raise ValueError("a tenant is required")
        self._lock = threading.Lock()
        self._sets: dict[str, ProviderKeys] = {}
        # Every held kid's keys with their provider's issuer, in provider name order; made
        # again on the first search after a change.
        self._by_kid: dict[str, list[tuple[str, Key]]] | None = None
        self._state = "connecting"
        self._last_synced_at: datetime | None = None
        self._last_error: str | None = None
        self._attempts = 0
        self._syncs = 0
        self._key_sets_received = 0
        self._last_asked: dict[tuple[str, str], float] = {}

    # The WatchKeys protocol.

    def request(self) -> Any:
        """The WatchKeys request: the selection, and the versions held, so that a resumed
        stream sends nothing already held."""
        names = self.providers or ("",)
        selectors = [pb.WatchSelector(tenant=self.tenant, provider=name) for name in names]
        with self._lock:
            known = [
                pb.KnownVersion(tenant=self.tenant, provider=keys.provider, version=keys.version)
                for keys in self._sets.values()
            ]
        return pb.WatchKeysRequest(selectors=selectors, known_versions=known)

    def stream_opened(self) -> None:
        """A WatchKeys call is starting."""
        with self._lock:
            self._attempts += 1

    def on_event(self, event: Any) -> bool:
        """Applies one WatchKeysResponse; True when it is ``synced``."""
        kind = event.WhichOneof("event")
        if kind == "key_set":
            with self._lock:
                self._key_sets_received += 1
            self.hold(event.key_set)
        elif kind == "removed":
            with self._lock:
                self._sets.pop(event.removed.provider, None)
                self._by_kid = None
            log.info("keyrelay: provider %s was removed", event.removed.provider)
        elif kind == "synced":
            with self._lock:
                self._state = "connected"
                self._last_synced_at = datetime.now(UTC)
                self._syncs += 1
            return True
        return False

    def hold(self, key_set: Any) -> None:
        """Keeps a key set unless a newer version of it is already held."""
        try:
            keys = ProviderKeys.from_message(key_set)
        except ValueError as err:
            log.warning(
                "keyrelay: ignoring a key set of %s that does not parse: %s", key_set.provider, err
            )
            return
        with self._lock:
            held = self._sets.get(keys.provider)
            if held is None or held.version <= keys.version:
                self._sets[keys.provider] = keys
                self._by_kid = None

    def stream_lost(self, error: str | None, closing: bool) -> bool:
        """The stream ended; True when it had synced (so backoff starts over)."""
        with self._lock:
            was_connected = self._state == "connected"
            self._state = "closed" if closing else "disconnected"
            if error is not None:
                self._last_error = error
            return was_connected

    def closed(self) -> None:
        """The verifier was closed."""
        with self._lock:
            self._state = "closed"

    # Keys.

    def find(self, kid: str, provider: str | None, iss: object) -> Key | None:
        """The key with ``kid`` among the providers ``provider`` allows (None: any held) for
        a token whose ``iss`` claim is ``iss``: a provider registered by that issuer first,
        then one registered by URL, each in name order. Raises :class:`IssuerError` when only
        providers of other issuers hold the kid."""
        with self._lock:
            if provider is not None:
                held = self._sets.get(provider)
                key = None if held is None else held.keys.find(kid)
                if key is not None and held is not None and held.issuer not in ("", iss):
                    raise IssuerError(
                        f"{self.tenant}/{provider} verifies tokens of {held.issuer!r} only"
                    )
                return key
            by_kid = self._by_kid
            if by_kid is None:
                by_kid = {}
                for name in sorted(self._sets):
                    held = self._sets[name]
                    for held_kid, key in held.keys.by_kid.items():
                        by_kid.setdefault(held_kid, []).append((held.issuer, key))
                self._by_kid = by_kid
        return _for_issuer(by_kid.get(kid), iss)

    def revoked_by(self, kid: str, provider: str | None) -> str | None:
        """The first provider by name among those ``provider`` allows (None: any held) whose
        held set lists ``kid`` as revoked by a keyrelay administrator, if one does."""
        with self._lock:
            if provider is not None:
                held = self._sets.get(provider)
                return provider if held is not None and kid in held.revoked_kids else None
            for name in sorted(self._sets):
                if kid in self._sets[name].revoked_kids:
                    return name
        return None

    def providers_to_ask(self, provider: str | None) -> list[str]:
        """The providers to Resolve an unknown kid with."""
        if provider is not None:
            return [provider]
        with self._lock:
            names = set(self._sets) | set(self.providers)
        return sorted(names)

    def may_ask(self, provider: str, kid: str) -> bool:
        """Whether to Resolve ``kid`` of ``provider`` now: not when a held set has it, nor
        within the cooldown of the last time it was asked for. Records the attempt."""
        now = time.monotonic()
        with self._lock:
            held = self._sets.get(provider)
            if held is not None and held.keys.find(kid) is not None:
                return False
            last = self._last_asked.get((provider, kid))
            if last is not None and now - last < RESOLVE_COOLDOWN:
                return False
            self._last_asked[(provider, kid)] = now
            if len(self._last_asked) > 10_000:
                horizon = now - RESOLVE_COOLDOWN
                self._last_asked = {k: t for k, t in self._last_asked.items() if t >= horizon}
            return True

    def resolve_request(self, provider: str, kid: str) -> Any:
        """The Resolve request for ``kid`` of ``provider``."""
        return pb.ResolveRequest(tenant=self.tenant, provider=provider, kid=kid)

    def on_resolved(self, response: Any) -> None:
        """Keeps the key set a Resolve returned."""
        if response.WhichOneof("result") == "key_set":
            self.hold(response.key_set)

    def status(self) -> Status:
        """The connection state and the key sets held."""
        now = datetime.now(UTC)
        with self._lock:
            return Status(
                state=self._state,
                connected=self._state == "connected",
                last_synced_at=self._last_synced_at,
                last_error=self._last_error,
                attempts=self._attempts,
                syncs=self._syncs,
                key_sets_received=self._key_sets_received,
                providers=tuple(self._sets[name].status(now) for name in sorted(self._sets)),
            )


def _for_issuer(held: list[tuple[str, Key]] | None, iss: object) -> Key | None:
    """Of the keys holding one kid, the one that verifies a token of ``iss``."""
    if not held:
        return None
    if len(held) == 1 and not held[0][0]:
        return held[0][1]
    for issuer, key in held:
        if issuer and issuer == iss:
            return key
    for issuer, key in held:
        if not issuer:
            return key
    raise IssuerError(f"only providers of {held[0][0]!r} hold the key, not of {iss!r}")
