//! Long-poll front: the public side of the baseline relay. It reads each client request
//! whole, queues it, hands it to the next agent poll and responds to the client once the
//! agent has posted the whole response.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::sync::{mpsc, oneshot};

use super::{ID_HEADER, METHOD_HEADER, POLL_PATH, RESPOND_PREFIX, STATUS_HEADER, TARGET_HEADER};
use crate::{empty_body, full_body, serve, Body};

/// Public HTTP front of the long-poll baseline. Client requests on any path are read whole
/// and queued. An agent collects them with GET /_poll and posts each response to
/// POST /_respond/ID.
#[derive(Debug, Parser)]
#[command(name = "longpoll-front", version)]
pub struct Args {
    /// Address to listen on for clients and agents; port 0 picks a free port. The bound address
    /// is printed on stdout as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Seconds a poll is kept open while no request is queued, after which the front returns
    /// 204.
    #[arg(long, default_value_t = 25)]
    pub poll_timeout_secs: u64,

    /// Seconds a client waits for the agent's response before it gets 504.
    #[arg(long, default_value_t = 60)]
    pub response_timeout_secs: u64,

    /// Largest request or response body, in bytes, that the front buffers. A larger request
    /// gets 413; a larger response reaches the client as 502.
    #[arg(long, default_value_t = 1 << 30)]
    pub max_body_bytes: usize,

    /// Requests that may wait in the queue; more get 503.
    #[arg(long, default_value_t = 10_000)]
    pub queue_capacity: usize,
}

/// One client request waiting for an agent.
struct Job {
    id: u64,
    method: Method,
    target: String,
    fields: HeaderMap,
    body: Bytes,
}

struct State {
    args: Args,
    queue: mpsc::Sender<Job>,
    /// Shared by all polls; the poll that holds the lock is the one the next job goes to.
    jobs: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Response<Body>>>>,
    next_id: AtomicU64,
}

/// Serves clients and agents until SIGINT or SIGTERM.
///
/// # Errors
///
/// Returns an error when the listen address cannot be bound or an argument is invalid.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.queue_capacity == 0 {
        anyhow::bail!("--queue-capacity must be at least 1");
    }
    let listener = serve::bind_and_announce(args.listen).await?;
    let (queue, jobs) = mpsc::channel(args.queue_capacity);
    let state = Arc::new(State {
        args,
        queue,
        jobs: tokio::sync::Mutex::new(jobs),
        waiting: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    let handler = move |request| route(request, state.clone());
    serve::serve_http1(listener, handler, serve::shutdown_signal()).await;
    Ok(())
}

async fn route(request: Request<Incoming>, state: Arc<State>) -> Response<Body> {
    let path = request.uri().path();
    if path == POLL_PATH && request.method() == Method::GET {
        return poll(&state).await;
    }
    if let Some(id) = path.strip_prefix(RESPOND_PREFIX) {
        if request.method() == Method::POST {
            let id = id.parse::<u64>().ok();
            return match id {
                Some(id) => respond(request, id, &state).await,
                None => status_text(StatusCode::BAD_REQUEST, "invalid request id"),
            };
        }
    }
    relay(request, &state).await
}

/// Queues a client request and waits for the agent's response to it.
async fn relay(request: Request<Incoming>, state: &State) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match read_whole(body, state.args.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (reply, response) = oneshot::channel();
    lock(&state.waiting).insert(id, reply);
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |target| target.to_string());
    let mut fields = HeaderMap::new();
    super::wrap_fields(&parts.headers, &mut fields);
    let job = Job {
        id,
        method: parts.method,
        target,
        fields,
        body,
    };
    if state.queue.try_send(job).is_err() {
        lock(&state.waiting).remove(&id);
        return status_text(StatusCode::SERVICE_UNAVAILABLE, "request queue is full");
    }

    let timeout = Duration::from_secs(state.args.response_timeout_secs);
    match tokio::time::timeout(timeout, response).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => status_text(StatusCode::BAD_GATEWAY, "response was dropped"),
        Err(_) => {
            lock(&state.waiting).remove(&id);
            status_text(StatusCode::GATEWAY_TIMEOUT, "no agent response in time")
        }
    }
}

/// Holds an agent's poll until a job is queued or the poll timeout passes.
async fn poll(state: &State) -> Response<Body> {
    let timeout = Duration::from_secs(state.args.poll_timeout_secs);
    let next = tokio::time::timeout(timeout, async { state.jobs.lock().await.recv().await });
    // NOTE: if the agent's connection fails after this point, the job is lost and its client
    // gets 504 after the response timeout, as in a plain long-poll relay.
    match next.await {
        Err(_) => status_text(StatusCode::NO_CONTENT, ""),
        Ok(None) => status_text(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        Ok(Some(job)) => job_response(job),
    }
}

fn job_response(job: Job) -> Response<Body> {
    let mut response = Response::new(full_body(job.body));
    let headers = response.headers_mut();
    *headers = job.fields;
    headers.insert(ID_HEADER, HeaderValue::from(job.id));
    if let Ok(method) = HeaderValue::from_str(job.method.as_str()) {
        headers.insert(METHOD_HEADER, method);
    }
    if let Ok(target) = HeaderValue::from_str(&job.target) {
        headers.insert(TARGET_HEADER, target);
    }
    response
}

/// Takes the agent's buffered response for request `id` and hands it to the waiting client.
async fn respond(request: Request<Incoming>, id: u64, state: &State) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let status = parts
        .headers
        .get(STATUS_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok());
    let Some(status) = status else {
        return status_text(
            StatusCode::BAD_REQUEST,
            "missing or invalid x-longpoll-status",
        );
    };
    let body = read_whole(body, state.args.max_body_bytes).await;
    let Some(reply) = lock(&state.waiting).remove(&id) else {
        return status_text(StatusCode::NOT_FOUND, "no client waits for this id");
    };
    let body = match body {
        Ok(body) => body,
        Err(response) => {
            let _ = reply.send(status_text(
                StatusCode::BAD_GATEWAY,
                "upstream response too large or cut",
            ));
            return response;
        }
    };
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    *response.headers_mut() = super::unwrap_fields(&parts.headers);
    if reply.send(response).is_err() {
        tracing::debug!(id, "client left before its response arrived");
    }
    status_text(StatusCode::NO_CONTENT, "")
}

/// Reads a body whole, or returns the error response: 413 past `limit`, 400 when the peer
/// cuts the body short.
async fn read_whole(body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(status_text(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body exceeds {limit} bytes"),
        )),
        Err(err) => {
            tracing::debug!(%err, "failed to read body");
            Err(status_text(StatusCode::BAD_REQUEST, "failed to read body"))
        }
    }
}

fn status_text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = if message.is_empty() {
        Response::new(empty_body())
    } else {
        Response::new(full_body(format!("{message}\n")))
    };
    *response.status_mut() = status;
    response
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
