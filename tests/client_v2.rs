//! The blocking client's protocol version 2 commands (acquire, info,
//! stats, name, auth, evict) against a scripted fake daemon that answers as
//! PROTOCOL.md's "Extensions (version 2)" says, byte for byte. Needs no
//! daemon, so it also runs in the client-only build.

mod fake;

use std::time::Duration;

use dreadlock::client::{
    ArgumentError, Client, Connection, ErrorKind as Kind, ErrorReply, Options,
};
use fake::{Fake, key_on, stats_reply, two_servers};

const SHORT: Duration = Duration::from_millis(50);

#[test]
fn acquire_returns_the_token_and_semaphores_send_their_limit() {
    let mut fake = Fake::start(vec![vec![
        Some("a 1764655200000000001\r\n"),
        Some("u unlocked\r\n"),
        Some("a 1764655200000000002\r\n"),
        Some("u unlocked\r\n"),
    ]]);
    let c = Client::new([fake.server()]).unwrap();
    let g = c.acquire("job", SHORT, 1).unwrap();
    assert_eq!(g.token(), Some(1_764_655_200_000_000_001));
    g.unlock().unwrap();
    let g = c.acquire("rebuild", Duration::from_secs(2), 3).unwrap();
    assert_eq!(g.token(), Some(1_764_655_200_000_000_002));
    assert_eq!(g.key(), "rebuild");
    g.unlock().unwrap();
    drop(c);
    assert_eq!(
        fake.connection(0),
        "acquire job 50\r\nunlock job\r\nacquire rebuild 2000 3\r\nunlock rebuild\r\n"
    );
}

#[test]
fn acquire_limits_are_checked_before_sending() {
    let mut fake = Fake::start(vec![vec![Some("a 7\r\n")]]);
    let c = Client::connect(&fake.server()).unwrap();
    for bad in [0, 65_536, u32::MAX] {
        let e = c.acquire("k", SHORT, bad).unwrap_err();
        assert!(
            matches!(e.kind(), Kind::InvalidArgument(ArgumentError::Limit(n)) if *n == bad),
            "{e:?}"
        );
        assert_eq!(e.server(), Some(&*fake.server()));
    }
    // The largest limit is sent as is.
    let g = c.acquire("k", SHORT, 65_535).unwrap();
    assert_eq!(g.token(), Some(7));
    drop(g);
    assert_eq!(fake.connection(0), "acquire k 50 65535\r\n");
}

#[test]
fn every_error_reply_is_typed_and_keeps_the_connection() {
    let keeps: Vec<ErrorReply> = ErrorReply::ALL
        .into_iter()
        .filter(|e| !matches!(e, ErrorReply::AuthFailed | ErrorReply::AuthRequired))
        .collect();
    let mut script: Vec<Option<&'static str>> = keeps
        .iter()
        .map(|e| Some(std::str::from_utf8(e.as_bytes()).unwrap()))
        .collect();
    script.push(Some("e shiny new error\r\n"));
    let mut fake = Fake::start(vec![script]);
    let mut conn = Connection::connect(&fake.server(), &Options::default()).unwrap();
    for want in &keeps {
        let e = conn.acquire("k", SHORT, 2).unwrap_err();
        assert_eq!(e.reply(), Some(*want), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("{}: the server said: {}", fake.server(), want.message())
        );
        assert!(!conn.is_broken());
    }
    let e = conn.lock("k", SHORT).unwrap_err();
    assert!(
        matches!(e.kind(), Kind::Server(m) if m == "shiny new error"),
        "{e:?}"
    );
    assert!(!conn.is_broken());
    drop(conn);
    assert_eq!(
        fake.connection(0).lines().count(),
        keeps.len() + 1,
        "one connection carried every command"
    );
}

#[test]
fn auth_required_and_auth_failed_close_the_connection() {
    for reply in [ErrorReply::AuthRequired, ErrorReply::AuthFailed] {
        let line = std::str::from_utf8(reply.as_bytes()).unwrap();
        let mut fake = Fake::start(vec![vec![Some(line)], vec![Some("l locked\r\n")]]);
        let c = Client::connect(&fake.server()).unwrap();
        let e = c.lock("k", SHORT).unwrap_err();
        assert_eq!(e.reply(), Some(reply));
        // The client closed that connection; the next call opens another.
        assert_eq!(fake.connection(0), "lock k 50\r\n");
        let _g = c.lock("k", SHORT).unwrap();
    }
}

