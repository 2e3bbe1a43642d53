//! Replays the committed fuzz seed corpus (`fuzz/corpus/<target>/`) through
//! the same checks the cargo-fuzz targets run, so stable `cargo test` covers
//! every named seed and every regression input.
//!
//! `DREADLOCK_FUZZ_INPUT=<file>` with `DREADLOCK_FUZZ_TARGET=<target>` replays
//! one file instead (a libFuzzer crash artifact, say); add
//! `DREADLOCK_MODEL_TRACE=1` to see each step of a core input.

use std::path::{Path, PathBuf};

use dreadlock::model;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs `check` on every file of the target's corpus; the directory must
/// hold seeds.
fn replay(target: &str, check: fn(&[u8])) {
    if let Some(file) = std::env::var_os("DREADLOCK_FUZZ_INPUT") {
        if std::env::var("DREADLOCK_FUZZ_TARGET").as_deref() == Ok(target) {
            check(&std::fs::read(&file).expect("read DREADLOCK_FUZZ_INPUT"));
        }
        return;
    }
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", dir.display());
    for file in &files {
        let data = std::fs::read(file).expect("read seed");
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if let Err(e) = std::panic::catch_unwind(|| check(&data)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{target} seed {name} failed: {msg}");
        }
    }
    eprintln!("{target}: {} seeds replayed", files.len());
}

#[test]
fn parser_corpus() {
    replay("parser", model::check_parser);
}

#[test]
fn core_corpus() {
    replay("core", model::check_core);
}

#[test]
fn timer_corpus() {
    replay("timer", model::check_timer);
}

// ---------------------------------------------------------------------------
// The named seeds, written by `cargo test --test fuzz_corpus -- --ignored
// write_seeds` (deterministic: rerunning rewrites the same bytes). Each
// encoding is the one `dreadlock::model` decodes; see `check_parser`,
// `check_core` and `check_timer` there.
// ---------------------------------------------------------------------------

/// Parser seed: limit selector (0xff: the default 10,000; 0..=63: that many
/// bytes, raised to 16), chunking seed, then the stream.
fn parser_seed(limit: u8, stream: &[u8]) -> Vec<u8> {
    let mut v = vec![limit, b'x'];
    v.extend_from_slice(stream);
    v
}

