#!/usr/bin/env python3
"""Load the first N lines of a JSON Lines file into a Kafka topic, round-robin over its partitions, as fast
as confluent-kafka allows; waits until every record is acknowledged. For scripts/bench-e2e.sh.

Usage: load_topic.py --brokers H:P --topic T --partitions P --file F.jsonl [--count N]
"""

import argparse
import sys
import time

from confluent_kafka import Producer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--count", type=int, default=None)
    args = ap.parse_args()

    p = Producer({
        "bootstrap.servers": args.brokers,
        "linger.ms": 50,
        "batch.size": 1000000,
        "queue.buffering.max.messages": 200000,
        "queue.buffering.max.kbytes": 1048576,
        "enable.idempotence": True,
    })
    failed = [0]

    def on_delivery(err, _msg):
        if err is not None:
            failed[0] += 1
            if failed[0] <= 5:
                print("load: delivery failed: %s" % err, file=sys.stderr)

    t0 = time.perf_counter()
    n = 0
    with open(args.file, "rb") as f:
        for line in f:
            if args.count is not None and n >= args.count:
                break
            line = line.rstrip(b"\n")
            while True:
                try:
                    p.produce(args.topic, value=line, partition=n % args.partitions, on_delivery=on_delivery)
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
            if n % 10000 == 0:
                p.poll(0)
    left = p.flush(600)
    dt = time.perf_counter() - t0
    if left or failed[0]:
        sys.exit("load: %d records not delivered, %d failed" % (left, failed[0]))
    print("load: %d records into %s in %.1f s (%.0f/s)" % (n, args.topic, dt, n / dt), file=sys.stderr)
    if args.count is not None and n < args.count:
        sys.exit("load: file has only %d records, %d requested" % (n, args.count))


if __name__ == "__main__":
    main()
