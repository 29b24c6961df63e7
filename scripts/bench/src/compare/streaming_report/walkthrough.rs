//! The hand-written part of the streaming report: the architecture diagram and the
//! walkthrough of the proxy code path. Each `[[path::item]]` marker in the prose becomes a
//! link to the line that defines the item. Generation fails when the file or the item is gone,
//! or when the item is defined more than once, so the text cannot drift from the code
//! unnoticed.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context};

/// Resolves `[[path]]` and `[[path::item]]` markers to markdown links into the repository.
pub(super) struct SourceLinks {
    root: PathBuf,
    /// Path from the report's folder to the repository root, such as `../`.
    prefix: String,
    files: HashMap<String, String>,
}

impl SourceLinks {
    pub(super) fn new(root: PathBuf, prefix: String) -> Self {
        Self {
            root,
            prefix,
            files: HashMap::new(),
        }
    }

    /// Replaces every marker in `text` with a link.
    ///
    /// # Errors
    ///
    /// Returns an error for an unclosed marker, a missing file, or an item that is defined
    /// zero times or more than once in its file.
    pub(super) fn expand(&mut self, text: &str) -> anyhow::Result<String> {
        let mut output = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("[[") {
            output.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("]]")
                .with_context(|| format!("unclosed [[ marker before {:?}", excerpt(after)))?;
            output.push_str(&self.link(&after[..end])?);
            rest = &after[end + 2..];
        }
        output.push_str(rest);
        Ok(output)
    }

    fn link(&mut self, marker: &str) -> anyhow::Result<String> {
        let (path, item) = match marker.split_once("::") {
            Some((path, item)) => (path, Some(item)),
            None => (marker, None),
        };
        let source = self.source(path)?;
        let Some(item) = item else {
            return Ok(format!("[`{path}`]({}{path})", self.prefix));
        };
        // `Type::method` is looked up by the method name alone.
        let name = item.rsplit("::").next().unwrap_or(item);
        let lines = definition_lines(source, name);
        match lines.as_slice() {
            [line] => Ok(format!("[`{item}`]({}{path}#L{line})", self.prefix)),
            [] => bail!("{path}: no definition of {name:?}; update the walkthrough text"),
            _ => bail!("{path}: {name:?} is defined on lines {lines:?}; the link is ambiguous"),
        }
    }

    fn source(&mut self, path: &str) -> anyhow::Result<&str> {
        if !self.files.contains_key(path) {
            let full = self.root.join(path);
            let text = std::fs::read_to_string(&full).with_context(|| {
                format!(
                    "failed to read {}, which the walkthrough links to",
                    full.display()
                )
            })?;
            self.files.insert(path.to_string(), text);
        }
        Ok(self.files.get(path).map_or("", String::as_str))
    }
}

/// Returns the 1-based lines that define `name` as a function, type, trait, constant or
/// static.
fn definition_lines(source: &str, name: &str) -> Vec<usize> {
    const KEYWORDS: [&str; 7] = ["fn", "struct", "enum", "trait", "type", "const", "static"];
    let defines = |line: &str| {
        let words: Vec<&str> = line
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|word| !word.is_empty())
            .collect();
        words
            .windows(2)
            .any(|pair| KEYWORDS.contains(&pair[0]) && pair[1] == name)
    };
    source
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            let code = line.trim_start();
            !code.starts_with("//") && defines(code)
        })
        .map(|(index, _)| index + 1)
        .collect()
}

