#!/usr/bin/env bash
# Runs one coverage-guided fuzz target (fuzz/src/bin/TARGET.rs) under AFL++ for a bounded
# time, niced so it never starves builds:
#
#   scripts/fuzz.sh TARGET [SECONDS]     # default 600 s
#   scripts/fuzz.sh list                 # the targets
#
# Targets: request_scan usage_scan usage_strip upstream_head chunked translate_stream journal traceparent.
# Each starts from the committed seeds in fuzz/corpus/TARGET and writes its findings to
# $FUZZ_OUT/TARGET/default/{crashes,hangs,queue} (FUZZ_OUT defaults to
# $CARGO_TARGET_DIR/fuzz-out or target/fuzz-out). A crash file found there goes into
# fuzz/regressions/TARGET/ with a fix: the normal tests replay that folder
# (worker/tests/fuzz_corpus.rs). At the end it prints afl-fuzz's stats (executions,
# paths, crashes).
#
# Installs what it needs, once: cargo-afl from crates.io (its AFL++ is built from the
# source the crate bundles, no download) and the C toolchain AFL++ is built with.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
targets="request_scan usage_scan usage_strip upstream_head chunked translate_stream journal traceparent"
target=${1:-}
secs=${2:-600}
if [[ "$target" == list ]]; then
    echo "$targets"
    exit 0
fi
if [[ -z "$target" || " $targets " != *" $target "* ]]; then
    echo "usage: $0 TARGET [SECONDS]   (TARGET: $targets)" >&2
    exit 2
fi

if ! cargo afl --version >/dev/null 2>&1; then
    if ! command -v cc >/dev/null || ! command -v make >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential
    fi
    nice -n 19 cargo install cargo-afl --locked
fi
# Builds AFL++ and its runtime for this rustc if that was not done yet (a no-op otherwise).
cargo afl config --build >/dev/null 2>&1 || true

target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz
out=${FUZZ_OUT:-${CARGO_TARGET_DIR:-$root/target}/fuzz-out}/$target
# An explicit --target keeps the instrumentation flags off build scripts and proc macros,
# which halves the (single codegen unit, opt-level 3) build.
triple=$(rustc -vV | sed -n 's/^host: //p')
(cd "$root/fuzz" && CARGO_TARGET_DIR=$target_dir nice -n 19 cargo afl build --release --target "$triple" --bin "$target")
bin=$target_dir/$triple/release/$target

mkdir -p "$out"
# Resume a previous run of this target when there is one ("-i -" continues its queue).
input=$root/fuzz/corpus/$target
if [[ -d "$out/default/queue" ]]; then
    input=-
fi
# No CPU pinning (other work shares the cores), no UI (logs instead), and afl-fuzz does
# not insist on a core-dump handler or the CPU governor it would like.
export AFL_NO_AFFINITY=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
nice -n 19 cargo afl fuzz -V "$secs" -i "$input" -o "$out" "$bin" \
    >"$out/afl.log" 2>&1 || { tail -30 "$out/afl.log" >&2; exit 1; }

stats=$out/default/fuzzer_stats
grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|corpus_found|bitmap_cvg|saved_crashes|saved_hangs|stability)' "$stats"
crashes=$(find "$out/default/crashes" -type f -name 'id:*' | wc -l)
if [[ "$crashes" -gt 0 ]]; then
    echo "$crashes crash(es) in $out/default/crashes: add them to fuzz/regressions/$target/ with a fix" >&2
    exit 1
fi
