//! `dreadlock-cli` against the real daemon.

#[path = "common/cli.rs"]
mod cli_harness;
mod common;
#[path = "common/probe.rs"]
mod probe;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use cli_harness::{
    CLI, Scratch, cli, daemon_and_scratch, gone_within_prompt, kill, process_exists, read_pid, run,
    stderr, wait_within,
};
use common::{Daemon, PROMPT};
use probe::is_free;

/// `dreadlock-cli lock k <options> -- sh -c <script>`.
fn lock_sh_command(server: &str, options: &[&str], script: &str) -> Command {
    let mut cmd = cli(server);
    cmd.args(["lock", "k"])
        .args(options)
        .args(["--", "sh", "-c", script]);
    cmd
}

/// [`lock_sh_command`] started in the background, its stderr kept from
/// the test's output.
fn lock_sh(server: &str, options: &[&str], script: &str) -> Child {
    lock_sh_command(server, options, script)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn help_shows_examples_and_exit_codes() {
    for args in [&["--help"][..], &["lock", "--help"]] {
        let out = run(Command::new(CLI).args(args));
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        for needle in [
            "Examples:",
            "Exit codes:",
            " 69 ",
            " 70 ",
            " 75 ",
            "--timeout",
            "DURATION",
        ] {
            assert!(
                text.contains(needle),
                "{args:?} help lacks {needle:?}:\n{text}"
            );
        }
    }
}

/// The watchdog's "kill my group" must not hit the group of whoever runs
/// the hidden subcommand by hand.
#[test]
fn the_watchdog_refuses_to_run_outside_a_group_of_its_own() {
    // In a group of its own led by `sh`, so that a broken check kills no
    // more than that group.
    let out = run(Command::new("sh")
        .args(["-c", "\"$0\" __watchdog; exit $?"])
        .arg(CLI)
        .process_group(0));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("internal"), "{}", stderr(&out));
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
        CLI,
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
    let (d, server, scratch) = daemon_and_scratch("conflict");
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
    let (_d, server, scratch) = daemon_and_scratch("interleave");
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
    let (d, server, scratch) = daemon_and_scratch("lost");
    let pidfile = scratch.path("pid");
    // A grace longer than the wait below: only SIGTERM can stop it in time.
    let script = format!("echo $$ > {pidfile}; exec sleep 30");
    let mut cli_run = lock_sh(&server, &["--kill-grace", "60000"], &script);
    let child = read_pid(&pidfile);
    assert!(process_exists(child));
    drop(d); // SIGKILL the daemon: the connection goes with it.
    let status = wait_within(&mut cli_run, PROMPT);
    assert_eq!(status.code(), Some(70));
    assert!(!process_exists(child), "the command outlived its lock");
}

#[test]
fn lost_connection_kills_a_command_that_ignores_sigterm() {
    let (d, server, scratch) = daemon_and_scratch("grace");
    let pidfile = scratch.path("pid");
    let script = format!("trap '' TERM; echo $$ > {pidfile}; exec sleep 30");
    let mut cli_run = lock_sh(&server, &["--kill-grace", "200"], &script);
    let child = read_pid(&pidfile);
    drop(d);
    let status = wait_within(&mut cli_run, PROMPT);
    assert_eq!(status.code(), Some(70));
    assert!(!process_exists(child), "SIGKILL never came");
}

