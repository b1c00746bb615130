//! Progress bars of `show`, `check` and `gc`: drawn on stderr when it is a terminal and the
//! output is a table; never with `-o json|yaml`, never in a pipe. The terminal is a pty
//! made by util-linux's `script`, with ipamctl's stdout sent to a file, so what `script`
//! relays is ipamctl's stderr alone.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::Fixture;

/// Runs ipamctl on `args` with stderr on a pty; returns (what the pty showed, stdout).
fn on_a_terminal(f: &Fixture, args: &[&str]) -> (String, String) {
    let out_file = f.db.with_file_name("stdout.txt");
    let mut line = vec![
        quote(Path::new(env!("CARGO_BIN_EXE_ipamctl"))),
        "--datastore".into(),
        quote(Path::new(&format!("sqlite:{}", f.db.display()))),
    ];
    line.extend(args.iter().map(|a| quote(Path::new(a))));
    line.push(format!("> {}", quote(&out_file)));
    let run = Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(line.join(" "))
        .arg("/dev/null")
        .env("TERM", "xterm")
        .env_remove("IPAM_DATASTORE")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run util-linux's script (apt-get install util-linux): {e}")
        });
    assert!(
        run.status.success(),
        "ipamctl {args:?} on a pty: {}",
        String::from_utf8_lossy(&run.stdout)
    );
    let stdout = std::fs::read_to_string(&out_file).unwrap();
    (String::from_utf8_lossy(&run.stdout).into_owned(), stdout)
}

/// A POSIX shell word.
fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn fixture() -> Fixture {
    let f = Fixture::new();
    f.pool("10.244.0.0/16", 26);
    f.assign("n1", 3, "c1", "a");
    f
}

#[test]
fn show_and_check_draw_progress_on_a_terminal_beside_a_table() {
    let f = fixture();
    let (tty, stdout) = on_a_terminal(&f, &["show"]);
    assert!(tty.contains("reading pools and blocks"), "{tty:?}");
    assert!(stdout.starts_with("POOL"), "{stdout}");
    assert!(!stdout.contains("reading"), "{stdout}");

    let (tty, stdout) = on_a_terminal(&f, &["check"]);
    for step in ["reading blocks", "reading handles", "checking"] {
        assert!(tty.contains(step), "{step}: {tty:?}");
    }
    assert!(stdout.starts_with("Checked 1 pools"), "{stdout}");
}

#[test]
fn json_and_yaml_get_no_progress_even_on_a_terminal() {
    let f = fixture();
    for args in [
        &["show", "-o", "json"][..],
        &["show", "-o", "yaml"],
        &["check", "-o", "json"],
    ] {
        let (tty, stdout) = on_a_terminal(&f, args);
        assert!(tty.trim().is_empty(), "{args:?} drew {tty:?}");
        assert!(!stdout.contains("reading"), "{args:?}: {stdout}");
    }
    let (_, json) = on_a_terminal(&f, &["show", "-o", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed[0]["inUse"], 3);
}

#[test]
fn a_pipe_gets_no_progress() {
    let f = fixture();
    for args in [&["show"][..], &["check"]] {
        let out = f.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {:?}", out.stderr);
    }
}
