//! `dreadlock-bench`: a loopback load generator for any server speaking the
//! dreadlock protocol, for Redis (`SET key 1 NX PX ms` / `DEL key`, inline
//! commands) and for dflockd (three-line requests, token-carrying
//! releases), for side-by-side figures; and the no-logic floor server.
//!
//! Single-threaded on its own mio loop, so on a small machine it takes one
//! core and leaves the other to the server. Every reply is checked byte for
//! byte; any protocol error, mutual-exclusion violation or early timeout
//! fails the run (exit 1, with the reason on stderr). Every run is bounded
//! in time: the scenario's own deadlines, plus a watchdog that ends the
//! process if they are ever missed.
//!
//! # Layout
//!
//! ```text
//! main.rs       CLI, watchdog, printing
//! scenarios.rs  throughput (and flood + probe), contended, timeouts, connections
//! rr.rs         strict, semaphore, acquire: token replies, dflockd
//! floor.rs      the no-logic floor server
//! net.rs        connections, both protocols, batched non-blocking connect
//! hist.rs       log-bucket latency histogram
//! procfs.rs     the server's CPU time and RSS from /proc/PID
//! report.rs     human summary and JSON
//! ```

mod floor;
mod hist;
mod net;
mod procfs;
mod report;
mod rr;
mod scenarios;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::net::Proto;
use crate::report::Val;

