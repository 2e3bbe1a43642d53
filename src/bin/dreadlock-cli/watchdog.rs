//! The watchdog: a copy of this binary that leads the command's process
//! group and kills it if `dreadlock-cli` dies without saying goodbye.
//!
//! `dreadlock-cli lock` starts it (hidden subcommand `__watchdog`) before the
//! command, as the leader of a new process group, and starts the command in
//! that group. Its stdin is a pipe whose only writer is `dreadlock-cli`, so
//! when `dreadlock-cli` dies, however it dies (SIGKILL, a fault, the OOM
//! killer), the pipe reaches end-of-file, the lock is gone with the
//! connection, and the watchdog sends SIGKILL to the whole group, itself
//! included. This covers every process of the group, where
//! `PR_SET_PDEATHSIG` would only cover the direct child (it is not
//! inherited across fork, and a set-uid exec clears it).
//!
//! Leading the group also pins its id: a process group id is the leader's
//! pid, and the kernel does not reuse a pid while its process (or its
//! zombie) exists, so `dreadlock-cli` can signal the group for as long as
//! the watchdog is not reaped without ever reaching a stranger.
//!
//! Being in the command's group, the watchdog is in the terminal's
//! foreground group while the command is, so it can hand the terminal back
//! to `dreadlock-cli`'s group without SIGTTOU (which `dreadlock-cli` could
//! only avoid by ignoring or blocking SIGTTOU, which needs `unsafe`).
//!
//! Once its handlers are in place it writes [`READY`] to its stdout (a
//! pipe to `dreadlock-cli`), which waits for it before starting the
//! command: a signal to the group before that would kill the watchdog.
//!
//! ```text
//! stdin byte   meaning
//! b'R'         hand the terminal back to --restore-pgrp (if our group has it)
//! b'Q'         exit 0
//! EOF, error   dreadlock-cli is gone: SIGKILL to the group
//! ```

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use rustix::process::{Pid, Signal, getpgrp, getpid, kill_current_process_group};
use rustix::termios::{tcgetpgrp, tcsetpgrp};

use crate::signals::FORWARDED;

/// Hand the terminal back to the group given with `--restore-pgrp`.
pub const RESTORE: u8 = b'R';
/// Exit normally.
pub const QUIT: u8 = b'Q';
/// Written to stdout once the watchdog survives the group's signals.
pub const READY: u8 = b'k';

/// The name of the hidden subcommand.
pub const SUBCOMMAND: &str = "__watchdog";

/// Signals sent to the whole group that must not end or stop the
/// watchdog: everything forwarded, plus the terminal's job-control stops.
const SURVIVED: [Signal; 3] = [Signal::TSTP, Signal::TTIN, Signal::TTOU];

pub fn run(restore_pgrp: Option<i32>) -> u8 {
    // dreadlock-cli starts it as the leader of a new group; anywhere else
    // (typed at a prompt, say) "kill my group" would hit innocent processes.
    if getpgrp() != getpid() {
        let _ = writeln!(
            std::io::stderr(),
            "dreadlock-cli: {SUBCOMMAND} is internal to `dreadlock-cli lock`"
        );
        return 2;
    }
    // A handler (that only sets a flag) makes these signals harmless here;
    // the command, after exec, gets its own default dispositions back.
    let caught = Arc::new(AtomicBool::new(false));
    for signal in FORWARDED.iter().chain(&SURVIVED) {
        let _ = signal_hook::flag::register(signal.as_raw(), caught.clone());
    }
    let terminal = restore_pgrp.and_then(|pgrp| {
        let tty = File::options()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()?;
        Some((tty, Pid::from_raw(pgrp)?))
    });

    let mut stdout = std::io::stdout();
    if stdout
        .write_all(&[READY])
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return 1;
    }
    let mut stdin = std::io::stdin().lock();
    let mut byte = [0u8; 1];
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == QUIT => return 0,
            Ok(_) if byte[0] == RESTORE => {
                if let Some((tty, pgrp)) = &terminal {
                    // Only if our group still has it: the shell may have
                    // taken it back already (the job was stopped).
                    if tcgetpgrp(tty).is_ok_and(|fg| fg == getpgrp()) {
                        let _ = tcsetpgrp(tty, *pgrp);
                    }
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "dreadlock-cli: the lock holder died, and the lock with it: killing the command"
    );
    let _ = kill_current_process_group(Signal::KILL);
    // Not reached: SIGKILL to our own group ends us too.
    1
}
