//! Checks the framing of every HTTP/1.1 request head on the bytes hyper reads, before hyper
//! parses them.
//!
//! hyper accepts a request that has both `Content-Length` and `Transfer-Encoding`: it drops
//! the length, reads the body as chunked and closes the connection afterwards. The request
//! reaches the service looking like any chunked request, so the ingress could not reject it
//! there. RFC 9112 (section 6.1) lets a server treat such a request as an attack, and an
//! ingress must, since a server behind it may pick the other length and read a second,
//! smuggled request out of the body.
//!
//! [`Checked`] wraps the client connection and follows the byte stream the way hyper does. It
//! parses each head with httparse, with hyper's settings. Then it skips the body by its length
//! or by its chunked framing, following hyper's chunked decoder byte for byte, so it finds the
//! next head where hyper will. Each head leaves a [`HeadCheck`] in a queue that the service
//! takes from in order, since HTTP/1.1 requests on one connection are served one at a time.
//! Bytes the checker cannot follow (after an upgrade request, or input that hyper rejects too)
//! stop the checking. A request that hyper parses after that point finds the queue empty and
//! is rejected.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Verdict of the checker on one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadCheck {
    /// The body length is unambiguous and the bytes after the body are checked in turn.
    Clean,
    /// An upgrade request (an `Upgrade` field or `CONNECT`): the bytes after it may be another
    /// protocol, so nothing after it is checked. The connection must close unless the upgrade
    /// happens.
    Upgrade,
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// `Transfer-Encoding` with a coding other than one `chunked`, which the ingress would not
    /// undo before forwarding.
    UnsupportedCoding,
}

/// Results shared between the checker on the read path and the service.
#[derive(Debug, Default)]
pub(crate) struct CheckLog {
    inner: Mutex<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    heads: VecDeque<HeadCheck>,
    /// Part of a request head has arrived and the rest has not.
    head_pending: bool,
    /// Request target of each head, so tests can match heads to the requests hyper served.
    #[cfg(test)]
    targets: Vec<String>,
}

impl CheckLog {
    /// Takes the result for the next request hyper hands to the service, or `None` when the
    /// checker did not follow the bytes that request came in.
    pub(crate) fn next_head(&self) -> Option<HeadCheck> {
        self.lock().heads.pop_front()
    }

    /// Returns whether a request head has started to arrive and is not complete: a header
    /// timeout then deserves a 408, while an idle keep-alive connection just closes.
    pub(crate) fn head_pending(&self) -> bool {
        self.lock().head_pending
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Position of the checker in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Head,
    /// Inside a body of known length: this many bytes remain.
    Body(u64),
    Chunked(Chunk),
    /// Not following the bytes any more.
    Stopped,
}

/// States of the chunked decoder, named after what the next byte may be. They follow hyper's
/// decoder (`proto/h1/decode.rs`), so both accept the same input and end a body at the same
/// byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// First hex digit of a chunk size.
    Start,
    /// More hex digits of the size so far.
    Size(u64),
    /// Spaces or tabs after the size.
    SizeSpace(u64),
    /// A chunk extension, ignored up to the carriage return.
    Extension(u64),
    /// The line feed that ends the size line.
    SizeLf(u64),
    /// Chunk data: this many bytes remain.
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: the carriage return of the final empty line, or a trailer field.
    EndCr,
    EndLf,
    Trailer,
    TrailerLf,
}

/// Follows one connection's request stream; see the module documentation.
#[derive(Debug)]
struct Checker {
    position: Position,
    /// The part of a request head that arrived in earlier reads.
    partial: Vec<u8>,
    /// Maximum head length the checker buffers. hyper rejects longer heads with 431.
    max_head: usize,
    /// Most header fields hyper accepts in a head. The checker parses with room for one more,
    /// so it never gives up on a head that hyper takes.
    max_fields: usize,
    log: Arc<CheckLog>,
}

impl Checker {
    fn new(max_head: usize, max_fields: usize, log: Arc<CheckLog>) -> Self {
        Self {
            position: Position::Head,
            partial: Vec::new(),
            max_head,
            max_fields,
            log,
        }
    }

