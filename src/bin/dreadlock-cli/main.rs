//! `dreadlock-cli`: take a dreadlock lock from the shell and run a command
//! while holding it (like `flock`, across machines).
//!
//! The rule it keeps: the command never runs on once the lock it was started
//! under is gone.
//!
//! * While the command runs, a watcher thread blocks on the lock's socket:
//!   the daemon sends nothing unasked, so anything that wakes it (EOF, an
//!   error, a keepalive failure) means the connection, and with it the lock,
//!   is gone. The command's whole tree is then stopped (SIGTERM, SIGKILL
//!   after `--kill-grace`); see `tree.rs` for how the whole tree is reached.
//! * A signal that would end this process (and release the lock) is caught
//!   and forwarded to the command's tree instead (`signals.rs`).
//! * If this process dies anyway (SIGKILL), the watchdog kills the command's
//!   group (`watchdog.rs`).
//! * What the command leaves running when it exits is stopped the same way
//!   before the lock is released.
//!
//! The main thread is the only one that signals or reaps, so a signal never
//! reaches a recycled pid.
//!
//! Subcommands are variants of `Cmd`, each run by a function of its own
//! that returns the exit code.

mod duration;
mod identity;
mod report;
mod signals;
mod tree;
mod watchdog;

use std::ffi::OsString;
use std::io::{ErrorKind, Write as _};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser as _;
use dreadlock::client::{
    self, Client, Connection, Error, ErrorKind as ClientErrorKind, ErrorReply, Options,
    WAIT_FOREVER,
};
use rustix::process::{Signal, WaitStatus};
use signal_hook::iterator::Signals;

use duration::parse_duration;
use identity::parse_label;
use tree::{SpawnError, Tree};

/// Prints a line on stderr; a closed stderr is no reason to stop
/// supervising (`eprintln!` would panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), "dreadlock-cli: {}", format_args!($($arg)*));
    }};
}

/// Could not reach a server, or it answered with an error (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;
/// The lock was lost while the command ran (EX_SOFTWARE).
const EXIT_LOST: u8 = 70;
/// The lock was not granted in time (EX_TEMPFAIL); `--conflict-exit-code`.
const EXIT_CONFLICT: u8 = 75;
/// The command exists but could not be started, as in shells.
const EXIT_CANNOT_RUN: u8 = 126;
/// The command was not found, as in shells.
const EXIT_NOT_FOUND: u8 = 127;

/// How often the supervisor looks at the child when nothing happens (a
/// SIGCHLD normally wakes it at once; this is only a safety net).
const POLL: Duration = Duration::from_millis(100);

/// How long processes the command left behind get to exit on their own
/// before they count as left running: they often got the same signal as
/// the command and are already on their way out.
const SETTLE: Duration = Duration::from_millis(100);

/// dreadlock-cli: take a dreadlock lock and run a command while holding it.
///
/// The lock lives on a dreadlock daemon, so it excludes commands on every
/// machine that talks to the same daemon. It is released when the command
/// ends, and also if this process dies (the command is then killed).
#[derive(clap::Parser, Debug)]
#[command(version, about, long_about, after_help = AFTER_HELP)]
struct Cli {
    /// Daemon to use, as HOST:PORT. Repeat it for several daemons: each key
    /// then lives on one of them, chosen by rendezvous hashing (every client
    /// must list the same servers, spelled the same way). Default: the
    /// comma-separated list in $DREADLOCK_SERVERS, else 127.0.0.1:6001.
    #[arg(short, long = "server", value_name = "HOST:PORT", global = true)]
    server: Vec<String>,

