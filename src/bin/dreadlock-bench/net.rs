//! Connections, the two wire protocols the tool speaks, and a batched
//! non-blocking connector. Everything here is non-blocking and driven by
//! the caller's mio `Poll`.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};

/// Longest reply line accepted before the stream counts as garbage.
const MAX_REPLY_LINE: usize = 512;

/// The server's wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// `lock key T` / `unlock key`.
    Dreadlock,
    /// Redis inline commands: `SET key 1 NX PX lease` / `DEL key`.
    Redis,
}

/// A reply the tool understands; any other line is a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `l locked` / `+OK`.
    Locked,
    /// `t timeout` / `$-1` (SET NX on a held key).
    NotGranted,
    /// `u unlocked` / `:1`.
    Unlocked,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Dreadlock => "dreadlock",
            Proto::Redis => "redis",
        }
    }

    /// Appends a lock request. `timeout_ms` is the dreadlock wait; Redis has
    /// no wait and gets `lease_ms` as the key's expiry instead.
    pub fn lock(self, out: &mut Vec<u8>, key: &str, timeout_ms: u64, lease_ms: u64) {
        match self {
            Proto::Dreadlock => write!(out, "lock {key} {timeout_ms}\r\n"),
            Proto::Redis => write!(out, "SET {key} 1 NX PX {lease_ms}\r\n"),
        }
        .expect("write to Vec");
    }

    pub fn unlock(self, out: &mut Vec<u8>, key: &str) {
        match self {
            Proto::Dreadlock => write!(out, "unlock {key}\r\n"),
            Proto::Redis => write!(out, "DEL {key}\r\n"),
        }
        .expect("write to Vec");
    }

    /// The exact bytes of a reply.
    pub fn bytes(self, r: Reply) -> &'static [u8] {
        match (self, r) {
            (Proto::Dreadlock, Reply::Locked) => b"l locked\r\n",
            (Proto::Dreadlock, Reply::NotGranted) => b"t timeout\r\n",
            (Proto::Dreadlock, Reply::Unlocked) => b"u unlocked\r\n",
            (Proto::Redis, Reply::Locked) => b"+OK\r\n",
            (Proto::Redis, Reply::NotGranted) => b"$-1\r\n",
            (Proto::Redis, Reply::Unlocked) => b":1\r\n",
        }
    }

    /// `line` (LF included) compared byte for byte with every known reply.
    fn classify(self, line: &[u8]) -> Option<Reply> {
        [Reply::Locked, Reply::NotGranted, Reply::Unlocked]
            .into_iter()
            .find(|&r| self.bytes(r) == line)
    }

    /// A reply's bytes, escaped for messages.
    pub fn show(self, r: Reply) -> String {
        show(self.bytes(r))
    }
}

/// Bytes as a quoted, escaped string for messages.
pub fn show(bytes: &[u8]) -> String {
    format!("\"{}\"", String::from_utf8_lossy(bytes).escape_debug())
}

/// One client connection: an output queue and a partial reply line.
pub struct Conn {
    pub stream: TcpStream,
    token: Token,
    out: Vec<u8>,
    out_pos: usize,
    line: Vec<u8>,
    want_write: bool,
}

impl Conn {
    /// Wraps a connected stream and (re)registers it for reading.
    pub fn new(mut stream: TcpStream, token: Token, registry: &Registry) -> Result<Conn, String> {
        registry
            .reregister(&mut stream, token, Interest::READABLE)
            .map_err(|e| format!("register: {e}"))?;
        Ok(Conn {
            stream,
            token,
            out: Vec::new(),
            out_pos: 0,
            line: Vec::new(),
            want_write: false,
        })
    }

