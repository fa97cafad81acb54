#!/usr/bin/env python3
"""The Python peer of the stage, for scripts/bench-e2e.sh: what a DSP engineer writes around the official
UID2 SDK (uid2-client) and confluent-kafka in an afternoon.

Usage: python_enricher.py --brokers H:P --group G --input T --output T --dlq T --keys KEYS.json
                          --count N [--stats-out FILE] [--member uid2_enrichment]

For every record: json.loads, the first uidapi.com token in user.eids then user.ext.eids, decrypted with
BidstreamClient (keys loaded from the key file through _refresh_json, as the SDK's refresh would), the
result added as user.ext.<member> {status, raw_uid2, site_id, ...}, json.dumps, produce to the output topic
(malformed JSON: the original bytes to the DLQ). Offsets are committed asynchronously after every consumed
batch. The peer exits once N records have been acknowledged by the broker (delivery callback) and writes
stats JSON: delivered, seconds (from start to the last delivery), p50/p99 of consume -> delivery-callback
time per record, peak RSS.
"""

import argparse
import json
import resource
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer
from uid2_client import BidstreamClient, EncryptionError


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--group", default="uid2-enricher")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--dlq", required=True)
    ap.add_argument("--keys", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--member", default="uid2_enrichment")
    ap.add_argument("--stats-out")
    ap.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    args = ap.parse_args()
    t_start = time.perf_counter()

    client = BidstreamClient("http://127.0.0.1:9", "unused-api-key",
                             "ioG3wKxAokmp+rERx6A4kM/13qhyolUXIu14WN16Spo=")
    with open(args.keys) as f:
        resp = client._refresh_json(f.read())
    if not resp.success:
        sys.exit("keys rejected by the SDK: %r" % (resp.reason,))

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.min.bytes": 65536,
        "fetch.wait.max.ms": 50,
    })
    producer = Producer({
        "bootstrap.servers": args.brokers,
        "linger.ms": 5,
        "enable.idempotence": True,
    })

    latencies = []
    state = {"delivered": 0, "errors": 0, "t_last": t_start}

    def make_cb(t0):
        def on_delivery(err, _msg):
            if err is not None:
                state["errors"] += 1
                print("delivery failed: %s" % err, file=sys.stderr)
                return
            now = time.perf_counter()
            latencies.append(now - t0)
            state["delivered"] += 1
            state["t_last"] = now
        return on_delivery

    def produce(topic, value, headers, t0):
        while True:
            try:
                producer.produce(topic, value=value, headers=headers, on_delivery=make_cb(t0))
                return
            except BufferError:
                producer.poll(0.05)

    def token_of(user):
        for eids in (user.get("eids"), (user.get("ext") or {}).get("eids") if isinstance(user.get("ext"), dict) else None):
            for eid in eids or ():
                if isinstance(eid, dict) and eid.get("source") == "uidapi.com":
                    for uid in eid.get("uids") or ():
                        if isinstance(uid, dict) and uid.get("id"):
                            return uid["id"]
        return None

    def enrich(req):
        user = req.get("user")
        if not isinstance(user, dict):
            return "no_token"
        token = token_of(user)
        if token is None:
            return "no_token"
        site, app = req.get("site") or {}, req.get("app") or {}
        domain = site.get("domain") or app.get("bundle")
        try:
            res = client.decrypt_token_into_raw_uid(token, domain)
            status = res.status.name.lower()
        except EncryptionError:
            res, status = None, "invalid_payload"
        out = {"status": status}
        if res is not None and status == "success":
            out["raw_uid2"] = res.uid
            out["site_id"] = res.site_id
            out["established"] = int(res.established.timestamp() * 1000) if res.established else None
            out["expires"] = int(res.expiry.timestamp() * 1000) if res.expiry else None
            if res.identity_type is not None:
                out["identity_type"] = "email" if int(res.identity_type) == 0 else "phone"
            out["cstg"] = bool(res.is_client_side_generated)
        ext = user.get("ext")
        if ext is None:
            ext = user["ext"] = {}
        if isinstance(ext, dict):
            ext[args.member] = out
        return status

    consumer.subscribe([args.input])
    consumed = 0
    try:
        while state["delivered"] + state["errors"] < args.count:
            if time.perf_counter() - t_start > args.timeout:
                sys.exit("timeout: %d of %d delivered" % (state["delivered"], args.count))
            msgs = consumer.consume(num_messages=500, timeout=0.1)
            t0 = time.perf_counter()
            for msg in msgs:
                if msg.error():
                    print("consume error: %s" % msg.error(), file=sys.stderr)
                    continue
                consumed += 1
                headers = list(msg.headers() or [])
                try:
                    req = json.loads(msg.value())
                    if not isinstance(req, dict):
                        raise ValueError("not an object")
                except ValueError as e:
                    headers.append(("uid2-error", str(e)[:200].encode()))
                    produce(args.dlq, msg.value(), headers, t0)
                    continue
                status = enrich(req)
                headers.append(("uid2-status", status.encode()))
                produce(args.output, json.dumps(req, separators=(",", ":")).encode(), headers, t0)
            producer.poll(0)
            if msgs:
                try:
                    consumer.commit(asynchronous=True)
                except KafkaException:
                    pass
            if consumed >= args.count:
                producer.flush(1.0)
    finally:
        producer.flush(10)
        try:
            consumer.commit(asynchronous=False)
        except KafkaException:
            pass
        consumer.close()

    latencies.sort()

    def pct(p):
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    stats = {
        "delivered": state["delivered"],
        "errors": state["errors"],
        "seconds": state["t_last"] - t_start,
        "p50_seconds": pct(0.50),
        "p99_seconds": pct(0.99),
        "max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    if args.stats_out:
        with open(args.stats_out, "w") as f:
            json.dump(stats, f)
    print(json.dumps(stats), file=sys.stderr)


if __name__ == "__main__":
    main()
