//! Reading and writing frames on quinn streams.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use protocol::{DecodeError, EncodeError, Frame, FrameDecoder, MAX_DATA_CHUNK};
use quinn::{ReadError, RecvStream, SendStream, WriteError};

/// Error reading the next frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("stream reset by peer with code {0}")]
    Reset(u64),
    #[error("failed to read stream: {0}")]
    Read(io::Error),
}

/// Error writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum WriteFrameError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("failed to write stream: {0}")]
    Write(#[from] WriteError),
}

/// Reader of frames from a receive stream, through a buffer of at most one frame plus one
/// read.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    finished: bool,
}

// Bytes asked of the stream per read. Reads return what quinn has, up to this.
const READ_SIZE: usize = MAX_DATA_CHUNK + protocol::HEADER_LEN;

impl FrameReader {
    /// Wraps `recv`, rejecting frames with payloads over `max_frame_len`.
    pub fn new(recv: RecvStream, max_frame_len: u32) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_frame_len),
            finished: false,
        }
    }

    /// Reads the next frame, or `None` when the peer finished the stream between frames.
    ///
    /// # Errors
    ///
    /// Returns [`ReadFrameError`] on a reset, a lost connection, a frame that does not decode,
    /// or a stream that ended inside a frame.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadFrameError> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Poll form of [`FrameReader::next`].
    ///
    /// # Errors
    ///
    /// The same as [`FrameReader::next`].
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Frame>, ReadFrameError>> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                return Poll::Ready(Ok(Some(frame)));
            }
            if self.finished {
                self.decoder.finish(&self.buf)?;
                return Poll::Ready(Ok(None));
            }
            self.buf.reserve(READ_SIZE);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.recv),
                cx,
                &mut self.buf
            ));
            match read {
                Ok(0) => self.finished = true,
                Ok(_) => {}
                Err(err) => return Poll::Ready(Err(read_error(err))),
            }
        }
    }

    /// Stops the peer from sending more on this stream.
    pub fn stop(&mut self, code: u32) {
        // An error means the stream is already closed, which is the goal.
        let _ = self.recv.stop(crate::code(code));
    }

    /// Gives back the stream and whatever bytes were read past the last frame, for a stream that
    /// switches to raw bytes after an upgrade.
    pub fn into_parts(self) -> (RecvStream, Bytes) {
        (self.recv, self.buf.freeze())
    }
}

fn read_error(err: io::Error) -> ReadFrameError {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ReadError>())
    {
        Some(ReadError::Reset(code)) => ReadFrameError::Reset(code.into_inner()),
        _ => ReadFrameError::Read(err),
    }
}

/// Writes one frame.
///
/// # Errors
///
/// Returns [`WriteFrameError`] when the frame is over `max_frame_len` or the stream is closed.
pub async fn write_frame(
    send: &mut SendStream,
    frame: &Frame,
    max_frame_len: u32,
) -> Result<(), WriteFrameError> {
    let mut buf = BytesMut::new();
    protocol::encode(frame, max_frame_len, &mut buf)?;
    send.write_all(&buf).await?;
    Ok(())
}

/// Writes `data` as one or more data frames without copying the payload.
///
/// # Errors
///
/// Returns [`WriteFrameError::Write`] when the peer stopped the stream or the connection is gone.
pub async fn write_data(send: &mut SendStream, mut data: Bytes) -> Result<(), WriteFrameError> {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(MAX_DATA_CHUNK));
        let header = protocol::encode_data_header(piece.len(), MAX_DATA_CHUNK as u32)?;
        send.write_all_chunks(&mut [Bytes::copy_from_slice(&header), piece])
            .await?;
        // quinn wakes every writer blocked on the connection's send buffer at once, and the
        // first one polled would take all the freed space. Yielding after each piece lets the
        // other streams' writers take their turn, so concurrent bodies share the connection
        // instead of some waiting seconds behind the rest.
        tokio::task::yield_now().await;
    }
    Ok(())
}
