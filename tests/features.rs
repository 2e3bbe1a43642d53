//! The crate by audience: the client-only configuration depends on no
//! other crate, and the async client adds only tokio's own. Reads the
//! resolved dependency graph with `cargo tree` (offline and locked: it
//! needs only Cargo.lock and what the build of the tests fetched).

use std::collections::BTreeSet;
use std::process::Command;

/// The third-party packages (name only) of the library's normal
/// dependencies with `args`, on this platform (every platform would need
/// the manifests of crates no build here downloads, such as windows-sys).
fn dependencies(args: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}"])
        .args(args)
        .output()
        .expect("run cargo tree");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "dreadlock")
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_blocking_client_needs_no_other_crate() {
    let deps = dependencies(&["--no-default-features"]);
    assert!(
        deps.is_empty(),
        "default-features = false pulls in {deps:?}"
    );
}

#[test]
fn the_async_client_adds_only_tokio_and_its_own_dependencies() {
    let deps = dependencies(&["--no-default-features", "--features", "tokio"]);
    // tokio with net, io-util and time (and, elsewhere, its platform
    // crates); socket2 is also what the keepalive setting uses.
    let tokio_own = [
        "tokio",
        "bytes",
        "libc",
        "mio",
        "pin-project-lite",
        "socket2",
        "wasi",
        "windows-link",
        "windows-sys",
    ];
    assert!(deps.contains("tokio"), "{deps:?}");
    for name in &deps {
        assert!(
            tokio_own.contains(&name.as_str()),
            "the async client pulls in {name}: {deps:?}"
        );
    }
}

#[test]
fn the_daemon_is_what_brings_the_rest() {
    let deps = dependencies(&[]);
    for name in [
        "clap",
        "mio",
        "slab",
        "memchr",
        "rustix",
        "signal-hook",
        "socket2",
    ] {
        assert!(deps.contains(name), "{name} missing from {deps:?}");
    }
}