#[test]
fn signals_are_forwarded_to_the_command() {
    let (d, server, scratch) = daemon_and_scratch("signals");
    for (signal, number) in [("TERM", 15), ("INT", 2)] {
        let pidfile = scratch.path(signal);
        let mut cli_run =
            lock_sh_command(&server, &[], &format!("echo $$ > {pidfile}; exec sleep 30"))
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
        let out = run(Command::new(CLI).args([
            "-s", servers[2], "-s", servers[0], "-s", servers[1], "which", key,
        ]));
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{}\n", servers[want])
        );
        // The same list from the environment.
        let out = run(Command::new(CLI)
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
    let out = run(Command::new(CLI)
        .env("DREADLOCK_SERVERS", d.addr.to_string())
        .args(["lock", "k", "--", "sh", "-c", "echo $DREADLOCK_SERVER"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", d.addr)
    );
}

/// The case: the command's own child outlived a lost lock. A
/// grandchild that ignores SIGTERM is killed after the grace; one that
/// does not goes at once. Either would write the marker once `go` exists.
#[test]
fn lost_lock_stops_grandchildren() {
    for trap in ["", "trap \"\" TERM;"] {
        let d = Daemon::start();
        let server = d.addr.to_string();
        let scratch = Scratch::new("grandchild");
        let (inner, pidfile) = (scratch.path("inner"), scratch.path("pid"));
        let (go, marker) = (scratch.path("go"), scratch.path("marker"));
        let script = format!(
            "sh -c '{trap} echo $$ > {inner}; while [ ! -e {go} ]; do sleep 0.01; done; \
             touch {marker}' & echo $$ > {pidfile}; wait"
        );
        let mut cli_run = lock_sh(&server, &["--kill-grace", "200"], &script);
        let (outer, grandchild) = (read_pid(&pidfile), read_pid(&inner));
        drop(d);
        assert_eq!(wait_within(&mut cli_run, PROMPT).code(), Some(70));
        std::fs::write(&go, "").unwrap();
        assert!(
            gone_within_prompt(grandchild),
            "the grandchild outlived the lock ({trap})"
        );
        assert!(!process_exists(outer));
        assert!(
            !Path::new(&marker).exists(),
            "the grandchild ran on without the lock"
        );
    }
}

/// A descendant that left the command's process group (setsid) is
/// re-parented to dreadlock-cli when its parent dies, and stopped too.
#[test]
fn lost_lock_stops_a_descendant_in_its_own_session() {
    let (d, server, scratch) = daemon_and_scratch("setsid");
    let (inner, pidfile) = (scratch.path("inner"), scratch.path("pid"));
    let script =
        format!("setsid sh -c 'echo $$ > {inner}; exec sleep 30' & echo $$ > {pidfile}; wait");
    let mut cli_run = lock_sh(&server, &[], &script);
    let (outer, escaped) = (read_pid(&pidfile), read_pid(&inner));
    drop(d);
    assert_eq!(wait_within(&mut cli_run, PROMPT).code(), Some(70));
    assert!(!process_exists(outer));
    assert!(
        gone_within_prompt(escaped),
        "a setsid descendant outlived the lock"
    );
}

/// What the command leaves behind when it exits is stopped before the lock
/// is released: dreadlock-cli reaped it, so it is gone when the CLI is.
#[test]
fn leftovers_are_stopped_before_the_lock_is_released() {
    let (d, server, scratch) = daemon_and_scratch("leftover");
    let pidfile = scratch.path("pid");
    let script = format!("sleep 30 & echo $! > {pidfile}; exit 4");
    let out = run(cli(&server).args(["lock", "k", "--", "sh", "-c", &script]));
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("left processes running"),
        "{}",
        stderr(&out)
    );
    let leftover = read_pid(&pidfile);
    assert!(
        !process_exists(leftover),
        "the background job outlived the lock"
    );
    assert!(is_free(&d, "k"));
}

/// Under `nohup` (SIGHUP ignored at start) SIGHUP changes nothing: not for
/// dreadlock-cli, which does not forward it, nor for the command, which
/// inherits it ignored.
#[test]
fn sighup_ignored_at_start_stays_ignored() {
    let (d, server, scratch) = daemon_and_scratch("nohup");
    let (pidfile, go) = (scratch.path("pid"), scratch.path("go"));
    let command = format!("echo $$ > {pidfile}; while [ ! -e {go} ]; do sleep 0.01; done");
    let mut cli_run = Command::new("sh")
        .args(["-c", "trap '' HUP; exec \"$@\"", "sh"])
        .arg(CLI)
        .args(["--server", &server, "lock", "k", "--", "sh", "-c", &command])
        .env_remove("DREADLOCK_SERVERS")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let child = read_pid(&pidfile);
    // Both are alive (they wait for `go`), so both get it.
    let sent = kill("HUP", child) && kill("HUP", cli_run.id());
    std::fs::write(&go, "").unwrap();
    let status = wait_within(&mut cli_run, PROMPT);
    assert_eq!(status.code(), Some(0), "SIGHUP got through");
    assert!(sent);
    assert!(is_free(&d, "k"));
}

/// Signals that would end dreadlock-cli are forwarded to the command's
/// group instead: dreadlock-cli exits with the command, nothing is left.
#[test]
fn deadly_signals_leave_no_orphan() {
    let (d, server, scratch) = daemon_and_scratch("deadly");
    for (signal, number) in [("USR1", 10), ("USR2", 12), ("ALRM", 14), ("PIPE", 13)] {
        let pidfile = scratch.path(signal);
        let script = format!("sleep 30 & echo $! > {pidfile}; wait");
        let mut cli_run = lock_sh_command(&server, &[], &script).spawn().unwrap();
        let grandchild = read_pid(&pidfile);
        assert!(kill(signal, cli_run.id()));
        let status = wait_within(&mut cli_run, PROMPT);
        let orphan = gone_within_prompt(grandchild);
        assert!(
            orphan,
            "SIG{signal} left the command running without its lock"
        );
        assert_eq!(status.code(), Some(128 + number), "SIG{signal}");
        assert!(is_free(&d, "k"));
    }
}

/// SIGKILL cannot be caught: the watchdog in the command's group sees
/// dreadlock-cli die and kills the group.
#[test]
fn sigkill_of_the_cli_leaves_no_orphan() {
    let (d, server, scratch) = daemon_and_scratch("sigkill");
    let pidfile = scratch.path("pid");
    let script = format!("sh -c 'trap \"\" TERM; exec sleep 30' & echo $! > {pidfile}; wait");
    let mut cli_run = lock_sh(&server, &[], &script);
    let grandchild = read_pid(&pidfile);
    cli_run.kill().unwrap();
    cli_run.wait().unwrap();
    assert!(
        gone_within_prompt(grandchild),
        "the command outlived a SIGKILLed dreadlock-cli"
    );
    assert!(is_free(&d, "k"));
}

#[test]
fn every_duration_form() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let mut holder = d.connect();
    holder.call("lock busy 0\r\n", "l locked\r\n");
    // Waits that run out, and the milliseconds they came to.
    for (timeout, ms) in [("0", 0), ("250", 250), ("250ms", 250), ("0.3s", 300)] {
        let out = run(cli(&server).args(["lock", "busy", "--timeout", timeout, "--", "true"]));
        assert_eq!(
            out.status.code(),
            Some(75),
            "--timeout {timeout}: {}",
            stderr(&out)
        );
        let said = format!("not granted within {ms} ms");
        assert!(
            stderr(&out).contains(&said),
            "--timeout {timeout}: {}",
            stderr(&out)
        );
    }
    // Long ones, on a free key, for both options.
    for value in ["0", "250ms", "10s", "1.5s", "2m", "1h", "7"] {
        for option in ["--timeout", "--kill-grace"] {
            let out = run(cli(&server).args(["lock", "free", option, value, "--", "true"]));
            assert!(out.status.success(), "{option} {value}: {}", stderr(&out));
        }
    }
    let out = run(cli(&server).args(["--connect-timeout", "2s", "lock", "free", "true"]));
    assert!(out.status.success(), "{}", stderr(&out));
    for (option, value) in [
        ("--timeout", "soon"),
        ("--timeout", "10x"),
        ("--timeout", "1.5ms"),
        ("--timeout", "+1"),
        ("--timeout", ""),
        ("--kill-grace", "5 s"),
        ("--kill-grace", "99999999999999999999h"),
    ] {
        let out = run(cli(&server).args(["lock", "free", option, value, "--", "true"]));
        assert_eq!(out.status.code(), Some(2), "{option} {value:?}");
        assert!(
            stderr(&out).contains("250ms, 10s, 1.5s, 2m, 1h"),
            "{option} {value:?}: {}",
            stderr(&out)
        );
    }
    let out = run(cli(&server).args(["--connect-timeout", "0", "lock", "free", "true"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn nonblock_and_shell_command() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let mut holder = d.connect();
    holder.call("lock busy 0\r\n", "l locked\r\n");
    for flag in ["-n", "--nonblock"] {
        let out = run(cli(&server).args(["lock", "busy", flag, "--", "true"]));
        assert_eq!(out.status.code(), Some(75), "{flag}: {}", stderr(&out));
        assert!(stderr(&out).contains("within 0 ms"), "{}", stderr(&out));
    }
    let out = run(cli(&server).args(["lock", "busy", "-n", "-E", "0", "-q", "true"]));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "");

    for flag in ["-c", "--command"] {
        let out = run(cli(&server).args([
            "lock",
            "k",
            flag,
            "echo \"$DREADLOCK_KEY\" | tr k K; exit 3",
        ]));
        assert_eq!(out.status.code(), Some(3), "{flag}: {}", stderr(&out));
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "K\n");
    }
    assert!(is_free(&d, "k"));
    for args in [
        &["lock", "k", "-n", "-t", "5", "--", "true"][..],
        &["lock", "k", "-c", "true", "--", "true"],
        &["lock", "k", "-c"],
    ] {
        let out = run(cli(&server).args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

/// The command may signal its whole group the moment it starts (here,
/// over and over while the watchdog may still be starting up); the
/// watchdog in that group must survive it to still do its job when
/// dreadlock-cli is SIGKILLed afterwards.
#[test]
fn the_watchdog_survives_a_signal_to_the_group_at_once() {
    let (_d, server, scratch) = daemon_and_scratch("early");
    let pidfile = scratch.path("pid");
    for _ in 0..3 {
        let script = format!(
            "trap '' USR1; i=0; while [ $i -lt 5000 ]; do kill -USR1 0; i=$((i+1)); done; \
             echo $$ > {pidfile}; exec sleep 30"
        );
        let mut cli_run = lock_sh(&server, &[], &script);
        let child = read_pid(&pidfile);
        std::fs::remove_file(&pidfile).unwrap();
        cli_run.kill().unwrap();
        cli_run.wait().unwrap();
        assert!(
            gone_within_prompt(child),
            "the command outlived a SIGKILLed dreadlock-cli"
        );
    }
}
