//! Input layout and checks of the `frame_decoder` target.
//!
//! Byte 0 picks the decoder's maximum payload length (high nibble, an index into [`MAX_LENS`])
//! and the number of chunk-size bytes that follow it (low nibble). The rest of the input is the
//! stream. The stream is fed to a [`FrameDecoder`] in chunks of those sizes, repeated in a
//! cycle, as network reads would deliver it, and once more as a single chunk. Both runs must
//! agree, and every frame must take exactly its own bytes and survive a round trip.

use bytes::{Buf, BytesMut};
use protocol::{
    encode, DecodeError, Frame, FrameDecoder, FrameType, HEADER_LEN, MAX_DATA_CHUNK, MAX_FRAME_LEN,
};

/// Maximum payload lengths the target builds decoders with: the default, the edge cases 0 and
/// 1, and sizes between.
pub const MAX_LENS: [u32; 8] = [
    MAX_FRAME_LEN,
    0,
    1,
    16,
    256,
    4096,
    MAX_DATA_CHUNK as u32,
    u16::MAX as u32,
];

/// A fuzz input split into its fields.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub max_len: u32,
    /// Sizes of successive reads, used in a cycle. Empty means one read of the whole stream.
    pub chunk_sizes: &'a [u8],
    pub stream: &'a [u8],
}

impl<'a> Input<'a> {
    /// Splits `data` into its fields, or returns `None` when it is too short to have them.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&control, rest) = data.split_first()?;
        let max_len = MAX_LENS[usize::from(control >> 4) % MAX_LENS.len()];
        let count = usize::from(control & 0x0f);
        if rest.len() < count {
            return None;
        }
        let (chunk_sizes, stream) = rest.split_at(count);
        Some(Self {
            max_len,
            chunk_sizes,
            stream,
        })
    }

    /// Builds the input bytes that [`Input::parse`] turns back into these fields.
    ///
    /// # Panics
    ///
    /// Panics when there are more than 15 chunk sizes or `max_len` is not in [`MAX_LENS`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let index = MAX_LENS
            .iter()
            .position(|len| *len == self.max_len)
            .expect("max_len is one of MAX_LENS");
        assert!(self.chunk_sizes.len() <= 0x0f, "at most 15 chunk sizes");
        let control = (index as u8) << 4 | self.chunk_sizes.len() as u8;
        let mut bytes = vec![control];
        bytes.extend_from_slice(self.chunk_sizes);
        bytes.extend_from_slice(self.stream);
        bytes
    }
}

/// Result of decoding a whole stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub frames: Vec<Frame>,
    /// The error that ended decoding, if any.
    pub error: Option<DecodeError>,
    /// Bytes the decoder took off the buffer, the frame that failed included.
    pub consumed: usize,
}

/// Runs the target on one input.
///
/// # Panics
///
/// Panics when the decoder breaks one of the properties described in the module header.
pub fn run(data: &[u8]) {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let chunked = decode_in_chunks(input.stream, input.max_len, input.chunk_sizes);
    let whole = decode_in_chunks(input.stream, input.max_len, &[]);
    assert_eq!(
        chunked, whole,
        "read sizes changed what the decoder produced"
    );
}

/// Feeds `stream` to a fresh decoder in reads of `chunk_sizes` (cycled) and checks each step.
///
/// # Panics
///
/// Panics when a step breaks one of the properties described in the module header.
pub fn decode_in_chunks(stream: &[u8], max_len: u32, chunk_sizes: &[u8]) -> Outcome {
    let decoder = FrameDecoder::new(max_len);
    let mut buf = BytesMut::new();
    let reads = Reads::new(stream, chunk_sizes);
    let mut fed = 0;
    let mut consumed = 0;
    let mut frames = Vec::new();

    for chunk in reads {
        buf.extend_from_slice(chunk);
        fed += chunk.len();
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let used = before - buf.len();
                    assert!(consumed + used <= fed, "decoder took more bytes than fed");
                    check_frame(&stream[consumed..consumed + used], &frame, max_len);
                    consumed += used;
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "decoder took bytes without a frame");
                    break;
                }
                Err(error) => {
                    check_error(&error, max_len);
                    consumed += before - buf.len();
                    assert!(
                        consumed <= fed,
                        "decoder took {consumed} of {fed} bytes fed"
                    );
                    return Outcome {
                        frames,
                        error: Some(error),
                        consumed,
                    };
                }
            }
        }
    }

    assert_eq!(fed, stream.len(), "the whole stream was fed");
    check_finish(&decoder, &buf, max_len);
    Outcome {
        frames,
        error: None,
        consumed,
    }
}