    /// Follows `bytes`, the next bytes read from the client.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.position {
                Position::Stopped => return,
                Position::Head => bytes = self.feed_head(bytes),
                Position::Body(remaining) => {
                    let taken = remaining.min(bytes.len() as u64);
                    bytes = &bytes[taken as usize..];
                    self.position = match remaining - taken {
                        0 => Position::Head,
                        left => Position::Body(left),
                    };
                }
                Position::Chunked(Chunk::Data(remaining)) => {
                    let taken = remaining.min(bytes.len() as u64);
                    bytes = &bytes[taken as usize..];
                    self.position = Position::Chunked(match remaining - taken {
                        0 => Chunk::DataCr,
                        left => Chunk::Data(left),
                    });
                }
                Position::Chunked(chunk) => {
                    self.position = match chunk_step(chunk, bytes[0]) {
                        Step::To(next) => Position::Chunked(next),
                        Step::BodyEnd => Position::Head,
                        Step::Rejected => Position::Stopped,
                    };
                    bytes = &bytes[1..];
                }
            }
        }
    }

    /// Follows bytes of a request head and returns the bytes after it.
    fn feed_head<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let outcome = if self.partial.is_empty() {
            parse_head(bytes, self.max_fields)
        } else {
            let earlier = self.partial.len();
            self.partial.extend_from_slice(bytes);
            match parse_head(&self.partial, self.max_fields) {
                // The earlier bytes alone were not a complete head, so this head ends in
                // `bytes`.
                Parsed::Complete(head) => Parsed::Complete(Head {
                    len: head.len - earlier,
                    ..head
                }),
                other => other,
            }
        };
        match outcome {
            Parsed::Complete(head) => {
                self.partial = Vec::new();
                self.position = head.next;
                let mut log = self.log.lock();
                log.heads.push_back(head.check);
                log.head_pending = false;
                #[cfg(test)]
                log.targets.push(head.target);
                &bytes[head.len..]
            }
            Parsed::Partial => {
                if self.partial.is_empty() {
                    self.partial.extend_from_slice(bytes);
                }
                if self.partial.len() > self.max_head {
                    self.stop();
                } else {
                    // Empty lines before a request line are ignored (RFC 9112, section 2.2),
                    // so they alone do not start a head.
                    let started = self
                        .partial
                        .iter()
                        .any(|&byte| byte != b'\r' && byte != b'\n');
                    self.log.lock().head_pending = started;
                }
                &[]
            }
            Parsed::Invalid => {
                self.stop();
                &[]
            }
        }
    }

    fn stop(&mut self) {
        self.position = Position::Stopped;
        self.partial = Vec::new();
    }
}

enum Parsed {
    Complete(Head),
    Partial,
    /// Input hyper rejects too.
    Invalid,
}

/// A complete request head.
struct Head {
    /// Bytes of the head in the input.
    len: usize,
    check: HeadCheck,
    /// Position of the checker after the head's body.
    next: Position,
    #[cfg(test)]
    target: String,
}

fn parse_head(bytes: &[u8], max_fields: usize) -> Parsed {
    // Left uninitialized, the field array costs an allocation and no writes.
    let mut fields = vec![MaybeUninit::uninit(); max_fields + 1];
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(bytes, &mut fields) {
        Ok(httparse::Status::Complete(len)) => match judge(&request) {
            Some((check, next)) => Parsed::Complete(Head {
                len,
                check,
                next,
                #[cfg(test)]
                target: request.path.unwrap_or_default().to_string(),
            }),
            None => Parsed::Invalid,
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Invalid,
    }
}

/// Judges a parsed head and finds how its body is framed, the way hyper's server role
/// does (`proto/h1/role.rs`). Returns `None` for a head hyper rejects.
fn judge(request: &httparse::Request<'_, '_>) -> Option<(HeadCheck, Position)> {
    let http11 = request.version? == 1;
    let mut upgrade = request.method? == "CONNECT";
    let mut length: Option<u64> = None;
    let mut has_length = false;
    let mut codings = 0usize;
    let mut last_is_chunked = false;

    for field in request.headers.iter() {
        if field.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return None;
            }
            let value = std::str::from_utf8(field.value).ok()?;
            codings += value.split(',').count();
            last_is_chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        } else if field.name.eq_ignore_ascii_case("content-length") {
            has_length = true;
            if codings > 0 {
                // hyper ignores a length after a transfer coding, so its value does not
                // matter; its presence does.
                continue;
            }
            let value = parse_length(field.value)?;
            if length.is_some_and(|earlier| earlier != value) {
                return None;
            }
            length = Some(value);
        } else if field.name.eq_ignore_ascii_case("upgrade") {
            upgrade = http11;
        }
    }

    if codings > 0 {
        if !last_is_chunked {
            return None;
        }
        // The last coding is `chunked`, so a single coding is exactly `chunked`.
        let check = if has_length {
            HeadCheck::LengthAndChunked
        } else if codings > 1 {
            HeadCheck::UnsupportedCoding
        } else if upgrade {
            HeadCheck::Upgrade
        } else {
            return Some((HeadCheck::Clean, Position::Chunked(Chunk::Start)));
        };
        // Each of these ends the connection after its response.
        return Some((check, Position::Stopped));
    }

    if upgrade {
        return Some((HeadCheck::Upgrade, Position::Stopped));
    }
    let position = match length {
        None | Some(0) => Position::Head,
        Some(len) => Position::Body(len),
    };
    Some((HeadCheck::Clean, position))
}

