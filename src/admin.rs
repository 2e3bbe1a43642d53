//! The admin endpoint (`--metrics ADDR:PORT`): just enough HTTP/1.1 for a
//! Prometheus scrape and a health check, served by the same single-threaded
//! loop as the lock port, and never in its way.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | `200`, `Content-Type: text/plain; version=0.0.4`, the [metrics](crate::metrics) |
//! | `GET /healthz` | `200`, `ok` |
//! | `GET` of another path | `404` |
//! | another method | `405` (with `Allow: GET`) |
//! | not HTTP | `400` |
//! | a head over [`MAX_HEAD_BYTES`] (or over [`MAX_HEADERS`] header lines) | `431` |
//! | a head not complete within [`READ_TIMEOUT`] | `408` |
//!
//! A query string is ignored (`/metrics?x=1` is `/metrics`). One request per
//! connection: every response says `Connection: close`; the daemon then
//! shuts down its sending side, discards what the client still sends (at
//! most [`MAX_DRAIN_BYTES`], so the response is not lost to a reset) and
//! closes when the client does, or after [`WRITE_TIMEOUT`].
//!
//! # Never in the lock port's way
//!
//! - At most [`MAX_CONNECTIONS`] admin connections; further ones are closed
//!   as soon as they are accepted, and so are peers the accept filter (the
//!   lock port's `--allow`) refuses.
//! - Every read is bounded: a connection reads at most [`MAX_HEAD_BYTES`]
//!   for its request and [`MAX_DRAIN_BYTES`] after it over its whole life,
//!   so one readiness event costs at most that much work.
//! - Writes are non-blocking; a response that does not fit in the socket
//!   buffer waits for WRITABLE. A response is bounded by construction (the
//!   metrics have a fixed set of series, no per-key labels), and checked
//!   against [`MAX_RESPONSE_BYTES`].
//! - Each connection has one deadline ([`READ_TIMEOUT`], then
//!   [`WRITE_TIMEOUT`]); the loop wakes for the earliest one, so a silent or
//!   never-reading client costs a slot for at most 10 s and no CPU.
//! - Accepting is bounded too ([`ACCEPTS_PER_CALL`] per event; the rest on
//!   the next loop iteration), so a connect flood cannot hold the loop.
//!
//! # Shape
//!
//! [`Exchange`] is the sans-I/O state of one connection (bytes in, bytes to
//! send, a deadline); [`AdminServer`] owns the mio listener and a fixed
//! array of connections and is driven by the reactor through
//! [`AdminServer::register`], [`AdminServer::handle_event`],
//! [`AdminServer::next_deadline`] and [`AdminServer::handle_timeout`].

#![warn(missing_docs)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

/// Admin connections open at once; more are closed at accept. Scrapers and
/// health checkers open one at a time: 16 leaves room for several of each.
pub const MAX_CONNECTIONS: usize = 16;

/// Longest request head (request line and headers, up to the blank line).
/// A scrape's head is a few hundred bytes; longer is `431`.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Most header lines in a request; more is `431`.
pub const MAX_HEADERS: usize = 32;

/// Time from accept for the request head to arrive; then `408`.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Time from the end of the request for the response to be sent and the
/// client to close; then the connection is closed regardless.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes discarded after the request (a body, pipelined requests, garbage)
/// before the connection is closed without waiting for the client.
pub const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// Bound on one response. The metrics text is about 12 KiB and cannot
/// grow with the load (no per-key series).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Connections accepted per event; the rest of a burst waits for the next
/// loop iteration.
pub const ACCEPTS_PER_CALL: usize = 64;

/// How soon to retry `accept` after it failed for lack of resources.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Tokens an [`AdminServer`] uses from its base: the listener, then one per
/// connection slot.
pub const TOKENS: usize = MAX_CONNECTIONS + 1;

/// What a complete request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`.
    Healthz,
}

/// The HTTP statuses the endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 400: not an HTTP/1.x request.
    BadRequest,
    /// 404: another path.
    NotFound,
    /// 405: another method than `GET`.
    MethodNotAllowed,
    /// 408: the head did not arrive within [`READ_TIMEOUT`].
    RequestTimeout,
    /// 431: the head is over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`].
    HeadersTooLarge,
}

impl Status {
    /// The status code.
    pub const fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeadersTooLarge => 431,
        }
    }

    /// The reason phrase.
    pub const fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
        }
    }
}

