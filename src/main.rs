//! The `dreadlock` daemon: CLI, logging, descriptor limit, then the reactor.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::Parser as _;
use dreadlock::lock_table::KEY_OVERHEAD_BYTES;
use dreadlock::log::{Level, Log};
use dreadlock::reactor::{self, Reactor};
use dreadlock::{core, parser};

/// dreadlock: a simple, very fast network lock daemon.
///
/// Clients connect over TCP and send `lock <key> <timeout_ms>\r\n` and
/// `unlock <key>\r\n`. Locks are granted first come, first served, and a
/// connection's locks are released the moment it disconnects. A syntax error
/// drops the offending connection (with a warning on stderr) and releases
/// its locks. A soft guarantee: a restart or a network partition loses locks.
#[derive(clap::Parser, Debug)]
#[command(version, about, long_about, after_help = AFTER_HELP)]
struct Args {
    /// TCP port to listen on (positional, as in the original dreadlock);
    /// 0 picks a free one.
    #[arg(value_name = "PORT", env = "DREADLOCK_PORT", default_value_t = 6001)]
    port: u16,

    /// Address to bind; the default listens on all IPv4 interfaces, like the
    /// original. Use 127.0.0.1 to accept local clients only, :: for IPv6 too.
    #[arg(
        long,
        value_name = "ADDR",
        env = "DREADLOCK_BIND",
        default_value = "0.0.0.0"
    )]
    bind: IpAddr,

    /// Most simultaneous connections (1 to 4294967295). Default: as many as
    /// the open-file limit allows (the soft limit is raised to the hard limit
    /// at start). At the cap, new connections wait in the listen backlog
    /// until one closes.
    #[arg(long, value_name = "N", env = "DREADLOCK_MAX_CONNECTIONS",
          value_parser = ranged::<usize>(1, MAX_CONNECTIONS))]
    max_connections: Option<usize>,

    /// Longest accepted command line in bytes, CRLF included (16 to
    /// 1048576); a longer line is a syntax error and drops the connection.
    #[arg(long, value_name = "BYTES", env = "DREADLOCK_MAX_LINE_BYTES",
          default_value_t = parser::DEFAULT_MAX_LINE_BYTES,
          value_parser = ranged::<usize>(parser::MIN_MAX_LINE_BYTES as u64, MAX_LINE_BYTES))]
    max_line_bytes: usize,

    /// Bytes kept from a connection while its `lock` waits (its later
    /// commands run after the lock resolves), 0 to 1073741824. Past this the
    /// daemon stops reading that socket, so TCP pushes back on the client.
    #[arg(long, value_name = "BYTES", env = "DREADLOCK_MAX_PENDING_BYTES",
          default_value_t = core::DEFAULT_MAX_PENDING_BYTES,
          value_parser = ranged::<usize>(0, MAX_BUFFER_BYTES))]
    max_pending_bytes: usize,

    /// Keys one connection may hold at once (1 to 16777216); a `lock`
    /// beyond it is answered `e too many locks` and changes nothing.
    #[arg(long, value_name = "N", env = "DREADLOCK_MAX_LOCKS_PER_CONNECTION",
          default_value_t = core::DEFAULT_MAX_LOCKS_PER_CONNECTION,
          value_parser = ranged::<usize>(1, MAX_LOCKS_PER_CONNECTION))]
    max_locks_per_connection: usize,

    /// Bytes all held keys may take together (each key counts its length
    /// plus 128), 129 to 1099511627776; a `lock` on a free key beyond it is
    /// answered `e lock table full` and changes nothing.
    #[arg(long, value_name = "BYTES", env = "DREADLOCK_MAX_KEY_BYTES",
          default_value_t = core::DEFAULT_MAX_KEY_BYTES,
          value_parser = ranged::<usize>(KEY_OVERHEAD_BYTES as u64 + 1, MAX_KEY_BYTES))]
    max_key_bytes: usize,

    /// Replies queued for a client that does not read them (0 to
    /// 1073741824). Past this the daemon stops reading that client's
    /// commands until it drains; 0 reads the next commands only once every
    /// reply is sent.
    #[arg(long, value_name = "BYTES", env = "DREADLOCK_MAX_OUTPUT_BYTES",
          default_value_t = reactor::DEFAULT_MAX_OUTPUT_BYTES,
          value_parser = ranged::<usize>(0, MAX_BUFFER_BYTES))]
    max_output_bytes: usize,

    /// Listen backlog, 1 to 2147483647 (the kernel caps it at
    /// net.core.somaxconn).
    #[arg(long, value_name = "N", env = "DREADLOCK_BACKLOG",
          default_value_t = reactor::DEFAULT_BACKLOG,
          value_parser = ranged::<u32>(1, i32::MAX as u64))]
    backlog: u32,

    /// Seconds a connection may be idle before TCP keepalive probes start
    /// (1 to 32767, Linux's bound); a peer that stops answering them (host
    /// down, cable cut: no FIN or RST) is dropped and its locks released
    /// about 30 s later. 0 turns it off.
    #[arg(long, value_name = "SECS", env = "DREADLOCK_KEEPALIVE",
          default_value_t = reactor::DEFAULT_KEEPALIVE.as_secs(),
          value_parser = ranged::<u64>(0, MAX_KEEPALIVE_SECS))]
    keepalive: u64,

    /// Microseconds to busy-poll for the next event before sleeping in
    /// epoll (0 to 10000), while that pays (request-reply clients, lock
    /// handoffs): it cuts the wake-up latency of each round trip. Adaptive:
    /// after a spin that finds nothing, spinning backs off to at most one
    /// wait in 64, so an idle daemon uses no CPU. 0 turns it off.
    #[arg(long, value_name = "USECS", env = "DREADLOCK_BUSY_POLL_US",
          default_value_t = reactor::DEFAULT_BUSY_POLL.as_micros() as u64,
          value_parser = ranged::<u64>(0, MAX_BUSY_POLL_US))]
    busy_poll_us: u64,

    /// Log every connection and disconnection, and every lock event: who
    /// (peer and name) was granted which key at once or after how long,
    /// timeouts, releases (how long held) and evictions.
    #[arg(short, long, env = "DREADLOCK_VERBOSE", conflicts_with = "quiet")]
    verbose: bool,

    /// Log errors only (no startup line, warnings or summary).
    #[arg(short, long, env = "DREADLOCK_QUIET")]
    quiet: bool,

    /// Serve the admin endpoint over HTTP on ADDR:PORT: `GET /metrics`
    /// (Prometheus text format) and `GET /healthz`. Off by default. At most
    /// 16 admin connections, a request head of at most 8 KiB, read within
    /// 5 s; one request per connection. Bind it to a private address.
    #[arg(long, value_name = "ADDR:PORT", env = "DREADLOCK_METRICS")]
    metrics: Option<SocketAddr>,

    /// Require every connection to authenticate first: FILE's one line
    /// (trailing newline stripped) is the shared secret, 1 to 256 bytes of
    /// A-Z a-z 0-9 - _ . + / =. A client's first command must then be
    /// `auth SECRET`; anything else is answered `e auth required` and the
    /// connection closed, a wrong secret `e auth failed` after
    /// --auth-delay-ms. The daemon refuses to start if FILE is missing,
    /// empty or not a valid secret, and warns if others may read it.
    #[arg(long, value_name = "FILE", env = "DREADLOCK_AUTH_FILE")]
    auth_file: Option<std::path::PathBuf>,

    /// Milliseconds before a wrong secret is answered `e auth failed` and
    /// the connection closed (a timer: other clients are served meanwhile).
    /// At least 50.
    #[arg(long, value_name = "MS", env = "DREADLOCK_AUTH_DELAY_MS",
          default_value_t = core::DEFAULT_AUTH_DELAY_MS,
          value_parser = ranged::<u64>(core::MIN_AUTH_DELAY_MS, MAX_AUTH_DELAY_MS))]
    auth_delay_ms: u64,

    /// Accept connections only from this network (IPv4 or IPv6 CIDR such as
    /// 10.0.0.0/8 or fd00::/8, or a single address); repeatable, or
    /// comma-separated in the variable. Connections from any other address
    /// are closed at accept and counted as `rejected` in `stats`. Default:
    /// every address.
    #[arg(
        long,
        value_name = "CIDR",
        env = "DREADLOCK_ALLOW",
        value_delimiter = ','
    )]
    allow: Vec<dreadlock::allow::Cidr>,
}