/// Parses a `Content-Length` value as hyper does: ASCII digits only, no sign, no list.
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |total, &byte| {
        if !byte.is_ascii_digit() {
            return None;
        }
        total.checked_mul(10)?.checked_add(u64::from(byte - b'0'))
    })
}

/// Next state of the chunked decoder after one byte.
enum Step {
    To(Chunk),
    /// The byte was the last of the body.
    BodyEnd,
    /// Input hyper rejects.
    Rejected,
}

/// Returns the chunked decoder's step on `byte` in `state`.
fn chunk_step(state: Chunk, byte: u8) -> Step {
    let to = |next: Option<Chunk>| next.map_or(Step::Rejected, Step::To);
    let hex = |size: u64| -> Option<u64> {
        let digit = (byte as char).to_digit(16)?;
        size.checked_mul(16)?.checked_add(u64::from(digit))
    };
    match state {
        Chunk::Start => to(hex(0).map(Chunk::Size)),
        Chunk::Size(size) => match byte {
            b'\t' | b' ' => Step::To(Chunk::SizeSpace(size)),
            b';' => Step::To(Chunk::Extension(size)),
            b'\r' => Step::To(Chunk::SizeLf(size)),
            _ => to(hex(size).map(Chunk::Size)),
        },
        Chunk::SizeSpace(size) => match byte {
            b'\t' | b' ' => Step::To(Chunk::SizeSpace(size)),
            b';' => Step::To(Chunk::Extension(size)),
            b'\r' => Step::To(Chunk::SizeLf(size)),
            _ => Step::Rejected,
        },
        // hyper also limits the extension bytes of a body and the checker does not. The
        // checker may then follow a body that hyper ends with an error, but hyper reads no
        // more requests after that error.
        Chunk::Extension(size) => match byte {
            b'\r' => Step::To(Chunk::SizeLf(size)),
            b'\n' => Step::Rejected,
            _ => Step::To(Chunk::Extension(size)),
        },
        Chunk::SizeLf(size) => match (byte, size) {
            (b'\n', 0) => Step::To(Chunk::EndCr),
            (b'\n', size) => Step::To(Chunk::Data(size)),
            _ => Step::Rejected,
        },
        // The caller skips chunk data in bulk, so a byte never arrives here.
        Chunk::Data(_) => Step::To(state),
        Chunk::DataCr => to((byte == b'\r').then_some(Chunk::DataLf)),
        Chunk::DataLf => to((byte == b'\n').then_some(Chunk::Start)),
        Chunk::EndCr => match byte {
            b'\r' => Step::To(Chunk::EndLf),
            b'\n' => Step::Rejected,
            _ => Step::To(Chunk::Trailer),
        },
        Chunk::EndLf if byte == b'\n' => Step::BodyEnd,
        Chunk::EndLf => Step::Rejected,
        Chunk::Trailer => match byte {
            b'\r' => Step::To(Chunk::TrailerLf),
            b'\n' => Step::Rejected,
            _ => Step::To(Chunk::Trailer),
        },
        Chunk::TrailerLf => to((byte == b'\n').then_some(Chunk::EndCr)),
    }
}

/// A client connection whose reads pass through the checker. Writes go straight through.
#[derive(Debug)]
pub(crate) struct Checked<I> {
    io: I,
    checker: Checker,
}

