//! The client library against the real daemon (and, for what a daemon never
//! does, against a scripted fake server).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Daemon, PROMPT};
use dreadlock::client::{
    Client, Connection, Error, KeyError, MAX_KEY_BYTES, Options, WAIT_FOREVER, pick_server,
};

const SHORT: Duration = Duration::from_millis(50);

fn client(d: &Daemon) -> Client {
    Client::connect(&d.addr.to_string()).expect("connect")
}

/// Whether another connection could take `key` at once on `d` (and gives
/// it back).
fn is_free(d: &Daemon, key: &str) -> bool {
    let mut probe = d.connect();
    probe.send(format!("lock {key} 0\r\n"));
    match probe.read_line().as_str() {
        "l locked\r\n" => true,
        "t timeout\r\n" => false,
        other => panic!("unexpected reply {other:?}"),
    }
}

#[test]
fn guard_releases_on_drop() {
    let d = Daemon::start();
    let c = client(&d);
    let guard = c.lock("res", SHORT).unwrap();
    assert_eq!(guard.key(), "res");
    assert_eq!(guard.server(), d.addr.to_string());
    assert!(!is_free(&d, "res"));
    drop(guard);
    assert!(is_free(&d, "res"));
}

#[test]
fn explicit_unlock_reports_success() {
    let d = Daemon::start();
    let c = client(&d);
    c.lock("res", SHORT).unwrap().unlock().unwrap();
    assert!(is_free(&d, "res"));
}

#[test]
fn guard_releases_while_a_panic_unwinds() {
    let d = Daemon::start();
    let c = client(&d);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let _guard = c.lock("res", SHORT).unwrap();
        panic!("boom in the critical section");
    }));
    assert!(result.is_err());
    assert!(is_free(&d, "res"));
    // The client still works after the panic.
    let _again = c.lock("res", SHORT).unwrap();
    assert!(!is_free(&d, "res"));
}

#[test]
fn one_client_holds_several_locks_across_threads() {
    let d = Daemon::start();
    let c = client(&d);
    let a = c.lock("a", SHORT).unwrap();
    thread::scope(|s| {
        s.spawn(|| {
            let b = c.lock("b", SHORT).unwrap();
            assert!(!is_free(&d, "b"));
            drop(b);
        });
    });
    assert!(is_free(&d, "b"));
    assert!(!is_free(&d, "a"));
    drop(a);
    assert!(is_free(&d, "a"));
}

#[test]
fn timeout_is_not_a_server_error() {
    let d = Daemon::start();
    let holder = client(&d);
    let other = client(&d);
    let _held = holder.lock("res", SHORT).unwrap();

    let start = Instant::now();
    match other.lock("res", Duration::from_millis(100)) {
        Err(Error::Timeout) => {}
        r => panic!("expected Error::Timeout, got {r:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert!(other.try_lock("res").unwrap().is_none());

    // The daemon's `e ...` answers, message kept.
    match holder.lock("res", SHORT) {
        Err(Error::Server(msg)) => assert_eq!(msg, "already locked"),
        r => panic!("expected Error::Server, got {r:?}"),
    }
    let mut conn = Connection::connect(&d.addr.to_string(), &Options::default()).unwrap();
    match conn.unlock("res") {
        Err(Error::Server(msg)) => assert_eq!(msg, "not owner"),
        r => panic!("expected not owner, got {r:?}"),
    }
    match conn.unlock("nobody") {
        Err(Error::Server(msg)) => assert_eq!(msg, "not locked"),
        r => panic!("expected not locked, got {r:?}"),
    }
    // None of that broke anything: the holder's lock is still there.
    assert!(!is_free(&d, "res"));
    assert!(conn.ping().is_ok());
}

#[test]
fn waiting_lock_is_granted_when_released() {
    let d = Daemon::start();
    let holder = client(&d);
    let held = holder.lock("res", SHORT).unwrap();
    let (tx, rx) = mpsc::channel();
    let addr = d.addr.to_string();
    let waiter = thread::spawn(move || {
        let c = Client::connect(&addr).unwrap();
        tx.send(()).unwrap();
        let g = c.lock("res", PROMPT);
        g.map(|g| g.key().to_owned())
    });
    rx.recv().unwrap();
    thread::sleep(SHORT);
    drop(held);
    assert_eq!(waiter.join().unwrap().unwrap(), "res");
}

#[test]
fn wait_forever_waits() {
    let d = Daemon::start();
    let holder = client(&d);
    let held = holder.lock("res", WAIT_FOREVER).unwrap();
    let addr = d.addr.to_string();
    let waiter = thread::spawn(move || {
        let c = Client::connect(&addr).unwrap();
        c.lock("res", WAIT_FOREVER).map(|_| ())
    });
    thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished());
    drop(held);
    waiter.join().unwrap().unwrap();
}

/// A scripted server: for its n-th connection it answers the k-th command
/// line with `script[n][k]`, closes the connection when the script runs out,
/// and records every byte it received.
struct FakeServer {
    addr: SocketAddr,
    received: mpsc::Receiver<Vec<u8>>,
}

impl FakeServer {
    fn start(script: Vec<Vec<&'static [u8]>>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, received) = mpsc::channel();
        thread::spawn(move || {
            for replies in script {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                s.set_read_timeout(Some(PROMPT)).unwrap();
                let mut replies = replies.into_iter();
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                'conn: loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            for &b in &buf[..n] {
                                got.push(b);
                                if b == b'\n' {
                                    match replies.next() {
                                        Some(reply) => s.write_all(reply).unwrap(),
                                        None => break 'conn,
                                    }
                                }
                            }
                        }
                    }
                }
                tx.send(got).unwrap();
            }
        });
        FakeServer { addr, received }
    }

    fn next_connection_bytes(&self) -> Vec<u8> {
        self.received.recv_timeout(PROMPT).expect("a connection")
    }
}

