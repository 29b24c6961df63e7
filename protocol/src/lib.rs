//! Wire protocol between `ingress` and `tunnel-agent`.
//!
//! Every QUIC stream carries a sequence of frames: a one-byte frame type, a four-byte big-endian
//! payload length and the payload. Control and head frames are bincode 2 (serde, standard
//! configuration); data frames carry raw body bytes so that bodies are never copied into a
//! serializer. This crate turns bytes into frames and frames into bytes and does no I/O: the
//! caller owns sockets, streams and clocks.
//!
//! Stream layout:
//! - control stream (opened by the agent first): `Hello`, then the ingress's `HelloReply`; later
//!   `Drain` when the agent is leaving.
//! - request stream (one per public request, opened by the ingress): `RequestHead`, then the
//!   request body as `Data` frames closed by `End` or `Trailers`; the agent replies with
//!   `ResponseHead` (or `Failure`), then `Data` frames closed by `End` or `Trailers`. A head
//!   marked `empty_body` is followed by no body frames at all. After a
//!   `101 Switching Protocols` head both directions carry raw bytes with no framing until the
//!   stream is finished. A QUIC stream reset means the body was cut short.

#![forbid(unsafe_code)]

mod codec;
mod error;
mod frame;
mod version;

pub use codec::{
    encode, encode_data_header, FrameDecoder, HEADER_LEN, MAX_DATA_CHUNK, MAX_FRAME_LEN,
};
pub use error::{DecodeError, EncodeError, VersionError};
pub use frame::{
    Failure, FailureKind, Frame, FrameType, Header, Hello, HelloReply, HttpVersion, RefuseReason,
    RequestHead, ResponseHead,
};
pub use version::{check_version, ALPN, PROTOCOL_VERSION};

/// Most tunnel names one hello may carry. The ingress rejects a hello with more, so the reply,
/// which has one URL per name, stays far below [`MAX_FRAME_LEN`] (256 URLs of at most about
/// 330 bytes each).
pub const MAX_TUNNELS_PER_HELLO: usize = 256;

/// QUIC application error codes used when a stream is reset or a connection is closed.
pub mod code {
    /// The sender gave up on the stream because its source failed (upstream died, client left).
    pub const STREAM_ABORTED: u32 = 0x1;
    /// The peer sent a frame that does not decode or breaks the stream layout.
    pub const PROTOCOL_ERROR: u32 = 0x2;
    /// The receiver no longer wants the data (its client or upstream went away).
    pub const STREAM_CANCELLED: u32 = 0x3;
    /// The connection is closed because the handshake was refused.
    pub const HANDSHAKE_REFUSED: u32 = 0x10;
    /// The connection is closed because the process is shutting down.
    pub const SHUTDOWN: u32 = 0x11;
    /// The connection is closed because the peer replaced it or it is no longer needed.
    pub const GOING_AWAY: u32 = 0x12;
}
