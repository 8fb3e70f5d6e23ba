//! Key sets as encoded bytes: each is encoded once per change and the bytes shared
//! (reference-counted) by every WatchKeys subscriber and every Resolve that sends it. A
//! `WatchKeysResponse` and a `ResolveResponse` holding only a key set (field 1 of both) have
//! the same encoding, so one cached encoding serves both.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, skip_field},
};

use crate::{
    api::convert,
    domain::ProviderKey,
    proto::v1::{self as pb, watch_keys_response::Event},
    state::Snapshot,
    state::record::{CurrentKeys, ProviderRecord},
};

/// A `keyrelay.v1.WatchKeysResponse` or `ResolveResponse`, already encoded: the server-side
/// type of both (see build.rs). It encodes by copying its bytes and is never decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedEvent(Bytes);

impl EncodedEvent {
    fn encode(event: Event) -> Self {
        let response = pb::WatchKeysResponse { event: Some(event) };
        Self(Bytes::from(response.encode_to_vec()))
    }

    /// Bytes encoded elsewhere (a benchmark's baseline server, say).
    pub fn from_bytes(bytes: Bytes) -> Self {
        Self(bytes)
    }

    /// The Resolve answer `not_modified: true`.
    pub fn not_modified() -> Self {
        let response = pb::ResolveResponse {
            result: Some(pb::resolve_response::Result::NotModified(true)),
        };
        Self(Bytes::from(response.encode_to_vec()))
    }

    /// `synced`: the initial state has been sent.
    pub fn synced() -> Self {
        Self::encode(Event::Synced(pb::Synced {}))
    }

    /// `removed`: the client should drop the provider it held at `version`.
    pub fn removed(key: &ProviderKey, version: u64) -> Self {
        Self::encode(Event::Removed(pb::ProviderRemoved {
            tenant: key.tenant.as_str().to_owned(),
            provider: key.provider.as_str().to_owned(),
            version,
        }))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Message for EncodedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

struct Cached {
    record: Arc<ProviderRecord>,
    stale: bool,
    event: EncodedEvent,
}

/// The last key-set event encoded for each provider, keyed by the record and staleness it
/// was encoded from.
#[derive(Default)]
pub(super) struct EventCache {
    entries: Mutex<HashMap<ProviderKey, Cached>>,
}

impl EventCache {
    /// The `key_set` event for `snapshot`, encoded at most once per record and staleness.
    pub fn key_set(&self, snapshot: &Snapshot, keys: &CurrentKeys) -> EncodedEvent {
        let key = &snapshot.record.registration.key;
        let stale = keys.is_stale(snapshot.at);
        if let Some(cached) = self.lock().get(key)
            && Arc::ptr_eq(&cached.record, &snapshot.record)
            && cached.stale == stale
        {
            return cached.event.clone();
        }
        let event = EncodedEvent::encode(Event::KeySet(convert::key_set(snapshot, keys)));
        let cached = Cached {
            record: Arc::clone(&snapshot.record),
            stale,
            event: event.clone(),
        };
        self.lock().insert(key.clone(), cached);
        event
    }

    /// Drops what is cached for a removed provider.
    pub fn forget(&self, key: &ProviderKey) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProviderKey, Cached>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_events_decode_as_watch_keys_responses() {
        let key = ProviderKey::parse("acme", "okta").unwrap();
        let removed = EncodedEvent::removed(&key, 7).encode_to_vec();
        let decoded = pb::WatchKeysResponse::decode(removed.as_slice()).unwrap();
        let expected = pb::ProviderRemoved {
            tenant: "acme".into(),
            provider: "okta".into(),
            version: 7,
        };
        assert_eq!(decoded.event, Some(Event::Removed(expected)));
        let synced =
            pb::WatchKeysResponse::decode(EncodedEvent::synced().as_bytes().clone()).unwrap();
        assert_eq!(synced.event, Some(Event::Synced(pb::Synced {})));
    }

    #[test]
    fn a_key_set_event_is_also_a_resolve_answer() {
        let set = pb::KeySet {
            tenant: "acme".into(),
            version: 3,
            ..Default::default()
        };
        let event = EncodedEvent::encode(Event::KeySet(set.clone())).encode_to_vec();
        let answer = pb::ResolveResponse::decode(event.as_slice()).unwrap();
        assert_eq!(
            answer.result,
            Some(pb::resolve_response::Result::KeySet(set))
        );
        let not_modified =
            pb::ResolveResponse::decode(EncodedEvent::not_modified().as_bytes().clone()).unwrap();
        assert_eq!(
            not_modified.result,
            Some(pb::resolve_response::Result::NotModified(true))
        );
    }
}