    /// Give up connecting to a daemon after this long: 250ms, 5s, 1m (a bare
    /// number is milliseconds); not 0.
    #[arg(long, value_name = "DURATION", default_value = "5s", global = true,
          value_parser = parse_connect_timeout)]
    connect_timeout: Duration,

    /// Name every connection LABEL, so that `status` and the daemon's logs
    /// show who holds a key: 1 to 64 bytes of ASCII letters, digits and the
    /// characters `-_.:/`. Default: HOST/PID/COMMAND (this host's short
    /// name, dreadlock-cli's pid, the command's name for `lock`, else
    /// dreadlock-cli), other characters replaced by _, cut to 64 bytes.
    /// Needs a daemon that speaks protocol version 2; the default name is
    /// left out with one that does not.
    #[arg(long, value_name = "LABEL", global = true, value_parser = parse_label)]
    name: Option<String>,

    /// Send the secret in FILE (its one line) first on every connection,
    /// for a daemon started with --auth-file FILE. A daemon without auth
    /// accepts it too. Default: $DREADLOCK_AUTH_FILE.
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        env = "DREADLOCK_AUTH_FILE",
        hide_env = true
    )]
    auth_file: Option<PathBuf>,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Take the lock on KEY, run COMMAND while holding it, then release it.
    ///
    /// Exits with COMMAND's exit code (128+N if a signal N killed it); see
    /// the exit codes below for what else can happen. COMMAND gets
    /// DREADLOCK_KEY, DREADLOCK_SERVER and DREADLOCK_TOKEN in its
    /// environment. DREADLOCK_TOKEN is the grant's fencing token, larger
    /// than that of every earlier grant of the daemon: pass it to the
    /// storage COMMAND writes to, so that it can refuse a stale holder.
    ///
    /// The lock is taken with `acquire`, which returns the token. A daemon
    /// that speaks only the original protocol (the C dreadlock) closes the
    /// connection on the version 2 commands: then, unless --limit above 1
    /// or --name asks for what it cannot do, the lock is taken with the
    /// original `lock` instead, with a warning on stderr, and COMMAND gets
    /// no DREADLOCK_TOKEN.
    ///
    /// COMMAND never runs on once the lock is gone. If the connection to the
    /// daemon is lost, COMMAND and everything it started get SIGTERM at once
    /// and SIGKILL after --kill-grace. Signals that would end dreadlock-cli
    /// (INT, TERM, HUP, QUIT, USR1, USR2, ALRM, PIPE, ...) are forwarded to
    /// COMMAND's process group instead, except those ignored when
    /// dreadlock-cli started (nohup), which stay ignored. If dreadlock-cli is
    /// killed anyway (SIGKILL), COMMAND's process group is killed too. What
    /// COMMAND leaves running when it exits is stopped the same way before
    /// the lock is released.
    ///
    /// At a terminal COMMAND runs in the foreground (it can read the
    /// terminal, and one Ctrl-C reaches it once); Ctrl-Z stops it and
    /// dreadlock-cli with it, `fg` and `bg` resume both.
    #[command(after_help = LOCK_AFTER_HELP)]
    Lock(LockArgs),

    /// Check that every daemon answers; prints the round trip of each.
    ///
    /// Each connection is introduced as every other one is (the secret of
    /// --auth-file, then the name), so a daemon that requires a secret and
    /// did not get the right one counts as failing. A daemon that speaks
    /// only the original protocol answers too, and is marked as such.
    Ping,

    /// Show who holds KEY, since when, and how many wait.
    ///
    /// Prints the holder's name, address, how long it has held KEY and its
    /// fencing token, how many wait, and KEY's limit.
    ///
    /// For a semaphore held by several, the holder shown is the oldest. A
    /// holder's name is what it sent with `name` (dreadlock-cli sends
    /// HOST/PID/COMMAND unless --name says otherwise). Needs a daemon that
    /// speaks protocol version 2.
    #[command(after_help = STATUS_AFTER_HELP)]
    Status {
        /// The lock name: ASCII letters and digits, case-sensitive.
        #[arg(value_parser = parse_key)]
        key: String,

        /// Print one JSON object instead: key, server, held, limit,
        /// holders, waiters, name, peer, held_ms, token (a string: tokens
        /// exceed what JSON readers keep exactly as numbers); the holder's
        /// fields are null while KEY is free.
        #[arg(long)]
        json: bool,
    },

    /// Print the counters of every daemon, one block per daemon.
    ///
    /// Each block lists the fields of the daemon's `stats` reply in its
    /// order (PROTOCOL.md, rule V9). Exits 69 if a daemon does not answer
    /// (the others are still printed). Needs a daemon that speaks protocol
    /// version 2.
    Stats {
        /// Print a JSON array instead, one object per daemon:
        /// {"server": ..., "stats": {...}} or {"server": ..., "error": ...};
        /// counters are numbers, version and token strings.
        #[arg(long)]
        json: bool,
    },

    /// Force-release KEY: close every connection holding it.
    ///
    /// The daemon closes each as if it had disconnected (all of their
    /// locks are released, and the next waiters are granted); prints how
    /// many.
    ///
    /// A dreadlock-cli whose connection is closed this way stops its
    /// command (exit 70). The daemon allows evict from every connection
    /// when it runs with --auth-file, and otherwise only from its own host
    /// (loopback); elsewhere it answers "not allowed" (exit 69). Needs a
    /// daemon that speaks protocol version 2.
    Evict {
        /// The lock name: ASCII letters and digits, case-sensitive.
        #[arg(value_parser = parse_key)]
        key: String,
    },

    /// Print the daemon that KEY lives on (no network needed).
    Which {
        /// The lock name: ASCII letters and digits, case-sensitive.
        #[arg(value_parser = parse_key)]
        key: String,
    },

    /// Internal: the watchdog in the command's process group.
    #[command(name = "__watchdog", hide = true)]
    Watchdog {
        /// The process group to hand the terminal back to.
        #[arg(long, value_name = "PGID")]
        restore_pgrp: Option<i32>,
    },
}