/// The flags' upper bounds: each far above any sane setting, and low enough
/// that nothing overflows or fails later (a value past one is refused at
/// start, naming the flag and its range).
const MAX_CONNECTIONS: u64 = u32::MAX as u64;
const MAX_LINE_BYTES: u64 = 1 << 20;
/// Per-connection buffers (pending input, queued output): 1 GiB.
const MAX_BUFFER_BYTES: u64 = 1 << 30;
const MAX_LOCKS_PER_CONNECTION: u64 = 1 << 24;
const MAX_KEY_BYTES: u64 = 1 << 40;
/// Linux refuses a longer TCP_KEEPIDLE (MAX_TCP_KEEPIDLE).
const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// A spin longer than this would be a busy loop, not a wake-up shortcut.
const MAX_BUSY_POLL_US: u64 = 10_000;
/// A wrong secret waits at most a minute for its answer: longer only keeps
/// a hostile peer's connection slot busy.
const MAX_AUTH_DELAY_MS: u64 = 60_000;

/// A clap parser for an integer flag in `min..=max`.
fn ranged<T>(min: u64, max: u64) -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: std::error::Error + Send + Sync + 'static,
{
    clap::builder::RangedU64ValueParser::<T>::new().range(min..=max)
}

const AFTER_HELP: &str = "\
Limits (each bounds something a client controls):
  line length      --max-line-bytes (default 10000, the original's buffer)
  waiting input    --max-pending-bytes per connection (default 65536)
  unread replies   --max-output-bytes per connection (default 65536)
  locks held       --max-locks-per-connection (default 1024): then `e too many locks`
  all keys         --max-key-bytes (default 268435456): then `e lock table full`
  connections      --max-connections (default: the open-file limit)
  timeouts         any digit string (saturating); 67645734910 ms (~2.1 years)
                   or more waits until granted or disconnected
  semaphore size   acquire KEY MS N: N from 1 to 65535, else `e bad limit`
  name label       64 bytes: then `e name too long`
  auth secret      256 bytes: then `e auth failed`; --auth-delay-ms (default 100, >= 50)

Exposure: the default bind (0.0.0.0) is the original's. Restrict it with
--bind 127.0.0.1, --allow CIDR, or --auth-file FILE (PROTOCOL.md, Exposure).

Examples:
  dreadlock                         listen on 0.0.0.0:6001
  dreadlock 11066 --bind 127.0.0.1  local clients only, port 11066
  dreadlock --allow 10.0.0.0/8 --auth-file /etc/dreadlock.secret
  printf 'lock a 100\\r\\n' | nc 127.0.0.1 6001

Every flag can also be set in the environment (DREADLOCK_PORT, DREADLOCK_BIND,
DREADLOCK_MAX_CONNECTIONS, ...: shown with each flag); a flag on the command
line wins. A value out of its range is refused at start.

Signals: SIGINT/SIGTERM stop the daemon with a one-line summary on stderr;
SIGHUP is logged and ignored (there is nothing to reload); SIGUSR1 logs a
`stats` line.";

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any thread starts: it edits the environment.
    let activated = dreadlock::systemd::take_listener();
    let code = run(args, activated);
    // Lines are written by a background thread: give it a bounded time to
    // finish (a wedged stderr cannot hold the exit).
    dreadlock::log::flush(std::time::Duration::from_secs(2));
    code
}

