//! Minimal stderr logging with levels and a rate limit on warnings that
//! clients can trigger (syntax errors, accept failures), so a flood of bad
//! clients cannot turn the daemon into a stderr writer.

use std::fmt::Arguments;
use std::io::Write;
use std::time::{Duration, Instant};

/// How chatty the daemon is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Errors only.
    Quiet,
    /// Startup, warnings, shutdown summary (the default).
    Info,
    /// Every connection and disconnection too.
    Debug,
}

/// Client-triggered warnings printed per window; the rest are counted and
/// reported as one line when the next window opens.
const WARNINGS_PER_WINDOW: u32 = 50;
const WINDOW: Duration = Duration::from_secs(1);

pub struct Log {
    level: Level,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl Log {
    pub fn new(level: Level) -> Self {
        Log {
            level,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    pub fn level(&self) -> Level {
        self.level
    }

    fn emit(&self, tag: &str, args: Arguments<'_>) {
        // A failed write to stderr is not worth dying for.
        let _ = writeln!(std::io::stderr().lock(), "dreadlock: {tag}{args}");
    }

    pub fn error(&self, args: Arguments<'_>) {
        self.emit("error: ", args);
    }

    pub fn info(&self, args: Arguments<'_>) {
        if self.level >= Level::Info {
            self.emit("", args);
        }
    }

    pub fn debug(&self, args: Arguments<'_>) {
        if self.level >= Level::Debug {
            self.emit("", args);
        }
    }

    /// A warning a client can cause: at most `WARNINGS_PER_WINDOW` a second.
    pub fn warn_limited(&mut self, args: Arguments<'_>) {
        if self.level < Level::Info {
            return;
        }
        let now = Instant::now();
        if self
            .window_start
            .is_none_or(|s| now.duration_since(s) >= WINDOW)
        {
            if self.suppressed > 0 {
                self.emit(
                    "warning: ",
                    format_args!("{} similar warnings suppressed", self.suppressed),
                );
            }
            self.window_start = Some(now);
            self.in_window = 0;
            self.suppressed = 0;
        }
        if self.in_window < WARNINGS_PER_WINDOW {
            self.in_window += 1;
            self.emit("warning: ", args);
        } else {
            self.suppressed += 1;
        }
    }
}
