//! Requests to local upstreams: pooled hyper clients for ordinary requests and a dedicated
//! connection for each upgrade.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use protocol::{Failure, FailureKind, RequestHead};
use tokio::net::TcpStream;
use transport::{from_wire, remove_hop_by_hop, remove_hop_by_hop_except_upgrade, RecvBody};

use crate::config::{Config, Upstream, UpstreamProtocol};
use crate::https::HttpsConnector;

/// Response header fields the agent accepts from an HTTP/1.1 upstream.
const MAX_RESPONSE_FIELDS: usize = 500;

/// The configured upstreams and the clients that reach them.
pub(crate) struct Upstreams {
    tunnels: BTreeMap<String, Upstream>,
    http1: Client<HttpConnector, RecvBody>,
    h2c: Client<HttpConnector, RecvBody>,
    https: Client<HttpsConnector, RecvBody>,
    /// TLS for upgrades to `https://` upstreams, which offer only HTTP/1.1.
    upgrade_tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl Upstreams {
    /// Prepares the clients.
    ///
    /// # Errors
    ///
    /// Returns an error when `--upstream-ca` cannot be used.
    pub(crate) fn new(config: &Config) -> anyhow::Result<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.upstream_connect_timeout));
        let tls = crate::tls::upstream_tls(config)?;

        let mut builder = Client::builder(TokioExecutor::new());
        // hyper's default of 100 response fields is below what some applications send; the
        // ingress's own limits still apply on the way out.
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .http1_max_headers(MAX_RESPONSE_FIELDS);
        let http1 = builder.build(connector.clone());
        let https = builder.build(HttpsConnector::new(connector.clone(), tls.pooled));
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Ok(Self {
            tunnels: config.tunnels.clone(),
            http1,
            h2c,
            https,
            upgrade_tls: tokio_rustls::TlsConnector::from(tls.upgrade),
            connect_timeout: config.upstream_connect_timeout,
        })
    }

    pub(crate) fn get(&self, tunnel: &str) -> Option<&Upstream> {
        self.tunnels.get(tunnel)
    }

    /// Sends an ordinary request through the pooled client for `upstream`.
    pub(crate) async fn send(
        &self,
        upstream: &Upstream,
        request: Request<RecvBody>,
    ) -> Result<Response<Incoming>, Failure> {
        let sent = match upstream.protocol {
            UpstreamProtocol::Http1 => self.http1.request(request).await,
            UpstreamProtocol::H2c => self.h2c.request(request).await,
            UpstreamProtocol::Https => self.https.request(request).await,
        };
        sent.map_err(|err| classify(&err, &upstream.authority))
    }

    /// Sends an upgrade request on a new connection and returns the response; on `101` the
    /// connection can then be taken over with `hyper::upgrade::on`.
    pub(crate) async fn send_upgrade(
        &self,
        upstream: &Upstream,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Failure> {
        let authority = &upstream.authority;
        origin_form(&mut request, authority);
        let connect = tokio::time::timeout(self.connect_timeout, TcpStream::connect(authority));
        let stream = match connect.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(connect_failure(&err, authority)),
            Err(_) => {
                return Err(Failure {
                    kind: FailureKind::UpstreamUnreachable,
                    message: format!("connecting to upstream {authority} timed out"),
                })
            }
        };
        let _ = stream.set_nodelay(true);
        if upstream.protocol != UpstreamProtocol::Https {
            return upgrade_over(TokioIo::new(stream), request, authority).await;
        }
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(host, _)| host);
        let handshake = crate::https::handshake(&self.upgrade_tls, host, stream);
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Ok(Ok(tls)) => upgrade_over(TokioIo::new(tls), request, authority).await,
            Ok(Err(err)) => Err(Failure {
                kind: FailureKind::UpstreamUnreachable,
                message: format!(
                    "TLS handshake with upstream {authority} failed: {err}{}",
                    certificate_hint(&err.to_string())
                ),
            }),
            Err(_) => Err(Failure {
                kind: FailureKind::UpstreamUnreachable,
                message: format!("TLS handshake with upstream {authority} timed out"),
            }),
        }
    }
}

