"""What a verifier reports about itself: whether its stream is up, and the key sets it holds
with their versions and age."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["ProviderStatus", "Status"]


@dataclass(frozen=True)
class ProviderStatus:
    """One provider's key set as the verifier holds it."""

    provider: str
    """Provider identifier."""
    version: int
    """keyrelay's version of the set (grows by one with each change)."""
    kids: tuple[str, ...]
    """The key ids of the set."""
    state: str
    """keyrelay's health of the provider when the set was sent: READY, STALE or FAILING."""
    stale: bool
    """Whether keyrelay reported the keys stale (past freshness; the IdP may be failing)."""
    fetched_at: datetime | None
    """When the identity provider last confirmed the keys."""
    fresh_until: datetime | None
    """Until when keyrelay considers them fresh."""
    usable_until: datetime | None
    """After this instant keyrelay stops serving them."""
    received_at: datetime
    """When this verifier received this version."""
    age: float | None
    """Seconds since the identity provider last confirmed the keys (None if unknown)."""
    revoked_kids: tuple[str, ...] = ()
    """Key ids a keyrelay administrator revoked (never among ``kids``): a token naming one
    is refused with :class:`~keyrelay.RevokedError`, without asking keyrelay."""
    issuer: str = ""
    """The issuer whose tokens these keys verify, for a provider registered by issuer;
    empty for one registered by JWKS URL (its keys verify a token of any ``iss``)."""


@dataclass(frozen=True)
class Status:
    """A verifier's view of keyrelay and of the keys it holds."""

    state: str
    """``connecting`` (before the first sync), ``connected`` (stream up and synced),
    ``disconnected`` (reconnecting; verification goes on with the keys held) or ``closed``."""
    connected: bool
    """Whether the WatchKeys stream is up and synced."""
    last_synced_at: datetime | None
    """When the stream last delivered its initial state (``synced``)."""
    last_error: str | None
    """Why the stream was last lost, if it was."""
    attempts: int
    """WatchKeys calls made so far: the first, then one per reconnection attempt."""
    syncs: int
    """Times a stream reached ``synced``."""
    key_sets_received: int
    """Key sets received over all streams (a resumed stream resends none already held)."""
    providers: tuple[ProviderStatus, ...]
    """The key sets held, by provider name."""

    def provider(self, name: str) -> ProviderStatus | None:
        """The status of provider ``name``, if its keys are held."""
        for provider in self.providers:
            if provider.provider == name:
                return provider
        return None
