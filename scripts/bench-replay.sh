#!/usr/bin/env bash
# Offline replay throughput (file → file), with its I/O floor measured in the same run:
#   1. `gen` writes COUNT requests of about SIZE bytes (default mix, fixed seed and time) and their keys;
#   2. baseline: the same bytes copied file → file by `dd bs=4M` (plain read and write, as any program
#      that reads and writes the data must; `cat` would use copy_file_range and never touch the bytes);
#   3. `replay` enriches them file → file on disk (target/), once per thread count in THREADS, then with
#      the output on tmpfs (/dev/shm, a memory-backed file) and to /dev/null (enrichment alone);
# then a table of records/s and the goal check (>= 400,000 records/s in one process, best file → file run;
# informational, the exit status is 0 either way). The input stays in the page cache between runs.
#
#   scripts/bench-replay.sh                 # COUNT=1000000 SIZE=2000 THREADS="1 2"
#   COUNT=200000 scripts/bench-replay.sh
#   EXTRA="--cache-entries 200000" scripts/bench-replay.sh     # extra replay arguments
set -euo pipefail
cd "$(dirname "$0")/.."

count="${COUNT:-1000000}"
size="${SIZE:-2000}"
threads="${THREADS:-1 2}"
dir="target/bench-replay"
mkdir -p "$dir"
cargo build --release --quiet
bin=target/release/uid2-enricher
now="2026-01-01T00:00:00Z"

if [[ ! -s "$dir/requests-$count-$size.jsonl" ]]; then
  "$bin" gen --count "$count" --size "$size" --seed 7 --now "$now" \
    --output "$dir/requests-$count-$size.jsonl" --keys-out "$dir/keys.json"
fi
input="$dir/requests-$count-$size.jsonl"
cat "$input" >/dev/null # warm the page cache
bytes=$(stat -c %s "$input")
echo "input: $count requests, $((bytes / count)) bytes each on average, $((bytes / 1000000)) MB"

seconds() { python3 -c "import sys; print(f'{float(sys.argv[1]):.3f}')" "$1"; }
rate() { python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]):,.0f}')" "$1" "$2"; }

start=$(date +%s.%N)
dd if="$input" of="$dir/copy.jsonl" bs=4M status=none
end=$(date +%s.%N)
copy_s=$(python3 -c "print($end - $start)")
rm -f "$dir/copy.jsonl"

printf '\n%-36s %10s %14s\n' "run" "seconds" "records/s"
printf '%-36s %10s %14s\n' "baseline: dd bs=4M file → file" "$(seconds "$copy_s")" "$(rate "$count" "$copy_s")"
best=0
run() { # label, output, threads
  # shellcheck disable=SC2086
  "$bin" replay --input "$input" --output "$2" --keys "$dir/keys.json" --now "$now" \
    --threads "$3" --quiet --summary-json "$dir/summary.json" ${EXTRA:-} 2>/dev/null
  s=$(python3 -c "import json; print(json.load(open('$dir/summary.json'))['seconds'])")
  r=$(python3 -c "import json; print(int(json.load(open('$dir/summary.json'))['records_per_second']))")
  [[ "$2" != /dev/null ]] && (( r > best )) && best=$r
  printf '%-36s %10s %14s\n' "$1" "$(seconds "$s")" "$(rate "$count" "$s")"
}
for t in $threads; do
  run "replay --threads $t → disk file" "$dir/out.jsonl" "$t"
done
run "replay → tmpfs file (/dev/shm)" /dev/shm/uid2-bench-replay.jsonl 2
rm -f /dev/shm/uid2-bench-replay.jsonl
run "replay → /dev/null" /dev/null 2
rm -f "$dir/out.jsonl"
echo
if (( best >= 400000 )); then
  echo "goal met: $best records/s >= 400,000"
else
  echo "goal missed: $best records/s < 400,000"
fi
