//! Who a connection says it is: its `name` label (PROTOCOL.md rule V3) and
//! the secret of `--auth-file` (rule V4).

use std::fmt;
use std::path::Path;

use dreadlock::wire::{MAX_LABEL_BYTES, MAX_SECRET_BYTES, is_label_byte, is_secret_byte};

/// Longest host part of a default name, so that the pid and some of the
/// command always fit in the label's 64 bytes.
const MAX_HOST_BYTES: usize = 32;

/// The label given to every connection unless `--name` says otherwise:
/// `HOST/PID/COMMAND`, HOST cut at its first dot and to 32 bytes, every
/// character outside the label alphabet replaced by `_`, the whole cut to
/// 64 bytes.
pub fn default_name(host: &str, pid: u32, command: &str) -> String {
    let host = host.split('.').next().unwrap_or_default();
    let host = match sanitize(host) {
        h if h.is_empty() => "unknown".to_owned(),
        mut h => {
            h.truncate(MAX_HOST_BYTES);
            h
        }
    };
    let command = match sanitize(command) {
        c if c.is_empty() => "_".to_owned(),
        c => c,
    };
    let mut name = format!("{host}/{pid}/{command}");
    // Every byte is ASCII, so any cut is on a character boundary.
    name.truncate(MAX_LABEL_BYTES);
    name
}

/// Each character outside the label alphabet becomes `_`.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && is_label_byte(c as u8) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// This host's name, for [`default_name`].
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// The short name of a command for [`default_name`]: the last path
/// component of its first word (`/usr/bin/rsync -a` is `rsync`).
pub fn command_name(command: &str) -> &str {
    let word = command.split_whitespace().next().unwrap_or_default();
    word.rsplit('/').find(|s| !s.is_empty()).unwrap_or(word)
}

/// Checks a `--name` label: 1 to 64 bytes of the label alphabet.
pub fn parse_label(label: &str) -> Result<String, String> {
    if label.is_empty() || label.len() > MAX_LABEL_BYTES || !label.bytes().all(is_label_byte) {
        return Err(format!(
            "a name is 1 to {MAX_LABEL_BYTES} bytes of ASCII letters, digits and - _ . : /"
        ));
    }
    Ok(label.to_owned())
}

/// Why the secret of an auth file cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum SecretError {
    /// The file could not be read.
    Unreadable(String),
    /// The file has no secret.
    Empty,
    /// The secret is not 1 to 256 bytes of the secret alphabet.
    Invalid,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::Unreadable(e) => write!(f, "cannot read it: {e}"),
            SecretError::Empty => f.write_str("it is empty (it must hold the secret, on one line)"),
            SecretError::Invalid => write!(
                f,
                "its one line must be 1 to {MAX_SECRET_BYTES} bytes of ASCII letters, digits \
                 and - _ . + / ="
            ),
        }
    }
}

/// Reads the secret of an auth file as the daemon does: its one line, a
/// trailing LF or CRLF stripped.
pub fn read_secret(path: &Path) -> Result<String, SecretError> {
    let bytes = std::fs::read(path).map_err(|e| SecretError::Unreadable(e.to_string()))?;
    secret_of(&bytes)
}

fn secret_of(bytes: &[u8]) -> Result<String, SecretError> {
    // Exactly as the daemon's `read_auth_file` (src/main.rs) does.
    let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(SecretError::Empty);
    }
    if line.len() > MAX_SECRET_BYTES || !line.iter().all(|&b| is_secret_byte(b)) {
        return Err(SecretError::Invalid);
    }
    Ok(String::from_utf8(line.to_vec()).expect("the secret alphabet is ASCII"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_keep_to_the_label_alphabet_and_length() {
        assert_eq!(default_name("db1", 42, "rsync"), "db1/42/rsync");
        assert_eq!(
            default_name("db1.example.com", 42, "pg_dump"),
            "db1/42/pg_dump"
        );
        assert_eq!(
            default_name("höst", 7, "my script.sh"),
            "h_st/7/my_script.sh"
        );
        assert_eq!(default_name("", 7, ""), "unknown/7/_");
        let long = default_name(&"h".repeat(100), 4_194_304, &"c".repeat(100));
        assert_eq!(long.len(), MAX_LABEL_BYTES);
        assert!(long.starts_with(&format!("{}/4194304/c", "h".repeat(32))));
        for name in [long, default_name("a:b", 1, "x/y=z")] {
            assert_eq!(parse_label(&name), Ok(name.clone()));
        }
    }

    #[test]
    fn command_names() {
        assert_eq!(command_name("/usr/bin/rsync"), "rsync");
        assert_eq!(command_name("pg_dump db > db.sql"), "pg_dump");
        assert_eq!(command_name("./nightly.sh"), "nightly.sh");
        assert_eq!(command_name("dir/"), "dir");
        assert_eq!(command_name(""), "");
    }

    #[test]
    fn labels_at_0_1_64_and_65_bytes() {
        assert!(parse_label("").is_err());
        assert_eq!(parse_label("a"), Ok("a".to_owned()));
        let max = "x".repeat(64);
        assert_eq!(parse_label(&max), Ok(max.clone()));
        assert!(parse_label(&"x".repeat(65)).is_err());
        assert!(parse_label("a b").is_err());
        assert!(parse_label("a=b").is_err());
    }

    #[test]
    fn secrets_as_the_daemon_reads_them() {
        assert_eq!(secret_of(b"s3cr+t/=\n"), Ok("s3cr+t/=".to_owned()));
        assert_eq!(secret_of(b"s\r\n"), Ok("s".to_owned()));
        assert_eq!(secret_of(b"s"), Ok("s".to_owned()));
        assert_eq!(secret_of(b""), Err(SecretError::Empty));
        assert_eq!(secret_of(b"\n"), Err(SecretError::Empty));
        assert_eq!(secret_of(b"a b\n"), Err(SecretError::Invalid));
        assert_eq!(secret_of(b"a\nb\n"), Err(SecretError::Invalid));
        let max = vec![b'k'; MAX_SECRET_BYTES];
        assert!(secret_of(&max).is_ok());
        assert_eq!(
            secret_of(&[max.as_slice(), b"k"].concat()),
            Err(SecretError::Invalid)
        );
    }
}
