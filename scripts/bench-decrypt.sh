#!/usr/bin/env bash
# Token-decrypt speed: this crate (criterion bench `decrypt`) against the official Python SDK
# (uid2-client, scripts/bench-python-decrypt.py), same keys (spec §7: master 164, site 165, site 9000),
# one after the other on this machine, then a comparison table and the goal check.
#
#   scripts/bench-decrypt.sh [CRITERION ARGS...]
#
#   CRITERION ARGS   passed to the bench binary after the defaults `--warm-up-time 1 --measurement-time 3`
#                    (a --warm-up-time / --measurement-time given here replaces the default), e.g. a filter
#                    such as `uid2_decrypt` or `--sample-size 50`.
#   PY_BENCH_ARGS    extra arguments for the Python bench (default none: 3 runs x 3 s per version),
#                    e.g. PY_BENCH_ARGS="--seconds 1 --repeat 1".
#   SKIP_PYTHON=1    Rust half only.
#   CARGO_TARGET_DIR honoured (criterion writes to $CARGO_TARGET_DIR/criterion); e.g.
#                    CARGO_TARGET_DIR=target/native RUSTFLAGS="-C target-cpu=native" scripts/bench-decrypt.sh
#
# Criterion 0.8 writes <target>/criterion/decrypt/uid2_decrypt/{v2,v3,v4}/new/estimates.json (and
# decrypt/cache_hit/v4); the mean's point estimate is ns per token. Only estimates written by this run
# are used. Goals (informational; the exit status is 0 whether they are met or not): v4 decrypt <= 250
# ns/token, Python/Rust ratio >= 500 for v4.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

target_dir="${CARGO_TARGET_DIR:-target}"
criterion_dir="$target_dir/criterion/decrypt"
out_dir="$target_dir/bench-decrypt"
mkdir -p "$out_dir"

GOAL_V4_NS=250
GOAL_RATIO=500

# ---- Rust ------------------------------------------------------------------------------------------------
warm_up=(--warm-up-time 1)
measure=(--measurement-time 3)
for arg in "$@"; do
    case "$arg" in
        --warm-up-time | --warm-up-time=*) warm_up=() ;;
        --measurement-time | --measurement-time=*) measure=() ;;
    esac
done

stamp="$out_dir/.run-started"
touch "$stamp"
sleep 1 # estimates of this run must be strictly newer than the stamp (1 s mtime granularity on some fs)

echo "== cargo bench --bench decrypt -- ${warm_up[*]} ${measure[*]} $*"
cargo bench --bench decrypt -- "${warm_up[@]}" "${measure[@]}" "$@"

# json_get FILE KEY...: the value at that path of a JSON file, or nothing.
json_get() {
    python3 - "$@" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v.get(k) if isinstance(v, dict) else None
if v is not None:
    print(v)
PY
}

# rust_ns BENCH [ESTIMATE]: ns/iteration from one criterion estimates.json written by this run, or
# empty. ESTIMATE is `mean` (default) or `slope` (what criterion prints as "time:").
rust_ns() {
    local file="$criterion_dir/$1/new/estimates.json"
    if [[ -f "$file" && "$file" -nt "$stamp" ]]; then
        json_get "$file" "${2:-mean}" point_estimate
    fi
}

declare -A rust slope py
for v in v2 v3 v4; do
    rust[$v]="$(rust_ns "uid2_decrypt/$v")"
    slope[$v]="$(rust_ns "uid2_decrypt/$v" slope)"
done
rust_cache_v4="$(rust_ns "cache_hit/v4")"
slope_cache_v4="$(rust_ns "cache_hit/v4" slope)"

# ---- Python SDK ------------------------------------------------------------------------------------------
py_json="$out_dir/python.json"
py_note=""
rm -f "$py_json"
if [[ "${SKIP_PYTHON:-0}" == 1 ]]; then
    py_note="skipped (SKIP_PYTHON=1)"
elif [[ ! -f "$here/bench-python-decrypt.py" || ! -f "$here/lib/python-venv.sh" ]]; then
    py_note="scripts/bench-python-decrypt.py or scripts/lib/python-venv.sh missing"
