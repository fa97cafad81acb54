#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run on a clean clone):
#   formatting, lints, the pure-core rule, every Rust test, and interop with the official UID2 SDK.
# It installs what it needs (a throwaway Python venv with uid2-client under target/) and cleans up after
# itself. Runs in a few minutes on 2 cores once the crate is built.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "rustfmt"
cargo fmt --check

step "clippy (all targets, warnings are errors)"
cargo clippy --all-targets --quiet -- -D warnings

step "the pure core does no I/O, reads no clock and no environment"
core=(src/uid2 src/openrtb src/enrich.rs src/optout.rs)
if grep -rnE 'tokio::|rdkafka::|reqwest::|std::fs|SystemTime::now|Instant::now|std::env::var|tracing::|chrono::' "${core[@]}" | grep -vE '^\S+:\s*//'; then
  echo "error: the lines above reach for I/O, the clock or the environment from the pure core; pass them in" >&2
  exit 1
fi

step "unit, property and integration tests"
cargo test --quiet

step "interop with the official UID2 SDK (uid2-client from PyPI, in a throwaway venv)"
# shellcheck source=scripts/lib/python-venv.sh
source scripts/lib/python-venv.sh
UID2_PYTHON="$UID2_PYTHON" cargo test --quiet --test interop -- --ignored --nocapture

step "all tests passed"
