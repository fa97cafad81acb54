#!/usr/bin/env python3
"""Sharing interop with the official Python SDK (uid2-client 2.9.0), for tests/interop_sharing.rs.

Usage:
  sdk_sharing.py make OUT.json [--seed N] [--count N]
      A /v2/key/sharing key JSON (random secrets), raw UID2s (v2 32-byte and v3 33-byte, email and phone
      prefixes), each encrypted by SharingClient._encrypt_raw_uid_into_token (the sender) at a fixed
      `now`, and carried the way a sender would put them on the wire, built with Python's own encoders:
        * a tracking-pixel URL or bare query string (urllib.parse.urlencode / quote, some with a
          repeated token parameter after the real one, some with a fragment);
        * a JSON event (json.dumps, token at a recorded JSON pointer, sometimes nested, sometimes with
          ensure_ascii escapes of non-ASCII neighbours).
      Every token is decrypted back by SharingClient first; a token the SDK itself cannot read aborts
      the run (exit 2): the harness, not the Rust code, would be wrong.
  sdk_sharing.py check IN.json
      IN: {"keys": "<key JSON>", "now_ms": int, "cases": [{"token": str, "raw_uid2": str}, ...]}
      Decrypts each token with SharingClient._decrypt_token_into_raw_uid at now_ms and prints one JSON
      report: {"checked": n, "ok": n, "failures": [{"index", "status", "uid"}...]}. Exit 1 on failure.

Output of `make`:
  {"format": "uid2-sharing-interop/1", "sdk": "uid2-client 2.9.0", "seed": int, "now_ms": int,
   "keys": "<{"body": /v2/key/sharing body, "status": "success"} as a JSON string>",
   "cases": [{"raw_uid2", "token", "pixel", "event", "event_pointer"}...]}
"""

import argparse
import base64
import datetime as dt
import json
import os
import random
import sys
import urllib.parse

sys.dont_write_bytecode = True   # keep scripts/interop free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import uid2_interop as ui  # noqa: E402

NOW_S = 1767225600            # 2026-01-01T00:00:00Z
MASTER_KEYSET = 9999999
DEFAULT_KEYSET = 4321
CALLER_SITE = 777


def sharing_keys(rng):
    created = NOW_S - 30 * 86400
    expires = NOW_S + 365 * 86400
    keys = [
        {"id": 501, "keyset_id": MASTER_KEYSET, "created": created, "activates": created,
         "expires": expires, "secret": ui.b64std(rng.randbytes(32))},
        {"id": 502, "keyset_id": DEFAULT_KEYSET, "created": created, "activates": created,
         "expires": expires, "secret": ui.b64std(rng.randbytes(32))},
        # Another participant's key, decrypt-only (no keyset_id), as the operator sends them.
        {"id": 503, "created": created, "activates": created, "expires": expires,
         "secret": ui.b64std(rng.randbytes(32))},
    ]
    body = {"caller_site_id": CALLER_SITE, "master_keyset_id": MASTER_KEYSET,
            "default_keyset_id": DEFAULT_KEYSET, "token_expiry_seconds": "2592000",
            "max_sharing_lifetime_seconds": 2592000 + 10, "identity_scope": "UID2",
            "allow_clock_skew_seconds": 1800, "keys": keys}
    return ui.wrap_body(body)


def client(keys_json):
    from uid2_client import SharingClient
    c = SharingClient("http://127.0.0.1:9", "interop-unused-api-key",
                      "ioG3wKxAokmp+rERx6A4kM/13qhyolUXIu14WN16Spo=")
    resp = c._refresh_json(keys_json)
    if not resp.success:
        raise SystemExit("SDK rejected the sharing key JSON: %r" % (resp.reason,))
    return c


def raw_uid2(rng, k):
    if k % 3 == 0:
        return ui.b64std(rng.randbytes(32))                        # v2 raw UID
    prefix = rng.choice([0x00, 0x04])                            # v3: UID2 email / phone (A…/B…)
    return ui.b64std(bytes([prefix]) + rng.randbytes(32))


