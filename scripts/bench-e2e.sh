#!/usr/bin/env bash
# End-to-end Kafka benchmark of the stage against a tansu broker (in-memory storage).
#
#   scripts/bench-e2e.sh [--count N] [--size BYTES] [--python-count N]
#       --count N          requests for (a) and (b)              default 1000000
#       --size BYTES       approximate request size              default 2000
#       --python-count N   requests for the Python peer (c)      default 100000 (at most --count)
#
# Contenders, each on a fresh tansu (memory://) with input/output/dlq topics of 8 partitions, the input
# loaded before the contender starts (scripts/peer/load_topic.py, confluent-kafka):
#   (a) passthrough  target/release/uid2-enricher run, [pipeline] enrich = false
#   (b) enricher     target/release/uid2-enricher run, enrich = true, keys_file = the generated keys
#   (c) python       scripts/peer/python_enricher.py (confluent-kafka + the official uid2-client SDK)
# Timing starts when the contender is spawned and stops when all N records are out (output + DLQ):
# for (a)/(b) read from /metrics (uid2_enricher_records_out_total + uid2_enricher_dead_lettered_total),
# for (c) the peer's own delivery callbacks. p99 added latency: (a)/(b) from the
# uid2_enricher_stage_seconds histogram (bucket upper bound), (c) consume -> delivery callback per record.
# Peak RSS: VmHWM of the stage process (the peer: ru_maxrss).
#
# Needs: cargo, python3 (venv with uid2-client + confluent-kafka, scripts/lib/python-venv.sh), curl,
# tansu 0.6.0 with the dynostore feature ($TANSU; default: tansu on PATH, else the copy scripts/test.sh builds).
# Writes target/bench-e2e/summary.json. Goal lines are informational: the exit status is 0 when every
# contender finished.
set -euo pipefail

COUNT=1000000
SIZE=2000
PY_COUNT=100000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --count) COUNT="$2"; shift 2 ;;
        --size) SIZE="$2"; shift 2 ;;
        --python-count) PY_COUNT="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "bench-e2e: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
(( PY_COUNT > COUNT )) && PY_COUNT=$COUNT
PARTITIONS=8

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
OUT="$REPO/target/bench-e2e"
mkdir -p "$OUT"
TANSU="${TANSU:-$(command -v tansu || echo "$HOME/.cache/uid2-enricher/tansu-0.6.0-dynostore-libsql/bin/tansu")}"
[[ -x "$TANSU" ]] || { echo "bench-e2e: tansu not found (set TANSU=...)" >&2; exit 1; }

