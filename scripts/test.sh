#!/usr/bin/env bash
# The project's one test command (README "Test"): builds every binary, then runs the
# whole suite with nextest, on SQLite and, when reachable, Postgres.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -E 'test(watch)'   # extra args go to `cargo nextest run`
set -euo pipefail
cd "$(dirname "$0")/.."

# Postgres: an explicit URL wins; otherwise use the local server if one answers.
if [ -z "${SWITCHYARD_TEST_POSTGRES_URL:-}" ] && [[ "${DATABASE_URL:-}" != postgres* ]]; then
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q; then
    export SWITCHYARD_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/test"
  elif [ -n "${CI:-}" ]; then
    echo "error: CI must run the Postgres suite, but no Postgres answers at 127.0.0.1:5432" >&2
    exit 1
  else
    echo "NOTE: no Postgres at 127.0.0.1:5432 and no DATABASE_URL: the Postgres variants of the store tests will be SKIPPED." >&2
  fi
fi
[ -n "${SWITCHYARD_TEST_POSTGRES_URL:-}" ] && echo "Postgres tests use ${SWITCHYARD_TEST_POSTGRES_URL%%@*}@…" >&2

# Debian packages some tests drive as real peers (installed once, if missing).
./scripts/ensure-deps.sh

# The test runner itself, on a machine that lacks it.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (cargo install --locked)" >&2
  cargo install --locked cargo-nextest
fi

cargo build --workspace --bins
cargo nextest run --workspace --profile "${NEXTEST_PROFILE:-default}" "$@"
