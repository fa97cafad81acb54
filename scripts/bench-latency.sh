#!/usr/bin/env bash
# Latency and scale of the stage through tansu (benches/latency.rs): saturation of the pass-through stage,
# the enricher, two enricher instances and the enricher with 10M opt-outs; then per-record latency at
# 25/50/75/90% of the enricher's saturation against the broker floor and the pass-through.
#
#   scripts/bench-latency.sh [options of the bench, e.g. --seconds 5 --saturation-count 100000]
#
# Starts tansu 0.6.0 (memory storage) on a free loopback port and stops it at the end; the bench creates its
# topics with `tansu topic create` and reports tansu's CPU per phase. Writes target/bench-latency/
# (summary.md, summary.json, latency.png, scale.png) and copies the plots to docs/img/.
# Needs tansu with the dynostore feature ($TANSU; default: the copy scripts/test.sh builds) and a TrueType
# font for the plots (DejaVu Sans from fonts-dejavu-core, or BENCH_FONT=path).
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU="${TANSU:-${UID2_TANSU_CACHE:-$HOME/.cache/uid2-enricher/tansu-0.6.0-dynostore-libsql}/bin/tansu}"
[[ -x "$TANSU" ]] || { echo "bench-latency: tansu not found at $TANSU (run scripts/test.sh once, or set TANSU=...)" >&2; exit 1; }
OUT=target/bench-latency
mkdir -p "$OUT" docs/img

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ >"$OUT/tansu.log" 2>&1 &
TANSU_PID=$!
trap 'kill "$TANSU_PID" 2>/dev/null || true; wait "$TANSU_PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$TANSU_PID" 2>/dev/null || { echo "bench-latency: tansu exited (log: $OUT/tansu.log)" >&2; exit 1; }
    sleep 0.1
done

CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}" cargo bench --bench latency -- --brokers "127.0.0.1:$PORT" --tansu "$TANSU" --broker-pid "$TANSU_PID" \
    --out "$OUT" "$@"
cp "$OUT/latency.png" "$OUT/scale.png" docs/img/
echo "bench-latency: $OUT/summary.md; plots copied to docs/img/"