fn parser_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const D: u8 = 0xff;
    let long_key = |n: usize| {
        let mut v = b"lock ".to_vec();
        v.extend(std::iter::repeat_n(b'k', n));
        v.extend_from_slice(b" 1\r\n");
        v
    };
    let burst: Vec<u8> = (0..200)
        .flat_map(|i| {
            if i % 2 == 0 {
                format!("lock key{i} {i}\r\n").into_bytes()
            } else {
                format!("unlock key{}\r\n", i - 1).into_bytes()
            }
        })
        .collect();
    vec![
        ("seed-valid-lock", parser_seed(D, b"lock a 100\r\n")),
        ("seed-valid-unlock", parser_seed(D, b"unlock a\r\n")),
        (
            "seed-case-and-spaces",
            parser_seed(D, b"LoCk   Key9  5   \r\nUNLOCK  Key9 \r\nuNlOcK z\r\n"),
        ),
        ("seed-pipelined-burst", parser_seed(D, &burst)),
        (
            "seed-timeout-saturates",
            parser_seed(
                D,
                b"lock a 18446744073709551615\r\nlock a 18446744073709551616\r\n\
                  lock a 99999999999999999999999999999\r\nlock a 00000000000000000000000001\r\n",
            ),
        ),
        (
            "seed-incomplete-tail",
            parser_seed(D, b"lock a 1\r\nunlock a\r\nunlo"),
        ),
        ("seed-incomplete-cr", parser_seed(D, b"lock a 1\r")),
        ("seed-err-tab", parser_seed(D, b"lock\ta 1\r\n")),
        ("seed-err-leading-space", parser_seed(D, b" lock a 1\r\n")),
        ("seed-err-empty-line", parser_seed(D, b"lock a 1\r\n\r\n")),
        (
            "seed-err-bare-lf",
            parser_seed(D, b"lock a 1\nunlock a\r\n"),
        ),
        ("seed-err-cr-cr-lf", parser_seed(D, b"lock a 1\r\r\n")),
        (
            "seed-err-unlock-extra-token",
            parser_seed(D, b"unlock a 5\r\n"),
        ),
        (
            "seed-err-lock-no-timeout",
            parser_seed(D, b"unlock a\r\nlock c\r\n"),
        ),
        ("seed-err-key-byte", parser_seed(D, b"lock a-b 1\r\n")),
        (
            "seed-err-utf8-key",
            parser_seed(D, "lock \u{e9} 1\r\n".as_bytes()),
        ),
        ("seed-err-unknown-command", parser_seed(D, b"get a\r\n")),
        ("seed-err-word-no-space", parser_seed(D, b"locka 1\r\n")),
        (
            "seed-err-negative-timeout",
            parser_seed(D, b"lock a -1\r\n"),
        ),
        ("seed-err-nul", parser_seed(D, b"lock a\x001\r\n")),
        ("seed-line-max-default-ok", parser_seed(D, &long_key(9991))),
        (
            "seed-line-too-long-default",
            parser_seed(D, &long_key(9992)),
        ),
        (
            "seed-line-exactly-16",
            parser_seed(16, b"lock abcdefg 1\r\n"),
        ),
        (
            "seed-line-too-long-16",
            parser_seed(16, b"lock abcdefgh 1\r\n"),
        ),
        (
            "seed-line-too-long-trailing-space",
            parser_seed(16, b"lock abcdefg 1 \r\n"),
        ),
        (
            "seed-limit-below-minimum",
            parser_seed(3, b"lock abcdefg 1\r\nlock ab 2\r\n"),
        ),
        ("seed-limit-100", parser_seed(73, &long_key(120))),
        // Version 2 forms (PROTOCOL.md, "Version 2").
        (
            "seed-v2-acquire",
            parser_seed(
                D,
                b"acquire a 100\r\nACQUIRE  b  0  3  \r\nacquire c 1 65535\r\n\
                  acquire d 1 0\r\nacquire e 1 65536\r\nacquire f 1 99999999999\r\n",
            ),
        ),
        (
            "seed-v2-info-evict-stats",
            parser_seed(D, b"info a\r\nINFO  Zz9 \r\nevict a\r\nstats\r\nStats   \r\n"),
        ),
        (
            "seed-v2-name",
            parser_seed(
                D,
                b"name job-1_a.b:c/d\r\nname LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL\r\n\
                  name LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL\r\n",
            ),
        ),
        (
            "seed-v2-auth",
            parser_seed(D, &{
                let mut v = b"auth s3cr+t/=_-.\r\nauth ".to_vec();
                v.extend(std::iter::repeat_n(b's', 257));
                v.extend_from_slice(b"\r\n");
                v
            }),
        ),
        (
            "seed-v2-err-acquire-extra-token",
            parser_seed(D, b"acquire a 1 2 3\r\n"),
        ),
        (
            "seed-v2-err-acquire-no-timeout",
            parser_seed(D, b"acquire a\r\n"),
        ),
        ("seed-v2-err-limit-byte", parser_seed(D, b"acquire a 1 -2\r\n")),
        ("seed-v2-err-info-no-key", parser_seed(D, b"info\r\n")),
        ("seed-v2-err-stats-arg", parser_seed(D, b"stats x\r\n")),
        ("seed-v2-err-name-byte", parser_seed(D, b"name a+b\r\n")),
        ("seed-v2-err-name-two", parser_seed(D, b"name a b\r\n")),
        ("seed-v2-err-auth-byte", parser_seed(D, b"auth a:b\r\n")),
        ("seed-v2-err-evict-extra", parser_seed(D, b"evict a 1\r\n")),
        ("seed-v2-err-word", parser_seed(D, b"acquir a 1\r\naut x\r\n")),
        (
            "seed-v2-line-too-long-16",
            parser_seed(16, b"acquire ab 1 99\r\n"),
        ),
    ]
}

/// Encodes `check_core` ops; see its decoder for the meaning of each byte.
#[derive(Default)]
struct CoreOps(Vec<u8>);