/// What the bytes of a request head so far amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Valid so far, not complete.
    Partial,
    /// A complete, routable request.
    Request(Route),
    /// Answer with this status and close.
    Reject(Status),
}

/// Parses a request head (with `httparse`) and routes it.
pub fn parse_head(buf: &[u8]) -> Head {
    parse(buf).0
}

/// [`parse_head`], and how many bytes of `buf` the head takes (all of them
/// unless it is complete).
fn parse(buf: &[u8]) -> (Head, usize) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            Head::Reject(Status::HeadersTooLarge)
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => {
            Head::Reject(Status::HeadersTooLarge)
        }
        Ok(httparse::Status::Complete(n)) => {
            let route = match (req.method, req.path) {
                (Some("GET"), Some(target)) => {
                    match target.split_once('?').map_or(target, |(p, _)| p) {
                        "/metrics" => Head::Request(Route::Metrics),
                        "/healthz" => Head::Request(Route::Healthz),
                        _ => Head::Reject(Status::NotFound),
                    }
                }
                (Some(_), Some(_)) => Head::Reject(Status::MethodNotAllowed),
                _ => Head::Reject(Status::BadRequest),
            };
            return (route, n);
        }
        Err(httparse::Error::TooManyHeaders) => Head::Reject(Status::HeadersTooLarge),
        Err(_) => Head::Reject(Status::BadRequest),
    };
    (head, buf.len())
}

/// A whole response: status line, headers, body.
pub fn response(status: Status, content_type: &str, body: &[u8]) -> Vec<u8> {
    let allow = if status == Status::MethodNotAllowed {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}\
         Connection: close\r\n\r\n",
        status.code(),
        status.reason(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn error_response(status: Status) -> Vec<u8> {
    let body = format!("{}\n", status.reason().to_ascii_lowercase());
    response(status, "text/plain; charset=utf-8", body.as_bytes())
}

/// Where an [`Exchange`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the request head.
    Reading,
    /// Sending the response.
    Writing,
    /// Response sent and the sending side shut: discarding input until the
    /// client closes.
    Lingering,
    /// To be closed.
    Done,
}

/// One admin connection's protocol state, without I/O: feed it what was
/// read, send what [`Exchange::pending_output`] returns, and call
/// [`Exchange::handle_timeout`] at its deadline.
#[derive(Debug)]
pub struct Exchange {
    /// INVARIANT: at most `MAX_HEAD_BYTES`.
    head: Vec<u8>,
    /// INVARIANT: empty unless `Writing`; at most `MAX_RESPONSE_BYTES`
    /// (checked in debug builds).
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes discarded after the request. INVARIANT: at most
    /// `MAX_DRAIN_BYTES`.
    drained: usize,
    phase: Phase,
    deadline: Instant,
}

impl Exchange {
    /// A connection accepted at `now`.
    pub fn new(now: Instant) -> Self {
        Exchange {
            head: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            drained: 0,
            phase: Phase::Reading,
            deadline: now + READ_TIMEOUT,
        }
    }

    /// Where the exchange is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When [`Exchange::handle_timeout`] must be called.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// How many bytes to read now (0: do not read).
    pub fn read_limit(&self) -> usize {
        match self.phase {
            Phase::Reading => MAX_HEAD_BYTES - self.head.len(),
            Phase::Lingering => MAX_DRAIN_BYTES - self.drained,
            Phase::Writing | Phase::Done => 0,
        }
    }

    /// `bytes` (at most [`Exchange::read_limit`]) were read at `now`.
    /// `metrics` renders the metrics text, called only for `/metrics`.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Instant, metrics: &dyn Fn() -> String) {
        debug_assert!(bytes.len() <= self.read_limit());
        match self.phase {
            Phase::Reading => {
                self.head.extend_from_slice(bytes);
                let (head, used) = parse(&self.head);
                let out = match head {
                    Head::Partial => return,
                    Head::Request(Route::Healthz) => {
                        response(Status::Ok, "text/plain; charset=utf-8", b"ok\n")
                    }
                    Head::Request(Route::Metrics) => response(
                        Status::Ok,
                        crate::metrics::CONTENT_TYPE,
                        metrics().as_bytes(),
                    ),
                    Head::Reject(status) => error_response(status),
                };
                // Bytes past the head count against the drain budget.
                self.drained = self.head.len() - used;
                self.respond(out, now);
            }
            Phase::Lingering => {
                self.drained += bytes.len();
                if self.drained >= MAX_DRAIN_BYTES {
                    self.phase = Phase::Done;
                }
            }
            Phase::Writing | Phase::Done => {}
        }
    }

    fn respond(&mut self, out: Vec<u8>, now: Instant) {
        debug_assert!(
            out.len() <= MAX_RESPONSE_BYTES,
            "response of {} bytes",
            out.len()
        );
        self.head = Vec::new();
        self.out = out;
        self.out_pos = 0;
        self.phase = Phase::Writing;
        self.deadline = now + WRITE_TIMEOUT;
    }

    /// The peer closed its sending side at `now`.
    pub fn handle_eof(&mut self, now: Instant) {
        match self.phase {
            // A half-closed request is not worth answering; a client that
            // closed after its request still gets its response.
            Phase::Reading if self.head.is_empty() => self.phase = Phase::Done,
            Phase::Reading => {
                // The head can never complete: answer what it is so far.
                let status = match parse_head(&self.head) {
                    Head::Reject(s) => s,
                    _ => Status::BadRequest,
                };
                self.respond(error_response(status), now);
            }
            Phase::Lingering => self.phase = Phase::Done,
            Phase::Writing | Phase::Done => {}
        }
    }

    /// What to send now.
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`Exchange::pending_output`] were sent. Returns true when
    /// the response is complete: shut down the sending side then.
    pub fn handle_written(&mut self, n: usize) -> bool {
        self.out_pos += n;
        debug_assert!(self.out_pos <= self.out.len());
        if self.phase == Phase::Writing && self.out_pos == self.out.len() {
            self.out = Vec::new();
            self.out_pos = 0;
            self.phase = if self.drained >= MAX_DRAIN_BYTES {
                Phase::Done
            } else {
                Phase::Lingering
            };
            return true;
        }
        false
    }

    /// The socket failed: nothing more to do.
    pub fn handle_error(&mut self) {
        self.phase = Phase::Done;
    }

    /// Time passed: at the deadline, a head still incomplete is answered
    /// `408`; any later phase is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.deadline {
            return;
        }
        match self.phase {
            Phase::Reading => self.respond(error_response(Status::RequestTimeout), now),
            Phase::Writing | Phase::Lingering | Phase::Done => self.phase = Phase::Done,
        }
    }
}

