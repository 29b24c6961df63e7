//! Raw byte splice between an upgraded HTTP connection and a QUIC stream.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::shared_tcp::{shutdown_write, write_all_shared, SharedTcp};

/// Bytes moved in each direction by a splice.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpliceOutcome {
    /// From the local connection to the QUIC stream.
    pub to_stream: u64,
    /// From the QUIC stream to the local connection.
    pub from_stream: u64,
}

/// Copies bytes both ways until both directions have ended. `pending` contains bytes already read
/// from `recv` past the last frame; they are written to `local` first.
///
/// A clean end on one side is passed on as a clean end (QUIC finish or TCP half-close), so
/// WebSocket close handshakes complete. An error on either side ends both directions: the
/// stream is reset and the local connection is dropped.
///
/// This generic form keeps an 8 KiB copy buffer per direction for the life of the connection;
/// [`splice_tcp`] avoids that for plain TCP sockets.
///
/// # Errors
///
/// Returns the first I/O error of either direction.
pub async fn splice<T>(
    local: T,
    mut send: SendStream,
    mut recv: RecvStream,
    pending: Bytes,
) -> io::Result<SpliceOutcome>
where
    T: AsyncRead + AsyncWrite + Send,
{
    let (mut local_read, mut local_write) = tokio::io::split(local);

    let upstream = async {
        let copied = tokio::io::copy(&mut local_read, &mut send).await?;
        send.finish()?;
        Ok::<u64, io::Error>(copied)
    };
    let downstream = async {
        local_write.write_all(&pending).await?;
        let copied = tokio::io::copy(&mut recv, &mut local_write).await?;
        local_write.shutdown().await?;
        Ok::<u64, io::Error>(copied + pending.len() as u64)
    };

    let result = tokio::try_join!(upstream, downstream);
    finish(result, &mut send, &mut recv)
}

/// [`splice`] for a TCP socket. `local_buffered` contains bytes the HTTP layer had already read
/// from the socket; they go to the stream first. An idle connection keeps no buffer: the
/// socket is read only once it is readable, and the stream side hands over quinn's own chunks.
///
/// # Errors
///
/// Returns the first I/O error of either direction.
pub async fn splice_tcp(
    local: Arc<TcpStream>,
    local_buffered: Bytes,
    mut send: SendStream,
    mut recv: RecvStream,
    pending: Bytes,
) -> io::Result<SpliceOutcome> {
    let upstream = async {
        let mut copied = local_buffered.len() as u64;
        if !local_buffered.is_empty() {
            send.write_chunk(local_buffered).await?;
        }
        loop {
            local.readable().await?;
            let mut buf = BytesMut::with_capacity(TCP_READ_SIZE);
            match local.try_read_buf(&mut buf) {
                Ok(0) => break,
                Ok(read) => {
                    copied += read as u64;
                    send.write_chunk(buf.freeze()).await?;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(err),
            }
        }
        send.finish()?;
        Ok::<u64, io::Error>(copied)
    };
    let downstream = async {
        let mut copied = pending.len() as u64;
        write_all_shared(&local, &pending).await?;
        while let Some(chunk) = recv.read_chunk(TCP_READ_SIZE, true).await? {
            copied += chunk.bytes.len() as u64;
            write_all_shared(&local, &chunk.bytes).await?;
        }
        shutdown_write(&local)?;
        Ok::<u64, io::Error>(copied)
    };

    let result = tokio::try_join!(upstream, downstream);
    finish(result, &mut send, &mut recv)
}

const TCP_READ_SIZE: usize = 16 * 1024;

/// Splices a hyper upgraded connection, taking the buffer-free path of [`splice_tcp`] when the
/// connection is a plain TCP socket, which it is for both the public listener and upstreams.
///
/// # Errors
///
/// Returns the first I/O error of either direction.
pub async fn splice_upgraded(
    upgraded: hyper::upgrade::Upgraded,
    send: SendStream,
    recv: RecvStream,
    pending: Bytes,
) -> io::Result<SpliceOutcome> {
    let upgraded = match upgraded.downcast::<hyper_util::rt::TokioIo<TcpStream>>() {
        Ok(parts) => {
            let local = Arc::new(parts.io.into_inner());
            return splice_tcp(local, parts.read_buf, send, recv, pending).await;
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<hyper_util::rt::TokioIo<SharedTcp>>() {
        Ok(parts) => {
            let local = parts.io.into_inner().stream().clone();
            splice_tcp(local, parts.read_buf, send, recv, pending).await
        }
        Err(upgraded) => {
            tracing::debug!(
                "upgraded connection is not a plain TCP socket; copying through buffers"
            );
            let local = hyper_util::rt::TokioIo::new(upgraded);
            splice(local, send, recv, pending).await
        }
    }
}

fn finish(
    result: io::Result<(u64, u64)>,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> io::Result<SpliceOutcome> {
    match result {
        Ok((to_stream, from_stream)) => Ok(SpliceOutcome {
            to_stream,
            from_stream,
        }),
        Err(err) => {
            let _ = send.reset(crate::code(protocol::code::STREAM_ABORTED));
            let _ = recv.stop(crate::code(protocol::code::STREAM_CANCELLED));
            Err(err)
        }
    }
}
