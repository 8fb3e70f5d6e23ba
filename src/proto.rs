//! Generated gRPC code for package `keyrelay.v1` (built from proto/ by build.rs), its
//! encoded descriptor set (served by reflection), and the codec the servers use.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Messages and clients of `keyrelay.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("keyrelay.v1");
}

/// Servers of `keyrelay.v1`; WatchKeys sends pre-encoded events through [`LeanCodec`].
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/servers/keyrelay.v1.rs"));
}

/// The encoded `FileDescriptorSet` of proto/, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keyrelay_descriptor.bin"));

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
