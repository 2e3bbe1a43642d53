//! The command's process tree: start it, signal all of it, reap it, and
//! share the terminal with it.
//!
//! # How the whole tree is reached
//!
//! * **A process group.** The watchdog (see `watchdog.rs`) leads a new
//!   process group and the command starts in it, so everything the command
//!   forks is in that group unless it leaves with `setsid`/`setpgid`. One
//!   `kill(-pgid, sig)` reaches all of it at once, with no window in which a
//!   freshly forked child is missed. The watchdog is not reaped until the
//!   end, so the group id cannot be reused meanwhile.
//! * **Child subreaper (Linux).** This process marks itself as a subreaper,
//!   so a descendant whose parent dies is re-parented to us instead of to
//!   init. Every descendant is then either our child or below one, including
//!   those that left the group: stopping the tree signals the group plus each
//!   of our children outside it (its own group, if it leads one). Our
//!   children cannot be confused with recycled pids, since only this module
//!   reaps them. When a parent dies its orphans become ours and are signalled
//!   on the next round, so a whole chain goes down in as many rounds as it
//!   is deep. The tree is gone exactly when we have no child left but the
//!   watchdog.
//!
//! What stays out of reach: a descendant that leaves the group *and* whose
//! ancestors all stay alive is only signalled once an ancestor dies; and if
//! this process is SIGKILLed, the watchdog kills the group, but children
//! adopted from outside the group go to init with nobody to stop them.
//!
//! # The terminal
//!
//! When this process is in the foreground of its controlling terminal, the
//! command's group is made the foreground group (`tcsetpgrp`) before the
//! command starts, so it can read the terminal (no SIGTTIN) and the
//! terminal's signals (Ctrl-C, Ctrl-\, Ctrl-Z, window changes) reach it
//! once, directly, and not us. The watchdog hands the terminal back at the
//! end. When the command stops (Ctrl-Z, or SIGTTIN in the background), this
//! process stops its own group with SIGTSTP, so the shell sees the job
//! stopped; on SIGCONT (`fg`, `bg`) it gives the terminal back to the
//! command if it has it itself, and continues the command's group.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{
    Pid, Signal, WaitOptions, WaitStatus, getpgid, getpgrp, kill_current_process_group,
    kill_process, kill_process_group, waitpid,
};
use rustix::termios::{LocalModes, tcgetattr, tcgetpgrp, tcsetpgrp};

use crate::watchdog;

/// How long the watchdog gets to exit after being told to.
const WATCHDOG_EXIT: Duration = Duration::from_secs(2);

/// Why the command could not be started.
pub enum SpawnError {
    /// The watchdog (a copy of this binary) could not be started.
    Watchdog(io::Error),
    /// The command itself could not be started.
    Command(io::Error),
}

/// The stopping of the tree after the lock was lost or the command left
/// processes behind: SIGTERM (and SIGCONT, so that stopped processes see
/// it), then SIGKILL at `kill_at`.
struct Stopping {
    kill_at: Instant,
    killed: bool,
    /// Whether the group got the current signal.
    group_sent: bool,
    /// Children outside the group that got the current signal.
    signalled: Vec<Pid>,
}

struct Terminal {
    tty: File,
    /// Whether the command's group was made the foreground group.
    handed_over: bool,
}

/// The watchdog process (see `watchdog.rs`).
struct Watchdog {
    /// INVARIANT: reaped only by `Tree::reap` or `Watchdog::finish`; while
    /// not reaped, this pid, which is the group's id, names our group and
    /// nothing else.
    pid: Pid,
    reaped: bool,
    /// Dropping it, however this process ends, makes the watchdog kill the
    /// group; `finish` says goodbye first.
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    fn send(&mut self, byte: u8) {
        if let Some(pipe) = &mut self.stdin {
            let _ = pipe.write_all(&[byte]);
        }
    }

