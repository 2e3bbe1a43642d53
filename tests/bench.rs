//! The load generator's correctness checks, each against a deliberately
//! wrong fake server (tiny in-process TCP servers on 127.0.0.1:0), plus a
//! happy path against the real daemon. Every run must end non-zero and say
//! why when the server misbehaves, and within its time bound.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Daemon;

/// Runs the tool; returns (exit code, stdout, stderr).
fn bench(args: &[&str]) -> (i32, String, String) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_dreadlock-bench"))
        .args(args)
        .output()
        .expect("run dreadlock-bench");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "dreadlock-bench took {:?}",
        start.elapsed()
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts the run failed with exit code 1 and `needle` in stderr.
fn assert_fails(args: &[&str], needle: &str) -> String {
    let (code, stdout, stderr) = bench(args);
    assert_eq!(
        code, 1,
        "expected exit 1\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "stderr does not say {needle:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stderr
}

/// What a fake server answers to one command line (CRLF stripped), given
/// the connection's number (in accept order). `None`: no answer.
type Handler = dyn Fn(usize, &str) -> Option<Vec<u8>> + Send + Sync;

/// A fake server: one thread per connection, one call of `handler` per
/// line. Lives until the test process ends.
fn fake(handler: impl Fn(usize, &str) -> Option<Vec<u8>> + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handler: Arc<Handler> = Arc::new(handler);
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let handler = handler.clone();
            std::thread::spawn(move || serve(n, stream, &*handler));
        }
    });
    addr.to_string()
}

fn serve(n: usize, stream: TcpStream, handler: &Handler) {
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let cmd = text.trim_end_matches(['\r', '\n']);
        match handler(n, cmd) {
            Some(reply) if reply.is_empty() => return, // hang up
            Some(reply) if writer.write_all(&reply).is_err() => return,
            Some(_) | None => {}
        }
    }
}

/// A dreadlock server that grants every lock at once, to anyone.
fn grant_everything(_: usize, cmd: &str) -> Option<Vec<u8>> {
    if cmd.starts_with("lock ") {
        Some(b"l locked\r\n".to_vec())
    } else {
        Some(b"u unlocked\r\n".to_vec())
    }
}

const QUICK: [&str; 4] = ["--warmup", "0", "--duration", "0.3"];

fn args<'a>(addr: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--addr", addr, "--grace", "1"];
    v.extend_from_slice(&QUICK);
    v.extend_from_slice(rest);
    v
}

#[test]
fn throughput_rejects_a_reply_missing_its_cr() {
    let addr = fake(|_, cmd| {
        Some(if cmd.starts_with("lock") {
            b"l locked\n".to_vec()
        } else {
            b"u unlocked\r\n".to_vec()
        })
    });
    assert_fails(
        &args(&addr, &["throughput", "-c", "2"]),
        r#"unexpected reply "l locked\n""#,
    );
}

#[test]
fn throughput_rejects_replies_out_of_order() {
    // Right bytes, wrong command: the unlock's reply to a lock.
    let addr = fake(|_, _| Some(b"u unlocked\r\n".to_vec()));
    assert_fails(
        &args(&addr, &["throughput", "-c", "2", "-p", "4"]),
        r#"expected "l locked\r\n", got "u unlocked\r\n""#,
    );
}

