//! Long-poll agent: the private side of the baseline relay. Each poller loops over three
//! steps: poll the front for a request, replay it against the upstream with the body
//! buffered, and post the buffered response back. A poller only polls again after its post
//! has completed, as a simple agent does.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{ID_HEADER, METHOD_HEADER, POLL_PATH, RESPOND_PREFIX, STATUS_HEADER, TARGET_HEADER};
use crate::serve;

/// Time beyond the poll timeout that the front may take to respond to a poll before the
/// agent treats the poll as lost and polls again.
const POLL_GRACE: Duration = Duration::from_secs(10);
/// Time the upstream and the front each get to respond to a replayed request or a post.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause after a failed poll or post, so an unreachable front does not make the agent spin.
/// It is only taken after an error, never between successful exchanges.
const ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Agent of the long-poll baseline: polls the front for queued requests, replays each against
/// the upstream and posts the whole response back.
#[derive(Debug, Parser)]
#[command(name = "longpoll-agent", version)]
pub struct Args {
    /// Base URL of the long-poll front, e.g. http://127.0.0.1:8081.
    #[arg(long)]
    pub front: Uri,

    /// Base URL of the upstream that requests are replayed against, e.g. http://127.0.0.1:3000.
    #[arg(long)]
    pub upstream: Uri,

    /// Number of polls kept open at once. Each poller handles one request at a time.
    #[arg(long, default_value_t = 1)]
    pub pollers: usize,

    /// Seconds the front keeps a poll open while no request is queued. Set it to the front's
    /// --poll-timeout-secs.
    #[arg(long, default_value_t = 25)]
    pub poll_timeout_secs: u64,

    /// Largest upstream response body, in bytes, that the agent buffers; a larger one is sent
    /// to the front as 502.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_body_bytes: usize,
}

#[derive(Clone)]
struct Poller {
    client: Client<HttpConnector, Full<Bytes>>,
    front: String,
    upstream: String,
    poll_timeout: Duration,
    max_body_bytes: usize,
}

/// A request taken from the front.
struct Job {
    id: u64,
    request: Request<Full<Bytes>>,
}

/// Runs the pollers until SIGINT or SIGTERM.
///
/// # Errors
///
/// Returns an error when an argument is invalid.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.pollers == 0 {
        bail!("--pollers must be at least 1");
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let poller = Poller {
        client: Client::builder(TokioExecutor::new()).build(connector),
        front: base_url(&args.front, "--front")?,
        upstream: base_url(&args.upstream, "--upstream")?,
        poll_timeout: Duration::from_secs(args.poll_timeout_secs),
        max_body_bytes: args.max_body_bytes,
    };
    tracing::info!(front = %poller.front, upstream = %poller.upstream, pollers = args.pollers, "agent started");
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.pollers {
        tasks.spawn(poll_loop(poller.clone(), index));
    }
    serve::shutdown_signal().await;
    tracing::info!("shutting down");
    tasks.abort_all();
    Ok(())
}

/// Checks that `uri` is an http:// URL with a host and returns it without a trailing slash.
fn base_url(uri: &Uri, flag: &str) -> anyhow::Result<String> {
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        bail!("invalid {flag} {uri}: expected http://HOST:PORT");
    }
    Ok(uri.to_string().trim_end_matches('/').to_string())
}

async fn poll_loop(poller: Poller, index: usize) {
    loop {
        if let Err(err) = poll_once(&poller).await {
            tracing::warn!(
                poller = index,
                error = format!("{err:#}"),
                "exchange failed; polling again in 100 ms"
            );
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
}

/// Runs one poll and, when it returns a request, the replay and the post.
async fn poll_once(poller: &Poller) -> anyhow::Result<()> {
    let url = format!("{}{POLL_PATH}", poller.front);
    let request = Request::get(&url)
        .body(Full::default())
        .context("failed to build the poll request")?;
    let response = exchange(poller, request, poller.poll_timeout + POLL_GRACE)
        .await
        .with_context(|| format!("poll {url} failed"))?;
    match response.status() {
        StatusCode::NO_CONTENT => return Ok(()),
        StatusCode::OK => {}
        other => bail!("poll {url} returned {other}"),
    }
    let job = read_job(poller, response).await?;
    let id = job.id;
    let reply = replay(poller, job.request).await;
    post_reply(poller, id, reply).await
}

/// Sends a request and waits at most `timeout` for the response head.
async fn exchange(
    poller: &Poller,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> anyhow::Result<Response<Incoming>> {
    match tokio::time::timeout(timeout, poller.client.request(request)).await {
        Ok(result) => Ok(result?),
        Err(_) => bail!("timed out after {} s", timeout.as_secs()),
    }
}

/// Rebuilds the queued client request from a poll response, aimed at the upstream.
async fn read_job(poller: &Poller, response: Response<Incoming>) -> anyhow::Result<Job> {
    let (parts, body) = response.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .with_context(|| format!("poll response has no valid {name}"))
    };
    let id: u64 = header(ID_HEADER)?.parse().context("invalid request id")?;
    let method: Method = header(METHOD_HEADER)?.parse().context("invalid method")?;
    let target = header(TARGET_HEADER)?.to_string();
    let body = read_whole(body, poller.max_body_bytes)
        .await
        .context("failed to read the queued request body")?;
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{target}", poller.upstream))
        .body(Full::new(body))
        .context("failed to rebuild the queued request")?;
    *request.headers_mut() = super::unwrap_fields(&parts.headers);
    Ok(Job { id, request })
}

/// Replays a request against the upstream and buffers the whole response. An upstream
/// failure becomes a 502 response for the client.
async fn replay(poller: &Poller, request: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
    let result = async {
        let response = exchange(poller, request, EXCHANGE_TIMEOUT).await?;
        let (parts, body) = response.into_parts();
        let body = read_whole(body, poller.max_body_bytes).await?;
        anyhow::Ok((parts.status, parts.headers, body))
    }
    .await;
    result.unwrap_or_else(|err| {
        tracing::debug!(error = format!("{err:#}"), "upstream request failed");
        let body = Bytes::from(format!("upstream request failed: {err:#}\n"));
        (StatusCode::BAD_GATEWAY, HeaderMap::new(), body)
    })
}

async fn post_reply(
    poller: &Poller,
    id: u64,
    (status, fields, body): (StatusCode, HeaderMap, Bytes),
) -> anyhow::Result<()> {
    let url = format!("{}{RESPOND_PREFIX}{id}", poller.front);
    let mut request = Request::post(&url)
        .body(Full::new(body))
        .context("failed to build the response post")?;
    super::wrap_fields(&fields, request.headers_mut());
    request
        .headers_mut()
        .insert(STATUS_HEADER, HeaderValue::from(status.as_u16()));
    let response = exchange(poller, request, EXCHANGE_TIMEOUT)
        .await
        .with_context(|| format!("post {url} failed"))?;
    let status = response.status();
    // Drain the short response so the connection goes back to the pool.
    let _ = response.into_body().collect().await;
    match status {
        StatusCode::NO_CONTENT => Ok(()),
        // The client gave up and the front dropped its slot; nothing to retry.
        StatusCode::NOT_FOUND => {
            tracing::debug!(id, "front no longer waits for this response");
            Ok(())
        }
        other => bail!("post {url} returned {other}"),
    }
}

async fn read_whole(body: Incoming, limit: usize) -> anyhow::Result<Bytes> {
    let collected = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|err| anyhow::anyhow!("failed to read body: {err}"))?;
    Ok(collected.to_bytes())
}