    /// Lets the watchdog go and reaps it.
    fn finish(&mut self) {
        self.send(watchdog::QUIT);
        self.stdin = None;
        let end = Instant::now() + WATCHDOG_EXIT;
        while !self.reaped {
            match waitpid(Some(self.pid), WaitOptions::NOHANG) {
                Ok(Some((_, status))) if status.stopped() => {}
                Ok(Some(_)) | Err(_) => self.reaped = true,
                Ok(None) if Instant::now() < end => thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    // Our unreaped child: the pid is still the watchdog's.
                    let _ = kill_process(self.pid, Signal::KILL);
                    let _ = waitpid(Some(self.pid), WaitOptions::empty());
                    self.reaped = true;
                }
            }
        }
    }
}

pub struct Tree {
    /// The group's id: the watchdog's pid.
    pgid: Pid,
    watchdog: Watchdog,
    /// The command's first process (our child, in the group).
    leader: Pid,
    leader_status: Option<WaitStatus>,
    leader_stopped: bool,
    /// Our controlling terminal, if we have one.
    terminal: Option<Terminal>,
    /// Our own process group (the shell's job).
    own_pgrp: Pid,
    stopping: Option<Stopping>,
}

impl Tree {
    /// Starts the watchdog, then `command` in the watchdog's group, in the
    /// terminal's foreground if we are.
    pub fn spawn(command: &mut Command) -> Result<Tree, SpawnError> {
        #[cfg(target_os = "linux")]
        let _ = rustix::process::set_child_subreaper(Some(rustix::process::getpid()));
        let own_pgrp = getpgrp();
        let mut terminal = File::options()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .ok()
            .map(|tty| Terminal {
                tty,
                handed_over: false,
            });
        let mut launch = Command::new(own_exe());
        launch.arg0("dreadlock-cli");
        launch.arg(watchdog::SUBCOMMAND);
        if terminal.is_some() {
            // Even from the background: after `fg` we may lend it too.
            launch.args(["--restore-pgrp", &own_pgrp.as_raw_nonzero().to_string()]);
        }
        let mut child = launch
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(SpawnError::Watchdog)?;
        let pgid = Pid::from_child(&child);
        let mut watchdog = Watchdog {
            pid: pgid,
            reaped: false,
            stdin: child.stdin.take(),
        };
        // Until its handlers are in place, a signal to the group would kill
        // it: the command starts only once it says it is ready.
        let mut ready = [0u8; 1];
        let answer = child
            .stdout
            .take()
            .map(|mut out| out.read_exact(&mut ready));
        if !matches!(answer, Some(Ok(()))) || ready[0] != watchdog::READY {
            watchdog.finish();
            let why = io::Error::other("it exited before it was ready");
            return Err(SpawnError::Watchdog(why));
        }
        take_terminal(&mut terminal, own_pgrp, pgid);
        match command.process_group(pgid.as_raw_nonzero().get()).spawn() {
            Ok(leader) => Ok(Tree {
                pgid,
                watchdog,
                leader: Pid::from_child(&leader),
                leader_status: None,
                leader_stopped: false,
                terminal,
                own_pgrp,
                stopping: None,
            }),
            Err(e) => {
                give_back_terminal(&mut terminal, &mut watchdog);
                watchdog.finish();
                Err(SpawnError::Command(e))
            }
        }
    }

    /// Collects every child that changed state, without blocking.
    pub fn reap(&mut self) {
        loop {
            let (pid, status) =
                match rustix::process::wait(WaitOptions::NOHANG | WaitOptions::UNTRACED) {
                    Ok(Some(changed)) => changed,
                    Err(rustix::io::Errno::INTR) => continue,
                    // No child changed state, or none is left.
                    Ok(None) | Err(_) => return,
                };
            if pid == self.leader {
                if status.stopped() {
                    self.leader_stopped = true;
                } else {
                    self.leader_status = Some(status);
                }
            } else if pid == self.watchdog.pid && !status.stopped() {
                self.watchdog.reaped = true;
            }
            // Anything else is an orphan we adopted: now reaped.
        }
    }

    /// The command's exit status once its first process has ended.
    pub fn leader_status(&self) -> Option<WaitStatus> {
        self.leader_status
    }

    /// Whether nothing of the command is left: its first process ended and
    /// we have no other child (but the watchdog).
    pub fn is_gone(&self) -> bool {
        self.leader_status.is_some() && self.others().is_empty()
    }

