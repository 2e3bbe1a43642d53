//! The client's protocol version 2 commands (acquire, semaphores, info,
//! stats, name, auth, evict, and sharding of them) against the real
//! daemon, blocking and async. `client_v2.rs` and `async_client_v2.rs`
//! check the bytes against a scripted fake; these check that the client
//! and the daemon agree.
//!
//! Waits are explicit and bounded: a waiter is known to be queued when
//! `info` counts it, never after a sleep.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Daemon, PROMPT};
use dreadlock::client::{
    ArgumentError, AsyncClient, Client, Connection, ErrorKind, ErrorReply, Info, Options,
    pick_server,
};
use dreadlock::wire::STATS_FIELDS;

const SHORT: Duration = Duration::from_millis(50);

/// A daemon with `--auth-file` holding `secret`; the file is removed when
/// the returned guard drops.
struct AuthDaemon {
    daemon: Daemon,
    file: std::path::PathBuf,
}

impl Drop for AuthDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

fn auth_daemon(secret: &str, tag: &str) -> AuthDaemon {
    use std::os::unix::fs::PermissionsExt as _;
    let file = std::env::temp_dir().join(format!(
        "dreadlock-client-v2-{}-{tag}.secret",
        std::process::id()
    ));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = Daemon::start_with(&["--auth-file", file.to_str().unwrap()]);
    AuthDaemon { daemon, file }
}

fn named(name: &str) -> Options {
    Options {
        name: Some(name.to_owned()),
        ..Options::default()
    }
}

/// Polls `info key` until `done` holds.
fn wait_info(client: &Client, key: &str, done: impl Fn(&Info) -> bool) -> Info {
    let end = Instant::now() + PROMPT;
    loop {
        let info = client.info(key).unwrap();
        if done(&info) {
            return info;
        }
        assert!(Instant::now() < end, "info {key} never got there: {info:?}");
        thread::sleep(Duration::from_millis(2));
    }
}

