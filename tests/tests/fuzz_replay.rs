//! Replays the fuzz seeds (`fuzz/corpus/<target>/`) and every crash found so far
//! (`fuzz/regressions/<target>/`) through the same functions the libFuzzer targets call, so
//! that a fixed crash stays fixed in the ordinary `cargo test` run.

#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

/// A harness function: whether it accepted the input.
type Harness = fn(&[u8]) -> bool;

/// Each target with the harness function its libFuzzer binary calls.
const TARGETS: [(&str, Harness); 5] = [
    ("cni_config", harness::cni_config),
    ("selector", harness::selector),
    ("block", harness::block),
    ("serve_object", harness::serve_object),
    ("plugin_stats", harness::plugin_stats),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; a missing directory fails the test.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_is_accepted_and_does_not_panic() {
    for (target, run) in TARGETS {
        let seeds = inputs("corpus", target);
        assert!(
            seeds.len() >= 2,
            "fuzz/corpus/{target} holds {} seeds; keep a few valid inputs there",
            seeds.len()
        );
        for seed in seeds {
            let data = std::fs::read(&seed).expect("read seed");
            assert!(
                run(&data),
                "{}: the seed is refused, so it no longer reaches the code past the parser",
                seed.display()
            );
        }
    }
}

#[test]
fn every_regression_replays_without_a_panic() {
    let mut replayed = 0;
    for (target, run) in TARGETS {
        for input in inputs("regressions", target) {
            let data = std::fs::read(&input).expect("read regression");
            // Accepted or refused are both fine; a panic fails the test.
            let _ = run(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "fuzz/regressions/* holds no input to replay");
}

#[test]
fn garbage_is_refused_by_every_target() {
    for (target, run) in TARGETS {
        for data in [&b"\xff\xfe"[..], b"[1,2", b"{\"spec\": 7}"] {
            assert!(!run(data), "{target} accepted {data:?}");
        }
    }
}