/// Loopback load generator for dreadlock-protocol servers (and Redis).
///
/// Exit status: 0 when every check passed, 1 on any correctness failure
/// (a reply that is not byte-for-byte right, two holders of one lock, a
/// timeout answered early, failed connections, no reply in time), 2 on a
/// usage or setup error.
#[derive(Parser, Debug)]
#[command(version, about, long_about, after_help = AFTER_HELP)]
struct Cli {
    /// Server address.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:6001"
    )]
    addr: SocketAddr,

    /// Speak Redis (SET key 1 NX PX ms / DEL key) instead of dreadlock.
    #[arg(long, global = true)]
    redis: bool,

    /// Speak dflockd's three-line protocol (strict and semaphore only).
    #[arg(long, global = true, conflicts_with = "redis")]
    dflockd: bool,

    /// Measured interval in seconds (throughput, contended).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 5.0)]
    duration: f64,

    /// Unmeasured run-in before the measured interval, in seconds.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 0.5)]
    warmup: f64,

    /// How long outstanding replies may take after the measured interval
    /// (or a timeout) before the run fails, in seconds.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0)]
    grace: f64,

    /// Server process id: report its CPU time over the measured interval
    /// (and RSS in the connections scenario) from /proc.
    #[arg(long, global = true)]
    pid: Option<u32>,

    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long, global = true)]
    json: bool,

    /// Non-blocking connects in progress at once.
    #[arg(long, global = true, value_name = "N", default_value_t = 1000)]
    batch: usize,

    /// Time allowed for one connect, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 5000)]
    connect_timeout_ms: u64,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// C connections, each on its own key, P lock/unlock pairs in flight
    /// per connection: pairs/s, round latency, min/max pairs per connection.
    Throughput {
        /// Connections.
        #[arg(short = 'c', long, default_value_t = 50)]
        connections: usize,
        /// Lock/unlock pairs written per round (pipelining depth).
        #[arg(short = 'p', long, default_value_t = 1)]
        pipeline: usize,
    },
    /// C connections pipelining P lock/unlock pairs per round as fast as
    /// they can, and one probe connection doing single lock+unlock round
    /// trips meanwhile: the flood's pairs/s and the probe's latency (how
    /// fairly the server serves a light client beside heavy ones).
    Flood {
        /// Flooding connections.
        #[arg(short = 'c', long, default_value_t = 50)]
        connections: usize,
        /// Lock/unlock pairs written per round by each flooder.
        #[arg(short = 'p', long, default_value_t = 4096)]
        pipeline: usize,
    },
    /// C connections on K keys, each looping lock -> unlock: handoffs/s,
    /// grant latency, mutual-exclusion violations (Redis: SET NX retried
    /// at once until granted).
    Contended {
        #[arg(short = 'c', long, default_value_t = 100)]
        connections: usize,
        /// Keys shared by the connections (connection i uses key i mod K).
        #[arg(short = 'k', long, default_value_t = 1)]
        keys: usize,
    },
    /// One connection holds a key; N waiters ask for it with a timeout:
    /// lateness of each `t timeout` past its deadline; an early one fails.
    /// (Not available with --redis.)
    Timeouts {
        /// Waiting connections.
        #[arg(short = 'n', long, default_value_t = 2000)]
        waiters: usize,
        /// Timeout of each waiter's lock, in milliseconds.
        #[arg(long, default_value_t = 250)]
        timeout_ms: u64,
        /// Write the waiters' requests evenly over this many milliseconds
        /// instead of all at once (0: as fast as possible). A burst measures
        /// how the server copes with N requests and N timeouts at once; a
        /// spread measures timer precision.
        #[arg(long, value_name = "MS", default_value_t = 0)]
        spread_ms: u64,
    },
    /// Open N connections as fast as possible, then each locks its own key
    /// and idles: failed connects, server RSS per connection (with --pid).
    Connections {
        /// Connections (the tool needs N + a few descriptors).
        #[arg(short = 'n', long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds to hold the connections before closing them.
        #[arg(long, value_name = "SECS", default_value_t = 0.0)]
        hold: f64,
        /// Close with FIN instead of a reset (a reset leaves no TIME_WAIT
        /// behind, so repeated runs do not run out of ports).
        #[arg(long)]
        fin: bool,
    },
    /// Strict request-reply: C connections on K keys, one request in flight
    /// each: acquire, wait for the grant, release, wait: rounds/s, grant
    /// wait, violations. dreadlock `acquire`/`unlock` or, with --dflockd,
    /// `l`/`r` with the grant's token: the same load for both.
    Strict {
        #[arg(short = 'c', long, default_value_t = 50)]
        connections: usize,
        /// Keys shared by the connections (connection i uses key i mod K).
        #[arg(short = 'k', long, default_value_t = 50)]
        keys: usize,
    },
    /// A semaphore: C connections on one key with N slots (`acquire K T N`,
    /// dflockd `sl`), strict request-reply: no more than N holders at once.
    Semaphore {
        #[arg(short = 'c', long, default_value_t = 50)]
        connections: usize,
        /// Slots of the semaphore (at least 1).
        #[arg(short = 'n', long, default_value_t = 4)]
        limit: u32,
    },
    /// `throughput` with `acquire K 0` (reply `a <token>`) in place of
    /// `lock K 0` (dreadlock only): the cost of the token reply.
    Acquire {
        #[arg(short = 'c', long, default_value_t = 50)]
        connections: usize,
        /// Acquire/unlock pairs written per round (pipelining depth).
        #[arg(short = 'p', long, default_value_t = 1)]
        pipeline: usize,
    },
    /// Run the floor server (no logic, the daemon's I/O pattern, canned
    /// replies) on 127.0.0.1:PORT until killed; --addr is not used.
    Floor {
        #[arg(long)]
        port: u16,
        /// Busy-poll this long before blocking in epoll (0: never), as the
        /// daemon's default does.
        #[arg(long, value_name = "US", default_value_t = 50)]
        busy_poll_us: u64,
    },
}

const AFTER_HELP: &str = "\
Examples:
  dreadlock-bench --addr 127.0.0.1:6001 throughput -c 50 -p 32 --duration 5
  dreadlock-bench --addr 127.0.0.1:6379 --redis throughput -c 50
  dreadlock-bench flood -c 50 -p 4096 --duration 5
  dreadlock-bench contended -c 100 -k 1 --pid $(pidof dreadlock)
  dreadlock-bench timeouts -n 2000 --timeout-ms 250
  dreadlock-bench connections -n 19000 --pid $(pidof dreadlock) --json
  dreadlock-bench strict -c 1 -k 1
  dreadlock-bench --addr 127.0.0.1:6388 --dflockd strict -c 50 -k 1
  dreadlock-bench semaphore -c 50 -n 4
  dreadlock-bench acquire -c 50 -p 32
  dreadlock-bench floor --port 6002";

