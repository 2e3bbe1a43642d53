//! The async client's protocol version 2 commands against a scripted fake
//! daemon that answers as PROTOCOL.md's "Extensions (version 2)" says.

mod fake;

use std::io::ErrorKind;
use std::time::Duration;

use dreadlock::client::{ArgumentError, AsyncClient, ErrorKind as Kind, ErrorReply, Options};
use fake::{Fake, key_on, late_reply, stats_reply, two_servers};

const SHORT: Duration = Duration::from_millis(50);

#[tokio::test]
async fn acquire_reads_the_token_and_unlock_reuses_the_connection() {
    let mut fake = Fake::start(vec![vec![
        Some("a 1764655200000000001\r\n"),
        Some("u unlocked\r\n"),
        Some("a 1764655200000000002\r\n"),
    ]]);
    let c = AsyncClient::connect(&fake.server()).await.unwrap();
    let g = c.acquire("job", SHORT, 1).await.unwrap();
    assert_eq!(g.token(), Some(1_764_655_200_000_000_001));
    g.unlock().await.unwrap();
    let g = c.acquire("pool", Duration::from_secs(1), 4).await.unwrap();
    assert_eq!(g.token(), Some(1_764_655_200_000_000_002));
    // Dropping closes the connection without a word.
    drop(g);
    assert_eq!(
        fake.connection(0),
        "acquire job 50\r\nunlock job\r\nacquire pool 1000 4\r\n"
    );
    let e = c.acquire("pool", SHORT, 0).await.unwrap_err();
    assert!(
        matches!(e.kind(), Kind::InvalidArgument(ArgumentError::Limit(0))),
        "{e:?}"
    );
}

#[tokio::test]
async fn errors_are_typed_and_name_the_server() {
    let mut fake = Fake::start(vec![vec![
        Some("e limit mismatch\r\n"),
        Some("e bad limit\r\n"),
        Some("e brand new\r\n"),
        Some("t timeout\r\n"),
    ]]);
    let c = AsyncClient::connect(&fake.server()).await.unwrap();
    let e = c.acquire("k", SHORT, 2).await.unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::LimitMismatch));
    assert_eq!(e.server(), Some(&*fake.server()));
    let e = c.acquire("k", SHORT, 3).await.unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::BadLimit));
    let e = c.lock("k", SHORT).await.unwrap_err();
    assert!(
        matches!(e.kind(), Kind::Server(m) if m == "brand new"),
        "{e:?}"
    );
    let e = c.acquire("k", SHORT, 3).await.unwrap_err();
    assert!(e.is_timeout());
    drop(c);
    // All on one connection: none of these replies closes it.
    assert_eq!(fake.connection(0).lines().count(), 4);
}

#[tokio::test]
async fn info_stats_evict_and_the_introduction() {
    let intro = [Some("o ok\r\n"), Some("o ok\r\n")];
    let mut fake = Fake::start(vec![vec![
        intro[0],
        intro[1],
        Some("i limit=2 holders=1 waiters=0 token=9 held_ms=3 peer=127.0.0.1:1 name=a\r\n"),
        Some("o evicted 1\r\n"),
        Some(stats_reply(9)),
    ]]);
    let options = Options {
        name: Some("svc/1".into()),
        auth: Some("pw".into()),
        ..Options::default()
    };
    let c = AsyncClient::with_options([fake.server()], options).unwrap();
    let info = c.info("k").await.unwrap();
    assert_eq!((info.limit, info.holders, info.token), (2, 1, Some(9)));
    assert_eq!(info.name.as_deref(), Some("a"));
    assert_eq!(c.evict("k").await.unwrap(), 1);
    let stats = c.stats().await;
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].0, fake.server());
    assert_eq!(stats[0].1.as_ref().unwrap().token, 9);
    drop(c);
    assert_eq!(
        fake.connection(0),
        "auth pw\r\nname svc/1\r\ninfo k\r\nevict k\r\nstats\r\n"
    );
}

#[tokio::test]
async fn a_wrong_secret_fails_connect() {
    let mut fake = Fake::start(vec![vec![Some("e auth failed\r\n")]]);
    let options = Options {
        auth: Some("wrong".into()),
        ..Options::default()
    };
    let e = AsyncClient::connect_with(&fake.server(), options)
        .await
        .unwrap_err();
    assert_eq!(e.reply(), Some(ErrorReply::AuthFailed));
    assert_eq!(fake.connection(0), "auth wrong\r\n");
}

/// A late reply closes only its own connection, never another guard's.
#[tokio::test]
async fn a_late_reply_does_not_cost_other_guards_their_locks() {
    let (mut fake, options) = late_reply();
    let c = AsyncClient::with_options([fake.server()], options).unwrap();
    let a = c.lock("a", SHORT).await.unwrap();
    let e = c.lock("b", SHORT).await.unwrap_err();
    assert_eq!(
        e.io_error().map(|e| e.kind()),
        Some(ErrorKind::TimedOut),
        "{e:?}"
    );
    assert_eq!(fake.connection(1), "lock b 50\r\n");
    assert!(!fake.has_ended(0));
    a.unlock().await.unwrap();
    drop(c);
    assert_eq!(fake.connection(0), "lock a 50\r\nunlock a\r\n");
}

#[tokio::test]
async fn key_commands_go_to_the_keys_server_and_stats_to_each() {
    let mut fakes = two_servers(&[], [1, 2]);
    let servers: Vec<String> = fakes.iter().map(Fake::server).collect();
    let c = AsyncClient::new(servers.clone()).unwrap();
    let key_on = |i: usize| key_on(|k| c.server_for(k), &servers[i]);
    let (k0, k1) = (key_on(0), key_on(1));
    c.info(&k0).await.unwrap();
    c.info(&k1).await.unwrap();
    let tokens: Vec<u64> = c
        .stats()
        .await
        .into_iter()
        .map(|(_, s)| s.unwrap().token)
        .collect();
    assert_eq!(tokens, [1, 2]);
    drop(c);
    assert_eq!(fakes[0].connection(0), format!("info {k0}\r\nstats\r\n"));
    assert_eq!(fakes[1].connection(0), format!("info {k1}\r\nstats\r\n"));
}

#[test]
fn clients_and_guards_cross_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<AsyncClient>();
    send_sync::<dreadlock::client::AsyncLockGuard>();
}
