#!/usr/bin/env python3
"""Measure the official Python SDK's (uid2-client 2.9.0) token decrypt rate on this machine.

Usage: bench-python-decrypt.py [--seconds 3] [--repeat 3] [--tokens 1000] [--json OUT]

Run it with the venv python ($UID2_PYTHON, see scripts/lib/python-venv.sh).

What is measured: BidstreamClient.decrypt_token_into_raw_uid(token, domain) -- the public DSP call, which
reads the wall clock per token -- on one thread, with a key container loaded from a /v2/key/bidstream
JSON holding the spec section 7 keys (master 164, site 165). Tokens are made by UID2TokenGenerator
(32-byte raw UIDs, site 9000, expiry now + 1 h), a pool of --tokens distinct tokens per version, cycled.
For each of v2, v3, v4: --repeat runs of about --seconds each (wall clock, time.perf_counter);
the best run is reported as ns/token and tokens/s.
"""

import argparse
import base64
import datetime as dt
import json
import platform
import random
import sys
import time

MASTER_164 = bytes.fromhex("8b25f1ad125c24e8a5a8171226c37b5ca088b9285bada5dda810a9a4268b089b")
SITE_165 = bytes.fromhex("20fb07c2849afa56ca74681d83c08bd730a40b41e26ea70e6c33fe7d41181785")


def key_json():
    def key(kid, secret):
        return {"id": kid, "created": 1577836800, "activates": 1577836800, "expires": 4102444800,
                "secret": base64.b64encode(secret).decode("ascii")}
    body = {
        "max_bidstream_lifetime_seconds": 3 * 86400 + 10,
        "identity_scope": "UID2",
        "allow_clock_skew_seconds": 1800,
        "keys": [key(164, MASTER_164), key(165, SITE_165)],
        "site_data": [{"id": 9000, "domain_names": ["example.com", "example.org"]}],
    }
    return json.dumps({"body": body, "status": "success"})


def make_tokens(version, n, rng):
    from uid2_client import EncryptionKey, Params, UID2TokenGenerator
    utc = dt.timezone.utc
    far = dt.datetime(2100, 1, 1, tzinfo=utc)
    epoch = dt.datetime(2020, 1, 1, tzinfo=utc)
    master = EncryptionKey(164, -1, epoch, epoch, far, MASTER_164)
    site = EncryptionKey(165, -1, epoch, epoch, far, SITE_165)
    gen = {2: UID2TokenGenerator.generate_uid2_token_v2, 3: UID2TokenGenerator.generate_uid2_token_v3,
           4: UID2TokenGenerator.generate_uid2_token_v4}[version]
    now = dt.datetime.now(tz=utc)
    out = []
    for _ in range(n):
        raw = base64.b64encode(rng.randbytes(32)).decode("ascii")
        params = Params(expiry=now + dt.timedelta(hours=1), identity_scope=0,
                        token_generated=now - dt.timedelta(minutes=1),
                        identity_established=now - dt.timedelta(days=1))
        out.append(gen(raw, master, 9000, site, params))
    return out


def run_once(client, tokens, seconds):
    decrypt = client.decrypt_token_into_raw_uid
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for t in tokens:
            decrypt(t, "example.com")
        done += len(tokens)
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / done * 1e9, done


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one run (default 3)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per version, best kept (default 3)")
    ap.add_argument("--tokens", type=int, default=1000, help="distinct tokens per version (default 1000)")
    ap.add_argument("--json", metavar="OUT", help='write {"v2_ns":..,"v3_ns":..,"v4_ns":..} to OUT')
    args = ap.parse_args()

    try:
        from importlib.metadata import version as pkg_version
        from uid2_client import BidstreamClient, DecryptionStatus
    except ImportError as e:
        sys.exit("bench-python-decrypt: uid2_client not importable (%s); run with $UID2_PYTHON "
                 "after sourcing scripts/lib/python-venv.sh" % e)

    client = BidstreamClient("http://127.0.0.1:9", "bench-unused-api-key",
                             "ioG3wKxAokmp+rERx6A4kM/13qhyolUXIu14WN16Spo=")
    if not client._refresh_json(key_json()).success:
        sys.exit("bench-python-decrypt: SDK rejected the key JSON")

    rng = random.Random(1)
    print("python-sdk decrypt: uid2-client %s, pycryptodome %s, Python %s, %s; %d x %.1f s per version, best kept"
          % (pkg_version("uid2-client"), pkg_version("pycryptodome"), platform.python_version(),
             platform.machine(), args.repeat, args.seconds))
    results = {}
    for version in (2, 3, 4):
        tokens = make_tokens(version, args.tokens, rng)
        for t in tokens[:50]:
            r = client.decrypt_token_into_raw_uid(t, "example.com")
            if r.status != DecryptionStatus.SUCCESS:
                sys.exit("bench-python-decrypt: v%d token did not decrypt: %s" % (version, r.status))
        run_once(client, tokens[:100], min(0.2, args.seconds))   # warm-up
        best = min(run_once(client, tokens, args.seconds)[0] for _ in range(args.repeat))
        results["v%d_ns" % version] = round(best, 1)
        print("python-sdk decrypt v%d: %.0f ns/token (%.0f tokens/s)" % (version, best, 1e9 / best))
        sys.stdout.flush()

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f)
            f.write("\n")


if __name__ == "__main__":
    main()
