//! Replays every committed fuzz input, the seed corpus (`fuzz/corpus/TARGET/`) and the
//! inputs that once broke a parser (`fuzz/regressions/TARGET/`), through the same
//! `switchyard_worker::fuzzing` functions the AFL++ targets call: a regression stays
//! fixed without a fuzzer installed. Each folder is named after its target.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("request_scan", switchyard_worker::fuzzing::request_scan),
    ("usage_scan", switchyard_worker::fuzzing::usage_scan),
    ("usage_strip", switchyard_worker::fuzzing::usage_strip),
    ("upstream_head", switchyard_worker::fuzzing::upstream_head),
    ("chunked", switchyard_worker::fuzzing::chunked),
    ("translate_stream", switchyard_worker::fuzzing::translate_stream),
    ("journal", switchyard_worker::fuzzing::journal),
    ("traceparent", switchyard_worker::fuzzing::traceparent),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs every file under `fuzz/KIND/TARGET/`; returns how many ran per target.
fn replay(kind: &str) -> Vec<(&'static str, usize)> {
    let mut ran = Vec::new();
    for (name, f) in TARGETS {
        let dir = fuzz_dir().join(kind).join(name);
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
            files.sort();
            for file in files.iter().filter(|p| p.is_file()) {
                let data = std::fs::read(file).unwrap();
                if std::panic::catch_unwind(|| f(&data)).is_err() {
                    panic!("{name} fails on {}", file.display());
                }
                n += 1;
            }
        }
        ran.push((*name, n));
    }
    // Every folder belongs to a target: a misnamed one would never run.
    if let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind)) {
        for e in entries {
            let name = e.unwrap().file_name();
            let name = name.to_string_lossy();
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name),
                "fuzz/{kind}/{name} is not a target"
            );
        }
    }
    ran
}

#[test]
fn the_seed_corpus_passes_every_target() {
    for (name, n) in replay("corpus") {
        assert!(n > 0, "fuzz/corpus/{name} has no seeds");
    }
}

#[test]
fn every_regression_input_stays_fixed() {
    replay("regressions");
}
