//! Raw byte splice between an upgraded HTTP connection and a QUIC stream.

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Bytes moved in each direction by [`splice`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SpliceOutcome {
    /// From the local connection to the QUIC stream.
    pub to_stream: u64,
    /// From the QUIC stream to the local connection.
    pub from_stream: u64,
}

/// Copies bytes both ways until both directions have ended. `pending` holds bytes already read
/// from `recv` past the last frame; they are written to `local` first.
///
/// A clean end on one side is passed on as a clean end (QUIC finish or TCP half-close), so
/// WebSocket close handshakes complete. An error on either side ends both directions: the
/// stream is reset and the local connection is dropped.
///
/// # Errors
///
/// Returns the first I/O error of either direction.
pub async fn splice<T>(
    local: T,
    mut send: SendStream,
    mut recv: RecvStream,
    pending: Bytes,
) -> std::io::Result<SpliceOutcome>
where
    T: AsyncRead + AsyncWrite + Send,
{
    let (mut local_read, mut local_write) = tokio::io::split(local);

    let upstream = async {
        let copied = tokio::io::copy(&mut local_read, &mut send).await?;
        send.finish()?;
        Ok::<u64, std::io::Error>(copied)
    };
    let downstream = async {
        local_write.write_all(&pending).await?;
        let copied = tokio::io::copy(&mut recv, &mut local_write).await?;
        local_write.shutdown().await?;
        Ok::<u64, std::io::Error>(copied + pending.len() as u64)
    };

    let result = tokio::try_join!(upstream, downstream);
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
