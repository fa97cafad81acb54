#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run on a clean clone):
#   formatting, lints, the engine's purity and the one-way dependencies between folders, every Rust
#   test (the Kafka stage against librdkafka's mock cluster included), interop with the official UID2
#   SDK, and the stage end to end through a real Kafka-compatible broker (tansu).
# It installs what it needs — a throwaway Python venv with uid2-client under target/, tansu with
# `cargo install` into a cache when it is not there yet (a one-off ~15-25 min build on 2 cores; later runs
# reuse the binary), and cmake from Debian packages for the `oidc` build — starts the broker on loopback,
# and stops it when it ends, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "rustfmt"
cargo fmt --check

step "clippy (all targets, warnings are errors)"
cargo clippy --all-targets --quiet -- -D warnings

step "the engine does no I/O, reads no clock and no environment"
if grep -rnE 'tokio::|rdkafka::|reqwest::|std::fs|SystemTime::now|Instant::now|std::env::var|tracing::|chrono::' src/engine | grep -vE '^\S+:\s*//'; then
  echo "error: the lines above reach for I/O, the clock or the environment from src/engine; pass them in" >&2
  exit 1
fi

step "dependencies point one way: cli → tools → stage → config → support, engine"
# A folder may use the ones to its right, never those to its left. Doc comments are not imports.
one_way() {
  local folder=$1 forbidden=$2
  if grep -rnE "crate::($forbidden)\b" "$folder" | grep -vE '^\S+:[0-9]+:\s*//'; then
    echo "error: the lines above make $folder depend on crate::{${forbidden//|/, }}; move the shared piece down a layer" >&2
    exit 1
  fi
}
one_way src/engine 'cli|tools|stage|config|support'
one_way src/support 'cli|tools|stage|config|engine'
one_way src/config 'cli|tools|stage'
one_way src/stage 'cli|tools'
one_way src/tools 'cli'

step "the shipped configurations validate (config/dev.toml; config/enricher.toml with its variables)"
cargo run --quiet -- validate --config config/dev.toml
UID2_API_KEY=ci UID2_SECRET_KEY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \
  cargo run --quiet -- validate --config config/enricher.toml

step "unit, property and integration tests"
cargo test --quiet

step "interop with the official UID2 SDK (uid2-client from PyPI, in a throwaway venv)"
# shellcheck source=scripts/lib/python-venv.sh
source scripts/lib/python-venv.sh
UID2_PYTHON="$UID2_PYTHON" cargo test --quiet --test interop -- --ignored --nocapture
UID2_PYTHON="$UID2_PYTHON" cargo test --quiet --test interop_sharing -- --ignored --nocapture

step "tansu: a Kafka-compatible broker for the end-to-end tests"
# Built once per machine into a cache outside the clone (a one-off ~15-25 min on 2 cores): `dynostore` for
# memory storage, `libsql` for the SQLite storage the SCRAM tests need (users survive a restart there).
tansu_root="${UID2_TANSU_CACHE:-$HOME/.cache/uid2-enricher/tansu-0.6.0-dynostore-libsql}"
if [ ! -x "$tansu_root/bin/tansu" ]; then
  echo "tansu not cached in $tansu_root: cargo install tansu 0.6.0 --features dynostore,libsql"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root "$tansu_root"
fi
export PATH="$tansu_root/bin:$PATH"
tansu_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p target
tansu broker --listener-url "tcp://127.0.0.1:$tansu_port" --advertised-listener-url "tcp://127.0.0.1:$tansu_port" \
  --storage-engine memory://tansu/ >target/tansu.log 2>&1 &
tansu_pid=$!
trap 'kill "$tansu_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$tansu_port") 2>/dev/null && break
  sleep 0.1
done
echo "tansu $(tansu --version 2>/dev/null | head -1) on 127.0.0.1:$tansu_port (log: target/tansu.log)"

# Every tests/tansu_*.rs is a test binary whose tests are #[ignore]d unless a broker is given.
for t in tests/tansu_*.rs; do
  name=$(basename "$t" .rs)
  step "through tansu: $name"
  UID2_TEST_BROKER="127.0.0.1:$tansu_port" cargo test --quiet --test "$name" -- --ignored --nocapture --test-threads 1
done

step "through tansu: every codec in and out"
UID2_TEST_BROKER="127.0.0.1:$tansu_port" cargo test --quiet --test codecs_and_batches -- --ignored --nocapture

step "secured clusters: SASL/SCRAM, TLS and mTLS through tansu and a TLS proxy"
UID2_TANSU="$tansu_root/bin/tansu" cargo test --quiet --test secured_cluster -- --ignored --nocapture --test-threads 1

step "OIDC: librdkafka built with the oidc feature (CMake and libcurl)"
if ! command -v cmake >/dev/null 2>&1; then
  echo "cmake not found: apt-get install cmake (the oidc feature builds librdkafka with CMake)"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing cmake needs root; run: sudo apt-get install cmake" >&2
    exit 1
  fi
  (apt-get update -qq && apt-get install -y -qq cmake) >/dev/null
fi
cargo test --quiet --features oidc --test cluster_snippets --test log_hygiene -- --nocapture

step "all tests passed"
