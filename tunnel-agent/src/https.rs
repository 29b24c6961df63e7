//! TLS to `https://` upstreams: a connector for hyper-util's pooled client, which reports an
//! ALPN choice of HTTP/2 so the pool speaks it, and the handshake the upgrade path uses.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects over TCP with hyper-util's connector, then runs the TLS handshake.
#[derive(Clone)]
pub(crate) struct HttpsConnector {
    tcp: HttpConnector,
    tls: tokio_rustls::TlsConnector,
}

impl HttpsConnector {
    pub(crate) fn new(mut tcp: HttpConnector, tls: Arc<rustls::ClientConfig>) -> Self {
        // The URIs this connector gets have the https scheme.
        tcp.enforce_http(false);
        Self {
            tcp,
            tls: tokio_rustls::TlsConnector::from(tls),
        }
    }
}

impl tower_service::Service<http::Uri> for HttpsConnector {
    type Response = HttpsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpsStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default().to_string();
        let connecting = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let stream = handshake(&tls, &host, tcp).await?;
            Ok(HttpsStream(TokioIo::new(stream)))
        })
    }
}

/// Runs the TLS handshake with the upstream at `host` (a name or an address, IPv6 in
/// brackets or not) over `tcp`.
///
/// # Errors
///
/// Returns an error when `host` is not a valid server name or the handshake fails.
pub(crate) async fn handshake(
    tls: &tokio_rustls::TlsConnector,
    host: &str,
    tcp: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name"),
        )
    })?;
    tls.connect(name, tcp).await
}

/// A TLS connection to an upstream, as hyper's pooled client uses it.
pub(crate) struct HttpsStream(TokioIo<TlsStream<TcpStream>>);

impl Connection for HttpsStream {
    fn connected(&self) -> Connected {
        let (tcp, session) = self.0.inner().get_ref();
        let connected = tcp.connected();
        if session.alpn_protocol() == Some(b"h2".as_slice()) {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl Read for HttpsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for HttpsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
