//! QUIC plumbing shared by `ingress` and `tunnel-agent`.
//!
//! This crate is the only place outside `protocol` that depends on the frame layout: it tunes
//! endpoints, reads and writes frames on quinn streams, turns a stream into an HTTP body and back,
//! and splices upgraded connections. It does not route requests or talk to upstreams.

#![forbid(unsafe_code)]

mod body;
mod duration;
mod endpoint;
mod frames;
mod headers;
pub mod process;
mod shared_tcp;
mod splice;

pub use body::{content_length, send_body, RecvBody, RecvBodyError, SendBodyError};
pub use duration::parse_duration;
pub use endpoint::{
    bind_endpoint, bind_endpoint_with, bind_udp, transport_config, TransportLimits,
};
pub use frames::{write_data, write_frame, FrameReader, ReadFrameError, WriteFrameError};
pub use headers::{
    from_wire, is_upgrade_request, remove_hop_by_hop, remove_hop_by_hop_except_upgrade, to_wire,
    InvalidHeader, HOP_BY_HOP,
};
pub use shared_tcp::{shutdown_write, write_all_shared, SharedTcp};
pub use splice::{splice, splice_tcp, splice_upgraded, SpliceOutcome};

/// Converts one of the `protocol::code` values into the QUIC type.
pub fn code(value: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(value)
}
