//! Shared harness for the tests that run `dreadlock-cli` as a process:
//! spawning it with a clean environment, bounded waits for it and for the
//! processes it starts, and scratch directories. A test declares it next
//! to `mod common;` with `#[path = "common/cli.rs"] mod cli_harness;`.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Daemon, PROMPT};

/// The `dreadlock-cli` binary of this build.
pub const CLI: &str = env!("CARGO_BIN_EXE_dreadlock-cli");

/// `dreadlock-cli --server <server>`, stdin closed, and none of the
/// environment variables it reads (`DREADLOCK_SERVERS`,
/// `DREADLOCK_AUTH_FILE`, `DREADLOCK_TOKEN`) inherited from the test run.
pub fn cli(server: &str) -> Command {
    let mut cmd = Command::new(CLI);
    cmd.env_remove("DREADLOCK_SERVERS")
        .env_remove("DREADLOCK_AUTH_FILE")
        .env_remove("DREADLOCK_TOKEN")
        .args(["--server", server])
        .stdin(Stdio::null());
    cmd
}

/// Runs to completion within `PROMPT`.
pub fn run(cmd: &mut Command) -> Output {
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

/// Starts a `dreadlock-cli` in the background, its output kept for
/// [`finish`].
pub fn start(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a background `dreadlock-cli` to exit, within `PROMPT`.
pub fn finish(mut child: Child) -> (ExitStatus, String, String) {
    wait_within(&mut child, PROMPT);
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for `child` to exit within `limit`; past that, kills it and
/// panics with `describe()`.
pub fn wait_exit(
    child: &mut Child,
    limit: Duration,
    describe: impl FnOnce() -> String,
) -> ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("{}", describe());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a `dreadlock-cli` to exit within `limit`.
pub fn wait_within(child: &mut Child, limit: Duration) -> ExitStatus {
    wait_exit(child, limit, || {
        format!("dreadlock-cli did not exit within {limit:?}")
    })
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh scratch directory, removed on drop; named after the test
/// binary, its pid and `name`, so that no two running tests share one.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "dreadlock-{}-{}-{name}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// The path of `file` in the directory.
    pub fn path(&self, file: &str) -> String {
        self.0.join(file).to_str().unwrap().to_owned()
    }

    /// Writes `contents` to `file` (mode 600); returns its path.
    pub fn file(&self, file: &str, contents: &str) -> String {
        let path = self.path(file);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon, its address as the CLI's `--server`, and a scratch
/// directory: what most CLI tests start with.
pub fn daemon_and_scratch(name: &str) -> (Daemon, String, Scratch) {
    let d = Daemon::start();
    let server = d.addr.to_string();
    (d, server, Scratch::new(name))
}

/// Waits until `file` exists with a complete last line; returns it.
pub fn wait_file(file: &str) -> String {
    let end = Instant::now() + PROMPT;
    loop {
        if let Ok(s) = std::fs::read_to_string(file) {
            if s.ends_with('\n') {
                return s;
            }
        }
        assert!(Instant::now() < end, "the command never wrote {file}");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the command under test wrote its pid to `file`.
pub fn read_pid(file: &str) -> u32 {
    wait_file(file).trim().parse().unwrap()
}

/// Whether `pid` still names a live process. A zombie counts as gone: a
/// killed orphan waits for init (which may be slow to reap, or absent in a
/// container) to be reaped.
pub fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone; false if it still runs after `PROMPT`.
pub fn gone_within_prompt(pid: u32) -> bool {
    let end = Instant::now() + PROMPT;
    while process_exists(pid) {
        if Instant::now() > end {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Sends `signal` to `pid`; false if there was no such process.
pub fn kill(signal: &str, pid: u32) -> bool {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}