async fn wait_info_async(client: &AsyncClient, key: &str, done: impl Fn(&Info) -> bool) -> Info {
    let end = Instant::now() + PROMPT;
    loop {
        let info = client.info(key).await.unwrap();
        if done(&info) {
            return info;
        }
        assert!(Instant::now() < end, "info {key} never got there: {info:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[test]
fn acquire_tokens_increase_over_immediate_and_queued_grants() {
    let d = Daemon::start();
    let c = Client::new([d.addr.to_string()]).unwrap();
    let first = c.acquire("k", SHORT, 1).unwrap();
    let t1 = first.token().expect("acquire carries a token");
    // Wall-clock seeded (PROTOCOL.md V1): far above zero.
    assert!(t1 > 1_000_000_000_000_000_000, "{t1}");
    first.unlock().unwrap();
    let second = c.acquire("k", SHORT, 1).unwrap();
    let t2 = second.token().unwrap();
    assert!(t2 > t1, "{t1} {t2}");

    // A queued grant, after the holder drops its guard.
    let waiter = {
        let c = c.clone();
        thread::spawn(move || c.acquire("k", PROMPT, 1).map(|g| g.token()))
    };
    wait_info(&c, "k", |i| i.waiters == 1);
    drop(second);
    let t3 = waiter.join().unwrap().unwrap().unwrap();
    assert!(t3 > t2, "{t2} {t3}");

    // `lock` is the same lock: no token in its guard, but one in `info`,
    // and it interoperates with `acquire`.
    let plain = c.lock("k", SHORT).unwrap();
    assert_eq!(plain.token(), None);
    let info = c.info("k").unwrap();
    assert!(info.token.unwrap() > t3, "{info:?}");
    assert!(c.acquire("k", Duration::ZERO, 1).unwrap_err().is_timeout());
    plain.unlock().unwrap();
    let stats = &c.stats()[0];
    // The timed-out acquire took no token: the last one issued is the lock's.
    assert_eq!(stats.1.as_ref().unwrap().token, info.token.unwrap());
}

#[test]
fn semaphores_grant_up_to_n_and_refuse_other_limits() {
    let d = Daemon::start();
    let c = Client::new([d.addr.to_string()]).unwrap();
    let a = c.acquire("sem", SHORT, 2).unwrap();
    let b = c.acquire("sem", SHORT, 2).unwrap();
    assert!(b.token().unwrap() > a.token().unwrap());
    assert!(
        c.acquire("sem", Duration::ZERO, 2)
            .unwrap_err()
            .is_timeout()
    );
    for e in [
        c.acquire("sem", SHORT, 3).unwrap_err(),
        c.acquire("sem", SHORT, 1).unwrap_err(),
        c.lock("sem", SHORT).unwrap_err(),
    ] {
        assert_eq!(e.reply(), Some(ErrorReply::LimitMismatch), "{e}");
    }
    // The limit's bounds are checked before anything is sent.
    for bad in [0, 65_536] {
        let e = c.acquire("sem", SHORT, bad).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidArgument(ArgumentError::Limit(n)) if *n == bad),
            "{e:?}"
        );
    }
    let info = c.info("sem").unwrap();
    assert_eq!((info.limit, info.holders, info.waiters), (2, 2, 0));
    assert_eq!(info.token, a.token(), "the oldest holder is shown");

    // FIFO: the third waits, and gets the slot the first frees.
    let third = {
        let c = c.clone();
        thread::spawn(move || c.acquire("sem", PROMPT, 2).map(|g| g.token()))
    };
    wait_info(&c, "sem", |i| i.waiters == 1);
    a.unlock().unwrap();
    let t = third.join().unwrap().unwrap().unwrap();
    assert!(t > b.token().unwrap());
    drop(b);
    // Once nobody holds it, the key may be created with another limit.
    wait_info(&c, "sem", |i| i.holders == 0);
    let max = c.acquire("sem", SHORT, 65_535).unwrap();
    assert_eq!(c.info("sem").unwrap().limit, 65_535);
    max.unlock().unwrap();
}

#[test]
fn info_shows_the_holder_its_peer_name_and_waiters() {
    let d = Daemon::start();
    let server = d.addr.to_string();
    let holder = Client::with_options([server.clone()], named("billing/nightly:1")).unwrap();
    let observer = Client::new([server.clone()]).unwrap();

    let free = observer.info("job").unwrap();
    assert_eq!((free.limit, free.holders, free.waiters), (0, 0, 0));
    assert_eq!(
        (free.token, free.held, free.peer, free.name),
        (None, None, None, None)
    );

    let g = holder.acquire("job", SHORT, 1).unwrap();
    let local = g
        .connection()
        .tcp_stream()
        .local_addr()
        .unwrap()
        .to_string();
    let waiter = {
        let c = observer.clone();
        thread::spawn(move || c.lock("job", PROMPT).map(|g| g.unlock()))
    };
    let info = wait_info(&observer, "job", |i| i.waiters == 1);
    assert_eq!((info.limit, info.holders), (1, 1));
    assert_eq!(info.token, g.token());
    assert_eq!(info.peer.as_deref(), Some(local.as_str()));
    assert_eq!(info.name.as_deref(), Some("billing/nightly:1"));
    assert!(info.held.unwrap() < PROMPT * 10, "{info:?}");
    g.unlock().unwrap();
    waiter.join().unwrap().unwrap().unwrap();

    // An unnamed holder has no name; a connection may rename itself.
    let g = observer.lock("job", SHORT).unwrap();
    assert_eq!(observer.info("job").unwrap().name, None);
    drop(g);
    let mut conn = Connection::connect(&server, &Options::default()).unwrap();
    conn.name("first").unwrap();
    conn.lock("job", PROMPT).unwrap();
    conn.name("second").unwrap();
    assert_eq!(
        observer.info("job").unwrap().name.as_deref(),
        Some("second")
    );
    // Labels are checked before sending: 64 bytes go, 65 do not.
    conn.name(&"n".repeat(64)).unwrap();
    let e = conn.name(&"n".repeat(65)).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::InvalidArgument(ArgumentError::Label)),
        "{e:?}"
    );
    assert!(!conn.is_broken());
    assert_eq!(observer.info("job").unwrap().name, Some("n".repeat(64)));
}

