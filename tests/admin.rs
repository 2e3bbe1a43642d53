//! The admin endpoint over real TCP: a scrape after a known run, every
//! HTTP answer, its limits, and hostile admin clients that must not disturb
//! the lock port.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{Daemon, PROMPT};
use prometheus_parse::{Scrape, Value};

/// Starts the daemon with `--metrics 127.0.0.1:0`; returns it and the
/// admin address from its startup line.
fn start(extra: &[&str]) -> (Daemon, SocketAddr) {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let d = Daemon::start_with(&args);
    let err = d.stderr();
    let addr = err
        .split("admin endpoint on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no admin address in {err}"))
        .parse()
        .unwrap();
    (d, addr)
}

fn admin_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, PROMPT).expect("connect to the admin port");
    s.set_read_timeout(Some(PROMPT)).unwrap();
    s
}

/// Reads until EOF or a reset.
fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("admin read failed after {} bytes: {e}", out.len()),
        }
    }
}

struct Response {
    status: u16,
    head: String,
    body: String,
}

fn split_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
    {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "{head}");
    }
    Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = admin_connect(addr);
    s.write_all(raw).unwrap();
    let r = split_response(&read_all(&mut s));
    assert!(r.head.contains("\r\nConnection: close"), "{}", r.head);
    r
}

fn scrape(addr: SocketAddr) -> Scrape {
    let r = request(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.head
            .contains("\r\nContent-Type: text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned()))).expect("a valid exposition")
}

fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}");
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric}: {other:?}"),
    }
}

