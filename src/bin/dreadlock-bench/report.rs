//! What a scenario found: a human summary, JSON fields and failures.

use std::fmt::Write as _;

use crate::hist::Histogram;

/// A JSON value (just what the reports need).
#[derive(Clone, Debug)]
pub enum Val {
    F(f64),
    U(u64),
    S(String),
    B(bool),
    Null,
    Obj(Vec<(String, Val)>),
    Arr(Vec<Val>),
}

impl Val {
    fn write(&self, out: &mut String) {
        match self {
            Val::F(x) if x.is_finite() => {
                let _ = write!(out, "{}", (x * 1000.0).round() / 1000.0);
            }
            Val::F(_) | Val::Null => out.push_str("null"),
            Val::U(x) => {
                let _ = write!(out, "{x}");
            }
            Val::B(b) => {
                let _ = write!(out, "{b}");
            }
            Val::S(s) => write_str(out, s),
            Val::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
            Val::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Latency percentiles of a histogram of nanoseconds, as microseconds.
pub fn latency_json(h: &Histogram) -> Val {
    let us = |ns: u64| Val::F(ns as f64 / 1000.0);
    Val::Obj(vec![
        ("count".into(), Val::U(h.count())),
        ("min_us".into(), us(h.min())),
        ("p50_us".into(), us(h.quantile(0.50))),
        ("p90_us".into(), us(h.quantile(0.90))),
        ("p99_us".into(), us(h.quantile(0.99))),
        ("p999_us".into(), us(h.quantile(0.999))),
        ("max_us".into(), us(h.max())),
        ("mean_us".into(), Val::F(h.mean() / 1000.0)),
    ])
}

/// A duration in nanoseconds, human-readable.
pub fn human_ns(ns: u64) -> String {
    let ns = ns as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} us", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

pub fn human_latency(h: &Histogram) -> String {
    format!(
        "p50 {}  p99 {}  max {}  (n={})",
        human_ns(h.quantile(0.5)),
        human_ns(h.quantile(0.99)),
        human_ns(h.max()),
        h.count()
    )
}

/// A thousands-separated integer.
pub fn big(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// What a scenario reports.
#[derive(Default)]
pub struct Outcome {
    pub human: Vec<String>,
    pub fields: Vec<(String, Val)>,
    /// Correctness failures: any makes the run exit 1.
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn line(&mut self, label: &str, text: impl AsRef<str>) {
        self.human.push(format!("  {label:<15}{}", text.as_ref()));
    }

    pub fn field(&mut self, key: &str, v: Val) {
        self.fields.push((key.to_string(), v));
    }

    pub fn fail(&mut self, msg: impl Into<String>) {
        self.failures.push(msg.into());
    }

    /// Server CPU over the measured interval, per `ops` of `op_name`.
    pub fn cpu(&mut self, cpu: Option<Result<(f64, f64), String>>, ops: u64, op_name: &str) {
        match cpu {
            None => self.field("server_cpu_s", Val::Null),
            Some(Err(e)) => {
                self.line("server CPU", format!("unavailable: {e}"));
                self.field("server_cpu_s", Val::Null);
            }
            Some(Ok((cpu_s, wall_s))) => {
                let per_op_us = if ops > 0 {
                    cpu_s * 1e6 / ops as f64
                } else {
                    f64::NAN
                };
                self.line(
                    "server CPU",
                    format!(
                        "{cpu_s:.2} s over {wall_s:.2} s ({:.0}% of a core), {per_op_us:.2} us per {op_name}",
                        100.0 * cpu_s / wall_s.max(1e-9)
                    ),
                );
                self.field("server_cpu_s", Val::F(cpu_s));
                self.field("server_cpu_wall_s", Val::F(wall_s));
                self.field("server_cpu_us_per_op", Val::F(per_op_us));
            }
        }
    }
}