#[test]
fn stats_are_parsed_and_their_counters_move() {
    let d = Daemon::start();
    let c = Client::new([d.addr.to_string()]).unwrap();
    let s0 = c.stats().remove(0).1.unwrap();
    assert!(!s0.version.is_empty());
    let names: Vec<&str> = s0.fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, STATS_FIELDS);
    assert_eq!(s0.token, 0, "no grant yet");

    let g = c.acquire("k", SHORT, 1).unwrap();
    let token = g.token().unwrap();
    assert!(c.acquire("k", Duration::ZERO, 1).unwrap_err().is_timeout());
    let e = c.acquire("k", SHORT, 2).unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::LimitMismatch));
    let mid = c.stats().remove(0).1.unwrap();
    assert_eq!(mid.holders, 1);
    assert_eq!(mid.keys, 1);
    g.unlock().unwrap();
    let s1 = c.stats().remove(0).1.unwrap();
    assert_eq!(s1.grants, s0.grants + 1);
    assert_eq!(s1.timeouts, s0.timeouts + 1);
    assert_eq!(s1.unlocks, s0.unlocks + 1);
    assert_eq!(s1.errors, s0.errors + 1);
    assert_eq!(s1.token, token);
    assert_eq!((s1.holders, s1.keys, s1.waiters), (0, 0, 0));
    assert!(s1.commands > s0.commands);
    assert!(s1.accepted >= s0.accepted);
    assert_eq!(
        (
            s1.evictions,
            s1.syntax_errors,
            s1.auth_failures,
            s1.rejected
        ),
        (0, 0, 0, 0)
    );
}

#[test]
fn auth_is_sent_on_every_new_connection() {
    let ad = auth_daemon("s3cret+/=", "blocking");
    let server = ad.daemon.addr.to_string();
    let with = |secret: Option<&str>| Options {
        auth: secret.map(str::to_owned),
        name: Some("authed".to_owned()),
        ..Options::default()
    };
    let c = Client::with_options([server.clone()], with(Some("s3cret+/="))).unwrap();
    // Two guards at once: two connections, each authenticated and named.
    let a = c.acquire("a", SHORT, 1).unwrap();
    let b = c.acquire("b", SHORT, 1).unwrap();
    assert_eq!(c.info("a").unwrap().name.as_deref(), Some("authed"));
    assert_eq!(
        c.evict("b").unwrap(),
        1,
        "evict is allowed once authenticated"
    );
    assert!(matches!(b.unlock().unwrap_err().kind(), ErrorKind::Io(_)));
    a.unlock().unwrap();
    let s = c.stats().remove(0).1.unwrap();
    assert_eq!(s.auth_failures, 0);

    let e = Client::with_options([server.clone()], with(None))
        .unwrap()
        .lock("a", SHORT)
        .unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::AuthRequired), "{e}");
    let e = Client::with_options([server.clone()], with(Some("wrong")))
        .unwrap()
        .lock("a", SHORT)
        .unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::AuthFailed), "{e}");
    assert_eq!(e.server(), Some(server.as_str()));
    let s = c.stats().remove(0).1.unwrap();
    assert_eq!(s.auth_failures, 2);

    // A daemon without --auth-file answers `e auth not enabled`, which the
    // client accepts, so secrets can be rolled out before daemons need them.
    let open = Daemon::start();
    let c = Client::with_options([open.addr.to_string()], with(Some("s3cret+/="))).unwrap();
    c.acquire("a", SHORT, 1).unwrap().unlock().unwrap();
}