    /// Whether `pgid` surely still names the command's group.
    fn group_is_ours(&self) -> bool {
        !self.watchdog.reaped
            || (self.leader_status.is_none() && getpgid(Some(self.leader)) == Ok(self.pgid))
    }

    /// Our children but the watchdog: the command's first process, and the
    /// descendants re-parented to us.
    fn others(&self) -> Vec<Pid> {
        let mut children = children();
        children.retain(|&pid| pid != self.watchdog.pid);
        children
    }

    /// Sends `signal` to the whole tree: the group at once, then each of our
    /// children that is outside it.
    pub fn signal(&mut self, signal: Signal) {
        if self.group_is_ours() {
            let _ = kill_process_group(self.pgid, signal);
        }
        for pid in self.others() {
            signal_outside_group(self.pgid, pid, signal);
        }
    }

    /// Starts stopping the tree: SIGTERM now, SIGKILL after `grace`.
    pub fn begin_stopping(&mut self, grace: Duration) {
        if self.stopping.is_some() {
            return;
        }
        // The command is going: give the keyboard back to us, while the
        // watchdog is still alive to do it.
        give_back_terminal(&mut self.terminal, &mut self.watchdog);
        self.stopping = Some(Stopping {
            kill_at: Instant::now() + grace,
            killed: false,
            group_sent: false,
            signalled: Vec::new(),
        });
        self.advance_stopping();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// One round of stopping: the SIGKILL when it is due, and the current
    /// signal to whatever has not had it yet (orphans adopted since).
    pub fn advance_stopping(&mut self) {
        if self.stopping.is_none() {
            return;
        }
        let others = self.others();
        let group_is_ours = self.group_is_ours();
        let Some(stop) = &mut self.stopping else {
            return;
        };
        if !stop.killed && Instant::now() >= stop.kill_at {
            stop.killed = true;
            stop.group_sent = false;
            stop.signalled.clear();
        }
        let signal = if stop.killed {
            Signal::KILL
        } else {
            Signal::TERM
        };
        if !stop.group_sent {
            stop.group_sent = true;
            if group_is_ours {
                let _ = kill_process_group(self.pgid, signal);
                let _ = kill_process_group(self.pgid, Signal::CONT);
            }
        }
        for pid in others {
            if !stop.signalled.contains(&pid) {
                stop.signalled.push(pid);
                signal_outside_group(self.pgid, pid, signal);
                signal_outside_group(self.pgid, pid, Signal::CONT);
            }
        }
    }

    /// When the next round of stopping is due, if one is.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.stopping
            .as_ref()
            .filter(|s| !s.killed)
            .map(|s| s.kill_at)
    }

    /// Job control: when the command was stopped (Ctrl-Z, SIGTTIN), stop
    /// our own group the same way, so that the shell sees its job stopped
    /// and takes the terminal back. Only with a controlling terminal: a
    /// stopped job without one (cron) would wait forever for a SIGCONT.
    pub fn follow_a_stop(&mut self) {
        if !std::mem::take(&mut self.leader_stopped) || self.stopping.is_some() {
            return;
        }
        if self.terminal.is_some() {
            // SIGTSTP, not SIGSTOP: the kernel discards it for an orphaned
            // group, which nobody could continue.
            let _ = kill_current_process_group(Signal::TSTP);
        }
    }

    /// We were continued (SIGCONT): if our group has the terminal (`fg`),
    /// hand it to the command's group again; continue the command.
    pub fn resume(&mut self) {
        if self.stopping.is_none() {
            take_terminal(&mut self.terminal, self.own_pgrp, self.pgid);
        }
        self.signal(Signal::CONT);
    }

    /// Whether writing to the terminal now could stop this process with
    /// SIGTTOU: our group is not in its foreground and `stty tostop` is set.
    pub fn terminal_is_lent(&self) -> bool {
        self.terminal.as_ref().is_some_and(|t| {
            !tcgetpgrp(&t.tty).is_ok_and(|fg| fg == self.own_pgrp)
                && tcgetattr(&t.tty).is_ok_and(|a| a.local_modes.contains(LocalModes::TOSTOP))
        })
    }

