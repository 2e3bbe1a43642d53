//! The async client (the `tokio` feature) against the real daemon.

mod common;
#[path = "common/probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use common::{Daemon, PROMPT};
use dreadlock::client::{AsyncClient, ErrorReply, pick_server};
use probe::is_free;

const SHORT: Duration = Duration::from_millis(50);

async fn client(d: &Daemon) -> AsyncClient {
    AsyncClient::connect(&d.addr.to_string()).await.unwrap()
}

#[tokio::test]
async fn lock_unlock_and_try_lock() {
    let d = Daemon::start();
    let c = client(&d).await;
    let g = c.lock("res", SHORT).await.unwrap();
    assert_eq!((g.key(), g.token()), ("res", None));
    assert_eq!(g.server(), d.addr.to_string());
    assert!(!is_free(&d, "res"));
    assert!(c.try_lock("res").await.unwrap().is_none());
    let e = c.lock("res", Duration::from_millis(100)).await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    g.unlock().await.unwrap();
    assert!(is_free(&d, "res"));
    let g = c.try_lock("res").await.unwrap().expect("free now");
    assert!(!is_free(&d, "res"));
    g.unlock().await.unwrap();
}

#[tokio::test]
async fn dropping_a_guard_releases_at_once() {
    let d = Daemon::start();
    let c = client(&d).await;
    let g = c.lock("res", SHORT).await.unwrap();
    assert!(!is_free(&d, "res"));
    drop(g);
    // The daemon saw the connection close: a fresh probe gets the lock
    // (bounded retries only for the close to travel over loopback).
    let deadline = Instant::now() + PROMPT;
    while !is_free(&d, "res") {
        assert!(Instant::now() < deadline, "the lock was not released");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_waiter_is_granted_when_the_holder_drops_its_guard() {
    let d = Daemon::start();
    let holder = client(&d).await;
    let waiter = client(&d).await;
    let held = holder.lock("res", SHORT).await.unwrap();
    let task = tokio::spawn(async move {
        let start = Instant::now();
        let g = waiter.lock("res", Duration::from_secs(60)).await;
        g.map(|g| (g.key().to_owned(), start.elapsed()))
    });
    tokio::time::sleep(SHORT).await;
    drop(held);
    let (key, waited) = task.await.unwrap().unwrap();
    assert_eq!(key, "res");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
}

/// A `lock` future dropped while it waits (here by `timeout`) closes its
/// connection, so the daemon withdraws the wait: the lock is not granted
/// to a waiter that is no longer there.
#[tokio::test]
async fn a_cancelled_lock_withdraws_its_wait() {
    let d = Daemon::start();
    let holder = client(&d).await;
    let c = client(&d).await;
    let held = holder.lock("res", SHORT).await.unwrap();
    let cancelled = tokio::time::timeout(SHORT, c.lock("res", Duration::from_secs(60))).await;
    assert!(cancelled.is_err(), "the lock was granted?");
    held.unlock().await.unwrap();
    let deadline = Instant::now() + PROMPT;
    while !is_free(&d, "res") {
        assert!(Instant::now() < deadline, "granted to the cancelled waiter");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_daemons_errors_are_typed() {
    let d = Daemon::start();
    let c = client(&d).await;
    let _g = c.lock("res", SHORT).await.unwrap();
    // Another guard of the same client is another connection: it waits
    // like anyone else rather than getting `already locked`.
    let e = c.lock("res", SHORT).await.unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    let e = c.lock("bad key", SHORT).await.unwrap_err();
    assert!(e.to_string().contains("invalid key"), "{e}");
    assert_eq!(e.reply(), None::<ErrorReply>);
}

#[tokio::test]
async fn keys_are_spread_over_three_daemons_by_the_documented_hash() {
    let daemons = [Daemon::start(), Daemon::start(), Daemon::start()];
    let names: Vec<String> = daemons.iter().map(|d| d.addr.to_string()).collect();
    let c = AsyncClient::new([&names[2], &names[0], &names[1]]).unwrap();
    let mut guards = Vec::new();
    for i in 0..12 {
        let key = format!("job{i}");
        let want = &names[pick_server(&names, &key).unwrap()];
        let g = c.lock(&key, SHORT).await.unwrap();
        assert_eq!(g.server(), want, "{key}");
        for (d, name) in daemons.iter().zip(&names) {
            assert_eq!(is_free(d, &key), name != want, "{key} on {name}");
        }
        guards.push(g);
    }
    for g in guards {
        g.unlock().await.unwrap();
    }
    for i in 0..12 {
        let key = format!("job{i}");
        assert!(daemons.iter().all(|d| is_free(d, &key)), "{key}");
    }
}

#[tokio::test]
async fn a_stopped_daemon_is_an_io_error() {
    let d = Daemon::start();
    let c = client(&d).await;
    let g = c.lock("a", SHORT).await.unwrap();
    drop(d);
    let e = g.unlock().await.unwrap_err();
    assert!(e.io_error().is_some(), "{e:?}");
    let e = c.lock("b", SHORT).await.unwrap_err();
    assert!(e.io_error().is_some(), "{e:?}");
}

/// A daemon restarted on the same port: the pooled connection to the old
/// one is dead, and the client notices before using it.
#[tokio::test]
async fn an_idle_connection_the_daemon_closed_is_not_reused() {
    let d = Daemon::start();
    let port = d.addr.port().to_string();
    let c = client(&d).await;
    c.lock("a", SHORT).await.unwrap().unlock().await.unwrap();
    drop(d);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dreadlock"));
    cmd.args([&*port, "--bind", "127.0.0.1"]);
    let d2 = Daemon::spawn(cmd);
    let g = c.lock("b", SHORT).await.unwrap();
    assert!(!is_free(&d2, "b"));
    g.unlock().await.unwrap();
}
