//! Shared harness for the integration tests: start the real `dreadlock`
//! binary on 127.0.0.1 with an ephemeral port, and talk to it over TCP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for anything that should happen "at once".
pub const PROMPT: Duration = Duration::from_secs(5);

pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    /// Collects stderr until the daemon exits (its end of the pipe closes).
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

/// The daemon binary under test: this build's, or the one named by
/// `DREADLOCK_TEST_BIN` (to check that a regression test fails against an
/// older build).
pub fn daemon_bin() -> std::path::PathBuf {
    std::env::var_os("DREADLOCK_TEST_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_dreadlock").into())
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts the daemon with extra flags; waits for its "listening on" line.
    pub fn start_with(args: &[&str]) -> Daemon {
        let mut cmd = Command::new(daemon_bin());
        cmd.args(["0", "--bind", "127.0.0.1"]).args(args);
        Daemon::spawn(cmd)
    }

    /// Runs `cmd`, which must exec the daemon (perhaps through a wrapper such
    /// as `sh -c 'ulimit ...; exec ...'`), and waits for its "listening on"
    /// line on stderr; the rest of stderr is collected in the background.
    pub fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dreadlock");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line.expect("read stderr");
            stderr.lock().unwrap().push_str(&line);
            stderr.lock().unwrap().push('\n');
            if let Some(rest) = line.split("listening on ").nth(1) {
                let a = rest.split_whitespace().next().unwrap();
                addr = Some(a.parse().expect("address in startup line"));
                break;
            }
        }
        let addr = addr.unwrap_or_else(|| {
            panic!(
                "daemon printed no 'listening on' line: {}",
                stderr.lock().unwrap()
            )
        });
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Daemon {
            child,
            addr,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// CPU time (user + system) the daemon has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("read /proc/<pid>/stat");
        // utime and stime are fields 14 and 15 of the line: 12 and 13 after
        // the parenthesised command name.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A barrier: one round trip on a fresh connection. Loopback delivers
    /// a write at once, and the daemon handles every socket that was ready
    /// in one batch before it reads the next; so when this returns, it has
    /// handled what other connections sent (or how they closed) before the
    /// call, as far as one read each takes.
    pub fn sync(&self) {
        let mut c = self.connect();
        c.call("lock dreadlocksync 0\r\n", "l locked\r\n");
    }

    /// Sends signal `sig` (a name such as "HUP") to the daemon.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    /// The daemon's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kb * 1024
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str) -> String {
        let end = Instant::now() + PROMPT;
        loop {
            let s = self.stderr();
            if s.contains(needle) {
                return s;
            }
            assert!(Instant::now() < end, "stderr never said {needle:?}:\n{s}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM and waits for a clean exit; returns stderr.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let end = Instant::now() + PROMPT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        // The daemon has exited, so its stderr is closed: the reader ends
        // once it has collected the last line.
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("stderr reader");
        }
        (status, self.stderr())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, PROMPT).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        Client { stream }
    }

    /// Connects with a small receive buffer (`SO_RCVBUF`, set before the
    /// handshake so the window stays small): the daemon's replies back up
    /// as soon as the client reads slowly.
    pub fn connect_with_rcvbuf(addr: SocketAddr, bytes: usize) -> Client {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(bytes).unwrap();
        sock.connect_timeout(&addr.into(), PROMPT).expect("connect");
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        Client { stream }
    }

    /// Asserts nothing has arrived (a non-blocking check, no waiting):
    /// after [`Daemon::sync`], what the daemon would have sent is here.
    pub fn expect_nothing_yet(&mut self) -> &mut Self {
        self.stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let r = self.stream.read(&mut buf);
        self.stream.set_nonblocking(false).unwrap();
        match r {
            Ok(0) => panic!("connection closed, expected nothing yet"),
            Ok(n) => panic!(
                "expected nothing yet, got {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("expected nothing yet, got error {e}"),
        }
        self
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.stream.write_all(bytes.as_ref()).expect("send");
        self
    }

    /// Reads exactly `want.len()` bytes and compares them.
    pub fn expect(&mut self, want: &str) -> &mut Self {
        let mut got = vec![0; want.len()];
        if let Err(e) = self.stream.read_exact(&mut got) {
            panic!("expected {want:?}, read failed: {e}");
        }
        assert_eq!(String::from_utf8_lossy(&got), want);
        self
    }

    /// Sends a command and expects a reply.
    pub fn call(&mut self, cmd: &str, reply: &str) -> &mut Self {
        self.send(cmd).expect(reply)
    }

    /// Asserts nothing arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) -> &mut Self {
        let end = Instant::now() + wait;
        let mut buf = [0u8; 64];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("connection closed, expected silence"),
                Ok(n) => panic!(
                    "expected silence, got {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => panic!("expected silence, got error {e}"),
            }
        }
        self.stream.set_read_timeout(Some(PROMPT)).unwrap();
        self
    }

    /// Asserts the daemon closes the connection (EOF or reset) soon.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 256];
        let mut r = self.stream.read(&mut buf);
        while matches!(&r, Err(e) if e.kind() == ErrorKind::Interrupted) {
            r = self.stream.read(&mut buf);
        }
        match r {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected close, got {:?}",
                String::from_utf8_lossy(&buf[..n])
            ),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected close, got error {e}"),
        }
    }

    /// Reads one CRLF-terminated reply line.
    pub fn read_line(&mut self) -> String {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            match self.stream.read(&mut b) {
                Ok(1) => line.push(b[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Ok(_) => panic!("closed mid-line after {:?}", String::from_utf8_lossy(&line)),
                Err(e) => panic!(
                    "read_line failed after {:?}: {e}",
                    String::from_utf8_lossy(&line)
                ),
            }
        }
        String::from_utf8(line).unwrap()
    }

    pub fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }

    /// Closes with a TCP reset instead of a FIN (SO_LINGER 0).
    pub fn reset(self) {
        let sock = socket2::SockRef::from(&self.stream);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        drop(self);
    }
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`, normally 100).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
