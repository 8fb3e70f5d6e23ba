//! Messages encoded once and sent as bytes: WatchKeys events and Resolve answers are the
//! server-side type `EncodedEvent` (see build.rs), so one encoding of a change is shared by
//! every subscriber and every Resolve, and the codec the servers use keeps each stream's
//! buffers small.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, skip_field},
};
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

use crate::{
    domain::ProviderKey,
    proto::v1::{self as pb, watch_keys_response::Event},
};

/// A `keyrelay.v1.WatchKeysResponse` or `ResolveResponse`, already encoded: the server-side
/// type of both (see build.rs). It encodes by copying its bytes and is never decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedEvent(Bytes);

impl EncodedEvent {
    /// `event` as a `WatchKeysResponse`.
    pub(crate) fn encode(event: Event) -> Self {
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
            tenant: key.tenant().as_str().to_owned(),
            provider: key.provider().as_str().to_owned(),
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

/// Prost encoding with a small initial encode buffer. tonic keeps each stream's encode buffer
/// for the stream's whole life; its default 8 KiB would be most of an idle WatchKeys stream's
/// memory. The buffer still grows for larger messages.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

/// Initial encode buffer of a stream, in bytes.
const ENCODE_BUFFER_BYTES: usize = 512;
/// Encoded bytes gathered before they are handed to the transport (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        let settings = BufferSettings::new(ENCODE_BUFFER_BYTES, YIELD_THRESHOLD_BYTES);
        ProstCodec::<T, U>::raw_encoder(settings)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
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
