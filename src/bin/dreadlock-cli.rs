//! `dreadlock-cli`: take a dreadlock lock from the shell and run a command
//! while holding it (like `flock`, across machines).
//!
//! While the command runs, a watcher thread blocks on the lock's socket: the
//! daemon sends nothing unasked, so anything that wakes it (EOF, an error, a
//! keepalive failure) means the connection, and with it the lock, is gone.
//! The command is then stopped (SIGTERM, SIGKILL after a grace period), so
//! that it does not go on unprotected. The main thread owns the child and is
//! the only one that signals or reaps it, so a signal never reaches a
//! recycled pid.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser as _;
use dreadlock::client::{self, Client, Connection, Options, WAIT_FOREVER};
use rustix::process::{Pid, Signal, kill_process};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

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

/// Signals passed on to the command. Each would otherwise end this process
/// and so release the lock while the command still runs.
const FORWARDED: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

/// How often the supervisor looks at the child when nothing happens (a
/// SIGCHLD normally wakes it at once; this is only a safety net).
const POLL: Duration = Duration::from_millis(100);

/// dreadlock-cli: take a dreadlock lock and run a command while holding it.
///
/// The lock lives on a dreadlock daemon, so it excludes commands on every
/// machine that talks to the same daemon. It is released when the command
/// ends, and also if this process dies.
#[derive(clap::Parser, Debug)]
#[command(version, about, long_about, after_help = AFTER_HELP)]
struct Cli {
    /// Daemon to use, as HOST:PORT. Repeat it for several daemons: each key
    /// then lives on one of them, chosen by rendezvous hashing (every client
    /// must list the same servers, spelled the same way). Default: the
    /// comma-separated list in $DREADLOCK_SERVERS, else 127.0.0.1:6001.
    #[arg(short, long = "server", value_name = "HOST:PORT", global = true)]
    server: Vec<String>,

    /// Give up connecting to a daemon after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout: u64,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Take the lock on KEY, run COMMAND while holding it, then release it.
    ///
    /// Exits with COMMAND's exit code (128+N if a signal N killed it); see
    /// the exit codes below for what else can happen. COMMAND gets
    /// DREADLOCK_KEY and DREADLOCK_SERVER in its environment. SIGINT,
    /// SIGTERM, SIGHUP and SIGQUIT are forwarded to it. If the connection to
    /// the daemon is lost while it runs, the lock is gone too: COMMAND gets
    /// SIGTERM at once and SIGKILL after --kill-grace.
    #[command(after_help = LOCK_AFTER_HELP)]
    Lock(LockArgs),

    /// Check that every daemon answers; prints the round trip of each.
    Ping,

    /// Print the daemon that KEY lives on (no network needed).
    Which {
        /// The lock name: ASCII letters and digits, case-sensitive.
        #[arg(value_parser = parse_key)]
        key: String,
    },
}

#[derive(clap::Args, Debug)]
struct LockArgs {
    /// The lock name: ASCII letters and digits, case-sensitive.
    #[arg(value_parser = parse_key)]
    key: String,

    /// Wait at most this many milliseconds for the lock; 0 tries once.
    /// Default: wait until it is granted.
    #[arg(short, long, value_name = "MS")]
    timeout: Option<u64>,

    /// Exit code when the lock is not granted within --timeout.
    #[arg(short = 'E', long, value_name = "CODE", default_value_t = EXIT_CONFLICT)]
    conflict_exit_code: u8,

    /// After the connection is lost: milliseconds between the SIGTERM and
    /// the SIGKILL sent to COMMAND.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    kill_grace: u64,

    /// Say nothing when the lock is not granted in time (the exit code
    /// still tells).
    #[arg(short, long)]
    quiet: bool,