impl CoreOps {
    fn new(line_idx: u8, pending_idx: u8, start: u8) -> Self {
        CoreOps(vec![line_idx + 5 * pending_idx, start])
    }
    /// `limits`: 1 (one lock per connection), 2 (two), 3 (room for two
    /// one-byte keys), 4 (three), 5 (two locks, four keys), 6 (no locks).
    fn with_limits(limits: u8) -> Self {
        CoreOps(vec![4 + 5 * 4 + 25 * limits, 0])
    }
    fn op(&mut self, code: u8, conn: u8, flag: bool, args: &[u8]) -> &mut Self {
        self.0.push(code | conn << 4 | if flag { 0x80 } else { 0 });
        self.0.extend_from_slice(args);
        self
    }
    /// `lock KEYS[key] timeout_text(timeout)`.
    fn lock(&mut self, conn: u8, key: u8, timeout: u8) -> &mut Self {
        self.op(1, conn, false, &[key | timeout << 4, 0])
    }
    fn lock_split(&mut self, conn: u8, key: u8, timeout: u8, at: u8) -> &mut Self {
        self.op(1, conn, true, &[key | timeout << 4, 0x35, at])
    }
    fn unlock(&mut self, conn: u8, key: u8) -> &mut Self {
        self.op(3, conn, false, &[key])
    }
    fn garbage(&mut self, conn: u8, raw: &[u8]) -> &mut Self {
        self.op(4, conn, true, &[raw.len() as u8]);
        self.0.extend_from_slice(raw);
        self
    }
    fn close(&mut self, conn: u8) -> &mut Self {
        self.op(5, conn, false, &[])
    }
    fn advance_us(&mut self, us: u8) -> &mut Self {
        self.op(6, 0, false, &[us - 1])
    }
    fn advance_ms(&mut self, ms: u8) -> &mut Self {
        self.op(7, 0, false, &[ms])
    }
    fn until_deadline(&mut self, just_before: bool) -> &mut Self {
        self.op(8, 0, just_before, &[])
    }
    fn advance_big(&mut self, arg: u8) -> &mut Self {
        self.op(9, 0, false, &[arg])
    }
    fn silent_ms(&mut self, ms: u8) -> &mut Self {
        self.op(10, 0, false, &[128 + ms])
    }
    fn sleep_until_poll_timeout(&mut self) -> &mut Self {
        self.op(11, 0, false, &[])
    }
    fn burst(&mut self, conn: u8, cmds: &[u8]) -> &mut Self {
        self.op(13, conn, false, &[cmds.len() as u8 - 1]);
        self.0.extend_from_slice(cmds);
        self
    }
    fn tick(&mut self) -> &mut Self {
        self.op(14, 0, false, &[])
    }
    /// A version 2 command: `check_core`'s op 0 with the flag.
    fn v2(&mut self, conn: u8, arg: u8, x: u8) -> &mut Self {
        self.op(0, conn, true, &[arg, x])
    }
    /// `acquire KEYS[key] timeout_text(timeout) limit_text(limit)`; limit
    /// 0: none, 1: "1", 2: "2", 4: "3", 5: "0", 13: "65536", 6: "65535",
    /// 7: past u32.
    fn acquire(&mut self, conn: u8, key: u8, timeout: u8, limit: u8) -> &mut Self {
        self.v2(conn, limit << 3, key | timeout << 4)
    }
    fn info(&mut self, conn: u8, key: u8) -> &mut Self {
        self.v2(conn, 1, key)
    }
    fn stats(&mut self, conn: u8) -> &mut Self {
        self.v2(conn, 2, 0)
    }
    /// `name label_text(label)`: 0 and 1 ordinary, 2 64 bytes, 3 65 bytes.
    fn name(&mut self, conn: u8, label: u8) -> &mut Self {
        self.v2(conn, 3 | label << 3, 0)
    }
    fn auth(&mut self, conn: u8) -> &mut Self {
        self.v2(conn, 4, 0)
    }
    /// A wrong secret: 0 another word, 1 257 bytes, 2 a prefix, 3 longer.
    fn auth_wrong(&mut self, conn: u8, how: u8) -> &mut Self {
        self.v2(conn, 5 | how << 3, 0)
    }
    fn evict(&mut self, conn: u8, key: u8) -> &mut Self {
        self.v2(conn, 6, key)
    }
}

/// Configurations for the version 2 seeds: default limits; auth off or on
/// (secret `model::MODEL_SECRET`), tokens from 1 or from a wall-clock-like
/// seed.
const V2_PLAIN: u8 = 24;
const V2_SEEDED: u8 = 199;
const V2_AUTH: u8 = 224;
const V2_AUTH_SEEDED: u8 = 249;