#[test]
fn name_and_auth_are_sent_first_on_every_new_connection() {
    let intro = [Some("o ok\r\n"), Some("o ok\r\n")];
    let mut fake = Fake::start(vec![
        vec![intro[0], intro[1], Some("l locked\r\n")],
        vec![intro[0], intro[1], Some("a 5\r\n")],
    ]);
    let options = Options {
        name: Some("web1/4242/cron".into()),
        auth: Some("s3cr3t+/=".into()),
        ..Options::default()
    };
    assert!(
        !format!("{options:?}").contains("s3cr3t"),
        "Debug hides the secret"
    );
    let c = Client::with_options([fake.server()], options).unwrap();
    let a = c.lock("a", SHORT).unwrap();
    let b = c.acquire("b", SHORT, 1).unwrap();
    drop((a, b));
    let want = |cmd: &str| format!("auth s3cr3t+/=\r\nname web1/4242/cron\r\n{cmd}\r\n");
    assert_eq!(fake.connection(0), want("lock a 50"));
    assert_eq!(fake.connection(1), want("acquire b 50"));
}

#[test]
fn a_daemon_without_auth_is_fine_and_a_wrong_secret_is_an_error() {
    let mut fake = Fake::start(vec![
        vec![Some("e auth not enabled\r\n"), Some("l locked\r\n")],
        vec![Some("e auth failed\r\n")],
    ]);
    let options = Options {
        auth: Some("secret".into()),
        ..Options::default()
    };
    let c = Client::with_options([fake.server()], options.clone()).unwrap();
    drop(c.lock("a", SHORT).unwrap());
    assert_eq!(fake.connection(0), "auth secret\r\nlock a 50\r\n");
    let e = Connection::connect(&fake.server(), &options).unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::AuthFailed));
    assert_eq!(fake.connection(1), "auth secret\r\n");
}

#[test]
fn bad_names_and_secrets_are_refused_before_connecting() {
    let cases = [
        (Some("has space".to_owned()), None, ArgumentError::Label),
        (Some("x".repeat(65)), None, ArgumentError::Label),
        (Some(String::new()), None, ArgumentError::Label),
        (None, Some("a:b".to_owned()), ArgumentError::Secret),
        (None, Some("s".repeat(257)), ArgumentError::Secret),
    ];
    // Nothing listens here: an attempt to connect would be an I/O error.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    for (name, auth, want) in cases {
        let options = Options {
            name,
            auth,
            ..Options::default()
        };
        let e = Connection::connect(&nowhere, &options).unwrap_err();
        assert!(
            matches!(e.kind(), Kind::InvalidArgument(a) if *a == want),
            "{e:?}"
        );
    }
    // The largest allowed are fine (and then fail to connect).
    let options = Options {
        name: Some("x".repeat(64)),
        auth: Some("s".repeat(256)),
        ..Options::default()
    };
    let e = Connection::connect(&nowhere, &options).unwrap_err();
    assert!(e.io_error().is_some(), "{e:?}");
}

#[test]
fn info_parses_the_holder() {
    let mut fake = Fake::start(vec![vec![
        Some(
            "i limit=1 holders=1 waiters=2 token=77 held_ms=1500 peer=127.0.0.1:5555 name=backup/1\r\n",
        ),
        Some("i limit=0 holders=0 waiters=0\r\n"),
    ]]);
    let c = Client::new([fake.server()]).unwrap();
    let info = c.info("backup").unwrap();
    assert_eq!((info.limit, info.holders, info.waiters), (1, 1, 2));
    assert_eq!(info.token, Some(77));
    assert_eq!(info.held, Some(Duration::from_millis(1500)));
    assert_eq!(info.peer.as_deref(), Some("127.0.0.1:5555"));
    assert_eq!(info.name.as_deref(), Some("backup/1"));
    let free = c.info("nothing").unwrap();
    assert_eq!((free.limit, free.holders, free.token), (0, 0, None));
    drop(c);
    assert_eq!(fake.connection(0), "info backup\r\ninfo nothing\r\n");
}

