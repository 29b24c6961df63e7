//! Errors of the public proxy path and the status each becomes.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use protocol::{Failure, FailureKind};

use crate::registry::RouteError;
use crate::{full_body, ProxyBody};

/// Error that left a public request without a response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the Host header is missing or invalid")]
    BadHost,
    #[error("too many connections from this address")]
    TooManyConnections,
    #[error("the request has both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("only the chunked transfer coding is supported, once")]
    UnsupportedCoding,
    #[error("the request's framing could not be checked")]
    UncheckedFraming,
    #[error("CONNECT is not supported: the ingress is a reverse proxy, not a forward proxy")]
    ConnectNotSupported,
    #[error("the request body is invalid: {0}")]
    BadRequestBody(String),
    #[error("request head of {size} bytes is over the maximum of {max} bytes")]
    HeadTooLarge { size: usize, max: u32 },
    #[error("request head has {count} header fields, over the maximum of {max}")]
    TooManyFields { count: usize, max: usize },
    #[error("host {0:?} is not under this ingress's domain")]
    ForeignHost(String),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("tunnel {tunnel:?}: agent connection failed: {reason}")]
    AgentLost { tunnel: String, reason: String },
    #[error("tunnel {tunnel:?}: the agent reported: {}", failure.message)]
    Agent { tunnel: String, failure: Failure },
    #[error("tunnel {tunnel:?}: the agent already has {limit} requests in flight")]
    AgentBusy { tunnel: String, limit: u32 },
    #[error("tunnel {tunnel:?}: the upstream did not send a response head within {seconds} s")]
    HeaderTimeout { tunnel: String, seconds: u64 },
    #[error("tunnel {tunnel:?}: invalid response from agent: {reason}")]
    BadResponse { tunnel: String, reason: String },
}

impl ProxyError {
    /// Status code sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadHost
            | Self::LengthAndChunked
            | Self::UncheckedFraming
            | Self::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            Self::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            Self::TooManyConnections | Self::AgentBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::HeadTooLarge { .. } | Self::TooManyFields { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::ForeignHost(_) | Self::Route(RouteError::UnknownTunnel(_)) => {
                StatusCode::NOT_FOUND
            }
            Self::Route(RouteError::NoAgent(_)) | Self::AgentLost { .. } => StatusCode::BAD_GATEWAY,
            Self::Agent { failure, .. } => match failure.kind {
                FailureKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
                FailureKind::BadRequest => StatusCode::BAD_REQUEST,
                FailureKind::UpstreamRefused
                | FailureKind::UpstreamUnreachable
                | FailureKind::UnknownTunnel
                | FailureKind::BadResponse => StatusCode::BAD_GATEWAY,
            },
            Self::HeaderTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BadResponse { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Short machine-readable cause, sent in the `x-ingress-error` header.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::BadHost => "bad-host",
            Self::LengthAndChunked => "length-and-chunked",
            Self::UnsupportedCoding => "unsupported-transfer-coding",
            Self::UncheckedFraming => "unchecked-framing",
            Self::ConnectNotSupported => "connect-not-supported",
            Self::BadRequestBody(_) => "bad-request-body",
            Self::TooManyConnections => "too-many-connections",
            Self::AgentBusy { .. } => "agent-busy",
            Self::HeadTooLarge { .. } => "head-too-large",
            Self::TooManyFields { .. } => "too-many-fields",
            Self::ForeignHost(_) | Self::Route(RouteError::UnknownTunnel(_)) => "unknown-tunnel",
            Self::Route(RouteError::NoAgent(_)) => "no-agent",
            Self::AgentLost { .. } => "agent-lost",
            Self::Agent { failure, .. } => match failure.kind {
                FailureKind::UpstreamRefused => "upstream-refused",
                FailureKind::UpstreamUnreachable => "upstream-unreachable",
                FailureKind::UpstreamTimeout => "upstream-timeout",
                FailureKind::UnknownTunnel => "tunnel-not-served",
                FailureKind::BadRequest => "bad-request",
                FailureKind::BadResponse => "bad-upstream-response",
            },
            Self::HeaderTimeout { .. } => "upstream-timeout",
            Self::BadResponse { .. } => "bad-agent-response",
        }
    }

    /// Plain-text response for the client.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let text = format!(
            "{} {}: {self}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        let mut response = Response::new(full_body(Bytes::from(text)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        headers.insert(
            "x-ingress-error",
            header::HeaderValue::from_static(self.cause()),
        );
        // After these the connection cannot go on: the rest of the request was not read, or
        // its framing is in doubt.
        if matches!(
            self,
            Self::TooManyConnections
                | Self::HeadTooLarge { .. }
                | Self::BadHost
                | Self::ConnectNotSupported
                | Self::BadRequestBody(_)
                | Self::LengthAndChunked
                | Self::UnsupportedCoding
                | Self::UncheckedFraming
        ) {
            headers.insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
