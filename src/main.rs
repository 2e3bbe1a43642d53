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
    /// plus 64), 65 to 1099511627776; a `lock` on a free key beyond it is
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

    /// Log every connection and disconnection too.
    #[arg(short, long, env = "DREADLOCK_VERBOSE", conflicts_with = "quiet")]
    verbose: bool,

    /// Log errors only (no startup line, warnings or summary).
    #[arg(short, long, env = "DREADLOCK_QUIET")]
    quiet: bool,
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

Examples:
  dreadlock                         listen on 0.0.0.0:6001
  dreadlock 11066 --bind 127.0.0.1  local clients only, port 11066
  printf 'lock a 100\\r\\n' | nc 127.0.0.1 6001

Every flag can also be set in the environment (DREADLOCK_PORT, DREADLOCK_BIND,
DREADLOCK_MAX_CONNECTIONS, ...: shown with each flag); a flag on the command
line wins. A value out of its range is refused at start.

Signals: SIGINT/SIGTERM stop the daemon with a one-line summary on stderr;
SIGHUP is logged and ignored (there is nothing to reload).";

fn main() -> ExitCode {
    let args = Args::parse();
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
        log.info(format_args!(
            "warning: --max-connections {max_connections} exceeds the open-file limit ({nofile}); \
             accept will pause when descriptors run out"
        ));
    }

    let config = reactor::Config {
        core: core::Config {
            max_line_bytes: args.max_line_bytes,
            max_pending_bytes: args.max_pending_bytes,
            max_locks_per_connection: args.max_locks_per_connection,
            max_key_bytes: args.max_key_bytes,
        },
        max_output_bytes: args.max_output_bytes,
        max_connections,
        backlog: args.backlog,
        busy_poll: std::time::Duration::from_micros(args.busy_poll_us),
        keepalive: (args.keepalive > 0).then(|| std::time::Duration::from_secs(args.keepalive)),
    };
    let addr = SocketAddr::new(args.bind, args.port);
    let reactor = match Reactor::bind(addr, config, log) {
        Ok(r) => r,
        Err(e) => {
            Log::new(level).error(format_args!("cannot listen on {addr}: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let log = Log::new(level);
    log.info(format_args!(
        "dreadlock {} listening on {} (max {} connections, open-file limit {nofile})",
        env!("CARGO_PKG_VERSION"),
        reactor.local_addr(),
        max_connections,
    ));
    match reactor.run() {
        Ok(s) => {
            log.info(format_args!(
                "stopped after {:.1}s: {} connections accepted (peak {}), {} commands, \
                 {} granted, {} timed out, {} unlocked, {} error replies, {} syntax errors",
                s.uptime.as_secs_f64(),
                s.accepted,
                s.peak_connections,
                s.core.commands,
                s.core.granted,
                s.core.timeouts,
                s.core.unlocked,
                s.core.errors_replied,
                s.core.syntax_errors,
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            log.error(format_args!("event loop failed: {e}"));
            ExitCode::FAILURE
        }
    }
}