def pixel_for(rng, token, k):
    params = [("ev", rng.choice(["purchase", "view", "add to cart"])), ("oid", "o-%d" % k)]
    style = k % 4
    params.append(("uid2_token", token))
    if style == 1:
        params.append(("uid2_token", "second-token-is-ignored"))  # repeated: first wins
    params.append(("v", "%d.%02d" % (rng.randrange(1, 500), rng.randrange(100))))
    params.append(("ref", "https://shop.example/cart?items=3&x=é"))
    if style == 2:
        query = "&".join("%s=%s" % (urllib.parse.quote(n), urllib.parse.quote(v, safe=""))
                         for n, v in params)
    else:
        query = urllib.parse.urlencode(params)
    if style == 3:
        return query                                              # bare query string
    url = "https://adv.example/px?" + query
    if k % 5 == 0:
        url += "#thanks"
    return url


def event_for(rng, token, k):
    style = k % 3
    if style == 0:
        event, pointer = {"event": "purchase", "value": 19.99, "uid2_token": token}, "/uid2_token"
    elif style == 1:
        event = {"event": "share", "participant": {"ids": [{"type": "uid2", "token": token}]},
                 "note": "café ✓"}
        pointer = "/participant/ids/0/token"
    else:
        event = {"a/b": {"uid2_token": token}, "n": [1, 2.5, None]}
        pointer = "/a~1b/uid2_token"
    text = json.dumps(event, ensure_ascii=(k % 2 == 0), indent=(2 if k % 4 == 1 else None))
    return text, pointer


def make(args):
    rng = random.Random(args.seed)
    keys_json = sharing_keys(rng)
    sender = client(keys_json)
    now = ui.ms_to_dt(NOW_S * 1000)
    cases = []
    for k in range(args.count):
        raw = raw_uid2(rng, k)
        enc = sender._encrypt_raw_uid_into_token(raw, None, now=now)
        if not enc.success:
            print("SDK could not encrypt case %d: %r" % (k, enc.status), file=sys.stderr)
            sys.exit(2)
        token = enc.encrypted_data
        back = sender._decrypt_token_into_raw_uid(token, now + dt.timedelta(seconds=60))
        if back.status.name != "SUCCESS" or back.uid != raw:
            print("SDK cannot decrypt its own token %d: %r" % (k, back.status), file=sys.stderr)
            sys.exit(2)
        event, pointer = event_for(rng, token, k)
        cases.append({"raw_uid2": raw, "token": token, "pixel": pixel_for(rng, token, k),
                      "event": event, "event_pointer": pointer})
    out = {"format": "uid2-sharing-interop/1", "sdk": "uid2-client 2.9.0", "seed": args.seed,
           "now_ms": NOW_S * 1000, "keys": keys_json, "cases": cases}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    print("sdk_sharing make: %d SDK sharing tokens in pixels and events -> %s" % (len(cases), args.out))


def check(args):
    with open(args.input, encoding="utf-8") as f:
        doc = json.load(f)
    receiver = client(doc["keys"])
    now = ui.ms_to_dt(doc["now_ms"])
    failures = []
    for i, case in enumerate(doc["cases"]):
        res = receiver._decrypt_token_into_raw_uid(case["token"], now)
        if res.status.name != "SUCCESS" or res.uid != case["raw_uid2"]:
            failures.append({"index": i, "status": res.status.name,
                             "uid_matches": res.uid == case["raw_uid2"]})
    report = {"checked": len(doc["cases"]), "ok": len(doc["cases"]) - len(failures),
              "failures": failures}
    print(json.dumps(report))
    sys.exit(1 if failures or not doc["cases"] else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out")
    m.add_argument("--seed", type=int, default=8)
    m.add_argument("--count", type=int, default=60)
    c = sub.add_parser("check")
    c.add_argument("input")
    args = p.parse_args()
    make(args) if args.cmd == "make" else check(args)


if __name__ == "__main__":
    main()