#[test]
fn throughput_rejects_an_extra_reply() {
    // Two replies to every unlock: the second arrives with nothing asked.
    let addr = fake(|_, cmd| {
        Some(if cmd.starts_with("lock") {
            b"l locked\r\n".to_vec()
        } else {
            b"u unlocked\r\nu unlocked\r\n".to_vec()
        })
    });
    let (code, _, stderr) = bench(&args(&addr, &["throughput", "-c", "1"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no command outstanding") || stderr.contains("expected"),
        "{stderr}"
    );
}

#[test]
fn throughput_fails_when_the_server_hangs_up() {
    let addr = fake(|_, _| Some(Vec::new()));
    assert_fails(
        &args(&addr, &["throughput", "-c", "3"]),
        "server closed the connection",
    );
}

#[test]
fn a_silent_server_fails_the_run_in_bounded_time() {
    let addr = fake(|_, _| None);
    let start = Instant::now();
    assert_fails(
        &args(&addr, &["throughput", "-c", "3"]),
        "still waiting for replies",
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn contended_detects_two_holders_of_one_lock() {
    let addr = fake(grant_everything);
    let stderr = assert_fails(
        &args(&addr, &["contended", "-c", "4", "-k", "1"]),
        "mutual exclusion violated",
    );
    assert!(stderr.contains("while connection"), "{stderr}");
}

#[test]
fn contended_rejects_a_timeout_on_a_long_wait() {
    // Holder semantics right, but waiters are told "t timeout" at once.
    let holder = Arc::new(Mutex::new(None::<usize>));
    let addr = fake(move |n, cmd| {
        let mut h = holder.lock().unwrap();
        if cmd.starts_with("lock ") {
            if h.is_none() {
                *h = Some(n);
                return Some(b"l locked\r\n".to_vec());
            }
            return Some(b"t timeout\r\n".to_vec());
        }
        *h = None;
        Some(b"u unlocked\r\n".to_vec())
    });
    assert_fails(
        &args(&addr, &["contended", "-c", "3", "-k", "1"]),
        r#""t timeout\r\n" after"#,
    );
}

#[test]
fn timeouts_detects_an_early_timeout() {
    // The first lock is granted; every later one times out at once.
    let locks = Arc::new(AtomicUsize::new(0));
    let addr = fake(move |_, cmd| {
        if cmd.starts_with("lock ") {
            if locks.fetch_add(1, Ordering::SeqCst) == 0 {
                Some(b"l locked\r\n".to_vec())
            } else {
                Some(b"t timeout\r\n".to_vec())
            }
        } else {
            Some(b"u unlocked\r\n".to_vec())
        }
    });
    let stderr = assert_fails(
        &args(&addr, &["timeouts", "-n", "20", "--timeout-ms", "200"]),
        "timeouts answered early",
    );
    assert!(stderr.contains("20 of 20"), "{stderr}");
}

#[test]
fn timeouts_detects_a_grant_while_the_key_is_held() {
    let addr = fake(grant_everything);
    assert_fails(
        &args(&addr, &["timeouts", "-n", "5", "--timeout-ms", "100"]),
        r#"expected "t timeout\r\n", got "l locked\r\n" while the holder holds the key"#,
    );
}

#[test]
fn timeouts_detects_a_missing_timeout() {
    // The waiters are never answered.
    let locks = Arc::new(AtomicUsize::new(0));
    let addr = fake(move |_, cmd| {
        if cmd.starts_with("lock ") && locks.fetch_add(1, Ordering::SeqCst) == 0 {
            Some(b"l locked\r\n".to_vec())
        } else {
            None
        }
    });
    assert_fails(
        &args(&addr, &["timeouts", "-n", "5", "--timeout-ms", "50"]),
        "5 of 5 waiters got no reply",
    );
}

#[test]
fn connections_counts_refused_connects() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    assert_fails(
        &args(&addr, &["connections", "-n", "10"]),
        "10 of 10 connects failed (refused 10",
    );
}

#[test]
fn connections_rejects_a_wrong_lock_reply() {
    let addr = fake(|_, _| Some(b"e already locked\r\n".to_vec()));
    assert_fails(
        &args(&addr, &["connections", "-n", "10"]),
        "10 connections failed to lock",
    );
}

#[test]
fn redis_mode_checks_del_replies() {
    // DEL answered as if the key had already gone (":0"): not ours to free.
    let addr = fake(|_, cmd| {
        Some(if cmd.starts_with("SET ") {
            b"+OK\r\n".to_vec()
        } else {
            b":0\r\n".to_vec()
        })
    });
    assert_fails(
        &args(&addr, &["--redis", "throughput", "-c", "2"]),
        r#"unexpected reply ":0\r\n""#,
    );
}

#[test]
fn redis_mode_happy_path_against_a_fake() {
    // A correct SET NX / DEL server in miniature.
    let held = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let addr = fake(move |_, cmd| {
        let mut held = held.lock().unwrap();
        let words: Vec<&str> = cmd.split(' ').collect();
        Some(match words.as_slice() {
            ["SET", key, "1", "NX", "PX", _] => {
                if held.insert(key.to_string()) {
                    b"+OK\r\n".to_vec()
                } else {
                    b"$-1\r\n".to_vec()
                }
            }
            ["DEL", key] => {
                if held.remove(*key) {
                    b":1\r\n".to_vec()
                } else {
                    b":0\r\n".to_vec()
                }
            }
            _ => b"-ERR\r\n".to_vec(),
        })
    });
    let (code, stdout, stderr) = bench(&args(
        &addr,
        &["--redis", "contended", "-c", "3", "-k", "1"],
    ));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("violations     0"), "{stdout}");
    let (code, stdout, _) = bench(&args(&addr, &["--redis", "timeouts"]));
    assert_eq!(code, 0);
    assert!(stdout.contains("n/a"), "{stdout}");
}

#[test]
fn happy_path_against_the_daemon() {
    let daemon = Daemon::start();
    let addr: SocketAddr = daemon.addr;
    let addr = addr.to_string();
    let pid = daemon.pid().to_string();
    let runs: [&[&str]; 5] = [
        &["throughput", "-c", "4"],
        &["throughput", "-c", "4", "-p", "8"],
        &["contended", "-c", "8", "-k", "2"],
        &["timeouts", "-n", "50", "--timeout-ms", "50"],
        &["connections", "-n", "200"],
    ];
    for run in runs {
        let mut a = args(&addr, &["--json", "--pid", &pid]);
        a.extend_from_slice(run);
        let (code, stdout, stderr) = bench(&a);
        assert_eq!(code, 0, "{run:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stdout.starts_with('{') && stdout.trim_end().ends_with('}'),
            "{stdout}"
        );
        assert!(stdout.contains(r#""ok":true"#), "{stdout}");
        assert!(stdout.contains(r#""server_cpu_s":"#), "{stdout}");
        if run[0] == "contended" {
            assert!(stdout.contains(r#""violations":0"#), "{stdout}");
        }
        if run[0] == "connections" {
            assert!(stdout.contains(r#""rss_per_conn_bytes":"#), "{stdout}");
            assert!(stdout.contains(r#""locked":200"#), "{stdout}");
        }
    }
    // The human summary too.
    let (code, stdout, _) = bench(&args(&addr, &["throughput", "-c", "2"]));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("pairs/s") && stdout.contains("result         OK"),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------
// Token protocols: strict, semaphore, acquire (dreadlock) and dflockd.

/// A fake dflockd: collects each connection's three-line requests and calls
/// `handler(conn, command, key, arg)` once per request.
fn fake_dflockd(
    handler: impl Fn(usize, &str, &str, &str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> String {
    let partial: Mutex<std::collections::HashMap<usize, Vec<String>>> = Mutex::default();
    fake(move |n, line| {
        let mut p = partial.lock().unwrap();
        let lines = p.entry(n).or_default();
        lines.push(line.to_string());
        if lines.len() < 3 {
            return None;
        }
        let req = std::mem::take(lines);
        drop(p);
        handler(n, &req[0], &req[1], &req[2])
    })
}

/// A correct single-key dflockd: FIFO is not needed, only exclusion, so a
/// request for a held key is parked until the holder's release (checked
/// against its token), then granted with a fresh token.
fn dflockd_that_checks_tokens() -> String {
    struct St {
        holder: Option<(usize, String)>,
        next: u64,
    }
    let st = Arc::new(Mutex::new(St {
        holder: None,
        next: 0,
    }));
    fake_dflockd(move |n, cmd, _key, arg| {
        // Waits for the key inside this connection's thread.
        loop {
            let mut s = st.lock().unwrap();
            match cmd {
                "l" if s.holder.is_none() => {
                    s.next += 1;
                    let token = format!("tok{:x}", s.next * 7919);
                    s.holder = Some((n, token.clone()));
                    return Some(format!("ok {token} 33\n").into_bytes());
                }
                "l" => {}
                "r" => {
                    return Some(match &s.holder {
                        Some((h, t)) if *h == n && t == arg => {
                            s.holder = None;
                            b"ok\n".to_vec()
                        }
                        _ => b"error\n".to_vec(),
                    });
                }
                _ => return Some(b"error\n".to_vec()),
            }
            drop(s);
            std::thread::sleep(Duration::from_micros(200));
        }
    })
}

#[test]
fn dflockd_strict_happy_path_against_a_fake() {
    let addr = dflockd_that_checks_tokens();
    let (code, stdout, stderr) = bench(&args(
        &addr,
        &["--dflockd", "--json", "strict", "-c", "3", "-k", "1"],
    ));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(r#""violations":0"#), "{stdout}");
    assert!(stdout.contains(r#""server":"dflockd""#), "{stdout}");
}

#[test]
fn dflockd_strict_detects_two_holders_of_one_lock() {
    let addr = fake_dflockd(|_, cmd, _, _| {
        Some(match cmd {
            "l" => b"ok t1 33\n".to_vec(),
            _ => b"ok\n".to_vec(),
        })
    });
    assert_fails(
        &args(&addr, &["--dflockd", "strict", "-c", "4", "-k", "1"]),
        "mutual exclusion violated",
    );
}

#[test]
fn dflockd_strict_rejects_a_grant_without_a_token() {
    let addr = fake_dflockd(|_, cmd, _, _| {
        Some(match cmd {
            "l" => b"ok 33\n".to_vec(),
            _ => b"ok\n".to_vec(),
        })
    });
    assert_fails(
        &args(&addr, &["--dflockd", "strict", "-c", "1", "-k", "1"]),
        r#"expected a grant, got "ok 33\n""#,
    );
}

#[test]
fn dflockd_release_carries_the_grants_token() {
    // The fake refuses a release with any other token than its grant's.
    let addr = fake_dflockd(|n, cmd, _, arg| {
        Some(match cmd {
            "l" => format!("ok conn{n}x 33\n").into_bytes(),
            "r" if arg == format!("conn{n}x") => b"ok\n".to_vec(),
            _ => b"error\n".to_vec(),
        })
    });
    let (code, stdout, stderr) = bench(&args(&addr, &["--dflockd", "strict", "-c", "2"]));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    // And a server answering "error" to the release fails the run.
    let addr = fake_dflockd(|_, cmd, _, _| {
        Some(match cmd {
            "l" => b"ok t 33\n".to_vec(),
            _ => b"error\n".to_vec(),
        })
    });
    assert_fails(
        &args(&addr, &["--dflockd", "strict", "-c", "1"]),
        r#"expected "ok\n" to a release, got "error\n""#,
    );
}

#[test]
fn dflockd_semaphore_detects_one_holder_too_many() {
    // Grants every `sl`, whatever its limit.
    let addr = fake_dflockd(|_, cmd, _, _| {
        Some(match cmd {
            "sl" => b"ok s1 33\n".to_vec(),
            "sr" => b"ok\n".to_vec(),
            _ => b"error\n".to_vec(),
        })
    });
    let stderr = assert_fails(
        &args(&addr, &["--dflockd", "semaphore", "-c", "4", "-n", "3"]),
        "semaphore limit violated",
    );
    assert!(stderr.contains("limit 3"), "{stderr}");
}

#[test]
fn semaphore_detects_one_holder_too_many() {
    let addr = fake(|_, cmd| {
        Some(if cmd.starts_with("acquire ") {
            b"a 7\r\n".to_vec()
        } else {
            b"u unlocked\r\n".to_vec()
        })
    });
    assert_fails(
        &args(&addr, &["semaphore", "-c", "3", "-n", "2"]),
        "semaphore limit violated",
    );
}

#[test]
fn strict_rejects_a_fencing_token_that_does_not_increase() {
    // Exclusive, correct holders, but every grant carries the same token.
    let holder = Arc::new(Mutex::new(None::<usize>));
    let addr = fake(move |n, cmd| {
        loop {
            let mut h = holder.lock().unwrap();
            if cmd.starts_with("acquire ") {
                if h.is_none() {
                    *h = Some(n);
                    return Some(b"a 42\r\n".to_vec());
                }
            } else {
                *h = None;
                return Some(b"u unlocked\r\n".to_vec());
            }
            drop(h);
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    assert_fails(
        &args(&addr, &["strict", "-c", "2", "-k", "1"]),
        "fencing token 42 on key",
    );
}

#[test]
fn acquire_rejects_a_lock_reply() {
    // `l locked` is lock's reply, not acquire's.
    let addr = fake(grant_everything);
    assert_fails(
        &args(&addr, &["acquire", "-c", "1"]),
        r#"expected a grant, got "u unlocked\r\n""#,
    );
    let addr = fake(|_, cmd| {
        Some(if cmd.starts_with("acquire ") {
            b"l locked\r\n".to_vec()
        } else {
            b"u unlocked\r\n".to_vec()
        })
    });
    assert_fails(
        &args(&addr, &["acquire", "-c", "1", "-p", "2"]),
        r#"expected a grant, got "l locked\r\n""#,
    );
}

#[test]
fn dflockd_is_refused_where_it_does_not_apply() {
    let (code, _, stderr) = bench(&["--dflockd", "throughput"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("strict and semaphore"), "{stderr}");
}

#[test]
fn token_scenarios_and_the_floor_happy_path() {
    let daemon = Daemon::start();
    let addr = daemon.addr.to_string();
    let pid = daemon.pid().to_string();
    let runs: [&[&str]; 5] = [
        &["strict", "-c", "1", "-k", "1"],
        &["strict", "-c", "6", "-k", "2"],
        &["semaphore", "-c", "6", "-n", "3"],
        &["acquire", "-c", "3"],
        &["acquire", "-c", "3", "-p", "8"],
    ];
    for run in runs {
        let mut a = args(&addr, &["--json", "--pid", &pid]);
        a.extend_from_slice(run);
        let (code, stdout, stderr) = bench(&a);
        assert_eq!(code, 0, "{run:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(stdout.contains(r#""ok":true"#), "{stdout}");
        if run[0] != "acquire" {
            assert!(stdout.contains(r#""violations":0"#), "{stdout}");
        }
    }

    // The floor server: started on an ephemeral port (it prints it), then
    // the throughput and acquire scenarios run against it.
    let mut floor = Command::new(env!("CARGO_BIN_EXE_dreadlock-bench"))
        .args(["floor", "--port", "0", "--busy-poll-us", "0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the floor server");
    let mut line = String::new();
    BufReader::new(floor.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let faddr = line
        .trim()
        .rsplit(' ')
        .next()
        .expect("floor prints its address")
        .to_string();
    for run in [
        &["throughput", "-c", "3", "-p", "4"][..],
        &["acquire", "-c", "2", "-p", "4"],
    ] {
        let (code, stdout, stderr) = bench(&args(&faddr, run));
        assert_eq!(code, 0, "{run:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    }
    floor.kill().unwrap();
    floor.wait().unwrap();
}
