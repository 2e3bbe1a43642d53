//! `dreadlock-cli --help` and the help of each subcommand explain every
//! argument with a text of its own (clap lists undocumented ones too).

mod help;

use std::process::Command;

fn help_of(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dreadlock-cli"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands listed under `Commands:` (clap's own `help` aside).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_flag_of_every_subcommand_is_explained() {
    let top = help_of(&[]);
    help::assert_every_argument_explained(
        &top,
        &[
            "--server",
            "--connect-timeout",
            "--name",
            "--auth-file",
            "--version",
        ],
    );
    let subs = subcommands(&top);
    for want in ["lock", "ping", "status", "stats", "evict", "which"] {
        assert!(subs.iter().any(|s| s == want), "no {want} in {subs:?}");
    }
    for sub in &subs {
        let help = help_of(&[sub]);
        help::assert_every_argument_explained(&help, &["--help"]);
    }
    help::assert_every_argument_explained(
        &help_of(&["lock"]),
        &[
            "--timeout",
            "--conflict-exit-code",
            "--kill-grace",
            "--quiet",
            "--limit",
            "--name",
            "--auth-file",
            "<KEY>",
        ],
    );
    help::assert_every_argument_explained(&help_of(&["status"]), &["<KEY>", "--json"]);
    help::assert_every_argument_explained(&help_of(&["stats"]), &["--json"]);
    help::assert_every_argument_explained(&help_of(&["evict"]), &["<KEY>"]);
}