impl<I> Checked<I> {
    /// Wraps `io`. Heads longer than `max_head` bytes or with more than `max_fields` fields
    /// are not followed, since hyper rejects them.
    pub(crate) fn new(io: I, max_head: usize, max_fields: usize) -> (Self, Arc<CheckLog>) {
        let log = Arc::new(CheckLog::default());
        let checker = Checker::new(max_head, max_fields, log.clone());
        (Self { io, checker }, log)
    }

    /// Returns the wrapped connection.
    pub(crate) fn into_inner(self) -> I {
        self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Checked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.checker.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Checked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> (Checker, Arc<CheckLog>) {
        let log = Arc::new(CheckLog::default());
        (Checker::new(8192, 100, log.clone()), log)
    }

    fn heads(log: &CheckLog) -> Vec<HeadCheck> {
        std::iter::from_fn(|| log.next_head()).collect()
    }

    /// Feeds `input` in pieces of `step` bytes.
    fn follow(input: &[u8], step: usize) -> (Vec<HeadCheck>, Position) {
        let (mut checker, log) = checker();
        for piece in input.chunks(step) {
            checker.feed(piece);
        }
        (heads(&log), checker.position)
    }

    const PIPELINE: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
        POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nGET /\r\n3  \r\nabc\r\n0\r\nTrailer: x\r\n\r\n\
        GET /c HTTP/1.1\r\nHost: a\r\n\r\n\
        POST /d HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";

    #[test]
    fn finds_each_head_at_any_read_size() {
        use HeadCheck::*;
        for step in [1, 2, 3, 7, 64, PIPELINE.len()] {
            let (found, position) = follow(PIPELINE, step);
            assert_eq!(
                found,
                [Clean, Clean, Clean, LengthAndChunked],
                "read size {step}"
            );
            assert_eq!(position, Position::Stopped, "read size {step}");
        }
    }

    #[test]
    fn length_after_chunked_is_caught_too() {
        let (found, _) = follow(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            5,
        );
        assert_eq!(found, [HeadCheck::LengthAndChunked]);
    }

    #[test]
    fn invalid_length_after_chunked_is_still_a_length() {
        let (found, _) = follow(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: abc\r\n\r\n",
            4,
        );
        assert_eq!(found, [HeadCheck::LengthAndChunked]);
    }

    #[test]
    fn empty_lines_alone_start_no_head() {
        let (mut checker, log) = checker();
        checker.feed(b"\r\n");
        assert!(!log.head_pending());
        checker.feed(b"G");
        assert!(log.head_pending());
    }

    #[test]
    fn codings_other_than_one_chunked_are_unsupported() {
        for value in ["gzip, chunked", "chunked, chunked", "identity,chunked"] {
            let head = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n");
            let (found, position) = follow(head.as_bytes(), 4);
            assert_eq!(found, [HeadCheck::UnsupportedCoding], "{value}");
            assert_eq!(position, Position::Stopped);
        }
        // Two fields, each one `chunked`, are two codings.
        let (found, _) = follow(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            9,
        );
        assert_eq!(found, [HeadCheck::UnsupportedCoding]);
    }

    #[test]
    fn stops_where_hyper_rejects() {
        for input in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..],
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nFolded: a\r\n b\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab",
        ] {
            let (_, position) = follow(input, 3);
            assert_eq!(
                position,
                Position::Stopped,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn upgrade_requests_stop_the_checking() {
        let input =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
            GET /not-a-request HTTP/1.1\r\n\r\n";
        let (found, position) = follow(input, 10);
        assert_eq!(found, [HeadCheck::Upgrade]);
        assert_eq!(position, Position::Stopped);
        let (found, _) = follow(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 10);
        assert_eq!(found, [HeadCheck::Upgrade]);
        // HTTP/1.0 has no upgrades, so hyper reads on.
        let (found, position) = follow(b"GET / HTTP/1.0\r\nUpgrade: x\r\n\r\n", 10);
        assert_eq!(found, [HeadCheck::Clean]);
        assert_eq!(position, Position::Head);
    }

    #[test]
    fn pending_head_is_reported_until_complete() {
        let (mut checker, log) = checker();
        assert!(!log.head_pending());
        checker.feed(b"GET / HTTP/1.1\r\nHo");
        assert!(log.head_pending());
        checker.feed(b"st: a\r\n\r\n");
        assert!(!log.head_pending());
        assert_eq!(heads(&log), [HeadCheck::Clean]);
    }

    #[test]
    fn oversize_head_stops_the_checking() {
        let log = Arc::new(CheckLog::default());
        let mut checker = Checker::new(64, 100, log.clone());
        checker.feed(b"GET / HTTP/1.1\r\n");
        for _ in 0..10 {
            checker.feed(b"X-Filler: 0123456789\r\n");
        }
        assert_eq!(checker.position, Position::Stopped);
        assert!(heads(&log).is_empty());
    }

    #[test]
    fn leading_empty_lines_are_skipped_like_hyper() {
        let (found, position) = follow(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 1);
        assert_eq!(found, [HeadCheck::Clean]);
        assert_eq!(position, Position::Head);
    }

    #[test]
    fn large_lengths_are_skipped_without_reading_them() {
        let (mut checker, log) = checker();
        checker.feed(b"PUT / HTTP/1.1\r\nContent-Length: 10000000000\r\n\r\n");
        assert_eq!(checker.position, Position::Body(10_000_000_000));
        checker.feed(&[0u8; 4096]);
        assert_eq!(checker.position, Position::Body(10_000_000_000 - 4096));
        assert_eq!(heads(&log), [HeadCheck::Clean]);
    }

    /// A small deterministic generator, so a failing case can be replayed by its number.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    /// Body bytes that look like framing, to catch a checker that reads into a body.
    const DECOYS: &[&[u8]] = &[
        b"0\r\n\r\n",
        b"GET /decoy HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\n",
        b"5\r\nhello\r\n",
        b"plain",
    ];

    fn body_bytes(rng: &mut Rng) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..rng.below(4) {
            body.extend_from_slice(DECOYS[rng.below(DECOYS.len())]);
        }
        body.extend(std::iter::repeat_n(b'x', rng.below(3000)));
        body
    }

    /// One request with random framing; returns its bytes.
    fn random_request(rng: &mut Rng, index: usize) -> Vec<u8> {
        let mut out = Vec::new();
        if rng.chance(10) {
            out.extend_from_slice(b"\r\n");
        }
        let http10 = rng.chance(15);
        let method = ["GET", "POST", "PUT"][rng.below(3)];
        let version = if http10 { "1.0" } else { "1.1" };
        out.extend_from_slice(
            format!("{method} /r{index} HTTP/{version}\r\nHost: a\r\n").as_bytes(),
        );
        if http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        for field in 0..rng.below(4) {
            out.extend_from_slice(
                format!("X-Field-{field}: {}\r\n", "v".repeat(rng.below(50))).as_bytes(),
            );
        }
        match rng.below(3) {
            0 if !http10 => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for _ in 0..rng.below(4) {
                    let data = body_bytes(rng);
                    if data.is_empty() {
                        continue;
                    }
                    let size = if rng.chance(50) {
                        format!("{:x}", data.len())
                    } else {
                        format!("{:X}", data.len())
                    };
                    out.extend_from_slice(size.as_bytes());
                    if rng.chance(20) {
                        out.extend_from_slice(b" \t");
                    }
                    if rng.chance(30) {
                        out.extend_from_slice(b";name=\"va;lue\"");
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for trailer in 0..rng.below(3) {
                    out.extend_from_slice(format!("X-Trailer-{trailer}: t\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
            1 => {
                let body = body_bytes(rng);
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(&body);
            }
            _ => out.extend_from_slice(b"\r\n"),
        }
        out
    }

    /// Results of hyper and of the checker on one input.
    struct Served {
        /// Request target of each request hyper handed to its service, in order.
        targets: Vec<String>,
        heads: Vec<HeadCheck>,
        /// Request target of each head the checker found, in order.
        checked_targets: Vec<String>,
    }

    /// Serves `input` with hyper behind the checker. With `half_close`, the client ends its
    /// side after the input, which makes hyper stop at once; otherwise the input must end with
    /// a request with `Connection: close`.
    async fn serve_with_hyper(input: Vec<u8>, rng: &mut Rng, half_close: bool) -> Served {
        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (checked, log) = Checked::new(server, 64 * 1024, 100);
        let served = Arc::new(Mutex::new(Vec::new()));
        let seen = served.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(request.uri().to_string());
                    let _ = request.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Empty::<bytes::Bytes>::new(),
                    ))
                }
            });
        let connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(checked), service);
        let server = tokio::spawn(connection);
        let (mut read_half, mut write_half) = tokio::io::split(&mut client);
        let reader = async {
            let mut sink = Vec::new();
            let _ = read_half.read_to_end(&mut sink).await;
        };
        let writer = async {
            let mut rest = &input[..];
            while !rest.is_empty() {
                let piece = (1 + rng.below(2000)).min(rest.len());
                if write_half.write_all(&rest[..piece]).await.is_err() {
                    break;
                }
                rest = &rest[piece..];
                if rng.chance(5) {
                    tokio::task::yield_now().await;
                }
            }
            if half_close {
                let _ = write_half.shutdown().await;
            }
        };
        let within = std::time::Duration::from_secs(20);
        tokio::time::timeout(within, async { tokio::join!(reader, writer) })
            .await
            .expect("hyper served the pipeline");
        let _ = server.await;
        let targets = served.lock().unwrap().clone();
        let checked_targets = log.lock().targets.clone();
        Served {
            targets,
            heads: heads(&log),
            checked_targets,
        }
    }

