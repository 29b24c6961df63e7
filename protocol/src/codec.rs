//! Length-prefixed encoding and incremental decoding of frames over byte buffers.
//!
//! Layout: `type: u8`, `len: u32` big-endian, then `len` payload bytes. Data frames carry the
//! body bytes as they are; end and drain frames are empty; every other payload is bincode 2
//! with its standard configuration.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{DecodeError, EncodeError};
use crate::frame::{Frame, FrameType};

/// Bytes in a frame header: the type byte and the length.
pub const HEADER_LEN: usize = 5;

/// Default maximum payload length of one frame. It bounds what a peer can make the receiver
/// buffer for a single frame, and so the size of a request or response head. Frames other than
/// data frames are never decoded past this size, whatever maximum the decoder is given.
pub const MAX_FRAME_LEN: u32 = 1024 * 1024;

/// Largest body piece a sender puts in one data frame. Bigger chunks are split.
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

/// Appends `frame`, header and payload, to `dst`.
///
/// Data payloads are copied into `dst`; a sender that wants to avoid the copy writes
/// [`encode_data_header`] and then the payload itself.
///
/// # Errors
///
/// Returns [`EncodeError::TooLarge`] when the payload would be over `max_len`.
pub fn encode(frame: &Frame, max_len: u32, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let frame_type = frame.frame_type();
    let payload = match frame {
        Frame::Hello(hello) => serialize(frame_type, hello)?,
        Frame::HelloReply(reply) => serialize(frame_type, reply)?,
        Frame::RequestHead(head) => serialize(frame_type, head)?,
        Frame::ResponseHead(head) => serialize(frame_type, head)?,
        Frame::Trailers(trailers) => serialize(frame_type, trailers)?,
        Frame::Failure(failure) => serialize(frame_type, failure)?,
        Frame::Data(data) => data.to_vec(),
        Frame::End | Frame::Drain => Vec::new(),
    };

    let len = checked_len(frame_type, payload.len(), max_len)?;
    dst.reserve(HEADER_LEN + payload.len());
    dst.put_u8(frame_type as u8);
    dst.put_u32(len);
    dst.put_slice(&payload);
    Ok(())
}

/// Returns the header of a data frame whose payload of `len` bytes the caller writes next.
///
/// # Errors
///
/// Returns [`EncodeError::TooLarge`] when `len` is over `max_len`.
pub fn encode_data_header(len: usize, max_len: u32) -> Result<[u8; HEADER_LEN], EncodeError> {
    let len = checked_len(FrameType::Data, len, max_len)?;
    let mut header = [0; HEADER_LEN];
    header[0] = FrameType::Data as u8;
    header[1..].copy_from_slice(&len.to_be_bytes());
    Ok(header)
}

/// Incremental decoder: feed it whatever bytes have arrived and take complete frames out.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_len: u32,
}

impl FrameDecoder {
    /// Builds a decoder that rejects frames whose payload is over `max_len` bytes.
    pub fn new(max_len: u32) -> Self {
        Self { max_len }
    }

    /// Takes one complete frame off the front of `src`, or returns `None` when more bytes are
    /// needed. The length is checked before any buffer is reserved for the payload.
    ///
    /// # Errors
    ///
    /// Returns [`DecodeError`] for an unknown type, an oversize length or a payload that does not
    /// decode. The stream is unusable after that.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let type_byte = src[0];
        let frame_type =
            FrameType::from_byte(type_byte).ok_or(DecodeError::UnknownType(type_byte))?;
        let len = u32::from_be_bytes([src[1], src[2], src[3], src[4]]);
        if len > self.max_len {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_len,
            });
        }

        // `len` is at most `max_len`, so this cannot overflow or reserve without bound.
        let frame_len = HEADER_LEN + len as usize;
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len as usize).freeze();
        decode_payload(frame_type, payload).map(Some)
    }

    /// Checks that nothing but whole frames was left when the stream ended.
    ///
    /// # Errors
    ///
    /// Returns [`DecodeError::Truncated`] when `src` contains part of a frame.
    pub fn finish(&self, src: &BytesMut) -> Result<(), DecodeError> {
        if src.is_empty() {
            return Ok(());
        }
        let expected = if src.len() >= HEADER_LEN {
            HEADER_LEN + u32::from_be_bytes([src[1], src[2], src[3], src[4]]) as usize
        } else {
            HEADER_LEN
        };
        Err(DecodeError::Truncated {
            buffered: src.len(),
            expected,
        })
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

fn decode_payload(frame_type: FrameType, payload: Bytes) -> Result<Frame, DecodeError> {
    let frame = match frame_type {
        FrameType::Hello => Frame::Hello(deserialize(frame_type, &payload)?),
        FrameType::HelloReply => Frame::HelloReply(deserialize(frame_type, &payload)?),
        FrameType::RequestHead => Frame::RequestHead(deserialize(frame_type, &payload)?),
        FrameType::ResponseHead => Frame::ResponseHead(deserialize(frame_type, &payload)?),
        FrameType::Trailers => Frame::Trailers(deserialize(frame_type, &payload)?),
        FrameType::Failure => Frame::Failure(deserialize(frame_type, &payload)?),
        FrameType::Data => Frame::Data(payload),
        FrameType::End | FrameType::Drain => {
            if !payload.is_empty() {
                return Err(DecodeError::Invalid {
                    frame_type: frame_type.name(),
                    reason: format!("expected an empty payload, got {} bytes", payload.len()),
                });
            }
            if frame_type == FrameType::End {
                Frame::End
            } else {
                Frame::Drain
            }
        }
    };
    Ok(frame)
}

fn serialize<T: Serialize>(frame_type: FrameType, value: &T) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|err| {
        EncodeError::Serialize {
            frame_type: frame_type.name(),
            reason: err.to_string(),
        }
    })
}

fn deserialize<T: DeserializeOwned>(
    frame_type: FrameType,
    payload: &[u8],
) -> Result<T, DecodeError> {
    let invalid = |reason: String| DecodeError::Invalid {
        frame_type: frame_type.name(),
        reason,
    };
    // String and collection lengths inside the payload are claims by the peer, and bincode
    // allocates a string's buffer from its claimed length before reading it. The limit makes
    // bincode reject any claim that would take the total past MAX_FRAME_LEN before it
    // allocates, so a 10-byte frame cannot ask for gigabytes.
    let config = bincode::config::standard().with_limit::<{ MAX_FRAME_LEN as usize }>();
    let (value, used) = bincode::serde::decode_from_slice(payload, config)
        .map_err(|err| invalid(err.to_string()))?;
    if used != payload.len() {
        return Err(invalid(format!(
            "{} trailing bytes after the value",
            payload.len() - used
        )));
    }
    Ok(value)
}

fn checked_len(frame_type: FrameType, len: usize, max_len: u32) -> Result<u32, EncodeError> {
    match u32::try_from(len) {
        Ok(len32) if len32 <= max_len => Ok(len32),
        _ => Err(EncodeError::TooLarge {
            frame_type: frame_type.name(),
            len,
            max: max_len,
        }),
    }
}

#[cfg(test)]
mod tests;
