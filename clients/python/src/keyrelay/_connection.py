"""Reaching keyrelay: the address, TLS credentials, channel options and call metadata that
both verifiers use."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from .errors import ConnectError

PemSource = str | bytes | os.PathLike[str]


def _pem(source: PemSource | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a file path; a str that holds PEM text is PEM."""
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    try:
        with open(source, "rb") as file:
            return file.read()
    except OSError as err:
        raise ConnectError(f"cannot read the {what} {os.fspath(source)!r}: {err}") from err


@dataclass(frozen=True)
class Connection:
    """How to reach keyrelay: the gRPC target, credentials (None: plaintext), channel
    options and the metadata every call carries."""

    target: str
    credentials: Any
    options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...]

    @classmethod
    def of(
        cls,
        endpoint: str,
        *,
        tls: bool | None,
        ca_certificate: PemSource | None,
        client_certificate: PemSource | None,
        client_key: PemSource | None,
        server_name: str | None,
        access_token: str | None,
        first_retry: float,
        max_retry: float,
        extra_options: Sequence[tuple[str, Any]] = (),
    ) -> Connection:
        """Settles the endpoint (``host:port``, ``http://host:port`` or ``https://...``)
        and the TLS settings. TLS settings with an ``http://`` endpoint are refused rather
        than ignored; a bare ``host:port`` uses TLS when any TLS setting is given."""
        scheme, sep, rest = endpoint.partition("://")
        if not sep:
            scheme, rest = "", endpoint
        rest = rest.rstrip("/")
        if scheme not in ("", "http", "https") or not rest or "/" in rest:
            raise ConnectError(f"not a keyrelay endpoint: {endpoint!r} (want host:port)")
        tls_given = any(
            v is not None for v in (ca_certificate, client_certificate, client_key, server_name)
        )
        if scheme == "http" and (tls or tls_given):
            raise ConnectError(f"TLS settings need an https:// endpoint, not {endpoint}")
        if (client_certificate is None) != (client_key is None):
            raise ConnectError("a client certificate needs its key, and a key its certificate")
        use_tls = scheme == "https" or bool(tls) or (tls is None and tls_given)
        if tls is False and (scheme == "https" or tls_given):
            raise ConnectError("tls=False contradicts the https:// endpoint or TLS settings")
        options: list[tuple[str, Any]] = [
            # The channel's own reconnection backoff follows the verifier's.
            ("grpc.initial_reconnect_backoff_ms", max(1, int(first_retry * 1000))),
            ("grpc.min_reconnect_backoff_ms", max(1, int(first_retry * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, int(max_retry * 1000))),
            ("grpc.enable_retries", 0),
        ]
        credentials = None
        if use_tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(ca_certificate, "CA certificate"),
                private_key=_pem(client_key, "client key"),
                certificate_chain=_pem(client_certificate, "client certificate"),
            )
            if server_name is not None:
                options.append(("grpc.ssl_target_name_override", server_name))
        metadata: tuple[tuple[str, str], ...] = ()
        if access_token is not None:
            if not access_token or not access_token.isascii() or not access_token.isprintable():
                raise ConnectError(
                    "the access token has characters that cannot be sent as gRPC metadata"
                )
            metadata = (("authorization", f"Bearer {access_token}"),)
        options.extend(extra_options)
        return cls(rest, credentials, tuple(options), metadata)

    def channel(self) -> Any:
        """A blocking channel (grpc.Channel)."""
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.credentials, options=self.options)

    def aio_channel(self) -> Any:
        """An asyncio channel (grpc.aio.Channel); create it inside the running loop."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)