#[derive(clap::Args, Debug)]
struct LockArgs {
    /// The lock name: ASCII letters and digits, case-sensitive.
    #[arg(value_parser = parse_key)]
    key: String,

    /// Wait at most this long for the lock: 250ms, 10s, 1.5s, 2m, 1h (a
    /// bare number is milliseconds); 0 tries once. Default: wait until it
    /// is granted.
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// Do not wait: give up at once if the lock is held (--timeout 0).
    #[arg(short, long, conflicts_with = "timeout")]
    nonblock: bool,

    /// Treat KEY as a semaphore: up to N commands hold it at once, the
    /// others wait in line (1 to 65535; 1 is the exclusive lock). Every
    /// user of KEY must give the same N while it is held (else "limit
    /// mismatch", exit 69). Needs a daemon that speaks protocol version 2.
    #[arg(short = 'l', long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(dreadlock::wire::MAX_LIMIT)))]
    limit: u32,

    /// Exit code when the lock is not granted within --timeout.
    #[arg(short = 'E', long, value_name = "CODE", default_value_t = EXIT_CONFLICT)]
    conflict_exit_code: u8,

    /// When COMMAND must stop (the lock was lost, or it left processes
    /// running): how long between the SIGTERM and the SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    kill_grace: Duration,

    /// Say nothing when the lock is not granted in time (the exit code
    /// still tells).
    #[arg(short, long)]
    quiet: bool,

    /// Run CMD with `sh -c CMD` instead of giving COMMAND.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "CMD",
        conflicts_with = "argv"
    )]
    shell_command: Option<OsString>,

    /// The command to run, and its arguments (after `--` if any of them
    /// starts with `-`).
    #[arg(
        required_unless_present = "shell_command",
        trailing_var_arg = true,
        value_name = "COMMAND"
    )]
    argv: Vec<OsString>,
}

