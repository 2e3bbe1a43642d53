//! Reads clap's long `--help` output: every argument and the help text it
//! has of its own. clap lists every declared argument whether or not it is
//! documented, so a test must look at the text under each one.
#![allow(dead_code)]

/// Every argument entry of a long `--help` (`spec`, `text`): `spec` is the
/// first line (`-v, --verbose`, `--bind <ADDR>`, `[PORT]`), `text` the
/// description under it without clap's own `[default: ...]`,
/// `[possible values: ...]`, `[env: ...]` and `[aliases: ...]` notes.
pub fn entries(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    // Whether indented text still belongs to the last entry: a heading
    // (`Options:`, or the after-help's own sections) ends it.
    let mut open = false;
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.is_empty() {
            continue;
        }
        let starts_arg = matches!(body.as_bytes()[0], b'-' | b'[' | b'<');
        if indent == 0 {
            open = false;
        } else if indent < 10 && starts_arg {
            // The text is on the same line when every argument's is short
            // (two or more spaces after the spec), else on the next lines.
            let (spec, text) = match body.split_once("  ") {
                Some((spec, text)) => (spec, without_notes(text.trim())),
                None => (body, String::new()),
            };
            out.push((spec.to_owned(), text));
            open = true;
        } else if indent < 10 {
            open = false; // a subcommand or an after-help line
        } else if open {
            let text = &mut out.last_mut().expect("open means an entry").1;
            let note = ["[default: ", "[possible values: ", "[env: ", "[aliases: "]
                .iter()
                .any(|p| body.starts_with(p));
            if !note {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(body);
            }
        }
    }
    out
}

/// `text` without clap's trailing `[default: ...]`-style notes.
fn without_notes(text: &str) -> String {
    let mut text = text;
    while let Some(open) = text.rfind(" [") {
        let note = &text[open + 1..];
        let is_note = note.ends_with(']')
            && ["[default: ", "[possible values: ", "[env: ", "[aliases: "]
                .iter()
                .any(|p| note.starts_with(p));
        if !is_note {
            break;
        }
        text = text[..open].trim_end();
    }
    if text.starts_with('[') && text.ends_with(']') {
        return String::new();
    }
    text.to_owned()
}

/// Checks that each of `want` is an argument of `help` and that every
/// argument has a help text of its own (non-empty, shared with no other).
pub fn assert_every_argument_explained(help: &str, want: &[&str]) {
    let entries = entries(help);
    for flag in want {
        assert!(
            entries
                .iter()
                .any(|(spec, _)| spec.split([',', ' ']).any(|w| w == *flag)),
            "--help lacks {flag}:\n{help}"
        );
    }
    for (i, (spec, text)) in entries.iter().enumerate() {
        assert!(
            text.split_whitespace().count() >= 2,
            "{spec} has no help text of its own:\n{help}"
        );
        for (other, other_text) in &entries[..i] {
            assert_ne!(text, other_text, "{spec} and {other} share their help text");
        }
    }
}

#[test]
fn reads_documented_and_undocumented_arguments() {
    let help = "\
Usage: x [OPTIONS] [PORT]

Arguments:
  [PORT]
          Port to listen on

          [default: 6001]

Options:
      --bind <ADDR>
          Address to bind

          [default: 0.0.0.0]

      --bare <N>
          [default: 3]

  -v, --verbose
          Log more

Limits:
  line length      --max-line-bytes
                   (not the text of --verbose)
";
    let e = entries(help);
    assert_eq!(
        e,
        [
            ("[PORT]".to_owned(), "Port to listen on".to_owned()),
            ("--bind <ADDR>".to_owned(), "Address to bind".to_owned()),
            ("--bare <N>".to_owned(), String::new()),
            ("-v, --verbose".to_owned(), "Log more".to_owned()),
        ]
    );
    let undocumented = std::panic::catch_unwind(|| assert_every_argument_explained(help, &[]));
    assert!(undocumented.is_err(), "--bare has no help text");
    let documented = help.replace("      --bare <N>\n          [default: 3]\n\n", "");
    assert_every_argument_explained(&documented, &["[PORT]", "--bind", "-v", "--verbose"]);
}

#[test]
fn reads_the_one_line_layout() {
    let help = "\
Options:
  -s, --server <HOST:PORT>    Daemon to use [default: a:1]
      --bare <MS>             [default: 5000]
  -h, --help                  Print help
";
    assert_eq!(
        entries(help),
        [
            (
                "-s, --server <HOST:PORT>".to_owned(),
                "Daemon to use".to_owned()
            ),
            ("--bare <MS>".to_owned(), String::new()),
            ("-h, --help".to_owned(), "Print help".to_owned()),
        ]
    );
}