/// Settings every scenario uses.
pub struct Ctx {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub duration: Duration,
    pub warmup: Duration,
    pub grace: Duration,
    pub pid: Option<u32>,
    pub batch: usize,
    pub connect_timeout: Duration,
    /// Prefix of every key, unique per run (Redis keeps keys across runs).
    pub key_prefix: String,
    pub start: Instant,
}

impl Ctx {
    /// Redis expiry for a lock: longer than any run, so it never expires
    /// while the tool relies on it.
    pub fn lease_ms(&self) -> u64 {
        (self.warmup + self.duration + self.grace).as_millis() as u64 + 60_000
    }
}

fn secs(x: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(x).map_err(|_| format!("--{what} must be a non-negative number"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dreadlock-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    if let Scenario::Floor { port, busy_poll_us } = cli.scenario {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        floor::run(addr, Duration::from_micros(busy_poll_us))?;
        return Ok(ExitCode::SUCCESS);
    }
    let token_proto = cli.dflockd.then_some(rr::TokenProto::Dflockd);
    match (&cli.scenario, cli.dflockd, cli.redis) {
        (Scenario::Strict { .. } | Scenario::Semaphore { .. }, _, true) => {
            return Err("strict and semaphore speak dreadlock or dflockd, not Redis".into());
        }
        (Scenario::Strict { .. } | Scenario::Semaphore { .. }, _, _) => {}
        (Scenario::Acquire { .. }, _, true) | (Scenario::Acquire { .. }, true, _) => {
            return Err("acquire is a dreadlock command (no --redis, no --dflockd)".into());
        }
        (_, true, _) => {
            return Err("--dflockd works with the strict and semaphore scenarios only".into());
        }
        _ => {}
    }
    let duration = secs(cli.duration, "duration")?;
    let warmup = secs(cli.warmup, "warmup")?;
    let grace = secs(cli.grace, "grace")?;
    let extra = match &cli.scenario {
        Scenario::Timeouts {
            timeout_ms,
            spread_ms,
            ..
        } => Duration::from_millis(*timeout_ms + *spread_ms),
        Scenario::Connections { hold, .. } => secs(*hold, "hold")?,
        _ => Duration::ZERO,
    };
    // Every descriptor is a connection; the hard limit is what we may use.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let needed = match &cli.scenario {
        Scenario::Throughput { connections, .. }
        | Scenario::Contended { connections, .. }
        | Scenario::Strict { connections, .. }
        | Scenario::Semaphore { connections, .. }
        | Scenario::Acquire { connections, .. } => *connections as u64,
        Scenario::Floor { .. } => 0,
        Scenario::Flood { connections, .. } => *connections as u64 + 1,
        Scenario::Timeouts { waiters, .. } => *waiters as u64 + 1,
        Scenario::Connections { connections, .. } => *connections as u64,
    } + 16;
    if needed > nofile {
        return Err(format!(
            "this run needs about {needed} descriptors but the open-file limit is {nofile} \
             (raise the hard limit: ulimit -Hn)"
        ));
    }

    // Watchdog: whatever happens, the process ends. The scenarios keep
    // their own, tighter deadlines and report what was missing.
    let connect_phase = cli.connect_timeout_ms.saturating_mul(4);
    let limit = warmup
        + duration
        + extra
        + grace * 3
        + Duration::from_millis(connect_phase)
        + Duration::from_secs(5);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("dreadlock-bench: FAIL: hard stop after {limit:?}: the run did not finish");
        std::process::exit(1);
    });

    let proto = if cli.redis {
        Proto::Redis
    } else {
        Proto::Dreadlock
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let ctx = Ctx {
        addr: cli.addr,
        proto,
        duration,
        warmup,
        grace,
        pid: cli.pid,
        batch: cli.batch,
        connect_timeout: Duration::from_millis(cli.connect_timeout_ms),
        key_prefix: format!("b{}x{}", std::process::id(), nanos % 1_000_000),
        start: Instant::now(),
    };
    let (name, params, outcome) = match cli.scenario.clone() {
        Scenario::Throughput {
            connections,
            pipeline,
        } => {
            if connections == 0 || pipeline == 0 {
                return Err("-c and -p must be at least 1".into());
            }
            (
                "throughput",
                format!("{connections} connections x {pipeline} pipelined pairs"),
                scenarios::throughput(&ctx, connections, pipeline, false)?,
            )
        }
        Scenario::Flood {
            connections,
            pipeline,
        } => {
            if connections == 0 || pipeline == 0 {
                return Err("-c and -p must be at least 1".into());
            }
            (
                "flood",
                format!("{connections} connections x {pipeline} pipelined pairs + 1 probe"),
                scenarios::throughput(&ctx, connections, pipeline, true)?,
            )
        }
        Scenario::Contended { connections, keys } => {
            if connections == 0 || keys == 0 {
                return Err("-c and -k must be at least 1".into());
            }
            (
                "contended",
                format!("{connections} connections on {keys} keys"),
                scenarios::contended(&ctx, connections, keys)?,
            )
        }
        Scenario::Timeouts {
            waiters,
            timeout_ms,
            spread_ms,
        } => (
            "timeouts",
            format!(
                "{waiters} waiters, {timeout_ms} ms timeouts, requests spread over {spread_ms} ms"
            ),
            scenarios::timeouts(&ctx, waiters, timeout_ms, Duration::from_millis(spread_ms))?,
        ),
        Scenario::Connections {
            connections,
            hold,
            fin,
        } => (
            "connections",
            format!("{connections} connections, hold {hold} s"),
            scenarios::connections(&ctx, connections, secs(hold, "hold")?, !fin)?,
        ),
        Scenario::Strict { connections, keys } => {
            if connections == 0 || keys == 0 {
                return Err("-c and -k must be at least 1".into());
            }
            let p = token_proto.unwrap_or(rr::TokenProto::Dreadlock);
            (
                "strict",
                format!("{connections} connections on {keys} keys, one request in flight"),
                rr::strict(&ctx, p, connections, keys, 1)?,
            )
        }
        Scenario::Semaphore { connections, limit } => {
            if connections == 0 || limit == 0 {
                return Err("-c and -n must be at least 1".into());
            }
            let p = token_proto.unwrap_or(rr::TokenProto::Dreadlock);
            (
                "semaphore",
                format!("{connections} connections on one key with {limit} slots"),
                rr::strict(&ctx, p, connections, 1, limit)?,
            )
        }
        Scenario::Acquire {
            connections,
            pipeline,
        } => {
            if connections == 0 || pipeline == 0 {
                return Err("-c and -p must be at least 1".into());
            }
            (
                "acquire",
                format!("{connections} connections x {pipeline} pipelined acquire pairs"),
                rr::acquire(&ctx, connections, pipeline)?,
            )
        }
        Scenario::Floor { .. } => unreachable!("handled before the watchdog"),
    };

    let server = token_proto.map_or(proto.name(), rr::TokenProto::name);
    let ok = outcome.failures.is_empty();
    if cli.json {
        let mut fields = vec![
            ("scenario".to_string(), Val::S(name.into())),
            ("server".to_string(), Val::S(server.into())),
            ("addr".to_string(), Val::S(cli.addr.to_string())),
            ("params".to_string(), Val::S(params.clone())),
            ("ok".to_string(), Val::B(ok)),
            (
                "failures".to_string(),
                Val::Arr(outcome.failures.iter().map(|f| Val::S(f.clone())).collect()),
            ),
        ];
        fields.extend(outcome.fields.iter().cloned());
        println!("{}", Val::Obj(fields).to_json());
    } else {
        println!("dreadlock-bench {name}: {server} at {}, {params}", cli.addr);
        for l in &outcome.human {
            println!("{l}");
        }
        println!("  {:<15}{}", "result", if ok { "OK" } else { "FAILED" });
    }
    for f in &outcome.failures {
        eprintln!("dreadlock-bench: FAIL: {f}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