// KEYS in the model: a b c A k1 a1 Zz9 LongKey0123456789.
// timeout_text: 0:"0" 1:"1" 2:"2" 3:"3" 4:"5" 5:"10" 6:"64" 7:"100"
// 8:"1000" 9:"4097" 10:2^32 11:last finite 12:first infinite 13:2^36
// 14:u64::MAX 15:past u64.
fn core_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut add = |name, ops: &mut CoreOps| seeds.push((name, std::mem::take(&mut ops.0)));

    add(
        "seed-every-reply",
        CoreOps::new(4, 4, 0)
            .lock(0, 0, 7)
            .lock(0, 0, 7)
            .unlock(0, 1)
            .unlock(1, 0)
            .unlock(0, 0)
            .unlock(0, 0),
    );
    let mut fifo = CoreOps::new(4, 4, 0);
    fifo.lock(0, 0, 8);
    for c in 1..8 {
        fifo.lock(c, 0, 8).advance_us(100);
    }
    for c in 0..8 {
        fifo.unlock(c, 0);
    }
    add("seed-fifo-7-waiters", &mut fifo);
    let mut fifo_closes = CoreOps::new(4, 4, 0);
    fifo_closes.lock(0, 0, 12);
    for c in 1..8 {
        fifo_closes.lock(c, 0, 12);
    }
    fifo_closes.close(3).close(0).close(1).close(7).close(2);
    add("seed-fifo-waiters-disconnect", &mut fifo_closes);
    add(
        "seed-timeout-boundaries",
        CoreOps::new(4, 4, 2)
            .lock(0, 0, 0)
            .lock(1, 0, 4)
            .lock(2, 0, 5)
            .until_deadline(true)
            .until_deadline(false)
            .until_deadline(true)
            .until_deadline(false),
    );
    add(
        "seed-try-lock",
        CoreOps::new(4, 4, 0)
            .lock(0, 1, 0)
            .lock(1, 1, 0)
            .lock(1, 2, 0)
            .unlock(0, 1)
            .lock(1, 1, 0),
    );
    add(
        "seed-sub-ms-steps",
        CoreOps::new(4, 4, 1)
            .lock(0, 0, 0)
            .advance_us(250)
            .lock(1, 0, 1)
            .advance_us(250)
            .advance_us(250)
            .advance_us(250)
            .advance_us(250)
            .advance_us(1)
            .advance_us(200)
            .advance_us(255),
    );
    add(
        "seed-disconnect-releases-and-withdraws",
        CoreOps::new(4, 4, 0)
            .lock(0, 0, 0)
            .lock(0, 1, 0)
            .lock(1, 0, 7)
            .lock(2, 1, 7)
            .lock(3, 0, 7)
            .close(1)
            .close(0)
            .advance_ms(120),
    );
    add(
        "seed-syntax-error-releases",
        CoreOps::new(4, 4, 0)
            .lock(0, 0, 0)
            .lock(0, 1, 0)
            .lock(1, 0, 8)
            .lock(2, 1, 8)
            .garbage(0, b"lock\tx 1\r\n")
            .garbage(1, b"lock a 1\r\nunlock a\n"),
    );
    add(
        "seed-pipelined-behind-wait",
        CoreOps::new(4, 4, 0)
            .lock(0, 0, 0)
            .burst(1, &[0x40, 0x01, 0x81, 0x02, 0x80])
            .burst(2, &[0x40, 0x81])
            .advance_ms(3)
            .unlock(0, 0),
    );
    add(
        "seed-split-commands",
        CoreOps::new(4, 4, 0)
            .lock_split(0, 0, 7, 3)
            .lock_split(1, 0, 7, 9)
            .advance_us(10)
            .unlock(0, 0)
            .lock_split(0, 1, 1, 1)
            .advance_ms(2)
            .lock(0, 2, 1),
    );
    add(
        "seed-backpressure",
        CoreOps::new(4, 1, 0)
            .lock(0, 0, 0)
            .lock(1, 0, 8)
            .burst(1, &[0x81, 0x82, 0x83])
            .burst(1, &[0x01, 0x81])
            .unlock(0, 0)
            .advance_ms(5),
    );
    add(
        "seed-huge-timeouts-years",
        CoreOps::new(4, 4, 3)
            .lock(0, 0, 0)
            .lock(1, 0, 11)
            .lock(2, 0, 12)
            .lock(3, 0, 13)
            .lock(4, 0, 14)
            .lock(5, 0, 15)
            .lock(6, 0, 10)
            .advance_big(4)
            .advance_big(10)
            .advance_big(16)
            .sleep_until_poll_timeout()
            .advance_big(22),
    );
    add(
        "seed-missed-tick-then-input",
        CoreOps::new(4, 4, 0)
            .lock(0, 0, 0)
            .lock(0, 1, 0)
            .burst(1, &[0x20, 0x19])
            .silent_ms(20)
            .unlock(1, 1)
            .unlock(0, 1),
    );
    add(
        "seed-line-too-long",
        CoreOps::new(0, 4, 0)
            .lock(0, 0, 0)
            .lock(1, 0, 7)
            .lock(0, 7, 1)
            .advance_ms(1),
    );
    add(
        "seed-poll-timeout-sleeps",
        CoreOps::new(4, 4, 1)
            .lock(0, 0, 0)
            .lock(1, 0, 6)
            .lock(2, 0, 9)
            .lock(3, 0, 11)
            .sleep_until_poll_timeout()
            .sleep_until_poll_timeout()
            .sleep_until_poll_timeout()
            .sleep_until_poll_timeout()
            .sleep_until_poll_timeout()
            .tick(),
    );
    add(
        "seed-limit-locks-per-connection",
        CoreOps::with_limits(2)
            .lock(0, 0, 0)
            .lock(0, 1, 0)
            .lock(0, 2, 0)
            .lock(1, 2, 0)
            .lock(0, 2, 7)
            .unlock(0, 1)
            .lock(0, 2, 7)
            .unlock(1, 2),
    );
    add(
        "seed-limit-table-full",
        CoreOps::with_limits(4)
            .lock(0, 0, 0)
            .lock(1, 1, 0)
            .lock(2, 2, 0)
            .lock(3, 3, 0)
            .lock(3, 4, 0)
            .lock(3, 0, 7)
            .close(0)
            .lock(2, 4, 0)
            .unlock(2, 2)
            .lock(2, 4, 0),
    );
    add(
        "seed-limit-no-locks",
        CoreOps::with_limits(6)
            .lock(0, 0, 0)
            .unlock(0, 0)
            .lock(1, 0, 7),
    );
    add(
        "regress-zero-pending-bound",
        CoreOps::new(4, 0, 0)
            .lock(0, 0, 0)
            .lock(1, 0, 8)
            .unlock(1, 1)
            .lock(2, 1, 0)
            .unlock(0, 0)
            .unlock(2, 1),
    );
    add(
        "seed-v2-acquire-tokens",
        CoreOps(vec![V2_SEEDED, 0])
            .acquire(0, 0, 7, 0)
            .acquire(1, 0, 7, 0)
            .lock(2, 0, 7)
            .unlock(0, 0)
            .unlock(1, 0)
            .info(4, 0)
            .stats(4),
    );
    let mut sem = CoreOps(vec![V2_PLAIN, 0]);
    for c in 0..7 {
        sem.acquire(c, 0, 12, 4);
    }
    sem.info(7, 0)
        .close(1)
        .close(4)
        .unlock(0, 0)
        .info(7, 0)
        .close(2)
        .unlock(5, 0)
        .info(7, 0);
    add("seed-v2-semaphore-fifo-disconnects", &mut sem);
    add(
        "seed-v2-limit-errors",
        CoreOps(vec![V2_PLAIN, 0])
            .acquire(0, 0, 0, 2)
            .lock(1, 0, 0)
            .acquire(1, 0, 0, 4)
            .acquire(1, 0, 0, 5)
            .acquire(1, 0, 0, 13)
            .acquire(1, 0, 0, 7)
            .info(1, 0)
            .acquire(1, 1, 0, 6)
            .acquire(2, 1, 0, 6)
            .acquire(2, 2, 0, 1)
            .lock(1, 2, 0),
    );
    add(
        "seed-v2-names-info",
        CoreOps(vec![V2_PLAIN, 0])
            .name(0, 0)
            .name(0, 3)
            .info(1, 0)
            .lock(0, 0, 0)
            .advance_ms(20)
            .info(1, 0)
            .name(0, 2)
            .info(1, 0)
            .name(0, 1)
            .info(1, 0),
    );
    add(
        "seed-v2-auth",
        CoreOps(vec![V2_AUTH, 0])
            .lock(0, 0, 0)
            .auth(1)
            .lock(1, 0, 0)
            .auth_wrong(2, 0)
            .auth(3)
            .lock(3, 0, 8)
            .advance_ms(30)
            .unlock(1, 0)
            .auth_wrong(3, 1)
            .lock(3, 1, 0)
            .auth(4)
            .lock(4, 0, 12)
            .until_deadline(true)
            .until_deadline(false)
            .auth(5)
            .auth_wrong(5, 2)
            .close(5)
            .auth(6)
            .auth(6)
            .auth_wrong(6, 3)
            .sleep_until_poll_timeout(),
    );
    add(
        "seed-v2-auth-not-enabled",
        CoreOps(vec![V2_PLAIN, 0])
            .auth(0)
            .lock(0, 0, 0)
            .auth_wrong(0, 1),
    );
    add(
        "seed-v2-evict",
        CoreOps(vec![V2_PLAIN, 0])
            .acquire(0, 1, 12, 2)
            .lock(0, 3, 0)
            .acquire(1, 1, 12, 2)
            .acquire(2, 1, 12, 2)
            .lock(5, 3, 12)
            .evict(4, 1)
            .evict(3, 1)
            .evict(4, 2)
            .evict(6, 1)
            .stats(4),
    );
    add(
        "seed-v2-evict-with-auth",
        CoreOps(vec![V2_AUTH_SEEDED, 0])
            .auth(0)
            .lock(0, 0, 0)
            .auth(3)
            .evict(3, 0)
            .evict(3, 0)
            .stats(3),
    );
    // A few small generated ones.
    for (i, name) in [
        "seed-random-1",
        "seed-random-2",
        "seed-random-3",
        "seed-random-4",
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = dreadlock::model::Rng::new(0xc0de + i as u64);
        let data: Vec<u8> = (0..64 + 64 * i).map(|_| rng.next_u64() as u8).collect();
        seeds.push((name, data));
    }
    seeds
}