#[test]
fn evict_closes_the_holders_and_grants_the_next_waiter() {
    let d = Daemon::start();
    let c = Client::new([d.addr.to_string()]).unwrap();
    assert_eq!(c.evict("nobody").unwrap(), 0);
    let stuck = c.acquire("stuck", SHORT, 1).unwrap();
    let other = c.lock("other", SHORT).unwrap();
    let waiter = {
        let c = c.clone();
        thread::spawn(move || c.acquire("stuck", PROMPT, 1).map(|g| g.token()))
    };
    wait_info(&c, "stuck", |i| i.waiters == 1);
    assert_eq!(c.evict("stuck").unwrap(), 1);
    let t = waiter.join().unwrap().unwrap().unwrap();
    assert!(t > stuck.token().unwrap());
    let e = stuck.unlock().unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Io(_)), "{e:?}");
    // Only that connection went: another guard's lock is untouched.
    other.unlock().unwrap();
    let s = c.stats().remove(0).1.unwrap();
    assert_eq!(s.evictions, 1);

    // A semaphore's holders all go.
    let g1 = c.acquire("sem", SHORT, 3).unwrap();
    let g2 = c.acquire("sem", SHORT, 3).unwrap();
    assert_eq!(c.evict("sem").unwrap(), 2);
    for g in [g1, g2] {
        assert!(g.unlock().is_err());
    }
}

/// Several daemons: key commands go to the key's server, `stats` to each.
#[test]
fn sharding_sends_key_commands_to_the_keys_server_and_stats_to_each() {
    let daemons = [Daemon::start(), Daemon::start(), Daemon::start()];
    let servers: Vec<String> = daemons.iter().map(|d| d.addr.to_string()).collect();
    let c = Client::with_options(servers.clone(), named("sharded")).unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("key{i}")).collect();
    let mut grants = [0u64; 3];
    let mut guards = Vec::new();
    for key in &keys {
        let owner = pick_server(&servers, key).unwrap();
        let g = c.acquire(key, SHORT, 1).unwrap();
        assert_eq!(g.server(), servers[owner]);
        grants[owner] += 1;
        // info asks the owner, which sees the holder; the others do not
        // know the key.
        assert_eq!(c.info(key).unwrap().name.as_deref(), Some("sharded"));
        for (i, server) in servers.iter().enumerate() {
            let mut raw = Connection::connect(server, &Options::default()).unwrap();
            let holders = raw.info(key).unwrap().holders;
            assert_eq!(holders, u32::from(i == owner), "{key} on {server}");
        }
        guards.push(g);
    }
    assert!(grants.iter().all(|&n| n > 0), "{grants:?}");
    let stats = c.stats();
    assert_eq!(stats.len(), 3);
    for (i, (server, s)) in stats.iter().enumerate() {
        assert_eq!(server, &servers[i]);
        let s = s.as_ref().unwrap();
        assert_eq!(s.grants, grants[i], "{server}");
        assert_eq!(s.holders, grants[i], "{server}");
    }
    // evict goes to the key's server.
    let key = &keys[0];
    let owner = pick_server(&servers, key).unwrap();
    assert_eq!(c.evict(key).unwrap(), 1);
    let stats = c.stats();
    for (i, (_, s)) in stats.iter().enumerate() {
        assert_eq!(s.as_ref().unwrap().evictions, u64::from(i == owner));
    }
    // A server that is gone does not hide the others.
    drop(guards);
    let [a, b, c3] = daemons;
    drop(b);
    let stats = c.stats();
    assert!(stats[0].1.is_ok() && stats[2].1.is_ok());
    let e = stats[1].1.as_ref().unwrap_err();
    assert_eq!(e.server(), Some(servers[1].as_str()));
    drop((a, c3));
}

