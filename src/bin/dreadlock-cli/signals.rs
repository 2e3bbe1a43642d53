//! Which signals `dreadlock-cli lock` catches, and which it must leave alone.
//!
//! The rule: the command never runs on once its lock is gone. A signal whose
//! default action would end this process (and so close the connection and
//! release the lock) is therefore caught and forwarded to the command's
//! process group; the command decides whether to end, and the lock is held
//! until it has. Two exceptions:
//!
//! * a signal that was *ignored* when this process started (`nohup`, `trap ''
//!   HUP`, the SIGINT and SIGQUIT a non-interactive shell ignores for `&`
//!   jobs) stays ignored here, is not forwarded, and the command inherits it
//!   ignored;
//! * the fault signals (SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV, SIGSYS),
//!   SIGABRT (a panic aborts through it), the real-time signals and SIGKILL
//!   are not caught: they end this process, and the watchdog in the
//!   command's group then kills the group at once (see `watchdog.rs`).
//!
//! SIGPIPE is ignored by the Rust runtime before `main` runs, so whether it
//! was ignored at start cannot be known; it is caught and forwarded like the
//! others, and the command starts with it at its default (as `std` always
//! arranges for children).

use rustix::process::Signal;

/// Caught (unless ignored at start) and forwarded to the command's group:
/// every signal whose default action ends the process, but those the
/// module docs list as not caught.
pub const FORWARDED: [Signal; 15] = [
    Signal::HUP,
    Signal::INT,
    Signal::QUIT,
    Signal::USR1,
    Signal::USR2,
    Signal::PIPE,
    Signal::ALARM,
    Signal::TERM,
    Signal::STKFLT,
    Signal::XCPU,
    Signal::XFSZ,
    Signal::VTALARM,
    Signal::PROF,
    Signal::IO,
    Signal::POWER,
];

/// The set of signals ignored (`SIG_IGN`) in this process, as a bit mask
/// (bit N-1 for signal N). Call it before installing any handler: it reads
/// the dispositions the parent gave us, plus SIGPIPE (see the module docs).
#[cfg(target_os = "linux")]
pub fn ignored_at_start() -> u64 {
    // `SigIgn:` in /proc/self/status is the kernel's own view; there is no
    // safe libc-free way to call sigaction(2) just to read a disposition.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// Elsewhere nothing is known to be ignored.
#[cfg(not(target_os = "linux"))]
pub fn ignored_at_start() -> u64 {
    0
}

/// Whether `signal` is in the mask [`ignored_at_start`] returned. SIGPIPE
/// never counts: the runtime, not our parent, ignored it.
pub fn is_ignored(mask: u64, signal: Signal) -> bool {
    let n = signal.as_raw();
    signal != Signal::PIPE && (1..=64).contains(&n) && mask & (1u64 << (n - 1)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_follow_signal_numbers() {
        let hup_and_int = (1 << (Signal::HUP.as_raw() - 1)) | (1 << (Signal::INT.as_raw() - 1));
        assert!(is_ignored(hup_and_int, Signal::HUP));
        assert!(is_ignored(hup_and_int, Signal::INT));
        assert!(!is_ignored(hup_and_int, Signal::TERM));
        assert!(!is_ignored(u64::MAX, Signal::PIPE));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_runtime_ignores_sigpipe() {
        let pipe = 1u64 << (Signal::PIPE.as_raw() - 1);
        assert_ne!(ignored_at_start() & pipe, 0);
    }
}
