//! The blocking client against the real daemon (and, for what a daemon
//! never does, against a scripted fake server). The protocol version 2
//! commands are tested against the fake in `client_v2.rs`.

mod common;
mod fake;
#[path = "common/probe.rs"]
mod probe;

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Daemon, PROMPT};
use dreadlock::client::{
    Client, Connection, ErrorKind as Kind, ErrorReply, KeyError, MAX_KEY_BYTES, Options,
    WAIT_FOREVER, pick_server,
};
use fake::{Fake, key_on, late_reply};
use probe::is_free;

const SHORT: Duration = Duration::from_millis(50);

fn client(d: &Daemon) -> Client {
    Client::connect(&d.addr.to_string()).expect("connect")
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
        Err(e) if e.is_timeout() => assert_eq!(e.server(), Some(&*d.addr.to_string())),
        r => panic!("expected a timeout, got {r:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert!(other.try_lock("res").unwrap().is_none());

    // The daemon's `e ...` answers, typed, naming the server.
    let mut conn = Connection::connect(&d.addr.to_string(), &Options::default()).unwrap();
    conn.lock("mine", SHORT).unwrap();
    let e = conn.lock("mine", SHORT).unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::AlreadyLocked), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("{}: the server said: already locked", d.addr)
    );
    let e = conn.unlock("res").unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::NotOwner), "{e:?}");
    let e = conn.unlock("nobody").unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::NotLocked), "{e:?}");
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

#[test]
fn invalid_keys_are_rejected_before_sending() {
    let mut fake = Fake::start(vec![vec![]]);
    let c = Client::connect(&fake.server()).unwrap();
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
        match c.lock(key, SHORT).map_err(|e| e.into_kind()) {
            Err(Kind::InvalidKey(e)) => assert_eq!(e, want),
            r => panic!("{key:?}: expected InvalidKey, got {r:?}"),
        }
        assert!(matches!(
            c.try_lock(key).map_err(|e| e.into_kind()),
            Err(Kind::InvalidKey(_))
        ));
        assert!(matches!(
            c.acquire(key, SHORT, 1).map_err(|e| e.into_kind()),
            Err(Kind::InvalidKey(_))
        ));
    }
    drop(c);
    assert_eq!(fake.connection(0), "");
}

#[test]
fn an_unexpected_reply_is_a_protocol_error_and_closes() {
    let mut fake = Fake::start(vec![vec![Some("u unlocked\r\n")], vec![Some("hello\r\n")]]);
    let c = Client::connect(&fake.server()).unwrap();
    match c.lock("a", SHORT).map_err(|e| e.into_kind()) {
        Err(Kind::UnexpectedReply(line)) => assert_eq!(line, "u unlocked"),
        r => panic!("expected UnexpectedReply, got {r:?}"),
    }
    // The client closed that connection rather than guess.
    assert_eq!(fake.connection(0), "lock a 50\r\n");
    // The next call opens a fresh connection.
    match c.lock("b", SHORT).map_err(|e| e.into_kind()) {
        Err(Kind::UnexpectedReply(line)) => assert_eq!(line, "hello"),
        r => panic!("expected UnexpectedReply, got {r:?}"),
    }
    assert_eq!(fake.connection(1), "lock b 50\r\n");
}

#[test]
fn a_reply_that_never_comes_is_an_io_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let options = Options {
        io_timeout: Some(Duration::from_millis(100)),
        ..Options::default()
    };
    let server = listener.local_addr().unwrap().to_string();
    let c = Client::connect_with(&server, options).unwrap();
    let e = c.lock("a", Duration::from_millis(50)).unwrap_err();
    assert_eq!(
        e.io_error().map(|e| e.kind()),
        Some(ErrorKind::TimedOut),
        "{e:?}"
    );
    assert_eq!(e.server(), Some(&*server));
    assert!(
        e.to_string().starts_with(&format!("{server}: lock a 50: ")),
        "{e}"
    );
}

/// Regression: a late reply used to make the client close the one
/// connection it shared among all guards of a server, silently releasing
/// every other lock held there.
#[test]
fn a_late_reply_does_not_cost_other_guards_their_locks() {
    let (mut fake, options) = late_reply();
    let c = Client::with_options([fake.server()], options).unwrap();
    let a = c.lock("a", SHORT).unwrap();
    let e = c.lock("b", SHORT).unwrap_err();
    assert_eq!(
        e.io_error().map(|e| e.kind()),
        Some(ErrorKind::TimedOut),
        "{e:?}"
    );
    // Only the late request's connection was closed.
    assert_eq!(fake.connection(1), "lock b 50\r\n");
    assert!(!fake.has_ended(0));
    a.unlock().unwrap();
    drop(c);
    assert_eq!(fake.connection(0), "lock a 50\r\nunlock a\r\n");
}

#[test]
fn unlock_keeps_the_connection_and_drop_closes_it() {
    let mut fake = Fake::start(vec![
        vec![
            Some("l locked\r\n"),
            Some("u unlocked\r\n"),
            Some("l locked\r\n"),
        ],
        vec![Some("l locked\r\n")],
    ]);
    let c = Client::new([fake.server()]).unwrap();
    c.lock("a", SHORT).unwrap().unlock().unwrap();
    let g = c.lock("b", SHORT).unwrap();
    assert_eq!(g.token(), None);
    drop(g);
    // Dropping sent nothing and closed the connection.
    assert_eq!(fake.connection(0), "lock a 50\r\nunlock a\r\nlock b 50\r\n");
    let _g = c.lock("c", SHORT).unwrap();
    assert!(!fake.has_ended(1));
}

