//! Errors of the codec and of the version check.

/// A frame could not be decoded. The stream that carried it must be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix is over the configured maximum; nothing was allocated for it.
    #[error("frame of {len} bytes is over the maximum of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    /// The frame type byte is not defined in this version.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// The payload does not decode as the type its header names.
    #[error("invalid {frame_type} frame: {reason}")]
    Invalid {
        frame_type: &'static str,
        reason: String,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {buffered} bytes buffered, {expected} expected")]
    Truncated { buffered: usize, expected: usize },
}

/// A frame could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded payload is over the maximum frame length.
    #[error("{frame_type} frame of {len} bytes is over the maximum of {max} bytes")]
    TooLarge {
        frame_type: &'static str,
        len: usize,
        max: u32,
    },
    /// The serializer failed, which for these types means a bug in this crate.
    #[error("failed to serialize {frame_type} frame: {reason}")]
    Serialize {
        frame_type: &'static str,
        reason: String,
    },
}

/// The peer speaks a protocol version this build does not.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported protocol version {received}, this side speaks version {supported}")]
pub struct VersionError {
    pub supported: u16,
    pub received: u16,
}
