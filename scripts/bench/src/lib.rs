//! Tools that compare ingress-tunnel with direct access and with a long-poll relay, all on
//! loopback: a demo upstream, the long-poll baseline (front and agent), and the measuring
//! orchestrator behind `compare-latency`. Nothing here is part of the product.

#![forbid(unsafe_code)]

pub mod clock;
pub mod compare;
pub mod longpoll;
pub mod pattern;
pub mod serve;
pub mod upstream;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Body type of every request and response these tools build.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Wraps bytes that are already in memory as a [`Body`].
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// Returns a [`Body`] without data.
pub fn empty_body() -> Body {
    Empty::new().boxed_unsync()
}