/// The exit code table, shared by both help texts (`concat!` needs a
/// literal, hence a macro).
macro_rules! exit_codes {
    () => {
        "\
Exit codes:
  N      COMMAND exited with N
  128+N  COMMAND was killed by signal N
  2      usage error (bad option, invalid key, unusable --auth-file)
  69     could not reach the daemon, or it answered with an error (such as
         auth required, auth failed, not allowed, limit mismatch)
  70     the connection to the daemon (so the lock) was lost while COMMAND ran;
         COMMAND was sent SIGTERM, then SIGKILL after --kill-grace
  75     the lock was not granted within --timeout (--conflict-exit-code)
  126    COMMAND could not be started
  127    COMMAND was not found"
    };
}

const AFTER_HELP: &str = concat!(
    "\
Examples:
  dreadlock-cli lock backup -- rsync -a /srv/ backup:/srv/
  dreadlock-cli --server locks.example.com:6001 lock -n -E 0 nightly -- ./nightly.sh
  DREADLOCK_SERVERS=10.0.0.1:6001,10.0.0.2:6001 dreadlock-cli lock cache -c './rebuild > log'
  dreadlock-cli lock --limit 3 rebuild -- ./rebuild.sh      # at most 3 at once
  dreadlock-cli --name nightly-backup lock backup -c 'backup.sh --token \"$DREADLOCK_TOKEN\"'
  dreadlock-cli status backup
  dreadlock-cli stats --json
  dreadlock-cli --auth-file /etc/dreadlock/secret evict backup
  dreadlock-cli ping
  dreadlock-cli --server a:6001 --server b:6001 which backup

",
    exit_codes!(),
    "

ping and stats exit 0 when every daemon answers, 69 otherwise; status and
evict exit 0 on an answer, 69 otherwise."
);

const STATUS_AFTER_HELP: &str = "\
Example:
  $ dreadlock-cli status backup
  key       backup
  server    127.0.0.1:6001
  state     held, 2 waiting
  limit     1 (an exclusive lock)
  holders   1
  waiters   2
  name      db1/4242/pg_dump
  peer      10.0.0.7:50312
  held for  3m05s
  token     1764662400000000042";

const LOCK_AFTER_HELP: &str = concat!(
    "\
Examples:
  dreadlock-cli lock backup -c 'pg_dump db > db.sql'
  dreadlock-cli lock --nonblock --quiet nightly -- ./nightly.sh   # skip if running
  dreadlock-cli lock --timeout 1.5s --kill-grace 30s deploy -- ./deploy.sh
  dreadlock-cli lock --limit 2 encode -- ./encode.sh    # two at once
  dreadlock-cli lock backup -c 'write --fence \"$DREADLOCK_TOKEN\"'

",
    exit_codes!()
);

fn parse_key(key: &str) -> Result<String, client::KeyError> {
    client::validate_key(key).map(|()| key.to_owned())
}

