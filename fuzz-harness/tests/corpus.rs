//! Replays every checked-in fuzz input through its target's harness on stable: the
//! minimised corpus of each target (`fuzz/corpus/<target>/`) and the inputs of past
//! findings (`fuzz/regressions/<target>/`). A panic or failed assertion in a harness fails
//! the test, naming the target and file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use flowlog_fuzz_harness::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `target` on every file of `dir`; returns the files that made it panic.
fn replay(target: fn(&[u8]), dir: &Path) -> (usize, Vec<String>) {
    let inputs = files(dir);
    let mut failed = Vec::new();
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| target(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    (inputs.len(), failed)
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_corpus() {
    let targets_dir = fuzz_dir().join("fuzz_targets");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        assert!(
            targets_dir.join(format!("{name}.rs")).is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
    let on_disk = files(&targets_dir).len();
    assert_eq!(on_disk, TARGETS.len(), "fuzz targets not listed in TARGETS");
}

#[test]
fn corpora_and_regressions_replay_without_findings() {
    let mut failed = Vec::new();
    for (name, target) in TARGETS {
        let (corpus, mut corpus_failed) = replay(*target, &fuzz_dir().join("corpus").join(name));
        assert!(corpus > 0, "fuzz/corpus/{name}/ is empty or missing");
        let (_, mut regressions_failed) =
            replay(*target, &fuzz_dir().join("regressions").join(name));
        failed.append(&mut corpus_failed);
        failed.append(&mut regressions_failed);
    }
    assert!(
        failed.is_empty(),
        "inputs that fail their harness:\n{}",
        failed.join("\n")
    );
}