/// A daemon restarted on the same port: the pooled connection to the old
/// one is dead, and the client notices before using it.
#[test]
fn an_idle_connection_the_daemon_closed_is_not_reused() {
    let d = Daemon::start();
    let port = d.addr.port().to_string();
    let c = client(&d);
    c.lock("a", SHORT).unwrap().unlock().unwrap();
    drop(d);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dreadlock"));
    cmd.args([&*port, "--bind", "127.0.0.1"]);
    let d2 = Daemon::spawn(cmd);
    let g = c.lock("b", SHORT).unwrap();
    assert!(!is_free(&d2, "b"));
    g.unlock().unwrap();
}

#[test]
fn broken_connection_fails_one_call_and_the_next_reconnects() {
    // First connection: closed without a reply. Second: grant, unlock.
    let mut fake = Fake::start(vec![
        vec![Some("<hang up>")],
        vec![Some("l locked\r\n"), Some("u unlocked\r\n")],
    ]);
    let c = Client::connect(&fake.server()).unwrap();
    let e = c.lock("a", SHORT).unwrap_err();
    assert_eq!(
        e.io_error().map(|e| e.kind()),
        Some(ErrorKind::UnexpectedEof),
        "{e:?}"
    );
    assert_eq!(fake.connection(0), "lock a 50\r\n");
    c.lock("b", SHORT).unwrap().unlock().unwrap();
    drop(c);
    assert_eq!(fake.connection(1), "lock b 50\r\nunlock b\r\n");
}

#[test]
fn daemon_gone_under_a_guard() {
    let d = Daemon::start();
    let c = client(&d);
    let dropped = c.lock("a", SHORT).unwrap();
    let explicit = c.lock("b", SHORT).unwrap();
    drop(d); // SIGKILL: the connections are reset or closed.
    // Dropping must not panic, and unlock reports the loss.
    drop(dropped);
    let e = explicit.unlock().unwrap_err();
    assert!(e.io_error().is_some(), "{e:?}");
    assert!(c.lock("c", SHORT).unwrap_err().io_error().is_some());
}

#[test]
fn drop_releases_at_once_to_a_waiter() {
    let d = Daemon::start();
    let holder = client(&d);
    let held = holder.lock("res", SHORT).unwrap();
    let addr = d.addr.to_string();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let c = Client::connect(&addr).unwrap();
        tx.send(()).unwrap();
        let start = Instant::now();
        c.lock("res", Duration::from_secs(60))
            .map(|_| start.elapsed())
    });
    rx.recv().unwrap();
    // Whether the waiter is queued yet or not, it must get the lock long
    // before its 60 s run out: dropping the guard closes its connection.
    drop(held);
    let waited = waiter.join().unwrap().unwrap();
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

/// Regression: the guards of one server shared one connection, so while
/// one thread waited for a contended lock, every other thread of the client
/// waited behind it for that server.
#[test]
fn threads_of_one_client_do_not_wait_for_each_other() {
    let mut fake = Fake::start(vec![
        vec![None],
        vec![
            Some("l locked\r\n"),
            Some("u unlocked\r\n"),
            Some("l locked\r\n"),
            Some("u unlocked\r\n"),
        ],
    ]);
    let options = Options {
        io_timeout: Some(Duration::from_secs(1)),
        ..Options::default()
    };
    let c = Client::connect_with(&fake.server(), options).unwrap();
    thread::scope(|s| {
        let waiting = s.spawn(|| c.lock("busy", Duration::from_secs(3)));
        // The contended lock is on the daemon (the fake never answers it).
        fake.wait_received(0, "lock busy 3000\r\n");
        for _ in 0..2 {
            c.lock("free", SHORT).unwrap().unlock().unwrap();
        }
        // Done while the other thread still waits for its answer.
        assert!(!waiting.is_finished());
        let e = waiting.join().unwrap().unwrap_err();
        assert_eq!(
            e.io_error().map(|e| e.kind()),
            Some(ErrorKind::TimedOut),
            "{e:?}"
        );
    });
    drop(c);
    assert_eq!(
        fake.connection(1),
        "lock free 50\r\nunlock free\r\nlock free 50\r\nunlock free\r\n"
    );
}

#[test]
fn nothing_listening_is_an_io_error() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = Client::connect(&addr.to_string()).unwrap_err();
    assert_eq!(
        e.io_error().map(|e| e.kind()),
        Some(ErrorKind::ConnectionRefused)
    );
    assert!(e.to_string().starts_with(&addr.to_string()), "{e}");
    // A lazy client fails at the first lock instead.
    let lazy = Client::new([addr.to_string()]).unwrap();
    assert!(lazy.lock("a", SHORT).unwrap_err().io_error().is_some());
    let e = Client::new(Vec::<String>::new()).unwrap_err();
    assert!(matches!(e.kind(), Kind::NoServers));
    assert_eq!(e.server(), None);
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
    let key = key_on(|k| c.server_for(k), &servers[0]);
    c.lock(&key, SHORT).unwrap().unlock().unwrap();
    let other = key_on(|k| c.server_for(k), &servers[1]);
    assert!(c.lock(&other, SHORT).unwrap_err().io_error().is_some());
    // The raw stream can be watched.
    let conn = Connection::connect(&servers[0], &Options::default()).unwrap();
    let _: &TcpStream = conn.tcp_stream();
}
