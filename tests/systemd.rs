//! systemd integration without systemd: a fake `NOTIFY_SOCKET` receives the
//! readiness notifications, and a listening socket passed as fd 3 with
//! `LISTEN_FDS=1` (through a `sh` wrapper, which sets `LISTEN_PID` to its
//! own pid and then execs the daemon under it) serves as the lock port.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Daemon, PROMPT};

fn recv(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(PROMPT)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 5 s");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("dreadlock-test-{tag}-{}", std::process::id()))
}

fn check_lifecycle(notify_socket: &str, sock: &UnixDatagram) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dreadlock"));
    cmd.args(["0", "--bind", "127.0.0.1"])
        .env("NOTIFY_SOCKET", notify_socket);
    let d = Daemon::spawn(cmd);
    let ready = recv(sock);
    let lines: Vec<&str> = ready.lines().collect();
    assert_eq!(lines[0], "READY=1", "{ready:?}");
    assert!(
        lines[1].starts_with(&format!("STATUS=listening on {},", d.addr)),
        "{ready:?}"
    );
    d.connect().call("lock a 0\r\n", "l locked\r\n");
    let (status, err) = d.terminate();
    assert!(status.success(), "{err}");
    assert_eq!(recv(sock), "STOPPING=1\nSTATUS=stopping");
    assert!(!err.contains("NOTIFY_SOCKET"), "{err}");
}

#[test]
fn readiness_and_stopping_reach_a_path_socket() {
    let path = temp_path("notify");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    check_lifecycle(path.to_str().unwrap(), &sock);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn readiness_reaches_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("dreadlock-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    check_lifecycle(&format!("@{name}"), &sock);
}

#[test]
fn an_unreachable_notify_socket_is_a_warning_not_a_failure() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dreadlock"));
    cmd.args(["0", "--bind", "127.0.0.1"])
        .env("NOTIFY_SOCKET", temp_path("nobody-listens"));
    let d = Daemon::spawn(cmd);
    d.connect().call("lock a 0\r\n", "l locked\r\n");
    let err = d.wait_stderr("cannot notify systemd");
    assert!(
        err.contains("WARN cannot notify systemd (NOTIFY_SOCKET)"),
        "{err}"
    );
    // Set but empty (as `systemd-socket-activate -E NOTIFY_SOCKET=` leaves
    // it): no service manager, no warning.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dreadlock"));
    cmd.args(["0", "--bind", "127.0.0.1"])
        .env("NOTIFY_SOCKET", "");
    let d = Daemon::spawn(cmd);
    d.connect().call("lock a 0\r\n", "l locked\r\n");
    let (_, err) = d.terminate();
    assert!(!err.contains("cannot notify"), "{err}");
}

/// The daemon run on a passed listener, as systemd's socket activation
/// runs it; its stderr is collected.
struct Activated {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Activated {
    fn start(listener: &TcpListener) -> Activated {
        let fd = std::os::fd::OwnedFd::from(listener.try_clone().unwrap());
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
            .arg(env!("CARGO_BIN_EXE_dreadlock"))
            // Port and address are the socket's: these must be ignored.
            .args(["1", "--bind", "127.0.0.2"])
            .stdin(Stdio::from(fd))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let a = Activated { child, stderr };
        a.wait_stderr("listening on");
        a
    }

    fn wait_stderr(&self, needle: &str) -> String {
        let end = Instant::now() + PROMPT;
        loop {
            let s = self.stderr.lock().unwrap().clone();
            if s.contains(needle) {
                return s;
            }
            assert!(Instant::now() < end, "stderr never said {needle:?}:\n{s}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success());
        self.wait_stderr("stopped after")
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn socket_activation_serves_the_passed_listener_and_a_restart_refuses_nobody() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A client that connects before the daemon runs waits in the backlog.
    let mut early = Client::connect(addr);
    early.send("lock a 0\r\n");

    let first = Activated::start(&listener);
    let err = first.wait_stderr("listening on");
    assert!(
        err.contains(&format!("listening on {addr} (socket activation)")),
        "{err}"
    );
    early.expect("l locked\r\n");
    drop(early);

    // Restart: between the two daemons, a client still connects, and is
    // served by the second one.
    first.stop();
    let mut between = Client::connect(addr);
    between.send("lock b 0\r\n");
    let second = Activated::start(&listener);
    between.expect("l locked\r\n");
    between.call("unlock b\r\n", "u unlocked\r\n");
    let err = second.stop();
    assert!(!err.contains("ERROR"), "{err}");
}

#[test]
fn a_passed_descriptor_that_is_not_a_tcp_socket_is_a_clear_error() {
    let path = temp_path("not-tcp");
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_dreadlock"))
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(sock)))
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot use the socket systemd passed"),
        "{err}"
    );
}