#[test]
fn invalid_keys_are_rejected_before_sending() {
    let fake = FakeServer::start(vec![vec![]]);
    let c = Client::connect(&fake.addr.to_string()).unwrap();
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    let cases: [(&str, KeyError); 5] = [
        ("", KeyError::Empty),
        (
            "a-b",
            KeyError::InvalidByte {
                byte: b'-',
                offset: 1,
            },
        ),
        (
            "a b",
            KeyError::InvalidByte {
                byte: b' ',
                offset: 1,
            },
        ),
        (
            "x\r\nunlock y",
            KeyError::InvalidByte {
                byte: b'\r',
                offset: 1,
            },
        ),
        (
            &long,
            KeyError::TooLong {
                len: MAX_KEY_BYTES + 1,
                max: MAX_KEY_BYTES,
            },
        ),
    ];
    for (key, want) in cases {
        match c.lock(key, SHORT) {
            Err(Error::InvalidKey(e)) => assert_eq!(e, want),
            r => panic!("{key:?}: expected InvalidKey, got {r:?}"),
        }
        assert!(matches!(c.try_lock(key), Err(Error::InvalidKey(_))));
    }
    drop(c);
    assert_eq!(fake.next_connection_bytes(), b"");
}

#[test]
fn an_unexpected_reply_is_a_protocol_error_and_closes() {
    let fake = FakeServer::start(vec![vec![b"u unlocked\r\n"], vec![b"hello\r\n"]]);
    let c = Client::connect(&fake.addr.to_string()).unwrap();
    match c.lock("a", SHORT) {
        Err(Error::UnexpectedReply(line)) => assert_eq!(line, "u unlocked"),
        r => panic!("expected UnexpectedReply, got {r:?}"),
    }
    // The client closed that connection rather than guess.
    assert_eq!(fake.next_connection_bytes(), b"lock a 50\r\n");
    // The next call opens a fresh connection.
    match c.lock("b", SHORT) {
        Err(Error::UnexpectedReply(line)) => assert_eq!(line, "hello"),
        r => panic!("expected UnexpectedReply, got {r:?}"),
    }
    assert_eq!(fake.next_connection_bytes(), b"lock b 50\r\n");
}

#[test]
fn a_reply_that_never_comes_is_an_io_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let options = Options {
        io_timeout: Some(Duration::from_millis(100)),
        ..Options::default()
    };
    let c = Client::connect_with(&listener.local_addr().unwrap().to_string(), options).unwrap();
    match c.lock("a", Duration::from_millis(50)) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), ErrorKind::TimedOut),
        r => panic!("expected an I/O timeout, got {r:?}"),
    }
}

#[test]
fn broken_connection_reconnects_and_old_guards_go_inert() {
    // First connection: grant, then close. Second: grant.
    let fake = FakeServer::start(vec![vec![], vec![b"l locked\r\n", b"u unlocked\r\n"]]);
    let c = Client::connect(&fake.addr.to_string()).unwrap();
    match c.lock("a", SHORT) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), ErrorKind::UnexpectedEof),
        r => panic!("expected EOF, got {r:?}"),
    }
    assert_eq!(fake.next_connection_bytes(), b"lock a 50\r\n");
    let g = c.lock("b", SHORT).unwrap();
    g.unlock().unwrap();
    drop(c);
    assert_eq!(fake.next_connection_bytes(), b"lock b 50\r\nunlock b\r\n");
}

