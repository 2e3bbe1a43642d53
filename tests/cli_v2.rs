//! `dreadlock-cli`'s protocol version 2 features over real processes
//! against the real daemon: `status`, `stats`, `evict`, `lock --limit`,
//! `DREADLOCK_TOKEN`, connection names and `--auth-file`; and what it does
//! with a daemon that speaks only the original protocol (a scripted fake).
//!
//! Waits are explicit and bounded: the order of holders and waiters is
//! established by polling `info` on a connection of the test's own, never
//! by sleeping.

#[path = "common/cli.rs"]
mod cli_harness;
mod common;
mod fake;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use cli_harness::{
    Scratch, cli, daemon_and_scratch, finish, process_exists, read_pid, run, start, stderr, stdout,
    wait_file,
};
use common::{Daemon, PROMPT};
use fake::{Fake, HANG_UP};

/// A shell command that records `tag` in `started`, then waits for `go`.
fn hold_until(started: &str, go: &str, tag: &str) -> String {
    format!(
        "echo \"{tag} $DREADLOCK_TOKEN\" >> {started}; \
         while [ ! -e {go} ]; do sleep 0.01; done"
    )
}

/// `info key` over a raw connection, as `name=value` pairs.
fn info(d: &Daemon, key: &str) -> BTreeMap<String, String> {
    let mut c = d.connect();
    c.send(format!("info {key}\r\n"));
    let line = c.read_line();
    line.strip_prefix("i ")
        .and_then(|l| l.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("not an info reply: {line:?}"))
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Polls `info key` until `field` reads `want`.
fn wait_info(d: &Daemon, key: &str, field: &str, want: &str) -> BTreeMap<String, String> {
    let end = Instant::now() + PROMPT;
    loop {
        let i = info(d, key);
        if i.get(field).map(String::as_str) == Some(want) {
            return i;
        }
        assert!(
            Instant::now() < end,
            "info {key}: {field} never {want}: {i:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// This host's short name, as the default connection name has it.
fn short_host() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    host.trim().split('.').next().unwrap().to_owned()
}

/// The value of `"field":` in a one-line JSON object (a string's quotes
/// kept), for the flat objects `status --json` prints.
fn json_field<'a>(json: &'a str, field: &str) -> &'a str {
    let start = json
        .find(&format!("\"{field}\":"))
        .unwrap_or_else(|| panic!("no {field} in {json}"))
        + field.len()
        + 3;
    let rest = &json[start..];
    let end = if let Some(string) = rest.strip_prefix('"') {
        string.find('"').unwrap() + 2
    } else {
        rest.find([',', '}']).unwrap()
    };
    &rest[..end]
}

/// The closing note's case: `status backup` while a named job holds the
/// lock and two commands wait for it, in both forms.
#[test]
fn status_shows_the_named_holder_and_two_waiters() {
    let (d, server, scratch) = daemon_and_scratch("status");
    let (started, go) = (scratch.path("started"), scratch.path("go"));
    let holder = start(cli(&server).args([
        "--name",
        "nightly-backup",
        "lock",
        "backup",
        "-c",
        &hold_until(&started, &go, "holder"),
    ]));
    let line = wait_file(&started);
    let token = line.trim().strip_prefix("holder ").unwrap().to_owned();
    let waiters: Vec<Child> = (0..2)
        .map(|i| {
            start(cli(&server).args([
                "lock",
                "backup",
                "-c",
                &hold_until(&started, &go, &format!("waiter{i}")),
            ]))
        })
        .collect();
    wait_info(&d, "backup", "waiters", "2");

    let out = run(cli(&server).args(["status", "backup"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "key       backup", "{text}");
    assert_eq!(lines[1], format!("server    {server}"), "{text}");
    for want in [
        "state     held, 2 waiting",
        "limit     1 (an exclusive lock)",
        "holders   1",
        "waiters   2",
        "name      nightly-backup",
        &format!("token     {token}"),
    ] {
        assert!(lines.contains(&want), "no {want:?} in\n{text}");
    }
    let peer = lines
        .iter()
        .find_map(|l| l.strip_prefix("peer      "))
        .unwrap();
    assert!(peer.starts_with("127.0.0.1:"), "{text}");
    let held = lines
        .iter()
        .find_map(|l| l.strip_prefix("held for  "))
        .unwrap();
    assert!(held.ends_with('s'), "{text}");

    let out = run(cli(&server).args(["status", "backup", "--json"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let json = stdout(&out);
    assert!(json.starts_with('{') && json.ends_with("}\n"), "{json}");
    for (field, want) in [
        ("key", "\"backup\"".to_owned()),
        ("server", format!("\"{server}\"")),
        ("held", "true".to_owned()),
        ("limit", "1".to_owned()),
        ("holders", "1".to_owned()),
        ("waiters", "2".to_owned()),
        ("name", "\"nightly-backup\"".to_owned()),
        ("peer", format!("\"{peer}\"")),
        ("token", format!("\"{token}\"")),
    ] {
        assert_eq!(json_field(&json, field), want, "{field} in {json}");
    }
    let held_ms: u64 = json_field(&json, "held_ms").parse().unwrap();
    assert!(held_ms < 600_000, "{json}");

    std::fs::write(&go, "").unwrap();
    for child in std::iter::once(holder).chain(waiters) {
        let (status, _, err) = finish(child);
        assert!(status.success(), "{err}");
    }
    // Free again: the holder's fields are gone.
    let out = run(cli(&server).args(["status", "backup", "--json"]));
    assert_eq!(
        stdout(&out),
        format!(
            "{{\"key\":\"backup\",\"server\":\"{server}\",\"held\":false,\"limit\":0,\
             \"holders\":0,\"waiters\":0,\"name\":null,\"peer\":null,\"held_ms\":null,\
             \"token\":null}}\n"
        )
    );
    let out = run(cli(&server).args(["status", "backup"]));
    assert!(
        stdout(&out).contains("state     free\n"),
        "{}",
        stdout(&out)
    );
}

/// Three holders one after the other, and three that queue at once: each
/// command's DREADLOCK_TOKEN is larger than the one before.
#[test]
fn dreadlock_token_increases_across_successive_holders() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let mut tokens: Vec<u64> = Vec::new();
    for _ in 0..3 {
        let out = run(cli(&server).args(["lock", "job", "-c", "echo \"$DREADLOCK_TOKEN\""]));
        assert!(out.status.success(), "{}", stderr(&out));
        tokens.push(stdout(&out).trim().parse().expect("a token"));
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");

    // Queued: each appends its token while it holds the lock, so the
    // file's order is the grant order.
    let scratch = Scratch::new("tokens");
    let (log, go) = (scratch.path("log"), scratch.path("go"));
    let first = start(cli(&server).args(["lock", "job", "-c", &hold_until(&log, &go, "t")]));
    wait_file(&log);
    let rest: Vec<Child> = (0..2)
        .map(|_| {
            start(cli(&server).args([
                "lock",
                "job",
                "-c",
                &format!("echo \"t $DREADLOCK_TOKEN\" >> {log}"),
            ]))
        })
        .collect();
    wait_info(&d, "job", "waiters", "2");
    std::fs::write(&go, "").unwrap();
    for child in std::iter::once(first).chain(rest) {
        assert!(finish(child).0.success());
    }
    let queued: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.strip_prefix("t ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(queued.len(), 3);
    assert!(queued[0] > tokens[2], "{tokens:?} {queued:?}");
    assert!(queued.windows(2).all(|w| w[0] < w[1]), "{queued:?}");
}

/// `--limit 2`: two commands hold the key at once, a third waits until one
/// of them is done; a different limit on the held key is refused.
#[test]
fn limit_two_runs_two_at_once_and_the_third_waits() {
    let (d, server, scratch) = daemon_and_scratch("limit");
    let (started, go) = (scratch.path("started"), scratch.path("go"));
    let (third, third_go) = (scratch.path("third"), scratch.path("third_go"));
    let two: Vec<Child> = ["a", "b"]
        .iter()
        .map(|tag| {
            start(cli(&server).args([
                "lock",
                "--limit",
                "2",
                "encode",
                "-c",
                &hold_until(&started, &go, tag),
            ]))
        })
        .collect();
    // Both started before either was let go: they run at once.
    let end = Instant::now() + PROMPT;
    while std::fs::read_to_string(&started)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(Instant::now() < end, "the two commands never ran at once");
        thread::sleep(Duration::from_millis(10));
    }
    let three = start(cli(&server).args([
        "lock",
        "-l",
        "2",
        "encode",
        "-c",
        &hold_until(&third, &third_go, "c"),
    ]));
    let i = wait_info(&d, "encode", "waiters", "1");
    assert_eq!((i["limit"].as_str(), i["holders"].as_str()), ("2", "2"));
    assert!(!Path::new(&third).exists(), "the third ran without a slot");

    // Another limit, or the exclusive lock, on the held key: refused.
    for args in [
        &["lock", "-n", "--limit", "3", "encode", "true"][..],
        &["lock", "-n", "encode", "true"],
    ] {
        let out = run(cli(&server).args(args));
        assert_eq!(out.status.code(), Some(69), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("limit mismatch"), "{}", stderr(&out));
        assert!(stderr(&out).contains("the same one"), "{}", stderr(&out));
    }
    let out = run(cli(&server).args(["status", "encode"]));
    assert!(
        stdout(&out).contains("limit     2 (a semaphore"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("the oldest holder:"),
        "{}",
        stdout(&out)
    );

    std::fs::write(&go, "").unwrap();
    wait_file(&third); // a slot came free
    std::fs::write(&third_go, "").unwrap();
    for child in two.into_iter().chain([three]) {
        let (status, _, err) = finish(child);
        assert!(status.success(), "{err}");
    }

    // The limit's bounds are usage errors, caught before connecting.
    for bad in ["0", "65536", "-1", "x"] {
        let out = run(cli(&server).args(["lock", "--limit", bad, "k", "true"]));
        assert_eq!(out.status.code(), Some(2), "--limit {bad}");
    }
    for good in ["1", "65535"] {
        let out = run(cli(&server).args(["lock", "--limit", good, "k", "true"]));
        assert!(out.status.success(), "--limit {good}: {}", stderr(&out));
    }
}

/// `evict` closes the holder's connection: its command is stopped (exit
/// 70), and the next waiter's command starts.
#[test]
fn evict_closes_the_holder_and_the_next_waiter_runs() {
    let (d, server, scratch) = daemon_and_scratch("evict");
    let (pidfile, marker) = (scratch.path("pid"), scratch.path("marker"));
    let holder = start(cli(&server).args([
        "lock",
        "stuck",
        "--kill-grace",
        "200ms",
        "-c",
        &format!("echo $$ > {pidfile}; exec sleep 30"),
    ]));
    let pid = read_pid(&pidfile);
    assert!(process_exists(pid));
    let waiter = start(cli(&server).args(["lock", "stuck", "-c", &format!("echo ran > {marker}")]));
    wait_info(&d, "stuck", "waiters", "1");
    assert!(!Path::new(&marker).exists());

    let out = run(cli(&server).args(["evict", "stuck"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("evicted 1 holder of stuck on {server}\n")
    );
    let (status, _, err) = finish(holder);
    assert_eq!(status.code(), Some(70), "{err}");
    assert!(err.contains("lost"), "{err}");
    assert!(!process_exists(pid), "the evicted holder's command runs on");
    let (status, _, err) = finish(waiter);
    assert!(status.success(), "{err}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");

    let out = run(cli(&server).args(["evict", "stuck"]));
    assert_eq!(
        stdout(&out),
        format!("evicted 0 holders of stuck on {server}\n")
    );
    let out = run(cli(&server).args(["evict", "not-a-key"]));
    assert_eq!(out.status.code(), Some(2));
}

/// `e not allowed` (a daemon without auth, evict from a non-loopback peer:
/// over loopback only a scripted daemon can say it) is a clear error.
#[test]
fn evict_not_allowed_says_why() {
    let fake = Fake::start(vec![vec![Some("o ok\r\n"), Some("e not allowed\r\n")]]);
    let out = run(cli(&fake.server()).args(["evict", "stuck"]));
    assert_eq!(out.status.code(), Some(69));
    let err = stderr(&out);
    assert!(
        err.contains("evict stuck:") && err.contains("not allowed"),
        "{err}"
    );
    assert!(err.contains("only from its own host"), "{err}");
}

/// One block per server, every field in the daemon's order; counters move;
/// a server that does not answer is reported and makes the exit code 69,
/// the others are still printed.
#[test]
fn stats_prints_one_block_per_server() {
    let (a, b) = (Daemon::start(), Daemon::start());
    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
    let grants = |text: &str, server: &str| -> u64 {
        let block = text.split(&format!("{server}\n")).nth(1).unwrap();
        block
            .lines()
            .find_map(|l| l.trim().strip_prefix("grants"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let out = run(cli(&sa).args(["--server", &sb, "stats"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let blocks: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(blocks.len(), 2, "{text}");
    assert!(blocks[0].starts_with(&format!("{sa}\n")), "{text}");
    assert!(blocks[1].starts_with(&format!("{sb}\n")), "{text}");
    for block in &blocks {
        let names: Vec<&str> = block
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(names, dreadlock::wire::STATS_FIELDS, "{block}");
    }
    let before = grants(&text, &sa);

    // A lock on a key that lives on `a` (sent there with one --server).
    assert!(run(cli(&sa).args(["lock", "k", "true"])).status.success());
    let out = run(cli(&sa).args(["--server", &sb, "stats", "--json"]));
    let json = stdout(&out);
    assert!(
        json.starts_with(&format!(
            "[{{\"server\":\"{sa}\",\"stats\":{{\"version\":\""
        )),
        "{json}"
    );
    assert!(
        json.contains(&format!("}},{{\"server\":\"{sb}\",\"stats\":{{")),
        "{json}"
    );
    assert!(json.ends_with("}}]\n"), "{json}");
    let after: u64 = json_field(&json, "grants").parse().unwrap();
    assert_eq!(after, before + 1, "{json}");
    assert!(json_field(&json, "token").starts_with('"'), "{json}");

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    drop(b);
    let out = run(cli(&sa).args(["--server", &dead, "stats"]));
    assert_eq!(out.status.code(), Some(69));
    let text = stdout(&out);
    assert!(text.starts_with(&format!("{sa}\n  version")), "{text}");
    assert!(
        text.contains(&format!("\n{dead}\n  error: {dead}: ")),
        "{text}"
    );
    let out = run(cli(&sa).args(["--server", &dead, "stats", "--json"]));
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stdout(&out).contains(&format!("{{\"server\":\"{dead}\",\"error\":\"{dead}: ")),
        "{}",
        stdout(&out)
    );
}

/// Every connection names itself HOST/PID/COMMAND unless --name says
/// otherwise; a bad --name is a usage error.
#[test]
fn connections_name_themselves_by_default_and_name_overrides() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let me = env!("CARGO_BIN_EXE_dreadlock-cli");
    let inner = format!("{me} -s {server} status owned --json");
    let child = start(cli(&server).args(["lock", "owned", "--", "sh", "-c", &inner]));
    let pid = child.id();
    let (status, out, err) = finish(child);
    assert!(status.success(), "{err}");
    assert_eq!(
        json_field(&out, "name"),
        format!("\"{}/{pid}/sh\"", short_host()),
        "{out}"
    );
    // -c names the connection after the shell command's first word.
    let child = start(cli(&server).args(["lock", "owned", "-c", &format!("/bin/sh -c '{inner}'")]));
    let pid = child.id();
    let (_, out, _) = finish(child);
    assert_eq!(
        json_field(&out, "name"),
        format!("\"{}/{pid}/sh\"", short_host())
    );

    let out = run(cli(&server).args(["--name", "deploy:web/1", "lock", "owned", "-c", &inner]));
    assert_eq!(json_field(&stdout(&out), "name"), "\"deploy:web/1\"");
    let out = run(cli(&server).args(["lock", "--name", &"x".repeat(64), "owned", "-c", &inner]));
    assert_eq!(
        json_field(&stdout(&out), "name"),
        format!("\"{}\"", "x".repeat(64))
    );
    for bad in ["", "has space", "a=b", &"x".repeat(65)] {
        let out = run(cli(&server).args(["--name", bad, "lock", "owned", "true"]));
        assert_eq!(out.status.code(), Some(2), "--name {bad:?}");
        assert!(stderr(&out).contains("1 to 64 bytes"), "{}", stderr(&out));
    }
}

/// `--auth-file` and `DREADLOCK_AUTH_FILE` against a daemon with
/// `--auth-file`: the right secret works for every subcommand, a wrong one
/// and none are refused with what to do, a missing or empty file is a
/// usage error before anything is sent.
#[test]
fn auth_file_right_wrong_missing() {
    let scratch = Scratch::new("auth");
    let secret = scratch.file("secret", "s3cret+/=\n");
    let d = Daemon::start_with(&["--auth-file", secret.as_str()]);
    let server = d.addr.to_string();

    for subcommand in [
        &["lock", "k", "true"][..],
        &["status", "k"],
        &["stats"],
        &["evict", "k"],
        &["ping"],
    ] {
        let out = run(cli(&server).args(["--auth-file", &secret]).args(subcommand));
        assert!(out.status.success(), "{subcommand:?}: {}", stderr(&out));
    }
    let out = run(cli(&server)
        .env("DREADLOCK_AUTH_FILE", &secret)
        .args(["lock", "k", "true"]));
    assert!(out.status.success(), "{}", stderr(&out));
    // After the flag's subcommand, too (it is global).
    let out = run(cli(&server).args(["lock", "k", "--auth-file", &secret, "--", "true"]));
    assert!(out.status.success(), "{}", stderr(&out));

    let ran = scratch.path("ran");
    let wrong = scratch.file("wrong", "nope\n");
    let out = run(cli(&server).args(["--auth-file", &wrong, "lock", "k", "touch", &ran]));
    assert_eq!(out.status.code(), Some(69));
    assert!(stderr(&out).contains("auth failed"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rejected the secret"),
        "{}",
        stderr(&out)
    );

    let out = run(cli(&server).args(["lock", "k", "touch", &ran]));
    assert_eq!(out.status.code(), Some(69));
    assert!(stderr(&out).contains("auth required"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--auth-file FILE"),
        "{}",
        stderr(&out)
    );
    let out = run(cli(&server).args(["status", "k"]));
    assert_eq!(out.status.code(), Some(69));
    assert!(stderr(&out).contains("auth required"), "{}", stderr(&out));
    let out = run(cli(&server).arg("ping"));
    assert_eq!(out.status.code(), Some(69));
    assert!(stdout(&out).contains("auth required"), "{}", stdout(&out));
    assert!(
        !Path::new(&ran).exists(),
        "the command ran without the lock"
    );

    let missing = scratch.path("missing");
    let empty = scratch.file("empty", "");
    let bad = scratch.file("bad", "two words\n");
    for (file, says) in [
        (&missing, "cannot read it"),
        (&empty, "it is empty"),
        (&bad, "its one line must be 1 to 256 bytes"),
    ] {
        for how in ["flag", "env"] {
            let mut cmd = cli(&server);
            if how == "flag" {
                cmd.args(["--auth-file", file]);
            } else {
                cmd.env("DREADLOCK_AUTH_FILE", file);
            }
            let out = run(cmd.args(["lock", "k", "touch", &ran]));
            assert_eq!(out.status.code(), Some(2), "{file} by {how}");
            assert!(
                stderr(&out).contains(&format!("--auth-file {file}: {says}")),
                "{}",
                stderr(&out)
            );
        }
    }
    assert!(!Path::new(&ran).exists());

    // A daemon without auth accepts the secret (`e auth not enabled`).
    let open = Daemon::start();
    let out = run(cli(&open.addr.to_string()).args(["--auth-file", &secret, "lock", "k", "true"]));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A daemon of the original protocol closes the connection on `name`:
/// `lock` says so and takes the lock with `lock` (no DREADLOCK_TOKEN);
/// what the original cannot do (`--limit`, `--name`) fails clearly.
#[test]
fn an_original_daemon_gets_the_original_lock_with_a_warning() {
    // The original drops the connection on `name`; the second connection
    // speaks the original protocol.
    let mut fake = Fake::start(vec![
        vec![Some(HANG_UP)],
        vec![Some("l locked\r\n"), Some("u unlocked\r\n")],
    ]);
    let out = run(cli(&fake.server()).env("DREADLOCK_TOKEN", "1").args([
        "lock",
        "k",
        "-c",
        "echo \"token=${DREADLOCK_TOKEN-unset}\"",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "token=unset\n");
    assert!(
        stderr(&out).contains("speaks only the original protocol"),
        "{}",
        stderr(&out)
    );
    assert!(
        fake.connection(0).starts_with("name "),
        "{}",
        fake.connection(0)
    );
    assert_eq!(fake.connection(1), "lock k 67645734910\r\nunlock k\r\n");

    let fake = Fake::start(vec![vec![Some(HANG_UP)], vec![Some("u unlocked\r\n")]]);
    let out = run(cli(&fake.server()).arg("ping"));
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("the original protocol only"),
        "{}",
        stdout(&out)
    );

    for args in [
        &["lock", "--limit", "2", "k", "true"][..],
        &["--name", "job", "lock", "k", "true"],
        &["status", "k"],
    ] {
        let mut fake = Fake::start(vec![vec![Some(HANG_UP)], vec![Some("l locked\r\n")]]);
        let out = run(cli(&fake.server()).args(args));
        assert_eq!(out.status.code(), Some(69), "{args:?}");
        assert!(
            stderr(&out).contains("older than protocol version 2"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(fake.connection(0).starts_with("name "));
        assert!(!fake.has_ended(1), "{args:?} fell back");
    }
}

/// With several servers, `status` and `evict` ask the key's server (the
/// one `which` names and `lock` used), and `stats` every server.
#[test]
fn status_and_evict_go_to_the_keys_server() {
    let (a, b) = (Daemon::start(), Daemon::start());
    let servers = [a.addr.to_string(), b.addr.to_string()];
    let both = |cmd: &mut Command| {
        cmd.args(["--server", &servers[1]]);
    };
    // One key that lives on each server.
    let keys: Vec<String> = (0..servers.len())
        .map(|i| {
            (0..)
                .map(|n| format!("key{n}"))
                .find(|k| dreadlock::client::pick_server(&servers, k) == Some(i))
                .unwrap()
        })
        .collect();
    let mut owners = std::collections::BTreeSet::new();
    for key in &keys {
        let key = key.as_str();
        let mut which = cli(&servers[0]);
        both(&mut which);
        let owner = stdout(&run(which.args(["which", key]))).trim().to_owned();
        owners.insert(owner.clone());
        let scratch = Scratch::new(&format!("shard-{key}"));
        let (started, go) = (scratch.path("started"), scratch.path("go"));
        let mut lock = cli(&servers[0]);
        both(&mut lock);
        let holder = start(lock.args([
            "--name",
            "sharded",
            "lock",
            key,
            "-c",
            &hold_until(&started, &go, "h"),
        ]));
        wait_file(&started);
        let (on_owner, other) = if owner == servers[0] {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert_eq!(info(on_owner, key)["holders"], "1", "{key}");
        assert_eq!(info(other, key)["holders"], "0", "{key}");
        let mut status = cli(&servers[0]);
        both(&mut status);
        let out = run(status.args(["status", key, "--json"]));
        assert_eq!(json_field(&stdout(&out), "server"), format!("\"{owner}\""));
        assert_eq!(json_field(&stdout(&out), "name"), "\"sharded\"");
        let mut evict = cli(&servers[0]);
        both(&mut evict);
        let out = run(evict.args(["evict", key]));
        assert_eq!(
            stdout(&out),
            format!("evicted 1 holder of {key} on {owner}\n")
        );
        assert_eq!(finish(holder).0.code(), Some(70));
    }
    assert_eq!(
        owners.len(),
        2,
        "every key landed on one server: {owners:?}"
    );
}
