#!/usr/bin/env bash
# The opt-out set at scale (issue: 10,000,000 opt-outs load in <= 20 s into <= 1 GB; a lookup adds
# <= 50 ns per token). Uses the bench binary `benches/optout.rs` in its extra modes:
#   1. writes a CSV of N random opt-outs (once; kept in target/bench-optout/),
#   2. loads it with `optout_feed::load_file` (what `replay --optouts FILE` calls) under /usr/bin/time -v:
#      seconds, entries, heap bytes per entry, peak RSS (the process's VmHWM and time's maximum RSS),
#   3. unless SKIP_TOPIC=1: starts a tansu broker on a free port, writes N random opt-outs to a topic and
#      follows it from the beginning as a stage instance does until caught up: seconds and peak RSS,
#   4. unless SKIP_CRITERION=1: the criterion groups `optout_lookup_10M` and `enrich_2KB_optouts`.
#
#   scripts/bench-optout.sh [CRITERION ARGS...]
#
#   OPTOUT_COUNT      opt-outs (default 10000000)
#   TOPIC_COUNT       opt-outs through the topic (default OPTOUT_COUNT)
#   SKIP_TOPIC=1      no tansu part;  SKIP_CRITERION=1  no criterion part
#   HUGEPAGES=1       runs the bench binary with glibc's malloc on transparent huge pages (THP in
#                     `madvise` mode; allocations up to 32 MiB from the heap, so the set's tables are
#                     in it): GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432
#   ROUNDS=R          also runs the cold-user enrichments interleaved, R rounds (OPTOUT_BENCH_ROUNDS)
#   CRITERION ARGS    passed to criterion after `--warm-up-time 1 --measurement-time 3`
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

count="${OPTOUT_COUNT:-10000000}"
topic_count="${TOPIC_COUNT:-$count}"
target_dir="${CARGO_TARGET_DIR:-target}"
out="$target_dir/bench-optout"
mkdir -p "$out"

bin=$(cargo bench --bench optout --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "optout":
        print(m["executable"])')
[ -x "$bin" ] || { echo "could not build the optout bench binary" >&2; exit 1; }

timed() { # label, then the command; prints the program's own line and /usr/bin/time's figures
    local label="$1"
    shift
    /usr/bin/time -v "$@" 2>"$out/$label.time" | tee "$out/$label.out"
    grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$out/$label.time" | sed "s/^\s*/  $label: /"
}

if [ "${HUGEPAGES:-0}" = 1 ]; then
    export GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432
    echo "== GLIBC_TUNABLES=$GLIBC_TUNABLES (THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled))"
fi

csv="$out/optouts-$count.csv"
if [ ! -s "$csv" ]; then
    echo "== writing $count random opt-outs to $csv"
    OPTOUT_BENCH_GEN="$csv" OPTOUT_BENCH_COUNT="$count" "$bin"
fi
echo "== loading $csv ($(du -h "$csv" | cut -f1)) with optout_feed::load_file"
OPTOUT_BENCH_LOAD="$csv" timed file-load "$bin"

if [ "${SKIP_TOPIC:-0}" != 1 ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$out/tansu.log" 2>&1 &
    tansu_pid=$!
    trap 'kill "$tansu_pid" 2>/dev/null || true' EXIT
    sleep 1
    topic="optouts-bench-$$"
    echo "== writing $topic_count random opt-outs to topic $topic on tansu 127.0.0.1:$port"
    OPTOUT_BENCH_PRODUCE="$topic_count" OPTOUT_BENCH_BROKERS="127.0.0.1:$port" OPTOUT_BENCH_TOPIC="$topic" "$bin"
    echo "== reading $topic without applying anything (the broker's and librdkafka's share)"
    OPTOUT_BENCH_DRAIN=1 OPTOUT_BENCH_BROKERS="127.0.0.1:$port" OPTOUT_BENCH_TOPIC="$topic" "$bin"
    echo "== following $topic from the beginning until caught up (as a stage instance does)"
    OPTOUT_BENCH_FOLLOW=1 OPTOUT_BENCH_BROKERS="127.0.0.1:$port" OPTOUT_BENCH_TOPIC="$topic" timed topic-load "$bin"
    kill "$tansu_pid" 2>/dev/null || true
    trap - EXIT
fi

if [ -n "${ROUNDS:-}" ]; then
    echo "== cold-user enrichments interleaved, $ROUNDS rounds"
    OPTOUT_BENCH_ROUNDS="$ROUNDS" "$bin"
fi

if [ "${SKIP_CRITERION:-0}" != 1 ]; then
    echo "== criterion: lookups in a $((10000000)) set and whole enrichment with/without it"
    "$bin" --bench --warm-up-time 1 --measurement-time 3 "$@" 2>&1 | grep -vE "^(Benchmarking|Gnuplot|\s*$)" || true
fi