fn excerpt(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Draws the streaming data flow and the long-poll flow side by side.
pub(super) fn architecture() -> String {
    let left = STREAMING_FLOW.lines().collect::<Vec<_>>();
    let right = LONG_POLL_FLOW.lines().collect::<Vec<_>>();
    let width = left
        .iter()
        .map(|line| line.chars().count())
        .max()
        .unwrap_or(0)
        + 4;
    let rows = left.len().max(right.len());
    let mut text = String::from("```text\n");
    for row in 0..rows {
        let left = left.get(row).copied().unwrap_or("");
        let right = right.get(row).copied().unwrap_or("");
        let padding = width.saturating_sub(left.chars().count());
        let line = format!("{left}{}{right}", " ".repeat(padding));
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text.push_str("```\n");
    text
}

const STREAMING_FLOW: &str = "\
AFTER: ingress-tunnel, one QUIC stream per request

client (browser, curl, WebSocket client)
  │  HTTP/1.1, HTTP/2 or WebSocket over TCP
  ▼
ingress, on the public host
  │  route by Host: <tunnel>.<domain>
  │  open a new stream on the agent's connection
  ▼
╔═ one QUIC connection over UDP, dialled by the agent ═╗
║ stream 0  control: hello with token, reply, drain    ║
║ stream 1  request head, data, data, end  ───────▶    ║
║           ◀───────  response head, data, data, end   ║
║ stream 5  another request, at the same time          ║
║ stream 9  WebSocket: raw bytes both ways after 101   ║
║ each stream has its own flow-control window          ║
╚══════════════════════════════════════════════════════╝
  │
  ▼
tunnel-agent, behind NAT
  │  pooled hyper client, TCP_NODELAY
  ▼
upstream app";

const LONG_POLL_FLOW: &str = "\
BEFORE: long-poll relay (scripts/bench/src/longpoll)

client
  │  HTTP/1.1 over TCP
  ▼
longpoll-front, on the public host
  │  reads the whole request and queues it
  │  holds the client until its response is posted
  │
  │   agent → front  GET /_poll, held up to 25 s
  │   front → agent  poll answer: one queued request,
  │                  its body whole
  │   agent → front  POST /_respond/<id>: the response,
  │                  its body whole
  │   agent → front  the next GET /_poll
  │
longpoll-agent, behind NAT, one poll at a time
  │  replays the request against the upstream
  │  and reads the whole response
  ▼
upstream app

No streaming: a body moves only once it is
complete, and WebSocket upgrades fail.";

/// Renders the walkthrough, one section per step of a request.
///
/// # Errors
///
/// Returns an error when a marker does not resolve; see [`SourceLinks::expand`].
pub(super) fn walkthrough(links: &mut SourceLinks) -> anyhow::Result<String> {
    let mut text = String::new();
    for (index, (title, body)) in SECTIONS.iter().enumerate() {
        text.push_str(&format!("### {}. {title}\n\n", index + 1));
        text.push_str(&links.expand(body.trim())?);
        text.push_str("\n\n");
    }
    Ok(text)
}

const SECTIONS: [(&str, &str); 9] = [
    (
        "A public connection arrives",
        r"
[[ingress/src/http.rs::accept_clients]] accepts each TCP connection and spawns one task for it.
It first asks the per-address limiter for a permit; connections from a `--trusted-proxy` are not
counted. A connection over `--max-connections-per-ip` is still served, but every request on it
gets 503 `too-many-connections`. [[ingress/src/http.rs::serve_client]] sets TCP_NODELAY and
picks the protocol. With `--tls-cert`, ALPN decides after the TLS handshake. Without TLS,
[[ingress/src/http.rs::starts_with_h2_preface]] peeks at the first bytes for the HTTP/2
connection preface. The ingress peeks instead of using hyper-util's automatic builder, because
that builder wraps the socket in a private type, and the upgrade splice (step 7) needs the
plain TCP socket back. [[ingress/src/http.rs::serve_h2]] runs hyper's HTTP/2 server with
extended CONNECT enabled. For HTTP/1.1, [[ingress/src/http.rs::serve_h1]] runs hyper's server
with upgrades and a header read timeout, on the socket wrapped twice. The inner wrapper is a
shared handle ([[transport/src/shared_tcp.rs::SharedTcp]], or
[[ingress/src/shared_stream.rs::SharedStream]] over TLS), so the ingress can still write 408
when a request head that has started misses the header read timeout. The outer one,
[[ingress/src/h1_check.rs::Checked]], follows each request head and body on the bytes hyper
reads and queues a verdict per request. The service rejects a request with both
`Content-Length` and `Transfer-Encoding` (400) before anything is forwarded, because hyper
itself would pass it on as chunked. Both servers close a connection that has had no request in
flight for `--idle-timeout`.
",
    ),
    (
        "The request is routed by its Host",
        r"
[[ingress/src/http.rs::handle]] first measures the request head with
[[ingress/src/http.rs::head_size]] and answers 431 `head-too-large` above `--max-header-bytes`.
hyper's own HTTP/1.1 limit is a read-buffer size, which a head that arrives in one read can
pass, so the limit is checked again on the parsed head. [[ingress/src/http.rs::tunnel_name]]
takes the host from the request target's authority (HTTP/2 and absolute-form HTTP/1.1) or else
from the Host field, drops the port and returns the label in front of `.<domain>`. Two Host
fields or an invalid one give 400 `bad-host`. A host outside the domain gives 404
`unknown-tunnel`, unless `--default-tunnel` names a tunnel for such hosts. The request then
goes to [[ingress/src/forward.rs::forward]], and any error it returns becomes the response
(step 9).
",
    ),
    (
        "Each request gets its own QUIC stream",
        r"
[[ingress/src/forward.rs::open_stream]] asks the registry for an agent of the tunnel.
[[ingress/src/registry.rs::Registry::pick]] rotates among the agents that were heard from
recently, and fails with 404 `unknown-tunnel` for a name no agent has served or 502 `no-agent`
when none is connected. `open_stream` then takes one of that agent's stream permits, which
bound the requests in flight to `--max-streams-per-agent`, and answers 503 `agent-busy` when
none frees up within `--response-header-timeout`. `open_bi()` opens a bidirectional stream on
the agent's existing connection. That costs no handshake and no round trip: the stream exists
once its first frame is sent. If the connection has failed, the agent is removed and the next
one is tried, up to [[ingress/src/forward.rs::OPEN_ATTEMPTS]] (3) agents, because that agent
has seen nothing of the request yet. The QUIC limits themselves
([[transport/src/endpoint.rs::TransportLimits]]: 4,096 concurrent streams, a 4 MiB window per
stream and 16 MiB per connection) are applied by
[[transport/src/endpoint.rs::transport_config]].
",
    ),
    (
        "The request head is written",
        r"
Still in [[ingress/src/forward.rs::forward]], the ingress checks whether the request asks for
an upgrade: an HTTP/1.1 `Connection: upgrade`
([[transport/src/headers.rs::is_upgrade_request]]) or an HTTP/2 extended CONNECT for WebSocket
([[ingress/src/upgrade.rs::is_h2_websocket]]). [[ingress/src/forward.rs::request_head]] builds
the head frame: method, target, version, scheme, client address, the `upgrade` and `empty_body`
flags, and the header fields without the hop-by-hop ones
([[transport/src/headers.rs::remove_hop_by_hop]]). `Expect` is dropped because hyper has
already sent `100 Continue`, and Host is set from the authority the request was routed on.
[[transport/src/frames.rs::write_frame]] encodes it with [[protocol/src/codec.rs::encode]]: a
type byte, a 4-byte big-endian length, then the payload, bincode for heads. A failed write
gives 502 `agent-lost`.
",
    ),
    (
        "Bodies are pumped with backpressure",
        r"
[[ingress/src/forward.rs::send_request_body_for]] picks how the request body travels. An
upgrade's body is sent inline, because it must be complete before the stream switches to raw
bytes. An ordinary body is sent by [[ingress/src/forward.rs::pump_request]] in its own task, so
the response head can arrive while the upload is still running. `pump_request` calls
[[ingress/src/forward.rs::send_request_body]], which calls
[[transport/src/body.rs::send_body]]. `send_body` reads one chunk from the body and writes it
with [[transport/src/frames.rs::write_data]], which frames it in pieces of at most
[[protocol/src/codec.rs::MAX_DATA_CHUNK]] (64 KiB) without copying the payload. It reads the
next chunk only after the write has completed. quinn's write waits while the stream's
flow-control window is full, so a slow agent or upstream stops the ingress from reading the
client's socket, and TCP flow control slows the client in turn. Memory per request is bounded
by the windows, not by the body size. If the client's body fails, the stream is reset with
`STREAM_ABORTED`, so the agent sees an abort instead of a body that looks complete. The
response-header timeout starts only once the body has been sent, so a slow upload is not taken
for a slow upstream.

The response body travels the same way in the other direction.
[[ingress/src/forward.rs::read_response_head]] waits for the agent's head. Then
[[ingress/src/forward.rs::check_head]] validates it, and
[[ingress/src/forward.rs::streaming_response]] gives hyper a
[[transport/src/body.rs::RecvBody]] as the client's response body. It is wrapped in
[[ingress/src/forward.rs::Holding]], which holds the stream permit, and the connection's claim
against the idle timeout, until hyper drops the body. hyper calls [[transport/src/body.rs::RecvBody::poll_frame]] as it writes to the client.
While the client reads slowly, the stream is not read and its window is not reopened, so the
agent's `send_body` waits, and the upstream's TCP socket fills in turn. A client that leaves
drops `RecvBody`, and quinn sends STOP_SENDING. The agent's `send_body` is watching for exactly
that, also while the upstream is idle between events, and drops the upstream body.
",
    ),
    (
        "The agent forwards to the upstream",
        r"
[[tunnel-agent/src/connect.rs::serve]] accepts each stream the ingress opens, and
[[tunnel-agent/src/connect.rs::spawn_stream]] runs
[[tunnel-agent/src/streams.rs::handle_stream]] for it in its own task. `handle_stream` reads
the head within [[tunnel-agent/src/streams.rs::HEAD_TIMEOUT]] and resets the stream with
`PROTOCOL_ERROR` otherwise. An unknown tunnel name gets a failure frame.
[[tunnel-agent/src/streams.rs::forward_http]] wraps the rest of the stream in a `RecvBody`, so
an upload flows into the upstream as it arrives.
[[tunnel-agent/src/upstream.rs::build_request]] rebuilds the request with the fields the
ingress sent, `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` among them (the ingress sets
those in [[ingress/src/proxies.rs::set_forwarded]]).
[[tunnel-agent/src/upstream.rs::Upstreams::send]] sends it on a pooled hyper client (HTTP/1.1
or h2c, TCP_NODELAY). While waiting for the response head, the agent also watches for the
ingress stopping the stream, and then drops the upstream request, because no client will read
its response. [[tunnel-agent/src/streams.rs::send_response]] writes the response head, marked
`empty_body` when hyper already knows the body is empty, and pumps the body with the same
`send_body`.
",
    ),
    (
        "Upgrades are spliced as raw bytes",
        r"
For an upgrade, the ingress takes hyper's `OnUpgrade` handle before it splits the request. An
HTTP/2 extended CONNECT is rewritten by [[ingress/src/upgrade.rs::websocket_over_h1]] as the
HTTP/1.1 handshake the upstream expects (a GET with `Upgrade: websocket` and a fresh
`Sec-WebSocket-Key`). On the agent, [[tunnel-agent/src/streams.rs::forward_upgrade]] reads the
upgrade request's small body ([[tunnel-agent/src/streams.rs::read_small_body]], at most 64 KiB)
and opens a dedicated upstream connection for it
([[tunnel-agent/src/upstream.rs::Upstreams::send_upgrade]]). Any status other than 101 goes
back as an ordinary response. On 101 the agent writes the response head and splices. The
ingress answers its client in [[ingress/src/upgrade.rs::switch_protocols]] (101, or 200 for
HTTP/2 as RFC 8441 specifies) and spawns [[ingress/src/upgrade.rs::splice]].

From then on the stream carries raw bytes with no framing.
[[transport/src/frames.rs::FrameReader::into_parts]] hands over any bytes read past the last
frame. [[transport/src/splice.rs::splice_upgraded]] takes the plain TCP socket back from hyper
and runs [[transport/src/splice.rs::splice_tcp]], which allocates a 16 KiB read buffer only
once the socket is readable and passes quinn's own chunks the other way. An idle WebSocket
therefore holds no copy buffer. Other connections use the generic
[[transport/src/splice.rs::splice]] with tokio's copy buffers. A clean end on one side becomes
a QUIC finish or a TCP half-close, so WebSocket close handshakes complete. An error ends both
directions in [[transport/src/splice.rs::finish]], which resets the stream.
",
    ),
    (
        "The agent reports what failed",
        r"
When the upstream gives no response head, the agent sends a failure frame in its place with
[[tunnel-agent/src/streams.rs::fail]]. [[tunnel-agent/src/upstream.rs::classify]] and
[[tunnel-agent/src/upstream.rs::connect_failure]] decide its kind: a refused connection is
`UpstreamRefused` (502 `upstream-refused`), and any other failure before a head is
`UpstreamUnreachable` (502 `upstream-unreachable`). A method, target or field that
`build_request` cannot rebuild is `BadRequest` (400), and a response head too large to encode
is `BadResponse` (502). A stream that breaks the protocol is reset in both directions with
[[tunnel-agent/src/streams.rs::abort]]. When the upstream's body fails after the head,
`send_response` resets the stream with `STREAM_ABORTED`.
",
    ),
    (
        "Errors become statuses before the head and aborts after it",
        r"
Every failure before a response head is a [[ingress/src/error.rs::ProxyError]].
[[ingress/src/error.rs::ProxyError::status]] maps it to the status code, and
[[ingress/src/error.rs::ProxyError::cause]] to the short cause sent in `x-ingress-error`.
[[ingress/src/error.rs::ProxyError::into_response]] builds the plain-text response with
`Cache-Control: no-store`, adding `Connection: close` for the connection limit and for
oversized heads. A failure frame from the agent keeps the status its kind maps to (step 8). The
ingress's own `--response-header-timeout` gives 504 `upstream-timeout`. Once the head has gone
to the client, the status can no longer change. A reset from the agent makes
`RecvBody::poll_frame` return an error, and hyper aborts the client's response: HTTP/1.1 closes
the connection without the final chunk, and HTTP/2 sends `RST_STREAM`. The client sees an
error, not a short body that looks complete.
",
    ),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{
        architecture, definition_lines, walkthrough, SourceLinks, LONG_POLL_FLOW, STREAMING_FLOW,
    };

    const SOURCE: &str = "\
pub struct Reader {
// fn commented_out() {}
    pub(crate) async fn read(&mut self) {}
fn read_all() {}
const LIMIT: usize = 3;
impl Body for Reader { fn poll_frame() {} }
";

    #[test]
    fn definitions_found_by_keyword() {
        assert_eq!(definition_lines(SOURCE, "Reader"), vec![1]);
        assert_eq!(definition_lines(SOURCE, "read"), vec![3]);
        assert_eq!(definition_lines(SOURCE, "LIMIT"), vec![5]);
        assert_eq!(definition_lines(SOURCE, "poll_frame"), vec![6]);
    }

    #[test]
    fn definitions_skip_comments_and_prefixes() {
        assert!(definition_lines(SOURCE, "commented_out").is_empty());
        assert!(definition_lines(SOURCE, "rea").is_empty());
    }

    #[test]
    fn markers_expand_to_links() {
        let root = tempfile::tempdir().expect("temporary folder");
        std::fs::create_dir_all(root.path().join("src")).expect("create src");
        std::fs::write(root.path().join("src/lib.rs"), SOURCE).expect("write source");
        let mut links = SourceLinks::new(root.path().to_path_buf(), "../".into());

        let text = links
            .expand("see [[src/lib.rs::Reader::read]] in [[src/lib.rs]].")
            .expect("markers resolve");
        assert_eq!(
            text,
            "see [`Reader::read`](../src/lib.rs#L3) in [`src/lib.rs`](../src/lib.rs)."
        );
    }

    #[test]
    fn bad_markers_rejected() {
        let root = tempfile::tempdir().expect("temporary folder");
        std::fs::write(root.path().join("lib.rs"), SOURCE).expect("write source");
        let mut links = SourceLinks::new(root.path().to_path_buf(), String::new());

        assert!(links.expand("[[lib.rs::missing]]").is_err());
        assert!(links.expand("[[other.rs]]").is_err());
        assert!(links.expand("[[lib.rs::Reader").is_err());
    }

    /// Fails when the product code renames or removes a function the walkthrough names.
    #[test]
    fn walkthrough_matches_repository() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut links = SourceLinks::new(root, "../".into());
        let text = walkthrough(&mut links).expect("every walkthrough link resolves");
        assert!(text.contains("](../ingress/src/http.rs#L"));
    }

    #[test]
    fn architecture_columns_aligned() {
        let diagram = architecture();
        let rows: Vec<&str> = diagram
            .lines()
            .filter(|line| !line.starts_with("```"))
            .collect();
        let width = STREAMING_FLOW
            .lines()
            .map(|line| line.chars().count())
            .max()
            .unwrap_or(0)
            + 4;
        for (row, right) in LONG_POLL_FLOW.lines().enumerate() {
            let line = rows.get(row).copied().unwrap_or("");
            let column: String = line.chars().skip(width).collect();
            assert_eq!(column, right, "row {row}");
        }
    }
}