/// Encodes `check_timer` ops; see its decoder.
struct TimerOps(Vec<u8>);

impl TimerOps {
    /// `start`: 0 (time 0), 2 (2^36 - 0x0101), 3 (u64::MAX / 2 + 0x0101).
    fn new(start: u8) -> Self {
        let mut v = vec![start];
        if start != 0 {
            v.extend_from_slice(&[1, 1]);
        }
        TimerOps(v)
    }
    /// magnitude: 0 (< 80 ms), 2 (< 5000), 3 (x64), 4 (x2^20), 5 (timer::MAX_DELAY - x%4).
    fn insert(&mut self, magnitude: u8, arg: u16) -> &mut Self {
        self.0.push(magnitude << 5);
        self.0.extend_from_slice(&arg.to_le_bytes());
        self
    }
    fn insert_past(&mut self, by: u16) -> &mut Self {
        self.0.push(7 << 5 | 0x10);
        self.0.extend_from_slice(&by.to_le_bytes());
        self
    }
    fn cancel(&mut self, nth: u8) -> &mut Self {
        self.0.extend_from_slice(&[3, nth]);
        self
    }
    fn until_next_wake(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[4, 0]);
        self
    }
    fn advance(&mut self, ms: u8) -> &mut Self {
        self.0.extend_from_slice(&[5, ms]);
        self
    }
    fn advance_big(&mut self, arg: u8) -> &mut Self {
        self.0.extend_from_slice(&[6, arg]);
        self
    }
    fn poll_one(&mut self, step: u8) -> &mut Self {
        self.0.extend_from_slice(&[7, step]);
        self
    }
}

