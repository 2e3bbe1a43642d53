//! The server's CPU time and resident memory, read from /proc/PID.

use std::time::Instant;

/// Clock ticks per second for /proc/PID/stat (`getconf CLK_TCK`; 100 on
/// every Linux this runs on, used when `getconf` is missing).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// utime + stime of `pid` in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // The command name may contain spaces and parentheses: fields are
    // counted after the last ')'. Field 3 (state) is the first after it;
    // utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("{path}: no field {n}"))
    };
    Ok(get(14)? + get(15)?)
}

/// VmRSS of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("{path}: no VmRSS"))
}

/// Server CPU over a measured interval.
pub struct CpuMeter {
    pid: u32,
    ticks_per_s: u64,
    start_ticks: u64,
    start: Instant,
}

impl CpuMeter {
    pub fn start(pid: u32) -> Result<Self, String> {
        Ok(CpuMeter {
            pid,
            ticks_per_s: clock_ticks(),
            start_ticks: cpu_ticks(pid)?,
            start: Instant::now(),
        })
    }

    /// (server CPU seconds, wall seconds) since `start`.
    pub fn stop(&self) -> Result<(f64, f64), String> {
        let ticks = cpu_ticks(self.pid)?.saturating_sub(self.start_ticks);
        Ok((
            ticks as f64 / self.ticks_per_s as f64,
            self.start.elapsed().as_secs_f64(),
        ))
    }
}
