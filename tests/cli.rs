//! `dreadlock-cli` against the real daemon.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Daemon, PROMPT};

fn cli(server: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dreadlock-cli"));
    cmd.env_remove("DREADLOCK_SERVERS")
        .args(["--server", server])
        .stdin(Stdio::null());
    cmd
}

/// Runs to completion within `PROMPT`.
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(PROMPT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("dreadlock-cli did not finish within {PROMPT:?}");
        }
    }
}

fn wait_within(child: &mut Child, limit: Duration) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("dreadlock-cli did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("dreadlock-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until the command under test wrote its pid to `file`.
fn read_pid(file: &str) -> u32 {
    let end = Instant::now() + PROMPT;
    loop {
        if let Ok(s) = std::fs::read_to_string(file) {
            if s.ends_with('\n') {
                return s.trim().parse().unwrap();
            }
        }
        assert!(Instant::now() < end, "the command never wrote {file}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` still names a process (the CLI reaps its child, so a
/// stopped child leaves no zombie behind).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn is_free(d: &Daemon, key: &str) -> bool {
    let mut probe = d.connect();
    probe.send(format!("lock {key} 0\r\n"));
    probe.read_line() == "l locked\r\n"
}

#[test]
fn help_shows_examples_and_exit_codes() {
    for args in [&["--help"][..], &["lock", "--help"]] {
        let out = run(Command::new(env!("CARGO_BIN_EXE_dreadlock-cli")).args(args));
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        for needle in [
            "Examples:",
            "Exit codes:",
            " 69 ",
            " 70 ",
            " 75 ",
            "--timeout",
        ] {
            assert!(
                text.contains(needle),
                "{args:?} help lacks {needle:?}:\n{text}"
            );
        }
    }
}

#[test]
fn exit_code_and_signal_pass_through() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let out = run(cli(&server).args(["lock", "k", "--", "sh", "-c", "exit 7"]));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let out = run(cli(&server).args(["lock", "k", "--", "sh", "-c", "kill -KILL $$"]));
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr(&out));
    // Without `--` too, and options after the key.
    let out = run(cli(&server).args(["lock", "k", "-t", "1000", "true"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(is_free(&d, "k"));
}

#[test]
fn command_sees_key_and_server_and_lock_is_held() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    // The command itself checks that the lock is held while it runs.
    let out = run(cli(&server).args([
        "lock",
        "envkey",
        "--",
        env!("CARGO_BIN_EXE_dreadlock-cli"),
        "--server",
        &server,
        "lock",
        "--timeout",
        "0",
        "envkey",
        "--",
        "true",
    ]));
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    let out = run(cli(&server).args([
        "lock",
        "envkey",
        "--",
        "sh",
        "-c",
        "echo \"$DREADLOCK_KEY $DREADLOCK_SERVER\"",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("envkey {server}\n")
    );
    assert!(is_free(&d, "envkey"));
}

#[test]
fn held_lock_gives_the_conflict_exit_code() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let scratch = Scratch::new("conflict");
    let ran = scratch.path("ran");
    let mut holder = d.connect();
    holder.call("lock busy 0\r\n", "l locked\r\n");

    let out = run(cli(&server).args(["lock", "busy", "--timeout", "100", "--", "touch", &ran]));
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("not granted"), "{}", stderr(&out));
    let out = run(cli(&server).args(["lock", "busy", "-t", "0", "-E", "9", "-q", "touch", &ran]));
    assert_eq!(out.status.code(), Some(9));
    assert_eq!(stderr(&out), "");
    assert!(
        !Path::new(&ran).exists(),
        "the command ran without the lock"
    );

    holder.call("unlock busy\r\n", "u unlocked\r\n");
    let out = run(cli(&server).args(["lock", "busy", "-t", "0", "--", "touch", &ran]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(Path::new(&ran).exists());
}

#[test]
fn unreachable_daemon_and_bad_input() {
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = run(cli(&dead).args(["lock", "k", "--", "true"]));
    assert_eq!(out.status.code(), Some(69));
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
    let out = run(cli(&dead).arg("ping"));
    assert_eq!(out.status.code(), Some(69));

    // Usage errors are caught before any connection is made.
    for args in [
        &["lock", "a-b", "--", "true"][..],
        &["lock", "", "--", "true"],
        &["lock", "k"],
        &["lock", "k", "--timeout", "soon", "--", "true"],
    ] {
        let out = run(cli(&dead).args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn command_that_cannot_run_releases_the_lock() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let out = run(cli(&server).args(["lock", "k", "--", "/nonexistent/command"]));
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let out = run(cli(&server).args(["lock", "k", "--", "/"]));
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    assert!(is_free(&d, "k"));
}

#[test]
fn concurrent_runs_never_interleave() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let scratch = Scratch::new("interleave");
    let log = scratch.path("log");
    let script = format!("echo start >> {log}; sleep 0.05; echo end >> {log}");
    let runs = 6;
    let mut children: Vec<Child> = (0..runs)
        .map(|_| {
            cli(&server)
                .args(["lock", "shared", "--", "sh", "-c", &script])
                .spawn()
                .unwrap()
        })
        .collect();
    for child in &mut children {
        assert!(wait_within(child, PROMPT).success());
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * runs, "{text}");
    for pair in lines.chunks(2) {
        assert_eq!(pair, ["start", "end"], "interleaved:\n{text}");
    }
}

#[test]
fn lost_connection_stops_the_command() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let scratch = Scratch::new("lost");
    let pidfile = scratch.path("pid");
    // A grace longer than the wait below: only SIGTERM can stop it in time.
    let script = format!("echo $$ > {pidfile}; exec sleep 30");
    let mut cli_run = cli(&server)
        .args([
            "lock",
            "k",
            "--kill-grace",
            "60000",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = read_pid(&pidfile);
    assert!(process_exists(child));
    drop(d); // SIGKILL the daemon: the connection goes with it.
    let status = wait_within(&mut cli_run, PROMPT);
    assert_eq!(status.code(), Some(70));
    assert!(!process_exists(child), "the command outlived its lock");
}

#[test]
fn lost_connection_kills_a_command_that_ignores_sigterm() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let scratch = Scratch::new("grace");
    let pidfile = scratch.path("pid");
    let script = format!("trap '' TERM; echo $$ > {pidfile}; exec sleep 30");
    let mut cli_run = cli(&server)
        .args([
            "lock",
            "k",
            "--kill-grace",
            "200",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = read_pid(&pidfile);
    drop(d);
    let status = wait_within(&mut cli_run, PROMPT);
    assert_eq!(status.code(), Some(70));
    assert!(!process_exists(child), "SIGKILL never came");
}

#[test]
fn signals_are_forwarded_to_the_command() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let scratch = Scratch::new("signals");
    for (signal, number) in [("TERM", 15), ("INT", 2)] {
        let pidfile = scratch.path(signal);
        let mut cli_run = cli(&server)
            .args([
                "lock",
                "k",
                "--",
                "sh",
                "-c",
                &format!("echo $$ > {pidfile}; exec sleep 30"),
            ])
            .spawn()
            .unwrap();
        let child = read_pid(&pidfile);
        let cli_pid = cli_run.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &cli_pid])
            .status();
        assert!(sent.unwrap().success());
        let status = wait_within(&mut cli_run, PROMPT);
        assert_eq!(status.code(), Some(128 + number), "SIG{signal}");
        assert!(!process_exists(child));
        assert!(is_free(&d, "k"));
    }
}

#[test]
fn ping_reports_each_server() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let out = run(cli(&server).arg("ping"));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("{server} ok ")), "{text}");

    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = run(cli(&server).args(["--server", &dead, "ping"]));
    assert_eq!(out.status.code(), Some(69));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("{server} ok ")), "{text}");
    assert!(text.contains(&format!("{dead} error")), "{text}");
}

#[test]
fn which_follows_the_documented_test_vector() {
    let servers = ["10.0.0.1:6001", "10.0.0.2:6001", "10.0.0.3:6001"];
    for (key, want) in [("backup", 0), ("cron", 1), ("deploy", 2)] {
        let out = run(Command::new(env!("CARGO_BIN_EXE_dreadlock-cli")).args([
            "-s", servers[2], "-s", servers[0], "-s", servers[1], "which", key,
        ]));
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{}\n", servers[want])
        );
        // The same list from the environment.
        let out = run(Command::new(env!("CARGO_BIN_EXE_dreadlock-cli"))
            .env("DREADLOCK_SERVERS", servers.join(", "))
            .args(["which", key]));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{}\n", servers[want])
        );
    }
}

#[test]
fn servers_from_the_environment() {
    let d = Daemon::start();
    let out = run(Command::new(env!("CARGO_BIN_EXE_dreadlock-cli"))
        .env("DREADLOCK_SERVERS", d.addr.to_string())
        .args(["lock", "k", "--", "sh", "-c", "echo $DREADLOCK_SERVER"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", d.addr)
    );
}