#[tokio::test]
async fn async_acquire_semaphores_and_tokens() {
    let d = Daemon::start();
    let c = AsyncClient::new([d.addr.to_string()]).unwrap();
    let a = c.acquire("sem", SHORT, 2).await.unwrap();
    let b = c.acquire("sem", SHORT, 2).await.unwrap();
    let (ta, tb) = (a.token().unwrap(), b.token().unwrap());
    assert!(tb > ta);
    assert!(
        c.acquire("sem", Duration::ZERO, 2)
            .await
            .unwrap_err()
            .is_timeout()
    );
    let e = c.lock("sem", SHORT).await.unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::LimitMismatch));
    let third = {
        let c = c.clone();
        tokio::spawn(async move { c.acquire("sem", PROMPT, 2).await.map(|g| g.token()) })
    };
    wait_info_async(&c, "sem", |i| i.waiters == 1).await;
    a.unlock().await.unwrap();
    let tc = third.await.unwrap().unwrap().unwrap();
    assert!(tc > tb);
    drop(b);
    let s = c.stats().await.remove(0).1.unwrap();
    assert_eq!(s.token, tc);
    assert_eq!(s.grants, 3);
}

#[tokio::test]
async fn async_info_name_auth_and_evict() {
    let ad = auth_daemon("async-secret", "async");
    let server = ad.daemon.addr.to_string();
    let options = Options {
        auth: Some("async-secret".to_owned()),
        name: Some("async/worker".to_owned()),
        ..Options::default()
    };
    let c = AsyncClient::with_options([server.clone()], options.clone()).unwrap();
    let g = c.acquire("job", SHORT, 1).await.unwrap();
    let info = c.info("job").await.unwrap();
    assert_eq!((info.limit, info.holders, info.waiters), (1, 1, 0));
    assert_eq!(info.token, g.token());
    assert_eq!(info.name.as_deref(), Some("async/worker"));
    assert!(info.peer.unwrap().starts_with("127.0.0.1:"));
    assert!(info.held.is_some());
    // Another connection (the guard holds one) is authenticated too.
    let g2 = c.lock("other", SHORT).await.unwrap();
    assert_eq!(c.evict("job").await.unwrap(), 1);
    assert!(matches!(
        g.unlock().await.unwrap_err().kind(),
        ErrorKind::Io(_)
    ));
    g2.unlock().await.unwrap();

    let without = AsyncClient::new([server.clone()]).unwrap();
    let e = without.info("job").await.unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::AuthRequired), "{e}");
    let wrong = AsyncClient::with_options(
        [server.clone()],
        Options {
            auth: Some("nope".to_owned()),
            ..options
        },
    )
    .unwrap();
    let e = wrong.lock("job", SHORT).await.unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::AuthFailed), "{e}");
    let s = c.stats().await.remove(0).1.unwrap();
    assert_eq!((s.auth_failures, s.evictions), (2, 1));
}

#[tokio::test]
async fn async_sharding() {
    let daemons = [Daemon::start(), Daemon::start()];
    let servers: Vec<String> = daemons.iter().map(|d| d.addr.to_string()).collect();
    let c = AsyncClient::new(servers.clone()).unwrap();
    let mut grants = [0u64; 2];
    let mut guards = Vec::new();
    for i in 0..20 {
        let key = format!("key{i}");
        let owner = pick_server(&servers, &key).unwrap();
        let g = c.acquire(&key, SHORT, 1).await.unwrap();
        assert_eq!(g.server(), servers[owner]);
        assert_eq!(c.info(&key).await.unwrap().token, g.token());
        grants[owner] += 1;
        guards.push(g);
    }
    assert!(grants.iter().all(|&n| n > 0), "{grants:?}");
    let stats = c.stats().await;
    for (i, (server, s)) in stats.iter().enumerate() {
        assert_eq!(server, &servers[i]);
        assert_eq!(s.as_ref().unwrap().holders, grants[i]);
    }
}