    /// Hands the terminal back, lets the watchdog go and reaps it. After
    /// this the group id is no longer pinned: nothing may signal it.
    pub fn finish(&mut self) {
        give_back_terminal(&mut self.terminal, &mut self.watchdog);
        self.watchdog.finish();
    }
}

/// Makes `pgid` the terminal's foreground group; only called while our
/// group is in the foreground (so no SIGTTOU).
/// Makes `pgid` the terminal's foreground group if `own_pgrp` (ours) has
/// it. From the background, tcsetpgrp would stop us with SIGTTOU, so the
/// check comes right before it: the window left is one system call wide
/// (another process of our group taking the terminal in between, as
/// parallel runs at one terminal could).
fn take_terminal(terminal: &mut Option<Terminal>, own_pgrp: Pid, pgid: Pid) {
    if let Some(t) = terminal {
        if tcgetpgrp(&t.tty).is_ok_and(|fg| fg == own_pgrp) {
            t.handed_over = tcsetpgrp(&t.tty, pgid).is_ok();
        }
    }
}

/// Asks the watchdog, which is in the foreground group, to hand the
/// terminal back to our group.
fn give_back_terminal(terminal: &mut Option<Terminal>, watchdog: &mut Watchdog) {
    if let Some(t) = terminal {
        if std::mem::take(&mut t.handed_over) {
            watchdog.send(watchdog::RESTORE);
        }
    }
}

/// Signals `pid`, one of our unreaped children, unless it is in the group
/// `pgid` (which got the signal as a whole); if it leads a group of its
/// own, the whole of that group (pinned by `pid` itself).
fn signal_outside_group(pgid: Pid, pid: Pid, signal: Signal) {
    match getpgid(Some(pid)) {
        Ok(group) if group == pgid => {}
        Ok(group) if group == pid => {
            let _ = kill_process_group(pid, signal);
        }
        _ => {
            let _ = kill_process(pid, signal);
        }
    }
}

/// The path that starts this same binary again.
fn own_exe() -> std::path::PathBuf {
    // Still this binary even if the file was replaced or deleted since.
    #[cfg(target_os = "linux")]
    return "/proc/self/exe".into();
    #[cfg(not(target_os = "linux"))]
    return std::env::current_exe().unwrap_or_else(|_| "dreadlock-cli".into());
}

/// Our children (alive, or dead and not yet reaped).
#[cfg(target_os = "linux")]
fn children() -> Vec<Pid> {
    children_from_task_files().unwrap_or_else(children_from_proc_scan)
}

/// Elsewhere only the command's first process is known.
#[cfg(not(target_os = "linux"))]
fn children() -> Vec<Pid> {
    Vec::new()
}

/// `/proc/self/task/*/children`: cheap, but only with CONFIG_PROC_CHILDREN.
#[cfg(target_os = "linux")]
fn children_from_task_files() -> Option<Vec<Pid>> {
    let mut children = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let text = std::fs::read_to_string(task.ok()?.path().join("children")).ok()?;
        children.extend(parse_pids(&text));
    }
    Some(children)
}

/// Every process whose parent is us, from `/proc/<pid>/stat`.
#[cfg(target_os = "linux")]
fn children_from_proc_scan() -> Vec<Pid> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let pid: i32 = name.to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold anything, even ')'.
            let after = &stat[stat.rfind(')')? + 1..];
            let ppid: i32 = after.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == me).then_some(pid)
        })
        .filter_map(Pid::from_raw)
        .collect()
}

fn parse_pids(text: &str) -> impl Iterator<Item = Pid> + '_ {
    text.split_whitespace()
        .filter_map(|s| s.parse().ok())
        .filter_map(Pid::from_raw)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn both_ways_of_listing_children_agree() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::from_child(&child);
        let from_files = children_from_task_files();
        let from_scan = children_from_proc_scan();
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(from_files) = from_files {
            assert!(from_files.contains(&pid), "{from_files:?}");
        }
        assert!(from_scan.contains(&pid), "{from_scan:?}");
    }
}
