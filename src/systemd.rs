//! systemd integration: readiness notification (`Type=notify`) and socket
//! activation (`LISTEN_FDS`). Both are no-ops outside systemd.
//!
//! # Notification
//!
//! `sd_notify(3)` is one datagram of `KEY=value` lines to the Unix socket
//! named by `NOTIFY_SOCKET` (a path, or an abstract name when it starts
//! with `@`). That is a few lines with std's `UnixDatagram` and
//! `SocketAddrExt::from_abstract_name`, so no crate is needed (`sd-notify`
//! would add a dependency for the same dozen lines). The socket is
//! non-blocking: a service manager that does not read can never stall the
//! daemon; a notification that cannot be sent is dropped.
//!
//! # Socket activation
//!
//! With `dreadlock.socket`, systemd binds the port and passes the listening
//! descriptor (fd 3, `LISTEN_FDS=1`, `LISTEN_PID` = the daemon's pid).
//! Taking a descriptor by number needs `unsafe` (`FromRawFd`), which this
//! crate forbids, so the well-kept `listenfd` crate does it: it checks
//! `LISTEN_PID`, checks that the descriptor is a TCP socket, and marks it
//! close-on-exec. Because the socket outlives the daemon, connections that
//! arrive during a restart wait in its backlog instead of being refused.

#![warn(missing_docs)]

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (`KEY=value` lines, e.g. `READY=1\nSTATUS=...`) to the
/// service manager. Returns `Ok(false)` when there is none
/// (`NOTIFY_SOCKET` unset or empty).
///
/// # Errors
///
/// When `NOTIFY_SOCKET` is set but the datagram cannot be sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) if !path.is_empty() => {
            let path = path.into_string().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
            })?;
            notify_to(&path, state).map(|()| true)
        }
        _ => Ok(false),
    }
}

/// Sends `state` to the notification socket `path` (`@name` for an
/// abstract socket).
///
/// # Errors
///
/// When the socket cannot be created or the datagram not sent.
pub fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// The listening socket systemd passed (`LISTEN_FDS`, first descriptor), if
/// any. Call it before any thread starts: `listenfd` removes the
/// `LISTEN_*` variables from the environment.
///
/// # Errors
///
/// When a descriptor was passed but is not a TCP socket.
pub fn take_listener() -> io::Result<Option<std::net::TcpListener>> {
    let mut fds = listenfd::ListenFd::from_env();
    fds.take_tcp_listener(0)
}
