#!/usr/bin/env python3
"""Poll the stage's /metrics until records_out + dead_lettered reach N, then report (JSON on stdout):
seconds since --start-ns (the stage's spawn time, CLOCK_REALTIME ns), the counters, the p99 (and p50) of
uid2_enricher_stage_seconds from its buckets (the upper bound of the first bucket whose cumulative count
reaches the quantile), and the stage's peak RSS (VmHWM of --pid). For scripts/bench-e2e.sh.

Usage: wait_metrics.py --url http://H:P/metrics --count N --start-ns NS --pid PID [--timeout S]
"""

import argparse
import json
import os
import re
import sys
import time
import urllib.request

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def scrape(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        text = r.read().decode()
    out, dlq, buckets = 0.0, 0.0, []
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "uid2_enricher_records_out_total":
            out += value
        elif name == "uid2_enricher_dead_lettered_total":
            dlq += value
        elif name == "uid2_enricher_stage_seconds_bucket":
            le = re.search(r'le="([^"]+)"', labels).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), value))
    return out, dlq, sorted(buckets)


def quantile(buckets, q):
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, cum in buckets:
        if cum >= q * total:
            return le
    return None


def vm_hwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--start-ns", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=1800.0)
    args = ap.parse_args()
    last_report = time.time()
    while True:
        now_ns = time.time_ns()
        try:
            out, dlq, buckets = scrape(args.url)
        except OSError:
            out, dlq, buckets = 0.0, 0.0, []
        if out + dlq >= args.count:
            break
        if not os.path.exists("/proc/%d" % args.pid):
            sys.exit("wait_metrics: the stage (pid %d) exited before finishing" % args.pid)
        if (now_ns - args.start_ns) / 1e9 > args.timeout:
            sys.exit("wait_metrics: timeout, %d of %d records out" % (out + dlq, args.count))
        if time.time() - last_report > 10:
            print("  ... %d/%d records out after %.0f s" % (out + dlq, args.count, (now_ns - args.start_ns) / 1e9),
                  file=sys.stderr)
            last_report = time.time()
        time.sleep(0.05)
    seconds = (now_ns - args.start_ns) / 1e9
    print(json.dumps({
        "records_out": int(out), "dead_lettered": int(dlq), "seconds": seconds,
        "p50_seconds": quantile(buckets, 0.50), "p99_seconds": quantile(buckets, 0.99),
        "max_rss_kb": vm_hwm_kb(args.pid),
    }))


if __name__ == "__main__":
    main()