/// Scrapes until `metric` reads `want` (the daemon may not have handled
/// the last command yet), then returns that scrape.
fn scrape_until(addr: SocketAddr, metric: &str, want: f64) -> Scrape {
    let end = Instant::now() + PROMPT;
    loop {
        let s = scrape(addr);
        let v = value(&s, metric, &[]);
        if v == want {
            return s;
        }
        assert!(Instant::now() < end, "{metric} stayed {v}, expected {want}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_scrape_after_a_known_run_shows_its_figures() {
    let (d, admin) = start(&[]);
    let first = scrape(admin);
    assert_eq!(
        value(
            &first,
            "dreadlock_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(value(&first, "dreadlock_connections", &[]), 0.0);

    let mut c1 = d.connect();
    c1.call("lock a 0\r\n", "l locked\r\n");
    let mut c2 = d.connect();
    c2.call("lock a 30\r\n", "t timeout\r\n");
    c2.call("lock a 0\r\n", "t timeout\r\n");
    let mut c3 = d.connect();
    c3.call("lock b 10\r\n", "l locked\r\n");
    c3.call("unlock b\r\n", "u unlocked\r\n");
    c3.call("unlock zz\r\n", "e not locked\r\n");
    let mut bad = d.connect();
    bad.send("bogus\r\n").expect_closed();
    let mut c4 = d.connect();
    c4.send("lock a 100000\r\n");

    let s = scrape_until(admin, "dreadlock_waiters", 1.0);
    assert_eq!(value(&s, "dreadlock_connections", &[]), 4.0);
    assert_eq!(value(&s, "dreadlock_keys", &[]), 1.0);
    assert_eq!(value(&s, "dreadlock_holders", &[]), 1.0);
    assert_eq!(value(&s, "dreadlock_connections_accepted_total", &[]), 5.0);
    assert_eq!(value(&s, "dreadlock_timeouts_total", &[]), 2.0);
    assert_eq!(
        value(&s, "dreadlock_releases_total", &[("cause", "unlock")]),
        1.0
    );
    assert_eq!(value(&s, "dreadlock_syntax_errors_total", &[]), 1.0);
    // The connection dropped for its syntax error is a closed connection.
    assert_eq!(value(&s, "dreadlock_disconnects_total", &[]), 1.0);
    // c1: lock; c2: lock, lock; c3: lock, unlock, unlock; c4: lock.
    assert_eq!(
        value(&s, "dreadlock_commands_total", &[("command", "lock")]),
        5.0
    );
    assert_eq!(
        value(&s, "dreadlock_commands_total", &[("command", "unlock")]),
        2.0
    );
    assert_eq!(
        value(&s, "dreadlock_grants_total", &[("wait", "immediate")]),
        2.0
    );
    assert_eq!(
        value(&s, "dreadlock_grants_total", &[("wait", "queued")]),
        0.0
    );
    assert_eq!(
        value(
            &s,
            "dreadlock_error_replies_total",
            &[("reply", "not_locked")]
        ),
        1.0
    );
    assert_eq!(value(&s, "dreadlock_log_lines_dropped_total", &[]), 0.0);
    assert_eq!(value(&s, "dreadlock_admin_connections", &[]), 1.0);
    // The first scrape and this one at least (scrape_until may have needed
    // more tries).
    assert!(value(&s, "dreadlock_admin_connections_accepted_total", &[]) >= 2.0);

    // Process metrics, from /proc.
    let nofile: f64 = d
        .stderr()
        .split("open-file limit ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|n| n.parse().ok())
        .expect("open-file limit in the startup line");
    assert_eq!(value(&s, "process_max_fds", &[]), nofile);
    let fds = value(&s, "process_open_fds", &[]);
    assert!((5.0..100.0).contains(&fds), "open fds {fds}");
    assert!(value(&s, "process_resident_memory_bytes", &[]) > 100_000.0);
    assert!(
        value(&s, "process_virtual_memory_bytes", &[])
            >= value(&s, "process_resident_memory_bytes", &[])
    );
    assert!(value(&s, "process_cpu_seconds_total", &[]) >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value(&s, "process_start_time_seconds", &[]);
    assert!(
        (now - 120.0..now + 2.0).contains(&started),
        "start {started} now {now}"
    );

    // The holder leaves: its lock goes to the waiter.
    drop(c1);
    c4.expect("l locked\r\n");
    let s = scrape_until(admin, "dreadlock_connections", 3.0);
    assert_eq!(value(&s, "dreadlock_waiters", &[]), 0.0);
    assert_eq!(value(&s, "dreadlock_keys", &[]), 1.0);
    assert_eq!(value(&s, "dreadlock_disconnects_total", &[]), 2.0);
    assert_eq!(
        value(&s, "dreadlock_releases_total", &[("cause", "disconnect")]),
        1.0
    );
    assert_eq!(
        value(&s, "dreadlock_grants_total", &[("wait", "queued")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "dreadlock_wait_seconds_count",
            &[("outcome", "granted")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "dreadlock_wait_seconds_count",
            &[("outcome", "timeout")]
        ),
        2.0
    );
    drop((c2, c3, c4));
    scrape_until(admin, "dreadlock_keys", 0.0);
}

#[test]
fn every_http_answer() {
    let (_d, admin) = start(&[]);
    let r = request(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = request(admin, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    let r = request(admin, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("# TYPE dreadlock_connections gauge\n"));
    assert_eq!(request(admin, b"GET /nope HTTP/1.1\r\n\r\n").status, 404);
    assert_eq!(request(admin, b"GET / HTTP/1.1\r\n\r\n").status, 404);
    let r = request(
        admin,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(r.status, 405);
    assert!(r.head.contains("\r\nAllow: GET"), "{}", r.head);
    assert_eq!(
        request(admin, b"DELETE /healthz HTTP/1.1\r\n\r\n").status,
        405
    );
    assert_eq!(request(admin, b"lock a 100\r\n\r\n").status, 400);
    assert_eq!(request(admin, b"\x00\x01\x02\x03\r\n\r\n").status, 400);

    // Head size: exactly 8 KiB is served; one byte more is 431.
    let padded = |len: usize| {
        let start = "GET /healthz HTTP/1.1\r\nX-Pad: ";
        let mut h = format!("{start}{}", "a".repeat(len - start.len() - 4));
        h.push_str("\r\n\r\n");
        assert_eq!(h.len(), len);
        h
    };
    assert_eq!(request(admin, padded(8192).as_bytes()).status, 200);
    assert_eq!(request(admin, padded(8193).as_bytes()).status, 431);
    // A huge head: 431, and the response arrives although more follows.
    let mut s = admin_connect(admin);
    let big = vec![b'a'; 40_000];
    s.write_all(b"GET /healthz HTTP/1.1\r\nX-Big: ").unwrap();
    s.write_all(&big).unwrap();
    assert_eq!(split_response(&read_all(&mut s)).status, 431);

    // A head that never completes: 408 after 5 s.
    let mut s = admin_connect(admin);
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost:").unwrap();
    let t0 = Instant::now();
    let r = split_response(&read_all(&mut s));
    assert_eq!(r.status, 408);
    assert!(
        t0.elapsed() >= Duration::from_millis(4_900),
        "{:?}",
        t0.elapsed()
    );
    // A client that sends nothing at all is closed at the same deadline.
    let mut s = admin_connect(admin);
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let r = split_response(&read_all(&mut s));
    assert_eq!(r.status, 408);
}

#[test]
fn hostile_admin_clients_leave_the_lock_port_serving() {
    let (d, admin) = start(&[]);
    let mut probe = d.connect();
    // No speed is asserted, only that the lock port keeps answering: within
    // 2 s, a generous bound for a loopback round trip, and well under the
    // admin read deadline (5 s) that a loop waiting on a slow admin client
    // would wait out.
    probe
        .stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let round_trip = |probe: &mut common::Client| {
        probe.call("lock p 1000\r\n", "l locked\r\n");
        probe.call("unlock p\r\n", "u unlocked\r\n");
    };
    round_trip(&mut probe);

    // An oversize client that writes as fast as it can, and a garbage one.
    let flooder = std::thread::spawn(move || {
        let mut s = admin_connect(admin);
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..64 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut garbage = admin_connect(admin);
    garbage.write_all(&[0xff; 3000]).unwrap();
    round_trip(&mut probe);
    assert_eq!(split_response(&read_all(&mut garbage)).status, 400);
    flooder.join().unwrap();
    drop(garbage);

    // Wait for the admin slots to empty (this scrape is the only one).
    scrape_until(admin, "dreadlock_admin_connections", 1.0);
    let refused_before = value(
        &scrape(admin),
        "dreadlock_admin_connections_refused_total",
        &[],
    );

    // Sixteen slowloris clients take every admin slot, and the lock port
    // still serves while they hang on...
    let mut slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = admin_connect(admin);
            s.write_all(b"GET /met").unwrap();
            s
        })
        .collect();
    round_trip(&mut probe);
    let mut other = d.connect();
    other.call("lock q 0\r\n", "l locked\r\n");
    // ...and a seventeenth is closed at once.
    let mut extra = admin_connect(admin);
    extra
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the 17th admin connection was not refused: {other:?}"),
    }
    round_trip(&mut probe);

    // At the read deadline every slowloris gets 408 and the slots free up.
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        assert_eq!(split_response(&read_all(s)).status, 408);
    }
    drop(slow);
    let s = scrape_until(admin, "dreadlock_admin_connections", 1.0);
    assert_eq!(
        value(&s, "dreadlock_admin_connections_refused_total", &[]),
        refused_before + 1.0
    );
    round_trip(&mut probe);
}

/// The accept filter (wired to `--allow`) closes refused peers at accept,
/// in-process with a mio loop of the test's own.
#[test]
fn the_accept_filter_refuses_peers() {
    use dreadlock::admin::AdminServer;
    for allowed in [false, true] {
        let mut server = AdminServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        server.set_accept_filter(move |ip| allowed && ip.is_loopback());
        let addr = server.local_addr();
        let mut poll = mio::Poll::new().unwrap();
        server.register(poll.registry(), 100).unwrap();
        let client = std::thread::spawn(move || {
            let mut s = admin_connect(addr);
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
            read_all(&mut s)
        });
        let mut events = mio::Events::with_capacity(16);
        let end = Instant::now() + PROMPT;
        while !client.is_finished() {
            assert!(Instant::now() < end, "client never finished");
            poll.poll(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
            for e in events.iter() {
                assert!(server.owns(e.token()));
                server.handle_event(poll.registry(), e.token(), Instant::now(), &String::new);
            }
            server.handle_timeout(poll.registry(), Instant::now(), &String::new);
        }
        let got = client.join().unwrap();
        let stats = server.stats();
        if allowed {
            assert_eq!(split_response(&got).body, "ok\n");
            assert_eq!((stats.accepted, stats.refused), (1, 0));
        } else {
            assert!(got.is_empty(), "{got:?}");
            assert_eq!((stats.accepted, stats.refused), (0, 1));
        }
    }
}

/// The daemon wires `--allow` to the admin port too: a peer outside the
/// list gets nothing from it, one inside is answered.
#[test]
fn the_admin_port_follows_allow() {
    let (_d, admin) = start(&["--allow", "10.0.0.0/8"]);
    let mut s = admin_connect(admin);
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(read_all(&mut s).is_empty(), "served a peer outside --allow");

    let (_d, admin) = start(&["--allow", "10.0.0.0/8", "--allow", "127.0.0.1"]);
    let r = request(admin, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
}