fn parse_connect_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than 0".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    // Before anything installs a handler.
    let ignored = signals::ignored_at_start();
    let cli = Cli::parse();
    if let Cmd::Watchdog { restore_pgrp } = cli.command {
        return ExitCode::from(watchdog::run(restore_pgrp));
    }
    let servers = if !cli.server.is_empty() {
        cli.server
    } else {
        match std::env::var("DREADLOCK_SERVERS") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => vec![client::DEFAULT_SERVER.to_owned()],
        }
    };
    let client = match Client::new(servers) {
        Ok(c) => c,
        Err(e) => {
            say!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Cmd::Which { key } = &cli.command {
        println!("{}", client.server_for(key));
        return ExitCode::SUCCESS;
    }
    let auth = match &cli.auth_file {
        None => None,
        Some(path) => match identity::read_secret(path) {
            Ok(secret) => Some(secret),
            Err(e) => {
                say!("--auth-file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let command_name = match &cli.command {
        Cmd::Lock(args) => match &args.shell_command {
            Some(line) => identity::command_name(&line.to_string_lossy()).to_owned(),
            None => identity::command_name(&args.argv[0].to_string_lossy()).to_owned(),
        },
        _ => "dreadlock-cli".to_owned(),
    };
    let ctx = Ctx {
        options: Options {
            connect_timeout: cli.connect_timeout,
            auth,
            ..Options::default()
        },
        name_given: cli.name.is_some(),
        name: cli.name.unwrap_or_else(|| {
            identity::default_name(&identity::host_name(), std::process::id(), &command_name)
        }),
    };
    ExitCode::from(match cli.command {
        Cmd::Lock(args) => lock(&client, &ctx, args, ignored),
        Cmd::Ping => ping(&client, &ctx),
        Cmd::Status { key, json } => status(&client, &ctx, &key, json),
        Cmd::Stats { json } => stats(&client, &ctx, json),
        Cmd::Evict { key } => evict(&client, &ctx, &key),
        Cmd::Which { .. } | Cmd::Watchdog { .. } => unreachable!("handled above"),
    })
}

/// How every connection is opened and introduced.
struct Ctx {
    /// Connection settings, `auth` included; `name` is sent by [`open`].
    options: Options,
    /// The label every connection sends.
    name: String,
    /// Whether `--name` gave it (then a daemon that cannot take it is an
    /// error, not a reason to go without).
    name_given: bool,
}

/// The protocol a daemon speaks, as [`open`] found out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// It took `name`: version 2.
    V2,
    /// It closed the connection on `name`: the original protocol only.
    V1,
}

/// Connects to `server`, sends the secret (if any) and names the
/// connection. A daemon that closes the connection on `name` speaks only
/// the original protocol (PROTOCOL.md rule V10); with `fallback`, and
/// when neither `--name` nor `--auth-file` asked for version 2, a second
/// connection is opened without the name and reported as
/// [`Protocol::V1`].
fn open(server: &str, ctx: &Ctx, fallback: bool) -> Result<(Connection, Protocol), Error> {
    let mut conn = Connection::connect(server, &ctx.options)?;
    match conn.name(&ctx.name) {
        Ok(()) => Ok((conn, Protocol::V2)),
        Err(e) if fallback && !ctx.name_given && ctx.options.auth.is_none() && closed(&e) => {
            Ok((Connection::connect(server, &ctx.options)?, Protocol::V1))
        }
        Err(e) => Err(e),
    }
}

/// Whether the daemon closed the connection (what the original does on a
/// command it does not know).
fn closed(e: &Error) -> bool {
    e.io_error().is_some_and(|e| {
        matches!(
            e.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        )
    })
}

/// The error's text, with what to do about the daemon's refusals.
fn describe(e: &Error) -> String {
    let hint = match e.kind() {
        ClientErrorKind::Rejected(ErrorReply::AuthRequired) => {
            " (the daemon requires a secret: give --auth-file FILE, or set DREADLOCK_AUTH_FILE)"
        }
        ClientErrorKind::Rejected(ErrorReply::AuthFailed) => {
            " (the daemon rejected the secret of --auth-file)"
        }
        ClientErrorKind::Rejected(ErrorReply::NotAllowed) => {
            " (a daemon without --auth-file allows evict only from its own host, over loopback)"
        }
        ClientErrorKind::Rejected(ErrorReply::LimitMismatch) => {
            " (the key is held with another --limit; every user of a key must give the same one)"
        }
        _ => "",
    };
    format!("{e}{hint}")
}

fn ping(client: &Client, ctx: &Ctx) -> u8 {
    let mut code = 0;
    for server in client.servers() {
        match open(server, ctx, true).and_then(|(mut c, protocol)| Ok((c.ping()?, protocol))) {
            Ok((rtt, protocol)) => {
                let note = match protocol {
                    Protocol::V2 => "",
                    Protocol::V1 => {
                        " (the original protocol only: no status, stats, evict, --limit, tokens)"
                    }
                };
                println!("{server} ok {:.3} ms{note}", rtt.as_secs_f64() * 1000.0);
            }
            Err(e) => {
                println!("{server} error: {}", describe(&e));
                code = EXIT_UNAVAILABLE;
            }
        }
    }
    code
}

fn status(client: &Client, ctx: &Ctx, key: &str, json: bool) -> u8 {
    let server = client.server_for(key);
    match open(server, ctx, false).and_then(|(mut c, _)| c.info(key)) {
        Ok(info) if json => println!("{}", report::status_json(key, server, &info)),
        Ok(info) => print!("{}", report::status_text(key, server, &info)),
        Err(e) => {
            say!("status {key}: {}", describe(&e));
            return EXIT_UNAVAILABLE;
        }
    }
    0
}

fn stats(client: &Client, ctx: &Ctx, json: bool) -> u8 {
    let results: Vec<(String, Result<client::Stats, String>)> = client
        .servers()
        .map(|server| {
            let result = open(server, ctx, false)
                .and_then(|(mut c, _)| c.stats())
                .map_err(|e| describe(&e));
            (server.to_owned(), result)
        })
        .collect();
    if json {
        println!("{}", report::stats_json(&results));
    } else {
        let blocks: Vec<String> = results
            .iter()
            .map(|(server, result)| report::stats_text(server, result))
            .collect();
        print!("{}", blocks.join("\n"));
    }
    if results.iter().all(|(_, r)| r.is_ok()) {
        0
    } else {
        EXIT_UNAVAILABLE
    }
}

fn evict(client: &Client, ctx: &Ctx, key: &str) -> u8 {
    let server = client.server_for(key);
    match open(server, ctx, false).and_then(|(mut c, _)| c.evict(key)) {
        Ok(n) => {
            let holders = if n == 1 { "holder" } else { "holders" };
            println!("evicted {n} {holders} of {key} on {server}");
            0
        }
        Err(e) => {
            say!("evict {key}: {}", describe(&e));
            EXIT_UNAVAILABLE
        }
    }
}

/// What the supervisor loop hears about.
enum Event {
    Signal(i32),
    /// The connection is gone (or misbehaved), and the lock with it.
    Lost(String),
}

fn lock(client: &Client, ctx: &Ctx, args: LockArgs, ignored: u64) -> u8 {
    let key = args.key.as_str();
    let server = client.server_for(key);
    let (mut conn, protocol) = match open(server, ctx, args.limit == 1) {
        Ok(c) => c,
        Err(e) if e.io_error().is_some() => {
            say!("cannot connect to {}", describe(&e));
            return EXIT_UNAVAILABLE;
        }
        Err(e) => {
            say!("lock {key}: {}", describe(&e));
            return EXIT_UNAVAILABLE;
        }
    };
    let timeout = if args.nonblock {
        Some(Duration::ZERO)
    } else {
        args.timeout
    };
    let wait = timeout.unwrap_or(WAIT_FOREVER);
    let granted = match protocol {
        Protocol::V2 => conn.acquire(key, wait, args.limit).map(Some),
        Protocol::V1 => {
            say!(
                "warning: {server} speaks only the original protocol (it closed the connection \
                 on `name`): taking {key} with `lock`, with no name and no fencing token \
                 (DREADLOCK_TOKEN is not set)"
            );
            conn.lock(key, wait).map(|()| None)
        }
    };
    let token = match granted {
        Ok(token) => token,
        Err(e) if e.is_timeout() => {
            if !args.quiet {
                say!(
                    "lock {key} on {server} not granted within {} ms",
                    timeout.unwrap_or_default().as_millis()
                );
            }
            return args.conflict_exit_code;
        }
        Err(e) => {
            say!("lock {key}: {}", describe(&e));
            return EXIT_UNAVAILABLE;
        }
    };
    run_holding(&mut conn, key, token, &args, ignored, |conn| {
        conn.unlock(key)
    })
}

/// Runs the command of `args` while `conn` holds the lock on `key` (granted
/// with `token`, if the daemon gave one), and gives the lock back with
/// `release` once nothing of the command is left (unless the connection,
/// and so the lock, was lost). Returns the exit code. Other ways of taking
/// a lock can share it: only `release` differs.
fn run_holding(
    conn: &mut Connection,
    key: &str,
    token: Option<u64>,
    args: &LockArgs,
    ignored: u64,
    release: impl FnOnce(&mut Connection) -> Result<(), Error>,
) -> u8 {
    let server = conn.server().to_owned();
    let server = server.as_str();
    // From here on the lock is held. Catch the signals that would end this
    // process (and release the lock under a running command) before the
    // command exists; one that arrives early is forwarded once it does.
    let (tx, rx) = mpsc::channel();
    let caught: Vec<i32> = signals::FORWARDED
        .iter()
        .filter(|&&s| !signals::is_ignored(ignored, s))
        .chain(&[Signal::CHILD, Signal::CONT])
        .map(|s| s.as_raw())
        .collect();
    let mut signals = match Signals::new(&caught) {
        Ok(s) => s,
        Err(e) => {
            say!("cannot install signal handlers: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let signal_tx = tx.clone();
    thread::spawn(move || {
        for sig in signals.forever() {
            if signal_tx.send(Event::Signal(sig)).is_err() {
                break;
            }
        }
    });
    let unlocking = Arc::new(AtomicBool::new(false));
    if let Err(e) = watch_connection(conn, tx.clone(), unlocking.clone()) {
        say!("cannot watch the connection to {server}: {e}");
        return EXIT_UNAVAILABLE;
    }

    // A signal or a loss that came while we got ready: the command has not
    // started, so do not start it.
    while let Ok(event) = rx.try_recv() {
        let code = match event {
            Event::Signal(sig) if sig == Signal::CHILD.as_raw() || sig == Signal::CONT.as_raw() => {
                continue;
            }
            Event::Signal(sig) => {
                say!("got signal {sig} before the command started; not starting it");
                128u8.wrapping_add(sig as u8)
            }
            Event::Lost(why) => {
                say!("connection to {server} lost ({why}) before the command started");
                return EXIT_LOST;
            }
        };
        unlocking.store(true, Ordering::SeqCst);
        let _ = release(conn);
        return code;
    }

    let (mut command, name) = match &args.shell_command {
        Some(line) => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(line);
            (c, OsString::from("sh"))
        }
        None => {
            let mut c = Command::new(&args.argv[0]);
            c.args(&args.argv[1..]);
            (c, args.argv[0].clone())
        }
    };
    command
        .env("DREADLOCK_KEY", key)
        .env("DREADLOCK_SERVER", server);
    // Never an inherited one (a nested dreadlock-cli against an original
    // daemon): a stale token is worse than none.
    match token {
        Some(t) => command.env("DREADLOCK_TOKEN", t.to_string()),
        None => command.env_remove("DREADLOCK_TOKEN"),
    };
    let mut tree = match Tree::spawn(&mut command) {
        Ok(tree) => tree,
        Err(e) => {
            let code = match e {
                SpawnError::Command(e) => {
                    say!("cannot run {}: {e}", name.to_string_lossy());
                    if e.kind() == ErrorKind::NotFound {
                        EXIT_NOT_FOUND
                    } else {
                        EXIT_CANNOT_RUN
                    }
                }
                SpawnError::Watchdog(e) => {
                    say!("cannot start the watchdog (a copy of dreadlock-cli): {e}");
                    EXIT_CANNOT_RUN
                }
            };
            unlocking.store(true, Ordering::SeqCst);
            let _ = release(conn);
            return code;
        }
    };

    let grace = args.kill_grace;
    let mut lost = false;
    let mut notes = Notes::default();
    let mut settled_at: Option<Instant> = None;
    loop {
        tree.reap();
        tree.follow_a_stop();
        if tree.leader_status().is_some() && !tree.is_stopping() && !tree.is_gone() {
            let due = *settled_at.get_or_insert_with(|| Instant::now() + SETTLE);
            if Instant::now() >= due {
                tree.begin_stopping(grace);
                let text = format!(
                    "the command left processes running; stopping them before releasing the \
                     lock on {key} (SIGTERM now, SIGKILL in {} ms)",
                    grace.as_millis()
                );
                notes.say(&tree, text);
            }
        }
        tree.advance_stopping();
        if tree.is_gone() {
            break;
        }
        let settling = settled_at.filter(|_| !tree.is_stopping());
        let deadline = match (tree.next_deadline(), settling) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let wait = deadline.map_or(POLL, |t| {
            t.saturating_duration_since(Instant::now()).min(POLL)
        });
        match rx.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(Event::Signal(sig)) if sig == Signal::CHILD.as_raw() => {}
            Ok(Event::Signal(sig)) if sig == Signal::CONT.as_raw() => tree.resume(),
            Ok(Event::Signal(sig)) => {
                if let Some(sig) = Signal::from_named_raw(sig) {
                    tree.signal(sig);
                }
            }
            Ok(Event::Lost(why)) => {
                if !lost {
                    tree.begin_stopping(grace);
                    lost = true;
                    let text = format!(
                        "connection to {server} lost ({why}), and the lock on {key} with it: \
                         stopping the command (SIGTERM now, SIGKILL in {} ms)",
                        grace.as_millis()
                    );
                    notes.say(&tree, text);
                }
            }
            // `tx` is alive in this scope, so the channel never disconnects.
            Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL),
        }
    }
    tree.finish();
    notes.flush();

    unlocking.store(true, Ordering::SeqCst);
    if lost {
        return EXIT_LOST;
    }
    // A loss reported before the exit was seen may have happened while the
    // command still ran: report it rather than claim the lock was held.
    while let Ok(event) = rx.try_recv() {
        if let Event::Lost(why) = event {
            say!(
                "connection to {server} lost ({why}), and the lock on {key} with it, as the \
                 command ended"
            );
            return EXIT_LOST;
        }
    }
    if let Err(e) = release(conn) {
        say!(
            "warning: unlock {key} on {server} after the command ended: {}",
            e.kind()
        );
    }
    tree.leader_status().map_or(1, exit_code)
}

/// Messages from the supervisor loop. While the command's group has the
/// terminal and `stty tostop` is set, writing to it would stop this process
/// (SIGTTOU) and leave the command unsupervised: they wait until the
/// terminal is back.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    fn say(&mut self, tree: &Tree, text: String) {
        if tree.terminal_is_lent() {
            self.0.push(text);
        } else {
            say!("{text}");
        }
    }

    fn flush(&mut self) {
        for text in self.0.drain(..) {
            say!("{text}");
        }
    }
}

/// Starts a thread that reports when the lock's connection goes away.
///
/// It `peek`s, so it consumes nothing: the daemon sends nothing unasked, so
/// bytes arriving while `unlocking` is false break the protocol (and are
/// reported as a loss); once it is true they are the reply to our `unlock`,
/// and the thread leaves them for the main thread to read.
fn watch_connection(
    conn: &Connection,
    tx: Sender<Event>,
    unlocking: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let stream = conn.tcp_stream().try_clone()?;
    stream.set_read_timeout(None)?;
    thread::spawn(move || {
        let mut byte = [0u8; 1];
        let why = loop {
            match stream.peek(&mut byte) {
                Ok(0) => break "the server closed the connection".to_owned(),
                Ok(_) if unlocking.load(Ordering::SeqCst) => return,
                Ok(_) => break "the server sent bytes nobody asked for".to_owned(),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
                    ) => {}
                Err(e) => break e.to_string(),
            }
        };
        let _ = tx.send(Event::Lost(why));
    });
    Ok(())
}

/// The command's exit code, or 128+N when signal N killed it (as shells do).
fn exit_code(status: WaitStatus) -> u8 {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => 1,
    }
}