else
    # shellcheck source=lib/python-venv.sh
    if source "$here/lib/python-venv.sh" && [[ -n "${UID2_PYTHON:-}" ]]; then
        read -r -a py_args <<<"${PY_BENCH_ARGS:-}"
        echo
        echo "== $UID2_PYTHON scripts/bench-python-decrypt.py ${py_args[*]} --json $py_json"
        if ! "$UID2_PYTHON" "$here/bench-python-decrypt.py" "${py_args[@]}" --json "$py_json"; then
            py_note="Python bench failed (see above)"
            rm -f "$py_json"
        fi
    else
        py_note="Python venv setup failed (see above)"
    fi
fi
for v in v2 v3 v4; do
    py[$v]=""
    if [[ -f "$py_json" ]]; then
        py[$v]="$(json_get "$py_json" "${v}_ns")"
    fi
done

# ---- Table -----------------------------------------------------------------------------------------------
fmt_ns() { if [[ -n "$1" ]]; then printf '%.1f' "$1"; else printf 'n/a'; fi; }
ratio() { if [[ -n "$1" && -n "$2" ]]; then awk -v p="$1" -v r="$2" 'BEGIN { printf "%.0f", p / r }'; fi; }

echo
echo "UID2 token decrypt, ns/token (Rust: criterion mean, and its slope estimate = the 'time:' line;"
echo "Python: uid2-client BidstreamClient.decrypt_token_into_raw_uid, best run)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') | nproc $(nproc) | load $(cut -d' ' -f1-3 /proc/loadavg) | RUSTFLAGS='${RUSTFLAGS:-}'"
row='%-8s %14s %12s %16s %20s\n'
# shellcheck disable=SC2059
printf "$row" version "Rust ns/token" "(slope)" "Python ns/token" "ratio (Python/Rust)"
for v in v2 v3 v4; do
    r="$(ratio "${py[$v]}" "${rust[$v]}")"
    # shellcheck disable=SC2059
    printf "$row" "$v" "$(fmt_ns "${rust[$v]}")" "$(fmt_ns "${slope[$v]}")" "$(fmt_ns "${py[$v]}")" "${r:-n/a}"
done
if [[ -n "$rust_cache_v4" ]]; then
    r="$(ratio "${py[v4]}" "$rust_cache_v4")"
    # shellcheck disable=SC2059
    printf "$row" "v4 hit" "$(fmt_ns "$rust_cache_v4")" "$(fmt_ns "$slope_cache_v4")" "-" "${r:+($r, cache hit)}"
fi
[[ -n "$py_note" ]] && echo "python: $py_note"

echo
if [[ -n "${rust[v4]}" ]]; then
    if awk -v x="${rust[v4]}" -v g="$GOAL_V4_NS" 'BEGIN { exit !(x <= g) }'; then verdict=PASS; else verdict=MISS; fi
    printf 'goal v4 decrypt <= %d ns/token: %s (%.1f ns)\n' "$GOAL_V4_NS" "$verdict" "${rust[v4]}"
else
    printf 'goal v4 decrypt <= %d ns/token: MISS (no v4 estimate from this run)\n' "$GOAL_V4_NS"
fi
r4="$(ratio "${py[v4]}" "${rust[v4]}")"
if [[ -n "$r4" ]]; then
    if ((r4 >= GOAL_RATIO)); then verdict=PASS; else verdict=MISS; fi
    printf 'goal v4 ratio Python/Rust >= %d: %s (%s)\n' "$GOAL_RATIO" "$verdict" "$r4"
else
    printf 'goal v4 ratio Python/Rust >= %d: MISS (no Python figure: %s)\n' "$GOAL_RATIO" "${py_note:-no v4 result}"
fi

# Machine-readable copy of the table.
python3 - "$out_dir/summary.json" "${rust[v2]}" "${rust[v3]}" "${rust[v4]}" "$rust_cache_v4" \
    "${py[v2]}" "${py[v3]}" "${py[v4]}" <<'PY'
import json, sys
out, *vals = sys.argv[1:]
n = [float(v) if v else None for v in vals]
summary = {"rust": {"v2_ns": n[0], "v3_ns": n[1], "v4_ns": n[2], "v4_cache_hit_ns": n[3]},
           "python": {"v2_ns": n[4], "v3_ns": n[5], "v4_ns": n[6]}}
with open(out, "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
PY
echo "(summary: $out_dir/summary.json)"
exit 0
