//! HTTP clients for the tests. Every host name resolves to 127.0.0.1, so URLs can name a
//! tunnel (`app.localhost`) and the request carries the right Host or `:authority`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::BoxError;

/// Request body type of the test clients.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// HTTP version a test client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge, no TLS.
    H2c,
}

/// Resolves every name to the loopback address.
#[derive(Clone)]
pub struct LoopbackResolver;

impl tower_service::Service<Name> for LoopbackResolver {
    type Response = std::iter::Once<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _name: Name) -> Self::Future {
        Box::pin(async { Ok(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0)))) })
    }
}

/// Builds a pooled client for `protocol`.
pub fn client(protocol: Protocol) -> Client<HttpConnector<LoopbackResolver>, TestBody> {
    let mut connector = HttpConnector::new_with_resolver(LoopbackResolver);
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    if protocol == Protocol::H2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}

/// Empty request body.
pub fn empty() -> TestBody {
    Empty::new()
        .map_err(|never| -> BoxError { match never {} })
        .boxed()
}

/// Request body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| -> BoxError { match never {} })
        .boxed()
}

/// Sends a GET and returns the response head.
pub async fn get(protocol: Protocol, url: &str) -> Response<Incoming> {
    let request = Request::get(url).body(empty()).expect("valid request");
    send(protocol, request).await
}

/// Sends `request` on a new client for `protocol`, failing the test after 20 s.
pub async fn send(protocol: Protocol, request: Request<TestBody>) -> Response<Incoming> {
    let response = tokio::time::timeout(Duration::from_secs(20), client(protocol).request(request));
    response
        .await
        .expect("response head within 20 s")
        .expect("request succeeds")
}

/// A response read to its end.
#[derive(Debug)]
pub struct Collected {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends a GET and reads the whole response.
pub async fn get_all(protocol: Protocol, url: &str) -> Collected {
    collect(get(protocol, url).await).await
}

/// Reads a response to its end, failing the test after 20 s.
pub async fn collect(response: Response<Incoming>) -> Collected {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body within 20 s")
        .expect("body completes")
        .to_bytes();
    Collected {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Reads body chunks and stamps each with its arrival time.
pub async fn timed_chunks(body: &mut Incoming, limit: Duration) -> Vec<(Instant, Bytes)> {
    let deadline = Instant::now() + limit;
    let mut chunks = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    chunks.push((Instant::now(), data));
                }
            }
            Ok(Some(Err(err))) => panic!("body failed: {err}"),
            Ok(None) => return chunks,
            Err(_) => panic!("body not finished within {limit:?}"),
        }
    }
}
