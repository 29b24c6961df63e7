//! A TCP stream shared between hyper and the code that serves the connection. The ingress can
//! then still write to a socket after hyper has given up on it (a `408` for a request head that
//! did not arrive in time), and splice it without copy buffers after an upgrade.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A clonable handle to one TCP stream. Reads and writes go through `&TcpStream`, which tokio
/// allows from any number of handles; the caller keeps them from interleaving.
#[derive(Debug, Clone)]
pub struct SharedTcp {
    stream: Arc<TcpStream>,
    read_since_write: Arc<AtomicU64>,
}

impl SharedTcp {
    /// Wraps `stream`.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream: Arc::new(stream),
            read_since_write: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Returns the underlying stream.
    pub fn stream(&self) -> &Arc<TcpStream> {
        &self.stream
    }

    /// Returns the bytes read since the last write: non-zero while a request is arriving and no
    /// response has been written yet, zero on an idle keep-alive connection.
    pub fn read_since_write(&self) -> u64 {
        self.read_since_write.load(Ordering::Relaxed)
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            // A would-block result clears the readiness, so the next poll waits again.
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    self.read_since_write
                        .fetch_add(read as u64, Ordering::Relaxed);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(written) => {
                    self.read_since_write.store(0, Ordering::Relaxed);
                    return Poll::Ready(Ok(written));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Ok(written) => {
                    self.read_since_write.store(0, Ordering::Relaxed);
                    return Poll::Ready(Ok(written));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.stream))
    }
}

/// Writes all of `bytes` through a shared reference.
///
/// # Errors
///
/// Returns the socket's error.
pub async fn write_all_shared(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Half-closes the write side: the peer reads end of stream.
///
/// # Errors
///
/// Returns the socket's error; a socket that is already closed is not an error.
pub fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(stream).shutdown(Shutdown::Write) {
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}
