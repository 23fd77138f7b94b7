//! "At most one copy of the body" (issue 7), counted: the bytes the model rewrite
//! allocates, over the body's size, for each body size of the hotpath bench (the rewrite
//! now keeps the body as slices around the edit, so this is ~0: the list of pieces and
//! the edit's bytes). Exact and repeatable, where subtracting two noisy timings was not.
//! Prints one `body-copies` line per size, which `bench/benchlib.py criterion` reads into
//! the report.
//!
//! A bench of its own because counting needs `stats_alloc`'s instrumented allocator as the
//! global one (its wrapper of another allocator is `const` only on nightly, so it can only
//! count the system allocator), and `hotpath` times the worker's own allocator.
#![allow(clippy::unwrap_used)]

use std::{alloc::System, hint::black_box};

use bytes::Bytes;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use switchyard_worker::extract;

mod common;
use common::{body, SIZES};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated by `f`, over `len`: the copies of the body it made.
fn copies(len: usize, f: impl FnOnce() -> extract::Parts) -> f64 {
    let region = Region::new(GLOBAL);
    let out = black_box(f());
    let change = region.change();
    drop(out);
    (change.bytes_allocated + change.bytes_reallocated.max(0) as usize) as f64 / len as f64
}

fn main() {
    let upstream_model_json = Bytes::from_static(b"\"gpt-4o-2024-08-06\"");
    for (size, label) in SIZES {
        let b = body(size);
        let rewrite = copies(b.len(), || {
            let head = extract::scan(&b).unwrap();
            extract::splice(&b, head.model_range.unwrap(), &upstream_model_json)
        });
        let with_usage = copies(b.len(), || {
            let head = extract::scan(&b).unwrap();
            let mut edits = vec![
                (head.model_range.clone().unwrap(), upstream_model_json.clone()),
                extract::include_usage_edit(&b, &head),
            ];
            extract::splice_many(&b, &mut edits)
        });
        println!("body-copies {label} scan+rewrite={rewrite:.4} scan+rewrite+usage={with_usage:.4}");
    }
}
