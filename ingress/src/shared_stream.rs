//! A stream shared between hyper and the task serving the connection, so the task can still
//! write to it after hyper has given up: a `408` for a request head that did not arrive in
//! time, over TLS. [`LateWrite`] is that late write, for this stream and for plain TCP's
//! `transport::SharedTcp`, which also allows a copy-free splice after an upgrade.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A clonable handle to one stream. hyper and the serving task never use it at the same time,
/// so the lock is never contended.
#[derive(Debug)]
pub(crate) struct SharedStream<S>(Arc<Mutex<S>>);

impl<S> Clone for SharedStream<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> SharedStream<S> {
    pub(crate) fn new(stream: S) -> Self {
        Self(Arc::new(Mutex::new(stream)))
    }

    fn lock(&self) -> MutexGuard<'_, S> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A connection that the serving task can still write to after hyper has given up on it.
pub(crate) trait LateWrite {
    /// Writes all of `bytes`, then shuts the write side down (for TLS: sends close_notify).
    fn write_and_close(&self, bytes: &'static [u8]) -> impl Future<Output = io::Result<()>> + Send;
}

impl<S: AsyncWrite + Unpin + Send> LateWrite for SharedStream<S> {
    async fn write_and_close(&self, bytes: &'static [u8]) -> io::Result<()> {
        let mut this = self.clone();
        this.write_all(bytes).await?;
        this.shutdown().await
    }
}

impl LateWrite for transport::SharedTcp {
    async fn write_and_close(&self, bytes: &'static [u8]) -> io::Result<()> {
        transport::write_all_shared(self.stream(), bytes).await?;
        transport::shutdown_write(self.stream())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SharedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SharedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}
