//! The protobuf codec of every generated service: tonic's prost codec, with
//! buffers that start at 1 KiB instead of tonic's 8 KiB.
//!
//! A unary call allocates its encode and decode buffers afresh, on both
//! sides, and most calls here carry a few hundred bytes. glibc's malloc
//! serves 8 KiB from its large bins (consolidating the fast bins first when
//! any are in use); 1 KiB comes from the per-thread cache. Larger messages
//! still fit: the buffers grow as needed, and a stream keeps its grown
//! buffers for the messages after. Measured: BENCHMARKS.md, "Codec buffers".

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes a call's encode and decode buffers start with.
pub const START_BUFFER_BYTES: usize = 1024;

/// Bytes a stream encodes before it yields to the runtime (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(START_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// [`ProstCodec`] with [`START_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
