"""A small keyrelay client: watch a tenant's key sets over gRPC and verify JWTs with PyJWT.

The stubs are generated from the repository's proto/ (see README.md) and must be importable
as ``keyrelay.v1``.
"""

import json
import threading

import grpc
import jwt
from keyrelay.v1 import key_service_pb2 as pb
from keyrelay.v1 import key_service_pb2_grpc as pb_grpc


class KeyWatcher:
    """Holds a tenant's key sets, kept current by one WatchKeys stream."""

    def __init__(self, target, tenant, provider="", access_token=None):
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.KeyServiceStub(self._channel)
        # Tenants that require a verifier token see nothing without one.
        self._metadata = [("authorization", f"Bearer {access_token}")] if access_token else []
        self._tenant = tenant
        self._provider = provider
        self._keys = {}  # provider -> (version, {kid: jwk dict})
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def wait_synced(self, timeout=10.0):
        """Waits for the first complete view; False if it did not come in time."""
        return self._synced.wait(timeout)

    def _request(self):
        with self._lock:
            known = [
                pb.KnownVersion(tenant=self._tenant, provider=provider, version=version)
                for provider, (version, _) in self._keys.items()
            ]
        selector = pb.WatchSelector(tenant=self._tenant, provider=self._provider)
        return pb.WatchKeysRequest(selectors=[selector], known_versions=known)

    def _follow(self):
        try:
            for event in self._stub.WatchKeys(self._request(), metadata=self._metadata):
                kind = event.WhichOneof("event")
                if kind == "key_set":
                    self._hold(event.key_set)
                elif kind == "removed":
                    with self._lock:
                        self._keys.pop(event.removed.provider, None)
                elif kind == "synced":
                    self._synced.set()
        except grpc.RpcError:
            # The stream ended (server shutdown); a long-lived service would reconnect here.
            pass

    def _hold(self, key_set):
        document = json.loads(key_set.jwks_json)
        by_kid = {key["kid"]: key for key in document["keys"] if "kid" in key}
        with self._lock:
            held = self._keys.get(key_set.provider)
            if held is None or held[0] <= key_set.version:
                self._keys[key_set.provider] = (key_set.version, by_kid)

    def _find(self, kid):
        with self._lock:
            for _, by_kid in self._keys.values():
                if kid in by_kid:
                    return by_kid[kid]
        return None

    def _resolve(self, kid):
        """Asks keyrelay once for each held provider's set with this kid."""
        with self._lock:
            providers = [self._provider] if self._provider else list(self._keys)
        for provider in providers:
            try:
                request = pb.ResolveRequest(tenant=self._tenant, provider=provider, kid=kid)
                answer = self._stub.Resolve(request, metadata=self._metadata)
            except grpc.RpcError:
                continue
            if answer.WhichOneof("result") == "key_set":
                self._hold(answer.key_set)

    def verify(self, token, audience=None, issuer=None):
        """Returns the claims of a valid token; raises jwt.PyJWTError otherwise.

        The algorithm comes from the key (PyJWK derives it from kty and crv when the key
        names none), never from the token alone.
        """
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None:
            raise jwt.InvalidTokenError("token header has no kid")
        jwk = self._find(kid)
        if jwk is None:
            self._resolve(kid)
            jwk = self._find(kid)
        if jwk is None:
            raise jwt.InvalidTokenError(f"no key with kid {kid!r}")
        key = jwt.PyJWK(jwk)
        return jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm_name],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp"], "verify_aud": audience is not None},
        )
