//! `-v` logs lock events over real TCP: who (peer and name) was granted
//! which key, at once or after how long a wait, timeouts, releases by
//! unlock, disconnect and eviction with how long the key was held, and who
//! evicted whom. Without `-v` there are none.

mod common;

use common::Daemon;

#[test]
fn verbose_logs_lock_events_with_peer_and_name() {
    let d = Daemon::start_with(&["-v"]);
    let mut a = d.connect();
    let mut b = d.connect();
    let mut c = d.connect();
    let mut e = d.connect();
    let peer = |cl: &common::Client| cl.stream.local_addr().unwrap().to_string();
    let (pa, pb, pc, pe) = (peer(&a), peer(&b), peer(&c), peer(&e));
    a.call("name alpha\r\n", "o ok\r\n");
    b.call("name beta\r\n", "o ok\r\n");
    a.call("lock k 0\r\n", "l locked\r\n");
    // A wait that times out, and a try-lock.
    b.call("lock k 50\r\n", "t timeout\r\n");
    b.call("lock k 0\r\n", "t timeout\r\n");
    // A wait that is granted by an unlock.
    c.send("lock k 60000\r\n");
    let end = std::time::Instant::now() + common::PROMPT;
    loop {
        e.send("info k\r\n");
        if e.read_line().contains(" waiters=1") {
            break;
        }
        assert!(std::time::Instant::now() < end, "c never queued");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    a.call("unlock k\r\n", "u unlocked\r\n");
    c.expect("l locked\r\n");
    // An eviction from loopback, then a disconnect releasing a held key.
    e.call("evict k\r\n", "o evicted 1\r\n");
    c.expect_closed();
    b.call("lock q 0\r\n", "l locked\r\n");
    drop(b);
    let err = d.wait_stderr("released q by");
    let has = |needle: &str| {
        assert!(
            err.lines()
                .any(|l| l.contains(" DEBUG ") && l.contains(needle)),
            "no DEBUG line with {needle:?} in:\n{err}"
        )
    };
    has(&format!("granted k to client {pa} (alpha) at once, token "));
    has(&format!(
        "timeout for client {pb} (beta) on k after waiting "
    ));
    has(&format!(
        "timeout for client {pb} (beta) on k after waiting 0 ms"
    ));
    has(&format!("granted k to client {pc} after waiting "));
    has(&format!(
        "released k by client {pa} (alpha) on unlock after holding it "
    ));
    has(&format!("client {pe} evicted client {pc}, a holder of k"));
    has(&format!(
        "released k by client {pc} on eviction after holding it "
    ));
    has(&format!(
        "released q by client {pb} (beta) on disconnect after holding it "
    ));
    // The timed-out wait lasted at least its 50 ms.
    let waited: u64 = err
        .lines()
        .find_map(|l| {
            let rest = l
                .split(&format!(
                    "timeout for client {pb} (beta) on k after waiting "
                ))
                .nth(1)?;
            rest.strip_suffix(" ms")?.parse().ok().filter(|&ms| ms > 0)
        })
        .expect("timed-out wait");
    assert!(waited >= 50, "{waited} ms");
    drop((a, e));
    d.terminate();
}

#[test]
fn no_lock_events_without_verbose() {
    let d = Daemon::start();
    let mut a = d.connect();
    a.call("lock k 0\r\nunlock k\r\n", "l locked\r\nu unlocked\r\n");
    d.sync();
    let (_, err) = d.terminate();
    assert!(!err.contains("granted k to"), "{err}");
    assert!(!err.contains("released k by"), "{err}");
    assert!(!err.contains(" DEBUG "), "{err}");
}