/// Checks one decoded frame against the bytes it was decoded from.
fn check_frame(raw: &[u8], frame: &Frame, max_len: u32) {
    assert!(raw.len() >= HEADER_LEN, "a frame took {} bytes", raw.len());
    let payload = &raw[HEADER_LEN..];
    let claimed = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
    assert_eq!(raw[0], frame.frame_type() as u8, "type byte of {frame:?}");
    assert_eq!(
        claimed as usize,
        payload.len(),
        "length prefix of {frame:?}"
    );
    assert!(
        claimed <= max_len,
        "payload of {claimed} bytes over {max_len}"
    );
    match frame {
        Frame::Data(data) => assert_eq!(&data[..], payload, "data frame payload"),
        Frame::End | Frame::Drain => assert!(payload.is_empty(), "{frame:?} with a payload"),
        _ => {}
    }

    // bincode 2.0.1 accepts longer integer forms than its encoder writes, so the bytes may
    // differ. The encoder writes the shortest form, so a decoded frame encodes to at most the
    // bytes it came from and fits under the same maximum.
    let mut again = BytesMut::new();
    if let Err(err) = encode(frame, max_len, &mut again) {
        panic!("decoded {frame:?} does not encode again: {err}");
    }
    assert!(
        again.len() <= raw.len(),
        "{frame:?} encodes to {} bytes, decoded from {}",
        again.len(),
        raw.len()
    );
    let decoded = FrameDecoder::new(max_len).decode(&mut again);
    assert_eq!(decoded, Ok(Some(frame.clone())), "round trip of {frame:?}");
    assert!(again.is_empty(), "round trip of {frame:?} left bytes");
}

fn check_error(error: &DecodeError, max_len: u32) {
    match error {
        DecodeError::TooLarge { len, max } => {
            assert_eq!(*max, max_len, "maximum in {error}");
            assert!(len > max, "{error} for a length under the maximum");
        }
        DecodeError::UnknownType(byte) => {
            assert!(
                FrameType::from_byte(*byte).is_none(),
                "{error} for a known type"
            );
        }
        DecodeError::Invalid { frame_type, .. } => {
            assert_ne!(
                *frame_type,
                FrameType::Data.name(),
                "data frames always decode"
            );
        }
        DecodeError::Truncated { .. } => panic!("decode returned {error}, which only finish may"),
    }
}

/// Checks that `finish` accepts an empty buffer and reports a partial frame correctly.
fn check_finish(decoder: &FrameDecoder, buf: &BytesMut, max_len: u32) {
    match decoder.finish(buf) {
        Ok(()) => assert!(
            buf.is_empty(),
            "finish accepted {} buffered bytes",
            buf.len()
        ),
        Err(DecodeError::Truncated { buffered, expected }) => {
            assert_eq!(
                buffered,
                buf.len(),
                "buffered bytes in the truncation error"
            );
            assert!(
                expected > buffered,
                "{expected} expected with {buffered} buffered"
            );
            assert!(
                expected <= HEADER_LEN + max_len as usize,
                "{expected} expected, over the maximum frame"
            );
        }
        Err(other) => panic!("finish returned {other}"),
    }
}

/// The stream cut into reads of the given sizes, cycled. An empty list, or one of zeros only,
/// gives a single read of the whole stream so that the loop always ends.
struct Reads<'a> {
    rest: &'a [u8],
    sizes: &'a [u8],
    next_size: usize,
    /// Whether a zero-length read was already given, so that an empty stream is read once.
    started: bool,
}

impl<'a> Reads<'a> {
    fn new(stream: &'a [u8], sizes: &'a [u8]) -> Self {
        let sizes = if sizes.iter().all(|size| *size == 0) {
            &[]
        } else {
            sizes
        };
        Self {
            rest: stream,
            sizes,
            next_size: 0,
            started: false,
        }
    }
}

impl<'a> Iterator for Reads<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() && self.started {
            return None;
        }
        self.started = true;
        let size = match self.sizes.get(self.next_size % self.sizes.len().max(1)) {
            Some(size) => usize::from(*size),
            None => self.rest.len(),
        };
        self.next_size += 1;
        let chunk = &self.rest[..size.min(self.rest.len())];
        self.rest.advance(chunk.len());
        Some(chunk)
    }
}
