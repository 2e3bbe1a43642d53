//! `dreadlock-cli` at a terminal: a pseudo-terminal drives it as a user at
//! a keyboard would (Ctrl-C, Ctrl-Z, typing a line), with `setsid --ctty`
//! (util-linux) making the pty the session's controlling terminal.

#[path = "common/cli.rs"]
mod cli_harness;
mod common;
#[path = "common/probe.rs"]
mod probe;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cli_harness::{CLI, Scratch, daemon_and_scratch, wait_exit};
use common::{Daemon, PROMPT};
use probe::is_free;
use rustix::fs::OFlags;
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

/// A pseudo-terminal whose master side we hold; what the session writes
/// is collected in the background (so its writes never block).
struct Pty {
    master: File,
    slave: PathBuf,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn open() -> Pty {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let slave = PathBuf::from(ptsname(&master, Vec::new()).unwrap().into_string().unwrap());
        let master = File::from(master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = output.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once no slave side is open any more.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            slave,
            output,
        }
    }

    /// Runs `program args` as the leader of a new session whose
    /// controlling terminal is this pty, in its foreground.
    fn spawn(&self, program: &str, args: &[&str], dir: &Scratch) -> Child {
        let open = || {
            File::options()
                .read(true)
                .write(true)
                .custom_flags(OFlags::NOCTTY.bits() as i32)
                .open(&self.slave)
                .unwrap()
        };
        Command::new("setsid")
            .arg("--ctty")
            .arg(program)
            .args(args)
            .env_remove("DREADLOCK_SERVERS")
            .env("CLI", CLI)
            .env("DIR", dir.dir())
            .stdin(open())
            .stdout(open())
            .stderr(open())
            .spawn()
            .expect("setsid (util-linux) runs")
    }

    /// Types `bytes` at the keyboard.
    fn type_keys(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).unwrap();
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }
}

/// Waits until `file` in `dir` holds a complete line containing `needle`.
fn wait_for(dir: &Scratch, file: &str, needle: &str, pty: &Pty) -> String {
    let path = dir.path(file);
    let end = Instant::now() + PROMPT;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains(needle) && text.ends_with('\n') {
            return text;
        }
        assert!(
            Instant::now() < end,
            "{file} never said {needle:?} (it says {text:?}); terminal:\n{}",
            pty.output()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for the session to end within `PROMPT`.
fn session_end(child: &mut Child, pty: &Pty) -> ExitStatus {
    wait_exit(child, PROMPT, || {
        format!(
            "the session did not end within {PROMPT:?}; terminal:\n{}",
            pty.output()
        )
    })
}

fn is_held(d: &Daemon, key: &str) -> bool {
    !is_free(d, key)
}

/// The terminal sends one SIGINT to its foreground group; the command must
/// see it once, not once from the terminal and again forwarded.
#[test]
fn one_ctrl_c_reaches_the_command_once() {
    let (_d, server, dir) = daemon_and_scratch("ctrlc");
    let mut pty = Pty::open();
    // Each signal the command sees appends a line: `wait` returns at once
    // for a trapped signal, so signals a moment apart make a line each.
    let script = r#"trap 'echo int >> "$DIR/count"' INT
        trap 'echo term >> "$DIR/count"; kill $!; exit 0' TERM
        echo $$ > "$DIR/pid"
        sleep 30 & while :; do wait; done"#;
    let mut session = pty.spawn(
        CLI,
        &["--server", &server, "lock", "k", "--", "sh", "-c", script],
        &dir,
    );
    wait_for(&dir, "pid", "", &pty);
    pty.type_keys(b"\x03");
    wait_for(&dir, "count", "int", &pty);
    // A SIGTERM to dreadlock-cli is forwarded after anything it received
    // before, a forwarded SIGINT included: once the command has seen it,
    // the count of SIGINTs is final.
    let cli_pid = session.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &cli_pid])
            .status()
            .unwrap()
            .success()
    );
    let status = session_end(&mut session, &pty);
    assert_eq!(status.code(), Some(0), "terminal:\n{}", pty.output());
    let count = std::fs::read_to_string(dir.path("count")).unwrap();
    assert_eq!(
        count, "int\nterm\n",
        "signals the command saw for one Ctrl-C, then a SIGTERM"
    );
}

/// A command that reads the terminal is in its foreground (no SIGTTIN),
/// and the terminal comes back to the shell afterwards.
#[test]
fn the_command_reads_the_terminal_and_gives_it_back() {
    let (_d, server, dir) = daemon_and_scratch("read");
    let mut pty = Pty::open();
    let script = r#""$CLI" --server "$1" lock k -- sh -c 'read x; echo "got $x" > "$DIR/out"'
        echo "cli $?" > "$DIR/after"
        read y; echo "then $y" >> "$DIR/after""#;
    let mut session = pty.spawn("sh", &["-c", script, "sh", &server], &dir);
    pty.type_keys(b"hello\n");
    wait_for(&dir, "out", "got hello", &pty);
    wait_for(&dir, "after", "cli 0", &pty);
    pty.type_keys(b"world\n");
    let after = wait_for(&dir, "after", "then", &pty);
    assert_eq!(after, "cli 0\nthen world\n", "terminal:\n{}", pty.output());
    assert!(session_end(&mut session, &pty).success());
}

/// Ctrl-Z stops the command and dreadlock-cli with it (the shell sees its
/// job stopped, the lock stays held); `fg` resumes both, with the terminal.
#[test]
fn ctrl_z_and_fg() {
    let (d, server, dir) = daemon_and_scratch("ctrlz");
    let mut pty = Pty::open();
    let script = r#"set -m
        "$CLI" --server "$1" lock k -- sh -c 'echo $$ > "$DIR/pid"; read x; echo "got $x" > "$DIR/out"'
        echo "stopped $?" > "$DIR/jobs"
        fg
        echo "fg $?" >> "$DIR/jobs""#;
    let mut session = pty.spawn("sh", &["-c", script, "sh", &server], &dir);
    wait_for(&dir, "pid", "", &pty);
    pty.type_keys(b"\x1a");
    wait_for(&dir, "jobs", "stopped", &pty);
    assert!(is_held(&d, "k"), "the lock was released while stopped");
    pty.type_keys(b"hello\n");
    wait_for(&dir, "out", "got hello", &pty);
    let jobs = wait_for(&dir, "jobs", "fg", &pty);
    assert_eq!(jobs, "stopped 148\nfg 0\n", "terminal:\n{}", pty.output());
    assert!(session_end(&mut session, &pty).success());
}

/// With `stty tostop`, dreadlock-cli writing to the terminal while the
/// command has it would be stopped by SIGTTOU, and leave the command
/// running on a lost lock: its messages wait until the terminal is back.
#[test]
fn a_lost_lock_is_handled_under_stty_tostop() {
    let (d, server, dir) = daemon_and_scratch("tostop");
    let pty = Pty::open();
    let script = r#"set -m; stty tostop
        "$CLI" --server "$1" lock k -- sh -c 'echo $$ > "$DIR/pid"; exec sleep 30'
        echo "cli $?" > "$DIR/after""#;
    let mut session = pty.spawn("sh", &["-c", script, "sh", &server], &dir);
    let pid = wait_for(&dir, "pid", "", &pty);
    drop(d);
    let after = wait_for(&dir, "after", "cli", &pty);
    assert_eq!(after, "cli 70\n", "terminal:\n{}", pty.output());
    assert!(session_end(&mut session, &pty).success());
    let pid = pid.trim();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the command outlived its lock"
    );
    assert!(pty.output().contains("lost"), "terminal:\n{}", pty.output());
}
