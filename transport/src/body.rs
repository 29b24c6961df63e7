//! HTTP bodies carried as data frames: a receive stream seen as an `http_body::Body`, and a pump
//! that writes any body onto a send stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame as BodyFrame, SizeHint};
use http_body_util::BodyExt;
use protocol::Frame;
use quinn::SendStream;

use crate::frames::{write_data, write_frame, FrameReader, ReadFrameError, WriteFrameError};
use crate::headers::{from_wire, to_wire, InvalidHeader};

/// Error that ended a body read from a stream before its end.
#[derive(Debug, thiserror::Error)]
pub enum RecvBodyError {
    #[error(transparent)]
    Read(#[from] ReadFrameError),
    #[error("stream finished before the end of the body")]
    Truncated,
    #[error("unexpected {0} frame inside a body")]
    UnexpectedFrame(&'static str),
    #[error("invalid trailer: {0}")]
    InvalidTrailer(#[from] InvalidHeader),
}

/// A body whose bytes arrive as data frames on a QUIC stream and end with an end or trailers
/// frame. Dropping it early stops the peer's send side, so the peer stops reading its source.
#[derive(Debug)]
pub struct RecvBody {
    reader: FrameReader,
    done: bool,
    /// The `Content-Length` of the head, used only as a size hint.
    length: Option<u64>,
}

impl RecvBody {
    /// Wraps a reader positioned just after a head frame.
    pub fn new(reader: FrameReader, length: Option<u64>) -> Self {
        Self {
            reader,
            done: false,
            length,
        }
    }
}

impl RecvBody {
    /// Wraps a reader for a head marked `empty_body`: the body ends before any frame.
    pub fn empty(reader: FrameReader) -> Self {
        Self {
            reader,
            done: true,
            length: Some(0),
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = RecvBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, RecvBodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            let frame = match self.reader.poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return self.fail(err.into()),
                Poll::Ready(Ok(None)) => return self.fail(RecvBodyError::Truncated),
                Poll::Ready(Ok(Some(frame))) => frame,
            };
            match frame {
                Frame::Data(data) if data.is_empty() => continue,
                Frame::Data(data) => return Poll::Ready(Some(Ok(BodyFrame::data(data)))),
                Frame::End => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Frame::Trailers(fields) => {
                    self.done = true;
                    return match from_wire(fields) {
                        Ok(map) => Poll::Ready(Some(Ok(BodyFrame::trailers(map)))),
                        Err(err) => self.fail(err.into()),
                    };
                }
                other => {
                    return self.fail(RecvBodyError::UnexpectedFrame(other.frame_type().name()))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

impl RecvBody {
    fn fail(
        &mut self,
        err: RecvBodyError,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, RecvBodyError>>> {
        self.done = true;
        if !matches!(err, RecvBodyError::Read(ReadFrameError::Reset(_))) {
            self.reader.stop(protocol::code::PROTOCOL_ERROR);
        }
        Poll::Ready(Some(Err(err)))
    }
}

/// Error that stopped [`send_body`] before the end of the body.
#[derive(Debug, thiserror::Error)]
pub enum SendBodyError<E> {
    /// Reading the body failed. The stream should be reset, so the peer gets an abort.
    #[error("failed to read body: {0}")]
    Source(E),
    /// Writing failed: the peer stopped the stream or the connection is gone.
    #[error(transparent)]
    Write(#[from] WriteFrameError),
    /// The peer stopped the stream while the body had nothing to send.
    #[error("peer stopped the stream")]
    Stopped,
}

/// Writes every frame of `body` to `send`, then an end or trailers frame. Each chunk is written
/// before the next is read, so a slow peer slows the source through QUIC flow control. While
/// waiting for the body it also watches for the peer stopping the stream, so an idle source
/// (an event stream between events) is dropped as soon as the peer's client goes away.
///
/// # Errors
///
/// Returns [`SendBodyError::Source`] when the body fails, and [`SendBodyError::Write`] or
/// [`SendBodyError::Stopped`] when the stream does; the caller decides whether to reset it.
pub async fn send_body<B>(
    body: B,
    send: &mut SendStream,
    max_frame_len: u32,
) -> Result<u64, SendBodyError<B::Error>>
where
    B: Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut stopped = std::pin::pin!(send.stopped());
    let mut sent = 0u64;
    loop {
        let next = tokio::select! {
            biased;
            next = body.frame() => next,
            _ = &mut stopped => return Err(SendBodyError::Stopped),
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(SendBodyError::Source)?;
        match frame.into_data() {
            Ok(data) => {
                sent += data.len() as u64;
                write_data(send, data).await?;
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let fields = to_wire(&trailers);
                    write_frame(send, &Frame::Trailers(fields), max_frame_len).await?;
                    return Ok(sent);
                }
            }
        }
    }
    write_frame(send, &Frame::End, max_frame_len).await?;
    Ok(sent)
}

/// Returns the `Content-Length` of a head, when it contains one valid number.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}