fn timer_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut add = |name, ops: &mut TimerOps| seeds.push((name, std::mem::take(&mut ops.0)));
    add(
        "seed-insert-advance-fire",
        TimerOps::new(0)
            .insert(0, 5)
            .insert(0, 5)
            .insert(0, 1)
            .insert(2, 100)
            .insert(2, 4095)
            .advance(5)
            .until_next_wake()
            .until_next_wake()
            .advance(200),
    );
    add(
        "seed-cancel-middle",
        TimerOps::new(0)
            .insert(0, 10)
            .insert(0, 10)
            .insert(0, 10)
            .cancel(1)
            .cancel(0xff)
            .advance(10)
            .cancel(0),
    );
    add(
        "seed-cascade-levels",
        TimerOps::new(0)
            .insert(3, 1000)
            .insert(4, 3)
            .insert(4, 300)
            .insert(3, 1)
            .advance_big(0x21)
            .advance_big(0x42)
            .advance_big(0xff)
            .until_next_wake()
            .until_next_wake(),
    );
    add(
        "seed-max-timeout",
        TimerOps::new(2)
            .insert(5, 0)
            .insert(5, 3)
            .advance_big(0xfc)
            .advance_big(0xfc)
            .until_next_wake(),
    );
    add(
        "seed-past-deadlines",
        TimerOps::new(0)
            .advance(200)
            .insert_past(5)
            .insert_past(0)
            .insert(0, 0)
            .insert_past(150)
            .poll_one(0)
            .insert_past(1)
            .poll_one(0)
            .poll_one(0)
            .poll_one(0)
            .poll_one(0),
    );
    add(
        "seed-partial-polls",
        TimerOps::new(0)
            .insert(0, 3)
            .insert(0, 3)
            .insert(0, 4)
            .insert(0, 7)
            .poll_one(5)
            .insert(0, 1)
            .poll_one(0)
            .poll_one(7)
            .poll_one(7),
    );
    add(
        "seed-end-of-time",
        TimerOps::new(3)
            .insert(4, 0xffff)
            .insert(5, 1)
            .insert(0, 1)
            .advance_big(0xff)
            .until_next_wake(),
    );
    for (i, name) in ["seed-random-1", "seed-random-2", "seed-random-3"]
        .into_iter()
        .enumerate()
    {
        let mut rng = dreadlock::model::Rng::new(0x7173 + i as u64);
        let data: Vec<u8> = (0..48 + 96 * i).map(|_| rng.next_u64() as u8).collect();
        seeds.push((name, data));
    }
    seeds
}

