//! The one HTTP client every path is measured with: hyper's pooled HTTP/1.1 client with
//! TCP_NODELAY, plus helpers that send pattern bodies and check the bodies that come back.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use http::{header, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::pattern::{self, Checker};
use crate::Body;

/// Destination of a path's requests: the TCP address to connect to and, for the tunnel, the
/// Host that selects the tunnel.
#[derive(Debug, Clone)]
pub struct Target {
    /// Name in tables and charts.
    pub label: String,
    /// `host:port` the client connects to.
    pub authority: String,
    /// Path prefix in front of every endpoint, without a trailing slash; usually empty.
    pub prefix: String,
    /// Host field to send in place of `authority`.
    pub host: Option<String>,
}

impl Target {
    /// Builds a target for a local listener.
    pub fn local(label: &str, addr: SocketAddr, host: Option<&str>) -> Self {
        Self {
            label: label.to_string(),
            authority: addr.to_string(),
            prefix: String::new(),
            host: host.map(str::to_string),
        }
    }

    /// Builds a target from an http:// URL; the URL's authority is both the address and the
    /// Host, and its path becomes the prefix.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("{url:?}: only http:// URLs are supported");
        }
        let Some(authority) = uri.authority() else {
            bail!("{url:?} has no host");
        };
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        if uri.query().is_some() {
            bail!("{url:?}: a query string is not supported");
        }
        Ok(Self {
            label: url.trim_end_matches('/').to_string(),
            authority,
            prefix: uri.path().trim_end_matches('/').to_string(),
            host: None,
        })
    }

    /// Returns the absolute URL of `path_and_query` on this target.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}{path_and_query}", self.authority, self.prefix)
    }

    /// Returns the URL a reader would type, with the tunnel Host where there is one.
    pub fn display_url(&self) -> String {
        match &self.host {
            Some(host) => format!("http://{host} via {}", self.authority),
            None => format!("http://{}{}", self.authority, self.prefix),
        }
    }
}

/// Pooled HTTP/1.1 client; one connection per concurrent request, reused between requests.
#[derive(Debug, Clone)]
pub(super) struct HttpClient {
    inner: Client<HttpConnector, Body>,
}

impl HttpClient {
    /// Builds a client with TCP_NODELAY on every connection.
    pub(super) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let inner = Client::builder(TokioExecutor::new()).build(connector);
        Self { inner }
    }

    /// Sends one request and waits at most `timeout` for the response head.
    pub(super) async fn send(
        &self,
        target: &Target,
        method: Method,
        path_and_query: &str,
        body: Body,
        content_length: Option<u64>,
        timeout: Duration,
    ) -> anyhow::Result<Response<Incoming>> {
        let url = target.url(path_and_query);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .body(body)
            .with_context(|| format!("failed to build a request for {url}"))?;
        if let Some(host) = &target.host {
            let host = HeaderValue::from_str(host).context("invalid Host")?;
            request.headers_mut().insert(header::HOST, host);
        }
        if let Some(length) = content_length {
            request
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
        match tokio::time::timeout(timeout, self.inner.request(request)).await {
            Ok(result) => result.with_context(|| format!("request to {url} failed")),
            Err(_) => bail!("no response from {url} within {} s", timeout.as_secs()),
        }
    }

    /// Sends a GET without a body.
    pub(super) async fn get(
        &self,
        target: &Target,
        path_and_query: &str,
        timeout: Duration,
    ) -> anyhow::Result<Response<Incoming>> {
        let body = crate::empty_body();
        self.send(target, Method::GET, path_and_query, body, None, timeout)
            .await
    }
}

/// Builds an upload body of `total` pattern bytes, generated chunk by chunk.
pub(super) fn pattern_body(total: u64) -> Body {
    let frames = futures_util::stream::iter(pattern::chunks(total))
        .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    StreamBody::new(frames).boxed_unsync()
}

/// Reads a response body to its end and checks that it is exactly `expected` pattern bytes.
pub(super) async fn drain_pattern(body: Incoming, expected: u64) -> anyhow::Result<()> {
    let mut body = body;
    let mut checker = Checker::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| {
            format!("body cut after {} of {expected} bytes", checker.received())
        })?;
        if let Some(data) = frame.data_ref() {
            checker.update(data);
        }
    }
    if checker.received() != expected {
        bail!(
            "wrong body length: expected {expected} bytes, got {}",
            checker.received()
        );
    }
    if let Some(offset) = checker.first_mismatch() {
        bail!("wrong body bytes: first difference at offset {offset} of {expected}");
    }
    Ok(())
}

/// Reads a short response body as text, up to `limit` bytes.
pub(super) async fn read_text(body: Incoming, limit: usize) -> anyhow::Result<String> {
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|err| anyhow::anyhow!("failed to read response body: {err}"))?;
    Ok(String::from_utf8_lossy(&collected.to_bytes()).into_owned())
}

/// Fails with the status and the start of the body unless the response is 200.
pub(super) async fn expect_ok(response: Response<Incoming>) -> anyhow::Result<Response<Incoming>> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let text = read_text(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    bail!("status {status}: {}", text.trim());
}
