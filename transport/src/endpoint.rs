//! Endpoint and transport tuning common to both sides.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{EndpointConfig, IdleTimeout, ServerConfig, TokioRuntime, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

/// Per-connection transport settings.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// How many request streams the peer may open at once.
    pub max_concurrent_streams: u32,
    /// Flow-control window of one stream, in bytes.
    pub stream_window: u32,
    /// Flow-control window of the whole connection, in bytes.
    pub connection_window: u32,
    /// Interval between keep-alive packets when the connection is otherwise quiet.
    pub keep_alive: Duration,
    /// Time without any packet from the peer after which the connection is dead.
    pub idle_timeout: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        // A 4 MiB stream window keeps one stream at about 1.6 Gbit/s over a 20 ms round trip
        // (window / RTT), and caps what one slow reader can make its peer buffer.
        Self {
            max_concurrent_streams: 4096,
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            // Common NAT UDP mappings expire after 30 s of silence, so 2 s stays well inside
            // that. A peer that sends nothing for 10 s (five keep-alive periods) is taken as dead.
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Builds the QUIC transport configuration for `limits`.
///
/// # Errors
///
/// Returns an error when the idle timeout does not fit the QUIC variable-length integer.
pub fn transport_config(limits: &TransportLimits) -> io::Result<TransportConfig> {
    let idle = IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "idle timeout is too large"))?;

    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.max_concurrent_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(limits.stream_window))
        .receive_window(VarInt::from_u32(limits.connection_window))
        .send_window(u64::from(limits.connection_window))
        .keep_alive_interval(Some(limits.keep_alive))
        .max_idle_timeout(Some(idle));
    Ok(config)
}

/// Binds a UDP socket with large buffers and wraps it in a quinn endpoint, a server endpoint
/// when `server` is given.
///
/// # Errors
///
/// Returns an error when the socket cannot be created or bound to `addr`.
pub fn bind_endpoint(
    addr: SocketAddr,
    server: Option<ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    bind_endpoint_with(addr, server, EndpointConfig::default())
}

/// [`bind_endpoint`] with an endpoint configuration, for a server that keeps its stateless
/// reset key across restarts.
///
/// # Errors
///
/// Returns an error when the socket cannot be created or bound to `addr`.
pub fn bind_endpoint_with(
    addr: SocketAddr,
    server: Option<ServerConfig>,
    config: EndpointConfig,
) -> io::Result<quinn::Endpoint> {
    let socket = bind_udp(addr)?;
    quinn::Endpoint::new(config, server, socket, Arc::new(TokioRuntime))
}

// The kernel caps these at net.core.rmem_max / wmem_max, so asking for more is harmless. The
// default of about 200 KiB drops datagrams in bursts on a fast link.
const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// Binds a UDP socket with large buffers, for [`bind_endpoint`] or `Endpoint::rebind`.
///
/// # Errors
///
/// Returns an error when the socket cannot be created or bound to `addr`.
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    if let Err(err) = socket.set_recv_buffer_size(UDP_BUFFER) {
        tracing::debug!(%err, "could not raise UDP receive buffer");
    }
    if let Err(err) = socket.set_send_buffer_size(UDP_BUFFER) {
        tracing::debug!(%err, "could not raise UDP send buffer");
    }
    socket.bind(&addr.into())?;
    tracing::debug!(
        recv_buffer = socket.recv_buffer_size().unwrap_or(0),
        send_buffer = socket.send_buffer_size().unwrap_or(0),
        "UDP socket bound"
    );
    Ok(socket.into())
}
