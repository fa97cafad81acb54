#!/usr/bin/env bash
# The long forms of the fault suite (issue 7), with a results table at the end:
#   - mock cluster: hostile input ×10, a blocked output for 20 s over 30,000 records, a slow output over
#     12,000, 5 broker outages over 30,000 records, a too-large record; the key service down/up scenario
#     (tests/faults_mock.rs, tests/faults_keys.rs);
#   - tansu: 3 × kill -9 and restart over 30,000 records, scale out and in over 30,000 records
#     (tests/tansu_faults.rs; tansu is started on a free loopback port and stopped at the end);
#   - fuzz: every target of tests/fuzz.rs with FUZZ_CASES cases (default 1,000,000), release build.
# Usage: scripts/faults-long.sh [mock|tansu|fuzz ...]   (default: all three)
# Every run's full output is kept in target/faults-long/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
out=target/faults-long
mkdir -p "$out"
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(mock tansu fuzz)

run() { # name, command...
  local name=$1; shift
  echo "=== $name: $*"
  local started=$SECONDS
  if "$@" >"$out/$name.log" 2>&1; then status=ok; else status=FAILED; fi
  echo "$name: $status in $((SECONDS - started)) s (log: $out/$name.log)"
  grep -h '^RESULT' "$out/$name.log" | sed 's/^RESULT /  /' || true
  echo "$name $status $((SECONDS - started))" >>"$out/summary"
}
: >"$out/summary"

for part in "${parts[@]}"; do
  case $part in
    mock)
      run mock env UID2_LONG=1 cargo test --test faults_mock --test faults_keys -- --nocapture --test-threads 1
      ;;
    tansu)
      port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$out/tansu-broker.log" 2>&1 &
      tansu_pid=$!
      trap 'kill "$tansu_pid" 2>/dev/null || true' EXIT
      for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
      run tansu env UID2_LONG=1 UID2_TEST_BROKER="127.0.0.1:$port" \
        cargo test --test tansu_faults -- --ignored --nocapture --test-threads 1
      kill "$tansu_pid" 2>/dev/null || true
      ;;
    fuzz)
      cases=${FUZZ_CASES:-1000000}
      run fuzz env UID2_FUZZ_CASES="$cases" cargo test --release --test fuzz -- --nocapture
      grep -h '^test fuzz_' "$out/fuzz.log" | sed "s/^/  /; s/\$/ ($cases cases)/" || true
      ;;
    *) echo "unknown part $part (mock, tansu, fuzz)" >&2; exit 2 ;;
  esac
done

echo
echo "=== results"
printf '%-8s %-8s %8s\n' part status seconds
while read -r name status secs; do printf '%-8s %-8s %8s\n' "$name" "$status" "$secs"; done <"$out/summary"
! grep -q FAILED "$out/summary"