    /// Queues `bytes` and writes as much as the socket takes. Returns whether
    /// everything queued is written (the request is fully on the wire).
    pub fn send(&mut self, registry: &Registry, bytes: &[u8]) -> Result<bool, String> {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            // Fast path: straight from the caller's buffer.
            let n = self.write_some(bytes)?;
            if n == bytes.len() {
                return Ok(true);
            }
            self.out.extend_from_slice(&bytes[n..]);
        } else {
            self.out.extend_from_slice(bytes);
        }
        self.flush(registry)
    }

    /// Writes queued output; call on a writable event. Returns whether the
    /// queue is empty.
    pub fn flush(&mut self, registry: &Registry) -> Result<bool, String> {
        while self.out_pos < self.out.len() {
            let n = {
                let (out, pos) = (&self.out, self.out_pos);
                write_some(&mut self.stream, &out[pos..])?
            };
            if n == 0 {
                break;
            }
            self.out_pos += n;
        }
        let pending = self.out_pos < self.out.len();
        if pending != self.want_write {
            self.want_write = pending;
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry
                .reregister(&mut self.stream, self.token, interest)
                .map_err(|e| format!("reregister: {e}"))?;
        }
        Ok(!pending)
    }

    fn write_some(&mut self, bytes: &[u8]) -> Result<usize, String> {
        write_some(&mut self.stream, bytes)
    }

    /// Reads what is available and appends each complete reply line to
    /// `replies`. Any line that is not exactly one of the protocol's replies,
    /// an over-long line, EOF or a socket error is an `Err`.
    pub fn read_replies(
        &mut self,
        scratch: &mut [u8],
        proto: Proto,
        replies: &mut Vec<Reply>,
    ) -> Result<(), String> {
        self.read_lines(scratch, |line| match proto.classify(line) {
            Some(r) => {
                replies.push(r);
                Ok(())
            }
            None => Err(format!("unexpected reply {}", show(line))),
        })
    }

    /// Reads what is available and hands each complete line (LF included)
    /// to `each`, for protocols whose replies carry values (tokens) and so
    /// cannot be compared with fixed bytes. An over-long line, EOF, a socket
    /// error or an `Err` from `each` is an `Err`.
    pub fn read_lines(
        &mut self,
        scratch: &mut [u8],
        mut each: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let n = match self.stream.read(scratch) {
                Ok(0) => {
                    return Err(if self.line.is_empty() {
                        "server closed the connection".to_string()
                    } else {
                        format!(
                            "server closed the connection after a partial reply {}",
                            show(&self.line)
                        )
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let data = &scratch[..n];
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', data) {
                let piece = &data[start..=end];
                start = end + 1;
                if self.line.is_empty() {
                    each(piece)?;
                } else {
                    self.line.extend_from_slice(piece);
                    let line = std::mem::take(&mut self.line);
                    let r = each(&line);
                    self.line = line;
                    self.line.clear();
                    r?;
                }
            }
            self.line.extend_from_slice(&data[start..]);
            if self.line.len() > MAX_REPLY_LINE {
                return Err(format!(
                    "reply longer than {MAX_REPLY_LINE} bytes without LF: {}...",
                    show(&self.line[..40])
                ));
            }
            if n < scratch.len() {
                // Edge-triggered epoll: a short read drained the socket, and
                // data arriving later raises a new event. Saves a read that
                // would only say WouldBlock.
                return Ok(());
            }
        }
    }

    /// Closes with a TCP reset (SO_LINGER 0), leaving no TIME_WAIT behind.
    pub fn set_reset_on_close(&self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

fn write_some(stream: &mut TcpStream, bytes: &[u8]) -> Result<usize, String> {
    loop {
        match stream.write(bytes) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("write: {e}")),
        }
    }
}

/// Outcome of a connection storm.
#[derive(Debug, Default)]
pub struct ConnectStats {
    pub ok: usize,
    pub refused: usize,
    pub timed_out: usize,
    /// Any other error (e.g. out of ports or descriptors).
    pub other: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl ConnectStats {
    pub fn failed(&self) -> usize {
        self.refused + self.timed_out + self.other
    }

    /// Counts a failed connect as refused or other, keeping the first error.
    fn connect_failed(&mut self, e: &std::io::Error) {
        if e.kind() == ErrorKind::ConnectionRefused {
            self.refused += 1;
        } else {
            self.other += 1;
        }
        self.note(format!("connect: {e}"));
    }

    fn note(&mut self, e: String) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// Opens `n` connections to `addr` with non-blocking connects, at most
/// `batch` in progress at once, each given `timeout` to complete. Token of
/// connection `i` is `token_base + i`. Returns the connected streams
/// (registered with the poll; `Conn::new` reregisters them) by index.
pub fn connect_many(
    poll: &mut Poll,
    addr: SocketAddr,
    n: usize,
    token_base: usize,
    batch: usize,
    timeout: Duration,
    hard_deadline: Instant,
) -> (Vec<Option<TcpStream>>, ConnectStats) {
    let start = Instant::now();
    let mut stats = ConnectStats::default();
    let mut streams: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    let mut connected = vec![false; n];
    // In-progress connects: (index, started), oldest first.
    let mut inflight: std::collections::VecDeque<(usize, Instant)> = Default::default();
    let mut live = 0usize; // connects still in progress
    let mut next = 0;
    let mut events = Events::with_capacity(1024);
    let batch = batch.max(1);
    loop {
        while live < batch && next < n {
            let i = next;
            next += 1;
            match TcpStream::connect(addr) {
                Ok(mut s) => {
                    if let Err(e) =
                        poll.registry()
                            .register(&mut s, Token(token_base + i), Interest::WRITABLE)
                    {
                        stats.other += 1;
                        stats.note(format!("register: {e}"));
                        continue;
                    }
                    streams[i] = Some(s);
                    inflight.push_back((i, Instant::now()));
                    live += 1;
                }
                Err(e) => stats.connect_failed(&e),
            }
        }
        if live == 0 && next >= n {
            break;
        }
        let now = Instant::now();
        // Expire connects older than `timeout` (or all at the hard stop).
        while let Some(&(i, t)) = inflight.front() {
            if connected[i] || streams[i].is_none() {
                inflight.pop_front();
                continue;
            }
            if now.duration_since(t) >= timeout || now >= hard_deadline {
                inflight.pop_front();
                streams[i] = None;
                live -= 1;
                stats.timed_out += 1;
                stats.note(format!("connect timed out after {timeout:?}"));
            } else {
                break;
            }
        }
        let wait = inflight
            .front()
            .map(|&(_, t)| (t + timeout).saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(10))
            .min(Duration::from_millis(100));
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() != ErrorKind::Interrupted {
                stats.note(format!("poll: {e}"));
                break;
            }
        }
        for ev in events.iter() {
            let i = ev.token().0.wrapping_sub(token_base);
            if i >= n || connected[i] {
                continue;
            }
            let Some(s) = streams[i].as_mut() else {
                continue;
            };
            let result = match s.take_error() {
                Ok(Some(e)) | Err(e) => Err(e),
                Ok(None) => match s.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(false) => {}
                Ok(true) => {
                    let _ = s.set_nodelay(true);
                    connected[i] = true;
                    live -= 1;
                    stats.ok += 1;
                }
                Err(e) => {
                    stats.connect_failed(&e);
                    streams[i] = None;
                    live -= 1;
                }
            }
        }
    }
    stats.elapsed = start.elapsed();
    (streams, stats)
}
