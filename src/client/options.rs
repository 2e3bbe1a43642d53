//! Connection settings shared by the blocking and the async client.

use std::fmt;
use std::time::Duration;

use super::{ArgumentError, Error, ErrorKind, proto};

/// Connection settings, for [`Client`](super::Client),
/// [`Connection`](super::Connection) and (with the `tokio` feature)
/// `AsyncClient`.
///
/// Build one from [`Options::default`] and change what you need:
///
/// ```
/// use std::time::Duration;
/// use dreadlock::client::Options;
///
/// let options = Options {
///     io_timeout: Some(Duration::from_secs(2)),
///     name: Some("billing/nightly".to_owned()),
///     ..Options::default()
/// };
/// assert_eq!(options.connect_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Options {
    /// Bound on establishing a TCP connection, per address the server name
    /// resolves to (name resolution itself is not bounded).
    pub connect_timeout: Duration,
    /// Bound on sending a command and on receiving a reply; the reply to
    /// `lock` and `acquire` may take the lock's own timeout plus this much
    /// (none with [`WAIT_FOREVER`](super::WAIT_FOREVER)). `None`: no bound.
    /// Values below 1 ms count as 1 ms.
    ///
    /// When a reply is late, the client closes that one connection (the
    /// daemon then withdraws the request). Every held lock has a connection
    /// of its own, so this never releases another guard's lock.
    pub io_timeout: Option<Duration>,
    /// TCP keepalive idle time: a connection to a host that vanished
    /// without a word (power loss, partition) is declared broken after
    /// about this time plus 3 probes 5 s apart, which ends a `lock` waiting
    /// forever. `None`: the system default (usually no keepalive).
    ///
    /// Setting it needs the `keepalive` feature (on by default, and with
    /// `tokio`); without it the default is `None` and `Some` fails every
    /// connect with `io::ErrorKind::Unsupported`.
    pub keepalive: Option<Duration>,
    /// A label sent with `name` on every new connection, so that `info`
    /// and the daemon's logs show who holds a key: 1 to 64 bytes of ASCII
    /// letters, digits and `- _ . : /`. Needs a daemon that speaks protocol
    /// version 2. `None`: connections stay unnamed.
    pub name: Option<String>,
    /// The shared secret sent with `auth` as the first command of every
    /// new connection, for a daemon started with `--auth-file`. A daemon
    /// without auth answers `e auth not enabled`, which the client accepts,
    /// so clients can be given the secret before the daemons require it.
    /// Needs a daemon that speaks protocol version 2. `Debug` does not
    /// print it.
    pub auth: Option<String>,
    /// Idle connections kept per server for reuse (a guard released with
    /// `unlock` gives its connection back). 0 keeps none.
    pub max_idle_per_server: usize,
}

impl Default for Options {
    /// 5 s to connect, 5 s for each send and reply, 10 s keepalive (with
    /// the `keepalive` feature), no name, no secret, 8 idle connections per
    /// server.
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(5),
            io_timeout: Some(Duration::from_secs(5)),
            keepalive: if cfg!(feature = "keepalive") {
                Some(Duration::from_secs(10))
            } else {
                None
            },
            name: None,
            auth: None,
            max_idle_per_server: 8,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("keepalive", &self.keepalive)
            .field("name", &self.name)
            .field("auth", &self.auth.as_ref().map(|_| "<secret>"))
            .field("max_idle_per_server", &self.max_idle_per_server)
            .finish()
    }
}

impl Options {
    /// The I/O bound as applied to sockets (at least 1 ms).
    pub(crate) fn effective_io_timeout(&self) -> Option<Duration> {
        self.io_timeout.map(|t| t.max(Duration::from_millis(1)))
    }

    /// Checks the name and secret before anything is sent.
    pub(crate) fn validate(&self, server: &str) -> Result<(), Error> {
        let invalid = |e: ArgumentError| Error::new(ErrorKind::InvalidArgument(e), server);
        if let Some(label) = &self.name {
            proto::validate_label(label).map_err(invalid)?;
        }
        if let Some(secret) = &self.auth {
            proto::validate_secret(secret).map_err(invalid)?;
        }
        Ok(())
    }
}

/// Sets TCP keepalive on a connected socket.
#[cfg(feature = "keepalive")]
pub(crate) fn set_keepalive<S>(socket: &S, idle: Option<Duration>) -> std::io::Result<()>
where
    for<'s> socket2::SockRef<'s>: From<&'s S>,
{
    if let Some(idle) = idle {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(Duration::from_secs(5))
            .with_retries(3);
        socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive)?;
    }
    Ok(())
}

/// Without the `keepalive` feature, only `None` can be honoured.
#[cfg(not(feature = "keepalive"))]
pub(crate) fn set_keepalive<S>(_socket: &S, idle: Option<Duration>) -> std::io::Result<()> {
    match idle {
        None => Ok(()),
        Some(_) => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "Options::keepalive needs the `keepalive` feature of the dreadlock crate",
        )),
    }
}