/// Every named seed passes its check (whether or not the files are there).
#[test]
fn named_seeds_pass() {
    for (name, data) in parser_seeds() {
        std::panic::catch_unwind(|| model::check_parser(&data))
            .unwrap_or_else(|_| panic!("parser seed {name}"));
    }
    for (name, data) in core_seeds() {
        std::panic::catch_unwind(|| model::check_core(&data))
            .unwrap_or_else(|_| panic!("core seed {name}"));
    }
    for (name, data) in timer_seeds() {
        std::panic::catch_unwind(|| model::check_timer(&data))
            .unwrap_or_else(|_| panic!("timer seed {name}"));
    }
}

#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand after changing a seed"]
fn write_seeds() {
    for (target, seeds) in [
        ("parser", parser_seeds()),
        ("core", core_seeds()),
        ("timer", timer_seeds()),
    ] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            std::fs::write(dir.join(name), data).unwrap();
        }
    }
}

/// Random inputs through the core check, many of them version 2 commands
/// (op 0 with the flag), with auth on in about a fifth of the configs: a
/// bounded, deterministic stand-in for a fuzzing run. `CORE_RANDOM_SEED`
/// replays one seed.
#[test]
fn random_core_inputs() {
    let seeds: Vec<u64> = match std::env::var("CORE_RANDOM_SEED") {
        Ok(s) => vec![s.parse().expect("CORE_RANDOM_SEED")],
        Err(_) => (0..1500).collect(),
    };
    for seed in seeds {
        let mut rng = dreadlock::model::Rng::new(seed);
        let len = 2 + rng.index(400);
        let data: Vec<u8> = (0..len)
            .map(|i| {
                let b = rng.next_u64() as u8;
                // Every few bytes, a v2 command opcode for a random conn.
                if i >= 2 && rng.chance(1, 4) {
                    0x80 | (b & 0x70)
                } else {
                    b
                }
            })
            .collect();
        if let Err(e) = std::panic::catch_unwind(|| model::check_core(&data)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("CORE_RANDOM_SEED={seed}: {msg}");
        }
    }
}