    /// The checker's whole claim: on any pipeline hyper serves, it finds exactly the heads
    /// hyper finds, whatever the framing and however the bytes arrive.
    #[tokio::test]
    async fn follows_hyper_on_random_pipelines() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..150 {
            let count = 1 + rng.below(6);
            let mut input = Vec::new();
            for index in 0..count {
                input.extend(random_request(&mut rng, index));
            }
            // hyper drops requests in flight when the client half-closes, so the pipeline
            // ends with a `Connection: close` request instead.
            input.extend_from_slice(b"GET /end HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            let count = count + 1;
            let served = serve_with_hyper(input.clone(), &mut rng, false).await;
            let (paths, found) = (served.targets, served.heads);
            let mut expected: Vec<String> =
                (0..count - 1).map(|index| format!("/r{index}")).collect();
            expected.push("/end".into());
            assert_eq!(
                paths, expected,
                "case {case}: hyper did not serve the pipeline"
            );
            assert_eq!(found, vec![HeadCheck::Clean; count], "case {case}");

            let step = 1 + rng.below(300);
            let (direct, position) = follow(&input, step);
            assert_eq!(
                direct,
                vec![HeadCheck::Clean; count],
                "case {case}, read size {step}"
            );
            assert_eq!(position, Position::Head, "case {case}, read size {step}");
        }
    }