fn run(args: Args, activated: std::io::Result<Option<std::net::TcpListener>>) -> ExitCode {
    let level = if args.quiet {
        Level::Quiet
    } else if args.verbose {
        Level::Debug
    } else {
        Level::Info
    };
    let log = Log::new(level);

    // Raise the soft descriptor limit to the hard one: every connection is one.
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            log.error(format_args!("cannot read the open-file limit: {e}"));
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    // A few descriptors go to the listener, epoll, signals and stdio.
    let fd_cap = usize::try_from(nofile.saturating_sub(16))
        .unwrap_or(usize::MAX)
        .max(1);
    let max_connections = args.max_connections.unwrap_or(fd_cap);
    if max_connections > fd_cap {
        log.warn(format_args!(
            "--max-connections {max_connections} exceeds the open-file limit ({nofile}); \
             accept will pause when descriptors run out"
        ));
    }

    let auth = match args.auth_file.as_deref().map(|p| read_secret(p, &log)) {
        None => None,
        Some(Ok(secret)) => Some(secret),
        Some(Err(e)) => {
            log.error(format_args!("{e}"));
            return ExitCode::from(2);
        }
    };
    // Fencing tokens start at the wall clock's nanoseconds, so a restarted
    // daemon issues larger tokens than before (PROTOCOL.md rule V1).
    let token_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));

    let config = reactor::Config {
        core: core::Config {
            max_line_bytes: args.max_line_bytes,
            max_pending_bytes: args.max_pending_bytes,
            max_locks_per_connection: args.max_locks_per_connection,
            max_key_bytes: args.max_key_bytes,
            token_seed,
            auth,
            auth_delay_ms: args.auth_delay_ms,
            // `-v` logs lock events (grants, timeouts, releases, evictions).
            events: level >= Level::Debug,
        },
        allow: dreadlock::allow::AllowList::new(args.allow.clone()),
        max_output_bytes: args.max_output_bytes,
        max_connections,
        backlog: args.backlog,
        busy_poll: std::time::Duration::from_micros(args.busy_poll_us),
        keepalive: (args.keepalive > 0).then(|| std::time::Duration::from_secs(args.keepalive)),
    };
    let addr = SocketAddr::new(args.bind, args.port);
    // With socket activation the listener comes from systemd (PORT and
    // --bind are then the socket unit's business).
    let (bound, how) = match activated {
        Ok(Some(listener)) => (
            Reactor::from_listener(listener, config, log),
            " (socket activation)",
        ),
        Ok(None) => (Reactor::bind(addr, config, log), ""),
        Err(e) => {
            Log::new(level).error(format_args!("cannot use the socket systemd passed: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut reactor = match bound {
        Ok(r) => r,
        Err(e) => {
            Log::new(level).error(format_args!("cannot listen on {addr}: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let log = Log::new(level);
    if let Some(metrics) = args.metrics {
        // The admin port follows --allow, so it is not open where the lock
        // port is restricted.
        let allow = dreadlock::allow::AllowList::new(args.allow.clone());
        let admin = dreadlock::admin::AdminServer::bind(metrics).map(|mut a| {
            a.set_accept_filter(move |ip| allow.allows(ip));
            a
        });
        let local = admin.as_ref().map(|a| a.local_addr()).ok();
        if let Err(e) = admin.and_then(|a| reactor.set_admin(a)) {
            log.error(format_args!("cannot listen on {metrics} (--metrics): {e}"));
            return ExitCode::FAILURE;
        }
        if let Some(local) = local {
            log.info(format_args!(
                "admin endpoint on http://{local}/metrics and /healthz"
            ));
        }
    }
    log.info(format_args!(
        "dreadlock {} listening on {}{how} (max {} connections, open-file limit {nofile})",
        env!("CARGO_PKG_VERSION"),
        reactor.local_addr(),
        max_connections,
    ));
    if let Some(warning) = exposure_warning(reactor.local_addr().ip(), auth.is_some(), &args.allow)
    {
        log.info(format_args!("{warning}"));
    }
    sd_notify(
        &log,
        &format!(
            "READY=1\nSTATUS=listening on {}, max {max_connections} connections",
            reactor.local_addr()
        ),
    );
    let result = reactor.run();
    sd_notify(&log, "STOPPING=1\nSTATUS=stopping");
    match result {
        Ok(s) => {
            let c = &s.core;
            log.info(format_args!(
                "stopped after {:.1}s: {} connections accepted (peak {}, {} rejected), \
                 {} commands, {} granted ({} after a wait), {} timed out, {} unlocked, \
                 {} error replies, {} syntax errors, {} auth failures, {} evicted, \
                 last token {}",
                s.uptime.as_secs_f64(),
                c.accepted,
                s.peak_connections,
                c.rejected,
                c.commands_total(),
                c.grants_total(),
                c.grants_queued,
                c.timeouts,
                c.unlocks,
                c.errors_total(),
                c.syntax_errors,
                c.auth_failures,
                c.evictions,
                c.last_token,
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            log.error(format_args!("event loop failed: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Tells systemd (`Type=notify`) about the daemon's state; nothing without
/// `NOTIFY_SOCKET`.
fn sd_notify(log: &Log, state: &str) {
    if let Err(e) = dreadlock::systemd::notify(state) {
        log.warn(format_args!("cannot notify systemd (NOTIFY_SOCKET): {e}"));
    }
}

/// Reads the `--auth-file` secret: its one line, the trailing newline (LF
/// or CRLF) stripped. Warns (does not refuse) when others may read it.
fn read_secret(path: &std::path::Path, log: &Log) -> Result<core::Secret, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("--auth-file {shown}: {e}"))?;
    let line = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!("--auth-file {shown}: the file is empty"));
    }
    let secret = core::Secret::new(line).ok_or_else(|| {
        format!(
            "--auth-file {shown}: the secret must be one line of 1 to {} bytes of \
             A-Z a-z 0-9 - _ . + / =",
            dreadlock::wire::MAX_SECRET_BYTES
        )
    })?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o044 != 0 {
            log.info(format_args!(
                "warning: --auth-file {shown} is readable by other users; chmod 600 it"
            ));
        }
    }
    Ok(secret)
}

/// The startup warning for a daemon any host may use: listening beyond
/// loopback with no `--auth-file` (and no `--allow` list narrowing it).
fn exposure_warning(bind: IpAddr, auth: bool, allow: &[dreadlock::allow::Cidr]) -> Option<String> {
    if bind.is_loopback() || auth {
        return None;
    }
    let who = if allow.is_empty() {
        "any host that can reach it".to_string()
    } else {
        let nets: Vec<String> = allow.iter().map(ToString::to_string).collect();
        format!("any host in {}", nets.join(", "))
    };
    Some(format!(
        "warning: listening on {bind} without --auth-file: {who} can take and hold every \
         lock and see who holds what; restrict it with --bind 127.0.0.1, --allow CIDR or \
         --auth-file FILE"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposure_warning_only_beyond_loopback_without_auth() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let w = exposure_warning(any, false, &[]).expect("a warning");
        assert!(w.contains("any host that can reach it"), "{w}");
        assert!(
            w.contains("--bind 127.0.0.1") && w.contains("--allow") && w.contains("--auth-file")
        );
        assert!(!w.contains('\n'), "one line");
        assert_eq!(exposure_warning(any, true, &[]), None);
        assert_eq!(
            exposure_warning("127.0.0.1".parse().unwrap(), false, &[]),
            None
        );
        assert_eq!(exposure_warning("::1".parse().unwrap(), false, &[]), None);
        let nets = ["10.0.0.0/8".parse().unwrap()];
        let w = exposure_warning("::".parse().unwrap(), false, &nets).expect("a warning");
        assert!(w.contains("any host in 10.0.0.0/8"), "{w}");
    }

    #[test]
    fn read_secret_strips_one_newline_and_validates() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir();
        let log = Log::new(Level::Quiet);
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(format!("dreadlock-main-{}-{name}", std::process::id()));
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        for (name, bytes, ok) in [
            ("lf", &b"abc\n"[..], true),
            ("crlf", b"abc\r\n", true),
            ("bare", b"abc", true),
            ("empty", b"", false),
            ("nl", b"\n", false),
            ("two-lines", b"abc\ndef\n", false),
            ("space", b"a c\n", false),
        ] {
            let p = write(name, bytes);
            let got = read_secret(&p, &log);
            assert_eq!(got.is_ok(), ok, "{name}: {got:?}");
            if let Ok(s) = got {
                assert!(s.matches(b"abc"));
            }
            std::fs::remove_file(&p).unwrap();
        }
        assert!(read_secret(&dir.join("dreadlock-main-no-such-file"), &log).is_err());
    }
}