# --- cleanup: every process this script started, by pid -------------------------------------------
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    sleep 0.5
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {  # remove $1 from PIDS
    local keep=() p
    for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

free_port() {
    "$UID2_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- build, venv, data ------------------------------------------------------------------------------
echo "== cargo build --release" >&2
cargo build --release --quiet
BIN="$REPO/target/release/uid2-enricher"
source scripts/lib/python-venv.sh
"$UID2_PYTHON" -c 'import confluent_kafka, uid2_client' \
    || { echo "bench-e2e: the venv lacks confluent-kafka/uid2-client" >&2; exit 1; }

REQS="$OUT/requests-$COUNT-$SIZE.jsonl"
KEYS="$OUT/keys-$COUNT-$SIZE.json"
echo "== generating $COUNT requests of ~$SIZE bytes" >&2
"$BIN" gen --count "$COUNT" --output "$REQS" --keys-out "$KEYS" --size "$SIZE" >&2
echo "   $(du -h "$REQS" | cut -f1) in $REQS" >&2

# --- broker -------------------------------------------------------------------------------------------
TANSU_PID=""
BROKER=""
start_tansu() {  # $1 = log name
    local port i
    port="$(free_port)"
    BROKER="127.0.0.1:$port"
    "$TANSU" broker --listener-url "tcp://$BROKER" --advertised-listener-url "tcp://$BROKER" \
        --storage-engine memory://tansu/ >"$OUT/tansu-$1.log" 2>&1 &
    TANSU_PID=$!
    PIDS+=("$TANSU_PID")
    for i in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        kill -0 "$TANSU_PID" 2>/dev/null || { echo "bench-e2e: tansu exited (log: $OUT/tansu-$1.log)" >&2; exit 1; }
        sleep 0.1
    done
    local t
    for t in bench-in bench-out bench-dlq; do
        "$TANSU" topic create "$t" --partitions "$PARTITIONS" --broker "tcp://$BROKER" >>"$OUT/tansu-$1.log" 2>&1
    done
}
stop_tansu() {
    kill -TERM "$TANSU_PID" 2>/dev/null || true
    wait "$TANSU_PID" 2>/dev/null || true
    forget_pid "$TANSU_PID"
    TANSU_PID=""
}

load_input() {  # $1 = count
    "$UID2_PYTHON" scripts/peer/load_topic.py --brokers "$BROKER" --topic bench-in \
        --partitions "$PARTITIONS" --file "$REQS" --count "$1"
}

# --- (a), (b): the stage ------------------------------------------------------------------------------
run_stage() {  # $1 = name, $2 = enrich (true|false); writes $OUT/result-$1.json
    local name="$1" enrich="$2" port cfg pid start_ns
    echo "== ($name) fresh tansu, loading $COUNT records" >&2
    start_tansu "$name"
    load_input "$COUNT"
    port="$(free_port)"
    cfg="$OUT/stage-$name.toml"
    cat >"$cfg" <<EOF
[kafka]
brokers = "$BROKER"
group_id = "bench-$name"
input_topics = ["bench-in"]
output_topic = "bench-out"
dlq_topic = "bench-dlq"

[kafka.consumer]
"auto.offset.reset" = "earliest"
"fetch.min.bytes" = 65536
"fetch.wait.max.ms" = 50

[kafka.producer]
"linger.ms" = 5
"batch.size" = 1000000

[uid2]
keys_file = "$KEYS"

[server]
listen = "127.0.0.1:$port"

[pipeline]
enrich = $enrich

[log]
level = "warn"
EOF
    echo "== ($name) running the stage (enrich = $enrich)" >&2
    start_ns="$(date +%s%N)"
    "$BIN" run --config "$cfg" 2>"$OUT/stage-$name.log" &
    pid=$!
    PIDS+=("$pid")
    if ! "$UID2_PYTHON" scripts/peer/wait_metrics.py --url "http://127.0.0.1:$port/metrics" \
        --count "$COUNT" --start-ns "$start_ns" --pid "$pid" >"$OUT/result-$name.json"; then
        echo "bench-e2e: ($name) did not finish; last stage log lines:" >&2
        tail -n 20 "$OUT/stage-$name.log" >&2
        exit 1
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
    stop_tansu
    echo "   $(cat "$OUT/result-$name.json")" >&2
}

# --- (c): the Python peer -----------------------------------------------------------------------------
run_python() {
    local pid rc=0
    echo "== (python) fresh tansu, loading $PY_COUNT records" >&2
    start_tansu python
    load_input "$PY_COUNT"
    echo "== (python) running scripts/peer/python_enricher.py" >&2
    rm -f "$OUT/result-python.json"
    "$UID2_PYTHON" scripts/peer/python_enricher.py --brokers "$BROKER" --group bench-python \
        --input bench-in --output bench-out --dlq bench-dlq --keys "$KEYS" --count "$PY_COUNT" \
        --stats-out "$OUT/result-python.json" 2>"$OUT/python.log" &
    pid=$!
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget_pid "$pid"
    stop_tansu
    if (( rc != 0 )) || [[ ! -s "$OUT/result-python.json" ]]; then
        echo "bench-e2e: the Python peer failed (rc $rc); log:" >&2
        tail -n 20 "$OUT/python.log" >&2
        exit 1
    fi
    echo "   $(cat "$OUT/result-python.json")" >&2
}

run_stage passthrough false
run_stage enricher true
run_python

# --- table, goals, summary.json -----------------------------------------------------------------------
"$UID2_PYTHON" - "$OUT" "$COUNT" "$PY_COUNT" "$SIZE" <<'EOF'
import json, sys
out, count, py_count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def load(name):
    with open("%s/result-%s.json" % (out, name)) as f:
        return json.load(f)
rows = []
for key, name, n in (("a", "passthrough", count), ("b", "enricher", count), ("c", "python", py_count)):
    r = load(name)
    rows.append({"contender": "(%s) %s" % (key, name), "records": n, "seconds": r["seconds"],
                 "records_per_s": n / r["seconds"], "p99_added_latency_s": r["p99_seconds"],
                 "p50_added_latency_s": r["p50_seconds"],
                 "peak_rss_mb": (r["max_rss_kb"] or 0) / 1024.0, "raw": r})
a, b, c = (row["records_per_s"] for row in rows)
for row in rows:
    row["vs_a"] = row["records_per_s"] / a
    row["vs_c"] = row["records_per_s"] / c
def ms(x):
    return "n/a" if x is None else ("%.1f ms" % (x * 1000) if x != float("inf") else "> 10 s")
hdr = "%-16s %9s %8s %10s %7s %8s %12s %9s" % ("contender", "records", "seconds", "records/s", "vs (a)", "vs (c)", "p99 added", "peak RSS")
print()
print("requests of ~%d bytes, tansu memory://, topics of 8 partitions" % size)
print(hdr)
print("-" * len(hdr))
for row in rows:
    print("%-16s %9d %8.2f %10.0f %6.2fx %7.1fx %12s %6.0f MB" % (
        row["contender"], row["records"], row["seconds"], row["records_per_s"], row["vs_a"], row["vs_c"],
        ms(row["p99_added_latency_s"]), row["peak_rss_mb"]))
rss_b = rows[1]["peak_rss_mb"]
goals = [
    ("(b) >= 0.8 x (a)", b >= 0.8 * a, "%.2f x" % (b / a)),
    ("(b) >= 30 x (c)", b >= 30 * c, "%.1f x" % (b / c)),
    ("(b) peak RSS <= 256 MB", rss_b <= 256, "%.0f MB" % rss_b),
]
print()
for name, ok, val in goals:
    print("goal %-24s %-5s (%s)" % (name, "PASS" if ok else "MISS", val))
for row in rows:
    row["p99_added_latency_s"] = None if row["p99_added_latency_s"] == float("inf") else row["p99_added_latency_s"]
    row["raw"] = {k: (None if v == float("inf") else v) for k, v in row["raw"].items()}
with open("%s/summary.json" % out, "w") as f:
    json.dump({"count": count, "python_count": py_count, "size": size, "partitions": 8,
               "broker": "tansu 0.6.0 memory://", "contenders": rows,
               "goals": [{"goal": g, "pass": ok, "value": v} for g, ok, v in goals]}, f, indent=2)
print("\nwrote %s/summary.json" % out)
EOF