struct Slot {
    stream: TcpStream,
    exchange: Exchange,
    /// WRITABLE interest is registered.
    want_write: bool,
}

/// Counters of the admin endpoint itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdminStats {
    /// Connections accepted and served.
    pub accepted: u64,
    /// Connections closed at accept (over the cap, or refused by the
    /// accept filter).
    pub refused: u64,
}

/// The admin listener and its connections; see the module docs.
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// First token; `None` until registered.
    token_base: Option<usize>,
    slots: [Option<Slot>; MAX_CONNECTIONS],
    allow: Box<dyn Fn(IpAddr) -> bool>,
    /// Accepting stopped short (budget, or out of descriptors): resume at
    /// this time.
    accept_again: Option<Instant>,
    stats: AdminStats,
}

impl AdminServer {
    /// Binds a non-blocking listener on `addr`.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self::from_listener(TcpListener::bind(addr)?))
    }

    /// Serves on an already bound, non-blocking listener.
    pub fn from_listener(listener: TcpListener) -> Self {
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        AdminServer {
            listener,
            local_addr,
            token_base: None,
            slots: std::array::from_fn(|_| None),
            allow: Box::new(|_| true),
            accept_again: None,
            stats: AdminStats::default(),
        }
    }

    /// Sets the accept filter: peers for which it returns false are closed
    /// at accept (wire it to the lock port's `--allow`).
    pub fn set_accept_filter(&mut self, allow: impl Fn(IpAddr) -> bool + 'static) {
        self.allow = Box::new(allow);
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its own counters.
    pub fn stats(&self) -> AdminStats {
        self.stats
    }

    /// Open admin connections.
    pub fn connections(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Registers the listener; the server uses tokens `token_base ..
    /// token_base + TOKENS`.
    ///
    /// # Errors
    ///
    /// When epoll refuses the registration.
    pub fn register(&mut self, registry: &Registry, token_base: usize) -> io::Result<()> {
        registry.register(&mut self.listener, Token(token_base), Interest::READABLE)?;
        self.token_base = Some(token_base);
        Ok(())
    }

    /// Whether `token` is one of this server's.
    pub fn owns(&self, token: Token) -> bool {
        self.token_base
            .is_some_and(|b| token.0 >= b && token.0 - b < TOKENS)
    }

    /// Handles a readiness event for one of this server's tokens.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        token: Token,
        now: Instant,
        metrics: &dyn Fn() -> String,
    ) {
        let Some(base) = self.token_base else {
            return;
        };
        match token.0.checked_sub(base) {
            Some(0) => self.accept(registry, now, metrics),
            Some(i) if i < TOKENS => self.drive(registry, i - 1, now, metrics),
            _ => {}
        }
    }

    /// The earliest time [`AdminServer::handle_timeout`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flatten()
            .map(|s| s.exchange.deadline())
            .chain(self.accept_again)
            .min()
    }

    /// Resumes a cut-short accept and expires deadlines due at `now`.
    pub fn handle_timeout(
        &mut self,
        registry: &Registry,
        now: Instant,
        metrics: &dyn Fn() -> String,
    ) {
        if self.accept_again.is_some_and(|t| t <= now) {
            self.accept(registry, now, metrics);
        }
        for i in 0..MAX_CONNECTIONS {
            let due = self.slots[i]
                .as_ref()
                .is_some_and(|s| s.exchange.deadline() <= now);
            if due {
                if let Some(slot) = self.slots[i].as_mut() {
                    slot.exchange.handle_timeout(now);
                }
                self.drive(registry, i, now, metrics);
            }
        }
    }

    fn accept(&mut self, registry: &Registry, now: Instant, metrics: &dyn Fn() -> String) {
        self.accept_again = None;
        for _ in 0..ACCEPTS_PER_CALL {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    let free = self.slots.iter().position(Option::is_none);
                    let (Some(i), true) = (free, (self.allow)(peer.ip())) else {
                        // Over the cap or not allowed: dropping closes it.
                        self.stats.refused += 1;
                        continue;
                    };
                    let Some(base) = self.token_base else {
                        return;
                    };
                    if registry
                        .register(&mut stream, Token(base + 1 + i), Interest::READABLE)
                        .is_err()
                    {
                        self.stats.refused += 1;
                        continue;
                    }
                    self.stats.accepted += 1;
                    // The deadline counts from this accept, not from the
                    // event that started the burst.
                    let now = Instant::now();
                    self.slots[i] = Some(Slot {
                        stream,
                        exchange: Exchange::new(now),
                        want_write: false,
                    });
                    // The request may be here already.
                    self.drive(registry, i, now, metrics);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // EMFILE and the like: the backlog holds the rest.
                    self.accept_again = Some(now + ACCEPT_RETRY);
                    return;
                }
            }
        }
        // Budget spent: go on at the next loop iteration.
        self.accept_again = Some(now);
    }

    /// Reads, feeds the exchange and writes until the socket would block or
    /// the exchange is done; bounded by the exchange's read limits.
    fn drive(&mut self, registry: &Registry, i: usize, now: Instant, metrics: &dyn Fn() -> String) {
        let (open, stats) = (self.connections() as u64, self.stats);
        let metrics = &|| {
            let mut text = metrics();
            crate::metrics::render_admin(&mut text, open, stats.accepted, stats.refused);
            text
        };
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        let mut blocked_on_write = false;
        loop {
            let ex = &mut slot.exchange;
            // Write what is pending.
            while !ex.pending_output().is_empty() {
                match slot.stream.write(ex.pending_output()) {
                    Ok(n) => {
                        if ex.handle_written(n) {
                            let _ = slot.stream.shutdown(Shutdown::Write);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        blocked_on_write = true;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        ex.handle_error();
                        break;
                    }
                }
            }
            let limit = ex.read_limit().min(buf.len());
            if limit == 0 || ex.phase() == Phase::Done {
                break;
            }
            match slot.stream.read(&mut buf[..limit]) {
                Ok(0) => ex.handle_eof(now),
                Ok(n) => ex.handle_bytes(&buf[..n], now, metrics),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => ex.handle_error(),
            }
        }
        if slot.exchange.phase() == Phase::Done {
            let mut slot = self.slots[i].take().expect("slot is open");
            let _ = registry.deregister(&mut slot.stream);
            return;
        }
        if blocked_on_write != slot.want_write {
            slot.want_write = blocked_on_write;
            let interest = if blocked_on_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Some(base) = self.token_base {
                let _ = registry.reregister(&mut slot.stream, Token(base + 1 + i), interest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_rejects_heads() {
        let cases: &[(&[u8], Head)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Head::Request(Route::Metrics),
            ),
            (
                b"GET /metrics HTTP/1.0\r\n\r\n",
                Head::Request(Route::Metrics),
            ),
            (
                b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n",
                Head::Request(Route::Metrics),
            ),
            (
                b"GET /healthz HTTP/1.1\r\nAccept: */*\r\n\r\n",
                Head::Request(Route::Healthz),
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Head::Reject(Status::NotFound)),
            (
                b"GET /metrics/ HTTP/1.1\r\n\r\n",
                Head::Reject(Status::NotFound),
            ),
            (
                b"GET /METRICS HTTP/1.1\r\n\r\n",
                Head::Reject(Status::NotFound),
            ),
            (
                b"POST /metrics HTTP/1.1\r\n\r\n",
                Head::Reject(Status::MethodNotAllowed),
            ),
            (
                b"HEAD /healthz HTTP/1.1\r\n\r\n",
                Head::Reject(Status::MethodNotAllowed),
            ),
            (
                b"get /metrics HTTP/1.1\r\n\r\n",
                Head::Reject(Status::MethodNotAllowed),
            ),
            (b"lock a 100\r\n", Head::Reject(Status::BadRequest)),
            (
                b"GET /metrics HTTP/2.0\r\n\r\n",
                Head::Reject(Status::BadRequest),
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                Head::Reject(Status::BadRequest),
            ),
            (
                b"GET /metrics HTTP/1.1\r\nbad header\r\n\r\n",
                Head::Reject(Status::BadRequest),
            ),
            (b"", Head::Partial),
            (b"GET /metr", Head::Partial),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", Head::Partial),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_head(input),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_head_parses_the_same_split_at_every_index() {
        let full = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: t\r\n\r\n";
        for cut in 0..full.len() {
            let mut ex = Exchange::new(Instant::now());
            let now = Instant::now();
            ex.handle_bytes(&full[..cut], now, &|| unreachable!());
            assert_eq!(ex.phase(), Phase::Reading, "cut {cut}");
            ex.handle_bytes(&full[cut..], now, &|| unreachable!());
            assert_eq!(ex.phase(), Phase::Writing, "cut {cut}");
            assert!(ex.pending_output().starts_with(b"HTTP/1.1 200 OK\r\n"));
            assert!(ex.pending_output().ends_with(b"\r\n\r\nok\n"));
        }
    }

    #[test]
    fn head_size_limits_at_zero_one_and_the_maximum() {
        // Headers: up to MAX_HEADERS lines fit, one more is 431.
        let mut head = String::from("GET /healthz HTTP/1.1\r\n");
        for i in 0..MAX_HEADERS {
            head.push_str(&format!("X-{i}: v\r\n"));
        }
        let complete = format!("{head}\r\n");
        assert_eq!(
            parse_head(complete.as_bytes()),
            Head::Request(Route::Healthz)
        );
        head.push_str("X-last: v\r\n\r\n");
        assert_eq!(
            parse_head(head.as_bytes()),
            Head::Reject(Status::HeadersTooLarge)
        );

        // Bytes: a head of exactly MAX_HEAD_BYTES is served, one more is 431.
        let at_max = |extra: usize| {
            let start = "GET /healthz HTTP/1.1\r\nX-Pad: ";
            let pad = MAX_HEAD_BYTES + extra - start.len() - 4;
            format!("{start}{}\r\n\r\n", "a".repeat(pad))
        };
        let exact = at_max(0);
        assert_eq!(exact.len(), MAX_HEAD_BYTES);
        assert_eq!(parse_head(exact.as_bytes()), Head::Request(Route::Healthz));
        let now = Instant::now();
        let mut ex = Exchange::new(now);
        ex.handle_bytes(exact.as_bytes(), now, &|| unreachable!());
        assert!(ex.pending_output().starts_with(b"HTTP/1.1 200 OK\r\n"));

        let over = at_max(1);
        let mut ex = Exchange::new(now);
        ex.handle_bytes(&over.as_bytes()[..MAX_HEAD_BYTES], now, &|| unreachable!());
        assert_eq!(ex.read_limit(), 0);
        assert!(
            ex.pending_output().starts_with(b"HTTP/1.1 431 "),
            "{}",
            String::from_utf8_lossy(ex.pending_output())
        );
    }

    #[test]
    fn the_exchange_answers_then_lingers_then_closes() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(t0);
        assert_eq!(ex.deadline(), t0 + READ_TIMEOUT);
        assert_eq!(ex.read_limit(), MAX_HEAD_BYTES);
        ex.handle_bytes(b"GET /metrics HTTP/1.1\r\n\r\ntrailing", t0, &|| {
            "m 1\n".into()
        });
        let out = ex.pending_output().to_vec();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Type: text/plain; version=0.0.4\r\n"));
        assert!(text.contains("\r\nContent-Length: 4\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nm 1\n"));
        assert_eq!(ex.read_limit(), 0, "no reading while writing");
        assert!(!ex.handle_written(3));
        assert!(ex.handle_written(out.len() - 3), "complete");
        assert_eq!(ex.phase(), Phase::Lingering);
        assert_eq!(ex.read_limit(), MAX_DRAIN_BYTES - "trailing".len());
        ex.handle_eof(t0);
        assert_eq!(ex.phase(), Phase::Done);

        // Lingering ends at the drain bound or at the deadline.
        let mut ex = Exchange::new(t0);
        ex.handle_bytes(b"PUT / HTTP/1.1\r\n\r\n", t0, &|| unreachable!());
        assert!(
            ex.pending_output()
                .starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n")
        );
        assert!(String::from_utf8_lossy(ex.pending_output()).contains("\r\nAllow: GET\r\n"));
        let n = ex.pending_output().len();
        ex.handle_written(n);
        ex.handle_bytes(&[0; 1000], t0, &|| unreachable!());
        assert_eq!(ex.phase(), Phase::Lingering);
        ex.handle_timeout(t0 + WRITE_TIMEOUT - Duration::from_millis(1));
        assert_eq!(ex.phase(), Phase::Lingering);
        ex.handle_timeout(t0 + WRITE_TIMEOUT);
        assert_eq!(ex.phase(), Phase::Done);
        let mut ex = Exchange::new(t0);
        ex.handle_bytes(b"x\r\n\r\n", t0, &|| unreachable!());
        assert!(
            ex.pending_output()
                .starts_with(b"HTTP/1.1 400 Bad Request\r\n")
        );
        let n = ex.pending_output().len();
        ex.handle_written(n);
        assert_eq!(ex.read_limit(), MAX_DRAIN_BYTES);
        ex.handle_bytes(&vec![0; MAX_DRAIN_BYTES - 1], t0, &|| unreachable!());
        assert_eq!(ex.phase(), Phase::Lingering);
        assert_eq!(ex.read_limit(), 1);
        ex.handle_bytes(&[0], t0, &|| unreachable!());
        assert_eq!(ex.phase(), Phase::Done, "drain bound reached");
        assert_eq!(ex.read_limit(), 0);
    }

    #[test]
    fn a_slow_head_gets_408_at_the_deadline_and_eof_ends_it() {
        let t0 = Instant::now();
        let mut ex = Exchange::new(t0);
        ex.handle_bytes(b"GET /metr", t0, &|| unreachable!());
        ex.handle_timeout(t0 + READ_TIMEOUT - Duration::from_millis(1));
        assert_eq!(ex.phase(), Phase::Reading);
        ex.handle_timeout(t0 + READ_TIMEOUT);
        assert!(
            ex.pending_output()
                .starts_with(b"HTTP/1.1 408 Request Timeout\r\n")
        );
        assert_eq!(ex.deadline(), t0 + READ_TIMEOUT + WRITE_TIMEOUT);

        // A silent client that leaves: closed without a word.
        let mut ex = Exchange::new(t0);
        ex.handle_eof(t0);
        assert_eq!(ex.phase(), Phase::Done);
        // A partial head then FIN: 400.
        let mut ex = Exchange::new(t0);
        ex.handle_bytes(b"GET /metrics HTTP/1.1\r\n", t0, &|| unreachable!());
        ex.handle_eof(t0);
        assert!(ex.pending_output().starts_with(b"HTTP/1.1 400 "));
    }

    #[test]
    fn metrics_fit_the_response_bound() {
        let mut text = String::new();
        let snap = crate::metrics::Snapshot {
            connections: u64::MAX,
            ..Default::default()
        };
        let p = crate::metrics::Process {
            cpu_seconds: f64::MAX,
            ..Default::default()
        };
        crate::metrics::render(&mut text, &snap, Some(&p), "0.0.0-a-long-version-string");
        let out = response(Status::Ok, crate::metrics::CONTENT_TYPE, text.as_bytes());
        assert!(out.len() < MAX_RESPONSE_BYTES / 2, "{} bytes", out.len());
    }
}