#[test]
fn daemon_gone_under_a_guard() {
    let d = Daemon::start();
    let c = client(&d);
    let dropped = c.lock("a", SHORT).unwrap();
    let explicit = c.lock("b", SHORT).unwrap();
    drop(d); // SIGKILL: the connection is reset or closed.
    // Dropping must not panic, and unlock reports the failure.
    drop(dropped);
    assert!(matches!(explicit.unlock(), Err(Error::Io(_))));
    assert!(matches!(c.lock("c", SHORT), Err(Error::Io(_))));
}

#[test]
fn guard_from_a_lost_connection_reports_the_loss() {
    let d = Daemon::start();
    let c = client(&d);
    let a = c.lock("a", SHORT).unwrap();
    drop(d);
    // Another call notices the break first and discards the connection.
    assert!(c.lock("b", SHORT).is_err());
    match a.unlock() {
        Err(Error::Io(e)) => assert_eq!(e.kind(), ErrorKind::NotConnected),
        r => panic!("expected NotConnected, got {r:?}"),
    }
}

#[test]
fn nothing_listening_is_an_io_error() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(matches!(
        Client::connect(&addr.to_string()),
        Err(Error::Io(e)) if e.kind() == ErrorKind::ConnectionRefused
    ));
    // A lazy client fails at the first lock instead.
    let lazy = Client::new([addr.to_string()]).unwrap();
    assert!(matches!(lazy.lock("a", SHORT), Err(Error::Io(_))));
    assert!(matches!(
        Client::new(Vec::<String>::new()),
        Err(Error::NoServers)
    ));
}

/// The documented weight, written again from the spec, independently of
/// the library.
fn spec_weight(server: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in server.bytes().chain(*b"\n").chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51afd7ed558ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ceb9fe1a85ec53);
    h ^ (h >> 33)
}

fn spec_pick<'a>(servers: &[&'a str], key: &str) -> &'a str {
    servers
        .iter()
        .copied()
        .max_by(|a, b| {
            spec_weight(a, key)
                .cmp(&spec_weight(b, key))
                .then_with(|| b.cmp(a))
        })
        .unwrap()
}

#[test]
fn documented_test_vector() {
    let servers = ["10.0.0.1:6001", "10.0.0.2:6001", "10.0.0.3:6001"];
    assert_eq!(spec_weight(servers[0], "backup"), 0xecc03247f29dc4b7);
    for (key, want) in [("backup", 0), ("cron", 1), ("deploy", 2)] {
        assert_eq!(spec_pick(&servers, key), servers[want]);
        assert_eq!(pick_server(&servers, key), Some(want));
        let client = Client::new(servers).unwrap();
        assert_eq!(client.server_for(key), servers[want]);
    }
}

#[test]
fn keys_are_spread_over_three_daemons_by_the_documented_hash() {
    let daemons = [Daemon::start(), Daemon::start(), Daemon::start()];
    let names: Vec<String> = daemons.iter().map(|d| d.addr.to_string()).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Listed in another order than the daemons: the order must not matter.
    let c = Client::new([&names[2], &names[0], &names[1]]).unwrap();
    let mut per_daemon = [0; 3];
    let mut guards = Vec::new();
    for i in 0..30 {
        let key = format!("job{i}");
        let want = spec_pick(&name_refs, &key);
        let guard = c.lock(&key, SHORT).unwrap();
        assert_eq!(guard.server(), want, "{key}");
        // Held on the chosen daemon, and only there.
        for (d, name) in daemons.iter().zip(&names) {
            assert_eq!(is_free(d, &key), name != want, "{key} on {name}");
        }
        per_daemon[names.iter().position(|n| n == want).unwrap()] += 1;
        guards.push(guard);
    }
    assert!(per_daemon.iter().all(|&n| n > 0), "{per_daemon:?}");
    drop(guards);
    for i in 0..30 {
        let key = format!("job{i}");
        assert!(daemons.iter().all(|d| is_free(d, &key)), "{key}");
    }
}

#[test]
fn lazy_connections_open_per_server() {
    let used = Daemon::start();
    // A server nobody listens on: never contacted unless a key maps to it.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let servers = [used.addr.to_string(), dead.to_string()];
    let c = Client::new(servers.clone()).unwrap();
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| c.server_for(k) == servers[0])
        .unwrap();
    c.lock(&key, SHORT).unwrap().unlock().unwrap();
    let other = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| c.server_for(k) == servers[1])
        .unwrap();
    assert!(matches!(c.lock(&other, SHORT), Err(Error::Io(_))));
    // The raw stream can be watched.
    let conn = Connection::connect(&servers[0], &Options::default()).unwrap();
    let _: &TcpStream = conn.tcp_stream();
}