    /// Bytes that change framing when they land in the wrong place.
    const MUTATIONS: &[u8] = b"\r\n \t0a;:,-x";

    /// Mutated pipelines: every request hyper serves lines up with the head the checker found
    /// at the same place in its queue, so a verdict never lands on another request. Where the
    /// checker stops early, the requests after that point get 400, which is safe.
    #[tokio::test]
    async fn never_misaligned_on_mutated_pipelines() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut stopped_early = 0;
        let mut compared = 0;
        for case in 0..400 {
            let mut input = Vec::new();
            for index in 0..1 + rng.below(5) {
                input.extend(random_request(&mut rng, index));
            }
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(input.len());
                match rng.below(3) {
                    0 => input[at] = MUTATIONS[rng.below(MUTATIONS.len())],
                    1 => {
                        input.remove(at);
                    }
                    _ => input.insert(at, MUTATIONS[rng.below(MUTATIONS.len())]),
                }
            }
            let served = serve_with_hyper(input, &mut rng, true).await;
            for (index, target) in served.targets.iter().enumerate() {
                match served.checked_targets.get(index) {
                    Some(checked) => {
                        assert_eq!(checked, target, "case {case}, request {index}");
                        compared += 1;
                    }
                    None => {
                        stopped_early += 1;
                        break;
                    }
                }
            }
        }
        // A checker that stopped at once would pass the loop above; most inputs must still be
        // followed to their end.
        assert!(
            stopped_early < 40,
            "the checker stopped early in {stopped_early} of 400 inputs"
        );
        // About 800 with this seed; far fewer would mean hyper served too little to compare.
        assert!(compared > 400, "only {compared} requests compared");
    }
}
