//! What `status` and `stats` print: a human form and JSON.
//!
//! The JSON is written by hand (one object, or one array): strings are
//! escaped as RFC 8259 requires, counters are numbers, and fencing tokens
//! are strings, because they exceed 2^53 and JSON readers that hold numbers
//! as doubles (JavaScript, jq before 1.7) would round them.

use std::fmt::Write as _;
use std::time::Duration;

use dreadlock::client::{Info, Stats};

/// `s` as a JSON string, quotes included.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt_string(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_string)
}

/// A duration as people read it: `850ms`, `3.210s`, `2m05s`, `1h02m03s`,
/// `3d04h05m`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{}.{:03}s", s, ms % 1000),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
        _ => format!("{}d{:02}h{:02}m", s / 86_400, s / 3600 % 24, s / 60 % 60),
    }
}

/// `status KEY` for people.
pub fn status_text(key: &str, server: &str, info: &Info) -> String {
    let mut out = String::new();
    let state = match (info.holders, info.waiters) {
        (0, _) => "free".to_owned(),
        (_, 0) => "held, nobody waiting".to_owned(),
        (_, 1) => "held, 1 waiting".to_owned(),
        (_, n) => format!("held, {n} waiting"),
    };
    let line = |out: &mut String, label: &str, value: &str| {
        let _ = writeln!(out, "{label:<10}{value}");
    };
    line(&mut out, "key", key);
    line(&mut out, "server", server);
    line(&mut out, "state", &state);
    if info.holders == 0 {
        return out;
    }
    let limit = match info.limit {
        1 => "1 (an exclusive lock)".to_owned(),
        n => format!("{n} (a semaphore: up to {n} holders at once)"),
    };
    line(&mut out, "limit", &limit);
    line(&mut out, "holders", &info.holders.to_string());
    line(&mut out, "waiters", &info.waiters.to_string());
    if info.holders > 1 {
        let _ = writeln!(out, "the oldest holder:");
    }
    let name = info
        .name
        .as_deref()
        .unwrap_or("(none: the holder did not name itself)");
    line(&mut out, "name", name);
    line(&mut out, "peer", info.peer.as_deref().unwrap_or("?"));
    let held = info.held.map_or_else(|| "?".to_owned(), human_duration);
    line(&mut out, "held for", &held);
    let token = info.token.map_or_else(|| "?".to_owned(), |t| t.to_string());
    line(&mut out, "token", &token);
    out
}

/// `status KEY --json`: one object; the holder's fields are `null` while
/// the key is free.
pub fn status_json(key: &str, server: &str, info: &Info) -> String {
    let held = info.holders > 0;
    format!(
        "{{\"key\":{},\"server\":{},\"held\":{held},\"limit\":{},\"holders\":{},\
         \"waiters\":{},\"name\":{},\"peer\":{},\"held_ms\":{},\"token\":{}}}",
        json_string(key),
        json_string(server),
        info.limit,
        info.holders,
        info.waiters,
        json_opt_string(info.name.as_deref()),
        json_opt_string(info.peer.as_deref()),
        info.held
            .map_or_else(|| "null".to_owned(), |d| d.as_millis().to_string()),
        info.token
            .map_or_else(|| "null".to_owned(), |t| json_string(&t.to_string())),
    )
}

/// One server's block of `stats`: its name, then every field the daemon
/// sent, in its order (fields this client does not know included).
pub fn stats_text(server: &str, result: &Result<Stats, String>) -> String {
    let mut out = format!("{server}\n");
    match result {
        Ok(stats) => {
            for (name, value) in &stats.fields {
                let _ = writeln!(out, "  {name:<16}{value}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    out
}

/// `stats --json`: an array with one object per server, `{"server": ...,
/// "stats": {...}}` or `{"server": ..., "error": "..."}`. Values made of
/// digits are numbers, `token` and the rest strings.
pub fn stats_json(results: &[(String, Result<Stats, String>)]) -> String {
    let blocks: Vec<String> = results
        .iter()
        .map(|(server, result)| match result {
            Ok(stats) => {
                let fields: Vec<String> = stats
                    .fields
                    .iter()
                    .map(|(name, value)| {
                        let number = name != "token"
                            && name != "version"
                            && !value.is_empty()
                            && value.bytes().all(|b| b.is_ascii_digit())
                            && value.parse::<u64>().is_ok();
                        let value = if number {
                            value.clone()
                        } else {
                            json_string(value)
                        };
                        format!("{}:{value}", json_string(name))
                    })
                    .collect();
                format!(
                    "{{\"server\":{},\"stats\":{{{}}}}}",
                    json_string(server),
                    fields.join(",")
                )
            }
            Err(e) => format!(
                "{{\"server\":{},\"error\":{}}}",
                json_string(server),
                json_string(e)
            ),
        })
        .collect();
    format!("[{}]", blocks.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("plain/1:x"), "\"plain/1:x\"");
        assert_eq!(json_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(
            json_string("\n\r\t\u{1}\u{7f}"),
            "\"\\n\\r\\t\\u0001\\u007f\""
        );
        assert_eq!(json_string("[::1]:6001 é"), "\"[::1]:6001 é\"");
    }

    #[test]
    fn durations_for_people() {
        let ms = Duration::from_millis;
        assert_eq!(human_duration(ms(0)), "0ms");
        assert_eq!(human_duration(ms(850)), "850ms");
        assert_eq!(human_duration(ms(3210)), "3.210s");
        assert_eq!(human_duration(ms(125_000)), "2m05s");
        assert_eq!(human_duration(ms(3_723_000)), "1h02m03s");
        assert_eq!(human_duration(ms(273_900_000)), "3d04h05m");
    }
}
