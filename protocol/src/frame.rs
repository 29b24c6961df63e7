//! Frame types and their fields. The byte layout lives in `codec.rs`.

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One unit on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame of the control stream, sent by the agent.
    Hello(Hello),
    /// The ingress's reply to [`Frame::Hello`].
    HelloReply(HelloReply),
    /// First frame of a request stream, sent by the ingress.
    RequestHead(RequestHead),
    /// First frame the agent sends back on a request stream once the upstream has responded.
    ResponseHead(ResponseHead),
    /// A piece of a request or response body.
    Data(Bytes),
    /// Trailer fields; they also end the body.
    Trailers(Vec<Header>),
    /// End of a body without trailers.
    End,
    /// Sent by the agent in place of [`Frame::ResponseHead`] when no response can be had.
    Failure(Failure),
    /// Sent by the agent on the control stream: it takes no new streams and is leaving.
    Drain,
}

/// Wire value of each frame type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    HelloReply = 0x02,
    RequestHead = 0x03,
    ResponseHead = 0x04,
    Data = 0x05,
    Trailers = 0x06,
    End = 0x07,
    Failure = 0x08,
    Drain = 0x09,
}

impl FrameType {
    /// Maps a wire byte to its frame type, or `None` for a byte this version does not know.
    pub fn from_byte(byte: u8) -> Option<Self> {
        let frame_type = match byte {
            0x01 => Self::Hello,
            0x02 => Self::HelloReply,
            0x03 => Self::RequestHead,
            0x04 => Self::ResponseHead,
            0x05 => Self::Data,
            0x06 => Self::Trailers,
            0x07 => Self::End,
            0x08 => Self::Failure,
            0x09 => Self::Drain,
            _ => return None,
        };
        Some(frame_type)
    }

    /// Name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::HelloReply => "hello reply",
            Self::RequestHead => "request head",
            Self::ResponseHead => "response head",
            Self::Data => "data",
            Self::Trailers => "trailers",
            Self::End => "end",
            Self::Failure => "failure",
            Self::Drain => "drain",
        }
    }
}

impl Frame {
    /// Type byte of this frame.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello(_) => FrameType::Hello,
            Self::HelloReply(_) => FrameType::HelloReply,
            Self::RequestHead(_) => FrameType::RequestHead,
            Self::ResponseHead(_) => FrameType::ResponseHead,
            Self::Data(_) => FrameType::Data,
            Self::Trailers(_) => FrameType::Trailers,
            Self::End => FrameType::End,
            Self::Failure(_) => FrameType::Failure,
            Self::Drain => FrameType::Drain,
        }
    }
}

/// One header or trailer field. Values are bytes because HTTP allows obs-text in them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    /// Builds a field from a name and a value.
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// The agent's opening message on the control stream.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub agent_version: String,
    pub token: String,
    /// Tunnel names the agent serves, each the first label of `<tunnel>.<domain>`.
    pub tunnels: Vec<String>,
}

// Written by hand so that the token never reaches a log line.
impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("protocol_version", &self.protocol_version)
            .field("agent_version", &self.agent_version)
            .field("token", &"<redacted>")
            .field("tunnels", &self.tunnels)
            .finish()
    }
}

/// The ingress's reply to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted {
        ingress_version: String,
        /// Public URL of each accepted tunnel, in the order of the hello.
        urls: Vec<String>,
    },
    Refused {
        reason: RefuseReason,
        message: String,
    },
}

/// Reason the ingress rejected a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    BadToken,
    UnsupportedVersion,
    InvalidName,
    NameNotAllowed,
    NameTaken,
    RateLimited,
}

impl RefuseReason {
    /// Returns whether a later attempt with the same settings can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::NameTaken | Self::RateLimited)
    }
}

/// HTTP version the public client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

/// Head of a public request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHead {
    pub tunnel: String,
    pub method: String,
    /// Path and query as the client sent them (origin form).
    pub target: String,
    pub version: HttpVersion,
    /// `http` or `https`: the scheme of the public connection.
    pub scheme: String,
    /// End-to-end fields in the order the client sent them, duplicates kept.
    pub headers: Vec<Header>,
    /// Address and port of the public client. IPv6 flow info and scope id are not carried.
    pub client_addr: SocketAddr,
    /// The client asked for a protocol upgrade (`Connection: upgrade` with `Upgrade`).
    pub upgrade: bool,
    /// The request has no body: no data, end or trailers frame follows this head.
    pub empty_body: bool,
}

/// Head of the upstream's response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<Header>,
    /// The response has no body: no data, end or trailers frame follows this head. An HTTP/2
    /// receiver can then end the stream with the headers, which gRPC needs for responses that
    /// carry their status in the headers alone.
    pub empty_body: bool,
}

/// Report that the agent could not get a response from the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

/// Kinds of [`Failure`], which the ingress maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The upstream refused the TCP connection.
    UpstreamRefused,
    /// The upstream could not be reached or the connection broke before a response head.
    UpstreamUnreachable,
    /// The upstream sent no response head in time.
    UpstreamTimeout,
    /// The agent does not serve the tunnel named in the request head.
    UnknownTunnel,
    /// The request head could not be turned into a valid upstream request.
    BadRequest,
    /// The upstream's response could not be forwarded.
    BadResponse,
}