#[test]
fn evict_returns_the_count_or_not_allowed() {
    let mut fake = Fake::start(vec![vec![
        Some("o evicted 2\r\n"),
        Some("e not allowed\r\n"),
    ]]);
    let c = Client::new([fake.server()]).unwrap();
    assert_eq!(c.evict("stuck").unwrap(), 2);
    assert_eq!(
        c.evict("stuck").unwrap_err().reply(),
        Some(ErrorReply::NotAllowed)
    );
    drop(c);
    assert_eq!(fake.connection(0), "evict stuck\r\nevict stuck\r\n");
}

#[test]
fn key_commands_go_to_the_keys_server_and_stats_to_each() {
    let mut fakes = two_servers(&["o evicted 0\r\n"], [11, 22]);
    let servers: Vec<String> = fakes.iter().map(Fake::server).collect();
    let c = Client::new(servers.clone()).unwrap();
    // One key per server.
    let key_on = |i: usize| key_on(|k| c.server_for(k), &servers[i]);
    let (k0, k1) = (key_on(0), key_on(1));
    c.info(&k0).unwrap();
    c.evict(&k0).unwrap();
    c.info(&k1).unwrap();
    c.evict(&k1).unwrap();
    let stats = c.stats();
    assert_eq!(stats.len(), 2);
    for (i, (server, result)) in stats.iter().enumerate() {
        assert_eq!(server, &servers[i]);
        let s = result.as_ref().unwrap();
        assert_eq!(s.token, [11, 22][i]);
        assert_eq!((s.version.as_str(), s.grants, s.accepted), ("9.9.9", 3, 3));
        assert!(
            s.fields
                .iter()
                .any(|(n, v)| n == "brand_new_field" && v == "1")
        );
    }
    drop(c);
    for (i, k) in [k0, k1].iter().enumerate() {
        assert_eq!(
            fakes[i].connection(0),
            format!("info {k}\r\nevict {k}\r\nstats\r\n")
        );
    }
}

#[test]
fn stats_of_a_server_that_fails_do_not_hide_the_others() {
    let good = Fake::start(vec![vec![Some(stats_reply(1))]]);
    let bad = Fake::start(vec![vec![Some("s version=1\r\n")]]);
    let c = Client::new([good.server(), bad.server()]).unwrap();
    let stats = c.stats();
    assert_eq!(stats[0].1.as_ref().unwrap().token, 1);
    let e = stats[1].1.as_ref().unwrap_err();
    assert!(matches!(e.kind(), Kind::UnexpectedReply(_)), "{e:?}");
    assert_eq!(e.server(), Some(&*bad.server()));
}

#[test]
fn clients_and_guards_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Client>();
    send_sync::<dreadlock::client::LockGuard>();
    send_sync::<dreadlock::client::Error>();
}

#[test]
fn idle_connections_kept_per_server_at_0_and_1() {
    let lock_unlock = || vec![Some("l locked\r\n"), Some("u unlocked\r\n")];
    // 0: every connection is closed once its lock is released.
    let mut fake = Fake::start(vec![vec![], lock_unlock(), lock_unlock()]);
    let options = Options {
        max_idle_per_server: 0,
        ..Options::default()
    };
    let c = Client::connect_with(&fake.server(), options).unwrap();
    assert_eq!(fake.connection(0), "", "the first connection is not kept");
    c.lock("a", SHORT).unwrap().unlock().unwrap();
    assert_eq!(fake.connection(1), "lock a 50\r\nunlock a\r\n");
    c.lock("b", SHORT).unwrap().unlock().unwrap();
    assert_eq!(fake.connection(2), "lock b 50\r\nunlock b\r\n");

    // 1: of two released at once, one is kept and serves the next lock.
    let mut fake = Fake::start(vec![
        vec![
            Some("l locked\r\n"),
            Some("u unlocked\r\n"),
            Some("l locked\r\n"),
        ],
        lock_unlock(),
    ]);
    let options = Options {
        max_idle_per_server: 1,
        ..Options::default()
    };
    let c = Client::with_options([fake.server()], options).unwrap();
    let a = c.lock("a", SHORT).unwrap();
    let b = c.lock("b", SHORT).unwrap();
    a.unlock().unwrap();
    b.unlock().unwrap();
    assert_eq!(fake.connection(1), "lock b 50\r\nunlock b\r\n");
    let _c = c.lock("c", SHORT).unwrap();
    assert!(!fake.has_ended(0));
    drop((_c, c));
    assert_eq!(fake.connection(0), "lock a 50\r\nunlock a\r\nlock c 50\r\n");
}