/// Sends an upgrade request on a fresh HTTP/1.1 connection over `io`.
async fn upgrade_over<I>(
    io: I,
    request: Request<Full<Bytes>>,
    authority: &str,
) -> Result<Response<Incoming>, Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|err| unreachable(&err, authority))?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(error = %err, "upstream upgrade connection failed");
        }
    });
    sender
        .send_request(request)
        .await
        .map_err(|err| unreachable(&err, authority))
}

/// Rewrites the absolute target of `request` to origin form (`/path?query`), with a Host
/// field. hyper's connection-level client writes the target as given, while servers route on
/// the path of an origin-form target. (The pooled client does this rewriting itself.)
fn origin_form<B>(request: &mut Request<B>, authority: &str) {
    let target = request
        .uri()
        .path_and_query()
        .and_then(|target| target.as_str().parse::<http::Uri>().ok())
        .unwrap_or_else(|| http::Uri::from_static("/"));
    *request.uri_mut() = target;
    if !request.headers().contains_key(http::header::HOST) {
        if let Ok(host) = http::HeaderValue::from_str(authority) {
            request.headers_mut().insert(http::header::HOST, host);
        }
    }
}

/// Turns a request head into a request for `upstream`.
///
/// # Errors
///
/// Returns a [`FailureKind::BadRequest`] failure when the method, target or a field is
/// invalid.
pub(crate) fn build_request<B>(
    head: RequestHead,
    upstream: &Upstream,
    body: B,
) -> Result<Request<B>, Failure> {
    let bad = |message: String| Failure {
        kind: FailureKind::BadRequest,
        message,
    };
    let scheme = match upstream.protocol {
        UpstreamProtocol::Https => "https",
        UpstreamProtocol::Http1 | UpstreamProtocol::H2c => "http",
    };
    let uri: http::Uri = format!("{scheme}://{}{}", upstream.authority, head.target)
        .parse()
        .map_err(|_| bad(format!("invalid request target {:?}", head.target)))?;
    let method = http::Method::from_bytes(head.method.as_bytes())
        .map_err(|_| bad(format!("invalid method {:?}", head.method)))?;
    let mut headers = from_wire(head.headers).map_err(|err| bad(err.to_string()))?;

    if head.upgrade {
        remove_hop_by_hop_except_upgrade(&mut headers);
    } else {
        remove_hop_by_hop(&mut headers);
    }

    // Over TLS the pooled client speaks what ALPN picked, whatever the request's version.
    let version = match upstream.protocol {
        UpstreamProtocol::Http1 | UpstreamProtocol::Https => Version::HTTP_11,
        UpstreamProtocol::H2c => Version::HTTP_2,
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(request)
}

fn classify(err: &hyper_util::client::legacy::Error, authority: &str) -> Failure {
    if err.is_connect() {
        if let Some(io) = find_io_error(err) {
            return connect_failure(io, authority);
        }
        return Failure {
            kind: FailureKind::UpstreamUnreachable,
            message: format!("failed to connect to upstream {authority}: {}", chain(err)),
        };
    }
    unreachable(err, authority)
}

fn connect_failure(err: &io::Error, authority: &str) -> Failure {
    let kind = if err.kind() == io::ErrorKind::ConnectionRefused {
        FailureKind::UpstreamRefused
    } else {
        FailureKind::UpstreamUnreachable
    };
    Failure {
        kind,
        message: format!(
            "failed to connect to upstream {authority}: {err}{}",
            certificate_hint(&err.to_string())
        ),
    }
}

/// Points at the flags that fix a rejected upstream certificate.
fn certificate_hint(message: &str) -> &'static str {
    if message.contains("invalid peer certificate") {
        " (give the agent the upstream's CA or certificate with --upstream-ca, or use \
         --upstream-insecure for a development server's self-signed certificate)"
    } else {
        ""
    }
}

fn unreachable(err: &dyn std::error::Error, authority: &str) -> Failure {
    Failure {
        kind: FailureKind::UpstreamUnreachable,
        message: format!(
            "upstream {authority} failed before a response head: {}",
            chain(err)
        ),
    }
}

fn find_io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut source = err.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        source = err.source();
    }
    None
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text
}