    /// The command to run, and its arguments (after `--` if any of them
    /// starts with `-`).
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// The exit code table, shared by both help texts (`concat!` needs a
/// literal, hence a macro).
macro_rules! exit_codes {
    () => {
        "\
Exit codes:
  N      COMMAND exited with N
  128+N  COMMAND was killed by signal N
  2      usage error (bad option, invalid key)
  69     could not reach the daemon, or it answered with an error
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
  dreadlock-cli --server locks.example.com:6001 lock --timeout 0 -E 0 nightly -- ./nightly.sh
  DREADLOCK_SERVERS=10.0.0.1:6001,10.0.0.2:6001 dreadlock-cli lock cache -- ./rebuild
  dreadlock-cli ping
  dreadlock-cli --server a:6001 --server b:6001 which backup

",
    exit_codes!(),
    "

ping exits 0 when every daemon answers, 69 otherwise."
);

const LOCK_AFTER_HELP: &str = concat!(
    "\
Examples:
  dreadlock-cli lock backup -- sh -c 'pg_dump db > db.sql'
  dreadlock-cli lock --timeout 0 --quiet nightly -- ./nightly.sh   # skip if running

",
    exit_codes!()
);

fn parse_key(key: &str) -> Result<String, client::KeyError> {
    client::validate_key(key).map(|()| key.to_owned())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let options = Options {
        connect_timeout: Duration::from_millis(cli.connect_timeout),
        ..Options::default()
    };
    let client = match Client::with_options(servers, options.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dreadlock-cli: {e}");
            return ExitCode::from(2);
        }
    };
    ExitCode::from(match cli.command {
        Cmd::Lock(args) => lock(&client, &options, args),
        Cmd::Ping => ping(&client, &options),
        Cmd::Which { key } => {
            println!("{}", client.server_for(&key));
            0
        }
    })
}

fn ping(client: &Client, options: &Options) -> u8 {
    let mut code = 0;
    for server in client.servers() {
        match Connection::connect(server, options).and_then(|mut c| c.ping()) {
            Ok(rtt) => println!("{server} ok {:.3} ms", rtt.as_secs_f64() * 1000.0),
            Err(e) => {
                println!("{server} error: {e}");
                code = EXIT_UNAVAILABLE;
            }
        }
    }
    code
}

/// What the supervisor loop hears about.
enum Event {
    Signal(i32),
    /// The connection is gone (or misbehaved), and the lock with it.
    Lost(String),
}

fn lock(client: &Client, options: &Options, args: LockArgs) -> u8 {
    let key = args.key.as_str();
    let server = client.server_for(key);
    let mut conn = match Connection::connect(server, options) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dreadlock-cli: cannot connect to {server}: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let timeout = args.timeout.map_or(WAIT_FOREVER, Duration::from_millis);
    match conn.lock(key, timeout) {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            if !args.quiet {
                eprintln!(
                    "dreadlock-cli: lock {key} on {server} not granted within {} ms",
                    args.timeout.unwrap_or_default()
                );
            }
            return args.conflict_exit_code;
        }
        Err(e) => {
            eprintln!("dreadlock-cli: lock {key} on {server}: {e}");
            return EXIT_UNAVAILABLE;
        }
    }

    // From here on the lock is held. Catch the signals that would end this
    // process (and release the lock under a running command) before the
    // command exists; one that arrives early is forwarded once it does.
    let (tx, rx) = mpsc::channel();
    let mut signals = match Signals::new(FORWARDED.iter().chain(&[SIGCHLD])) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dreadlock-cli: cannot install signal handlers: {e}");
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
    if let Err(e) = watch_connection(&conn, tx.clone(), unlocking.clone()) {
        eprintln!("dreadlock-cli: cannot watch the connection to {server}: {e}");
        return EXIT_UNAVAILABLE;
    }

    let mut child = match Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("DREADLOCK_KEY", key)
        .env("DREADLOCK_SERVER", server)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "dreadlock-cli: cannot run {}: {e}",
                args.command[0].to_string_lossy()
            );
            unlocking.store(true, Ordering::SeqCst);
            let _ = conn.unlock(key);
            return if e.kind() == ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            };
        }
    };
    let pid = Pid::from_child(&child);
    let grace = Duration::from_millis(args.kill_grace);

    let mut lost = false;
    let mut kill_at: Option<Instant> = None;
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                // Cannot happen for a child we own and have not reaped.
                eprintln!("dreadlock-cli: cannot wait for the command: {e}");
                let _ = child.kill();
                return 1;
            }
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            // The child is not reaped yet, so `pid` is still ours.
            let _ = child.kill();
            kill_at = None;
        }
        let wait = kill_at.map_or(POLL, |t| {
            t.saturating_duration_since(Instant::now()).min(POLL)
        });
        match rx.recv_timeout(wait) {
            Ok(Event::Signal(SIGCHLD)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Event::Signal(sig)) => {
                if let Some(sig) = Signal::from_named_raw(sig) {
                    let _ = kill_process(pid, sig);
                }
            }
            Ok(Event::Lost(why)) => {
                if !lost {
                    eprintln!(
                        "dreadlock-cli: connection to {server} lost ({why}), and the lock on \
                         {key} with it: stopping the command (SIGTERM now, SIGKILL in {} ms)",
                        args.kill_grace
                    );
                    let _ = kill_process(pid, Signal::TERM);
                    kill_at = Some(Instant::now() + grace);
                    lost = true;
                }
            }
            // `tx` is alive in this scope, so the channel never disconnects.
            Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL),
        }
    };

    unlocking.store(true, Ordering::SeqCst);
    if lost {
        return EXIT_LOST;
    }
    // A loss reported before the exit was seen may have happened while the
    // command still ran: report it rather than claim the lock was held.
    while let Ok(event) = rx.try_recv() {
        if let Event::Lost(why) = event {
            eprintln!(
                "dreadlock-cli: connection to {server} lost ({why}), and the lock on {key} \
                 with it, as the command ended"
            );
            return EXIT_LOST;
        }
    }
    if let Err(e) = conn.unlock(key) {
        eprintln!("dreadlock-cli: warning: unlock {key} on {server} after the command ended: {e}");
    }
    exit_code(status)
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
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => 1,
    }
}
