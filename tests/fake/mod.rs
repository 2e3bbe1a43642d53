//! A scripted fake daemon for the client tests: what a real daemon would
//! answer, or what it never does (late replies, garbage), on 127.0.0.1.
//!
//! Its n-th accepted connection answers the k-th command line it receives
//! with `scripts[n][k]`: `Some(reply)` is written back, `None` is left
//! unanswered (the connection stays open), [`HANG_UP`] closes it. When the script runs out the
//! connection is closed. Every connection is served by its own thread, so
//! several may be open at once, and every byte received is recorded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use dreadlock::client::Options;

/// Generous bound for anything that should happen "at once".
pub const PROMPT: Duration = Duration::from_secs(10);

pub type Script = Vec<Option<&'static str>>;

/// A reply that closes the connection instead of answering.
pub const HANG_UP: &str = "<hang up>";

pub struct Fake {
    pub addr: SocketAddr,
    /// Bytes received so far, per connection, while it is open.
    live: Arc<Mutex<HashMap<usize, Vec<u8>>>>,
    ended: mpsc::Receiver<(usize, Vec<u8>)>,
    seen: HashMap<usize, Vec<u8>>,
}

impl Fake {
    pub fn start(scripts: Vec<Script>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, ended) = mpsc::channel();
        let live: Arc<Mutex<HashMap<usize, Vec<u8>>>> = Arc::default();
        let live_in = live.clone();
        thread::spawn(move || {
            for (n, script) in scripts.into_iter().enumerate() {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let tx = tx.clone();
                let live = live_in.clone();
                thread::spawn(move || {
                    // Bounded: a client that never closes is given up on.
                    s.set_read_timeout(Some(PROMPT * 3)).unwrap();
                    let mut replies = script.into_iter();
                    let mut got = Vec::new();
                    let mut buf = [0u8; 1024];
                    'conn: loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => {
                                let mut seen = live.lock().unwrap();
                                seen.entry(n).or_default().extend_from_slice(&buf[..k]);
                                drop(seen);
                                for &b in &buf[..k] {
                                    got.push(b);
                                    if b == b'\n' {
                                        match replies.next() {
                                            Some(Some(HANG_UP)) => break 'conn,
                                            Some(Some(reply)) => {
                                                if s.write_all(reply.as_bytes()).is_err() {
                                                    break 'conn;
                                                }
                                            }
                                            Some(None) => {}
                                            None => break 'conn,
                                        }
                                    }
                                }
                            }
                        }
                    }
                    let _ = tx.send((n, got));
                });
            }
        });
        Fake {
            addr,
            live,
            ended,
            seen: HashMap::new(),
        }
    }

    /// The server string clients are given.
    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Every byte the n-th connection received, once it has ended (the
    /// client closed it, or its script ran out).
    pub fn connection(&mut self, n: usize) -> String {
        let deadline = Instant::now() + PROMPT;
        while !self.seen.contains_key(&n) {
            let left = deadline.saturating_duration_since(Instant::now());
            let (k, bytes) = self
                .ended
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("connection {n} did not end"));
            self.seen.insert(k, bytes);
        }
        String::from_utf8(self.seen[&n].clone()).unwrap()
    }

    /// Waits until the n-th connection has received `want` (open or not).
    pub fn wait_received(&self, n: usize, want: &str) {
        let deadline = Instant::now() + PROMPT;
        loop {
            let got = self
                .live
                .lock()
                .unwrap()
                .get(&n)
                .cloned()
                .unwrap_or_default();
            if got == want.as_bytes() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connection {n} received {:?}, not {want:?}",
                String::from_utf8_lossy(&got)
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether the n-th connection has ended by now (without waiting).
    pub fn has_ended(&mut self, n: usize) -> bool {
        while let Ok((k, bytes)) = self.ended.try_recv() {
            self.seen.insert(k, bytes);
        }
        self.seen.contains_key(&n)
    }
}

/// A `stats` reply with every documented field, `token` set to `token`.
pub fn stats_reply(token: u64) -> &'static str {
    let line = format!(
        "s version=9.9.9 uptime_s=5 connections=2 keys=1 holders=1 waiters=0 grants=3 \
         timeouts=0 unlocks=2 disconnects=1 evictions=0 errors=0 syntax_errors=0 \
         auth_failures=0 accepted=3 rejected=0 token={token} commands=9 brand_new_field=1\r\n"
    );
    Box::leak(line.into_boxed_str())
}

/// The late-reply case, the same for the blocking and the async client:
/// connection 0 grants `a` and then unlocks it, connection 1 never
/// answers (its `lock b` runs into the options' 1 s `io_timeout`).
pub fn late_reply() -> (Fake, Options) {
    let fake = Fake::start(vec![
        vec![Some("l locked\r\n"), Some("u unlocked\r\n")],
        vec![None],
    ]);
    let options = Options {
        io_timeout: Some(Duration::from_secs(1)),
        ..Options::default()
    };
    (fake, options)
}

/// Two servers of one connection each, for the sharding cases: each
/// answers `info` (a free key), then the replies in `then`, then `stats`
/// with token `tokens[i]`.
pub fn two_servers(then: &[&'static str], tokens: [u64; 2]) -> [Fake; 2] {
    tokens.map(|token| {
        let mut script = vec![Some("i limit=0 holders=0 waiters=0\r\n")];
        script.extend(then.iter().map(|&r| Some(r)));
        script.push(Some(stats_reply(token)));
        Fake::start(vec![script])
    })
}

/// The first of `k0`, `k1`, ... that `server_for` puts on `server`.
pub fn key_on<'a>(server_for: impl Fn(&str) -> &'a str, server: &str) -> String {
    (0..)
        .map(|n| format!("k{n}"))
        .find(|k| server_for(k) == server)
        .unwrap()
}
