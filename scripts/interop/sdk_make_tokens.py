#!/usr/bin/env python3
"""Make UID2/EUID tokens and key JSON with the official Python SDK (uid2-client 2.9.0) for the Rust interop test.

Usage: sdk_make_tokens.py OUT.json [--seed N] [--count N]

Run it with the venv python ($UID2_PYTHON, see scripts/lib/python-venv.sh).

Every case is decrypted by the SDK (BidstreamClient / SharingClient loaded with _refresh_json, and
_decrypt_token_into_raw_uid with an explicit `now`); `expected` is the SDK's answer mapped to our schema.
Each case is also read by the Java-ordered reference decoder in uid2_interop.py; where the two differ
the difference must be one of the documented Python deviations (spec 5.4), and the case then carries
`python_deviation`, `java_expected` (status) and `java_expected_result` (full result, Java semantics).
Any unexplained difference aborts the run (exit 2): the harness, not the Rust code, would be wrong.

Output (all times are ms since the epoch, whole seconds for case times):
{
  "format": "uid2-interop-cases/1", "sdk": "uid2-client 2.9.0", "seed": int,
  "keys": "<{"body": /v2/key/bidstream body (UID2), "status": "success"} as a JSON string>",
  "sharing_keys": "<same for a /v2/key/sharing body (UID2)>",
  "euid_keys": "<same for a /v2/key/bidstream body with identity_scope EUID>",
  "cases": [ {"name", "token", "mode": "bidstream"|"sharing", "domain": str|null, "now_ms": int,
              "keys_ref": "keys"|"sharing_keys"|"euid_keys", "made_by": "sdk_generator"|"hand_built"|
              "fixed_vector"|"literal", "python_raised": bool, "note": str,
              "expected": {"status", "raw_uid2", "established", "site_id", "identity_type",
                           "token_version", "cstg", "expires"},
              ["python_deviation": str, "java_expected": str, "java_expected_result": {...}] } ... ],
  "deviations": {name: explanation}, "counts": {...}
}
"""

import argparse
import base64
import json
import os
import random
import sys
from collections import Counter

sys.dont_write_bytecode = True   # keep scripts/interop free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import uid2_interop as ui  # noqa: E402

# ---------------------------------------------------------------------------------------------
# fixed material (spec section 7)

MASTER_164 = bytes.fromhex("8b25f1ad125c24e8a5a8171226c37b5ca088b9285bada5dda810a9a4268b089b")
SITE_165 = bytes.fromhex("20fb07c2849afa56ca74681d83c08bd730a40b41e26ea70e6c33fe7d41181785")
SPEC_RAW_UIDS = [
    "ywsvDNINiZOVSsfkHpLpSJzXzhr6Jx9Z/4Q0+lsEUvM=",
    "BFOsW2SkK0egqbfyiALtpti5G/cG+PcEvjkoHl56rEV8",
    "BEOGxroPLdcY7LrSiwjY52+X05V0ryELpJmoWAyXiwbZ",
    "Q4bGug8t1xjsutKLCNjnb5fTlXSvIQukmahYDJeLBtk=",
    "oKg0ZY9ieD/CGMEjAA0kcq+8aUbLMBG0MgCT3kWUnJs=",
    "AKCoNGWPYng/whjBIwANJHKvvGlGyzARtDIAk95FlJyb",
    "EKCoNGWPYng/whjBIwANJHKvvGlGyzARtDIAk95FlJyb",
]
CROSS_SDK_V4 = ("AIAAAACkOqJj9VoxXJNnuX3v-ymceRf8_Av0vA5asOj9YBZJc1kV1vHdmb0AIjlzWnFF-gxIlgXqhRFhPo3iXpugPBl3gv4GKnGkw-"
                "Zgm2QqMsDPPLpMCYiWrIUqHPm8hQiq9PuTU-Ba9xecRsSIAN0WCwKLwA_EDVdzmnLJu64dQoeYmuu3u1G2EuTkuMrevmP98tJqSUePKwnfK73-0Zdshw")

T2020 = 1577836800          # 2020-01-01
T2021 = 1609459200          # 2021-01-01
T2023 = 1672531200          # 2023-01-01
T2030 = 1893456000          # 2030-01-01
T2039 = 2177452800          # 2039-01-01
T2040 = 2208988800          # 2040-01-01 (latest key expiry: containers are valid before this)
T2041 = 2240611200          # 2041-01-01 (keys_not_synced)
DAY = 86400
YEAR = 365 * DAY

MAX_BIDSTREAM_S = 3 * DAY + 10          # operator: configured max + 10 s
MAX_SHARING_S = 25 * YEAR               # large enough for the 2023->2042 cross-SDK vector
SKEW_BIDSTREAM_S = 1800
SKEW_SHARING_S = 1800                   # omitted from the sharing JSON: default applies
SKEW_EUID_S = 600                       # EUID JSON: no lifetime max (unlimited), skew 600
MASTER_KEYSET = 9999999
CALLER_SITE = 8000
DEFAULT_KEYSET = 88
UNKNOWN_MASTER_ID = 999
UNKNOWN_SITE_KEY_ID = 998

SITE_DATA = [
    {"id": 2, "domain_names": ["example.edu", "example.net"]},
    {"id": 9000, "domain_names": ["123456789", "com.123.Game.App.android", "example.com", "example.org"]},
]


def key_entry(kid, secret, created, activates, expires, keyset_id=None):
    e = {"id": kid, "created": created, "activates": activates, "expires": expires, "secret": ui.b64std(secret)}
    if keyset_id is not None:
        e["keyset_id"] = keyset_id
    return e


class KeyRing:
    """One key JSON plus the EncryptionKey objects the SDK generator needs."""

    def __init__(self, name, body, masters, sites, mode, max_s, skew_s):
        self.name, self.body, self.mode, self.max_s, self.skew_s = name, body, mode, max_s, skew_s
        self.json = ui.wrap_body(body)
        self.secrets = {k["id"]: base64.b64decode(k["secret"]) for k in body["keys"]}
        self.masters = masters
        self.sites = sites
        self.scope = 1 if body.get("identity_scope") == "EUID" else 0


def make_key_rings(rng):
    sec = lambda: rng.randbytes(32)  # noqa: E731
    # --- /v2/key/bidstream, UID2 (no keyset_id, no site_id) ---
    bid_keys = [
        key_entry(101, sec(), T2020, T2020, T2021),        # expired key: still used for decryption (3.6)
        key_entry(102, sec(), T2020, T2020, T2040),
        key_entry(164, MASTER_164, T2020, T2020, T2040),
        key_entry(165, SITE_165, T2020, T2020, T2040),
    ] + [key_entry(kid, sec(), T2020, T2020 + i * DAY, T2040) for i, kid in enumerate(range(201, 207))] + [
        key_entry(299, sec(), T2039, T2039, T2040),        # not active yet: still used for decryption
    ]
    bid_body = {
        "max_bidstream_lifetime_seconds": MAX_BIDSTREAM_S,
        "identity_scope": "UID2",
        "allow_clock_skew_seconds": SKEW_BIDSTREAM_S,
        "unexpected_header_field": 12345,
        "keys": bid_keys,
        "site_data": SITE_DATA,
    }
    # --- /v2/key/sharing, UID2 (keyset ids on master and caller keysets, string token_expiry_seconds) ---
    share_keys = [
        key_entry(164, MASTER_164, T2020, T2020, T2040, MASTER_KEYSET),
        key_entry(103, sec(), T2020, T2023, T2040, MASTER_KEYSET),
        key_entry(165, SITE_165, T2020, T2020, T2040),     # another participant's key: decrypt only
        key_entry(301, sec(), T2020, T2020, T2040, DEFAULT_KEYSET),
        key_entry(302, sec(), T2020, T2023, T2040, DEFAULT_KEYSET),
        key_entry(303, sec(), T2020, T2020, T2040, 89),
        key_entry(304, sec(), T2020, T2020, T2040),
    ]
    share_body = {
        "caller_site_id": CALLER_SITE,
        "master_keyset_id": MASTER_KEYSET,
        "default_keyset_id": DEFAULT_KEYSET,
        "token_expiry_seconds": "2592000",
        "max_sharing_lifetime_seconds": MAX_SHARING_S,
        "identity_scope": "UID2",
        "keys": share_keys,
    }
    # --- /v2/key/bidstream, EUID, no lifetime max ---
    euid_keys = [
        key_entry(164, MASTER_164, T2020, T2020, T2040),
        key_entry(165, SITE_165, T2020, T2020, T2040),
        key_entry(401, sec(), T2020, T2020, T2040),
        key_entry(402, sec(), T2020, T2020, T2040),
        key_entry(403, sec(), T2020, T2020, T2040),
    ]
    euid_body = {
        "identity_scope": "EUID",
        "allow_clock_skew_seconds": SKEW_EUID_S,
        "keys": euid_keys,
        "site_data": [{"id": 9000, "domain_names": ["example.com", "example.org"]}],
    }
    return {
        "keys": KeyRing("keys", bid_body, [101, 102, 164, 299], [165, 201, 202, 203, 204, 205, 206],
                        "bidstream", MAX_BIDSTREAM_S, SKEW_BIDSTREAM_S),
        "sharing_keys": KeyRing("sharing_keys", share_body, [164, 103], [301, 302, 303, 304, 165],
                                "sharing", MAX_SHARING_S, SKEW_SHARING_S),
        "euid_keys": KeyRing("euid_keys", euid_body, [164, 401], [165, 402, 403],
                             "bidstream", None, SKEW_EUID_S),
    }


# ---------------------------------------------------------------------------------------------


class Maker:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.seed = seed
        self.rings = make_key_rings(self.rng)
        self.clients = ui.SdkClients({k: r.json for k, r in self.rings.items()})
        self.keysets = {k: ui.KeySet(r.json) for k, r in self.rings.items()}
        self.cases = []
        self.names = set()
        self.problems = []
        self.unknown_master = ("unknown-master", UNKNOWN_MASTER_ID, self.rng.randbytes(32))
        self.unknown_site = ("unknown-site", UNKNOWN_SITE_KEY_ID, self.rng.randbytes(32))
        self.raw_uids = list(SPEC_RAW_UIDS)
        for _ in range(40):
            self.raw_uids.append(ui.b64std(self.rng.randbytes(32)))
        for _ in range(30):   # v3-style 33-byte raw UIDs: (scope << 4) | (type << 2), then 32 bytes
            meta = (self.rng.randrange(2) << 4) | (self.rng.randrange(2) << 2)
            self.raw_uids.append(ui.b64std(bytes([meta]) + self.rng.randbytes(32)))
        for _ in range(10):   # v4-style 33-byte raw UIDs: (env << 6) | (1 << 5) | (scope << 4) | (type << 2)
            meta = (self.rng.randrange(3) << 6) | 0x20 | (self.rng.randrange(2) << 4) | (self.rng.randrange(2) << 2)
            self.raw_uids.append(ui.b64std(bytes([meta]) + self.rng.randbytes(32)))

    # -- key helpers --------------------------------------------------------------------------
    def sdk_key(self, ring, kid):
        from uid2_client import EncryptionKey
        if kid == UNKNOWN_MASTER_ID:
            secret = self.unknown_master[2]
        elif kid == UNKNOWN_SITE_KEY_ID:
            secret = self.unknown_site[2]
        else:
            secret = ring.secrets[kid]
        return EncryptionKey(kid, -1, ui.s_to_dt(T2020), ui.s_to_dt(T2020), ui.s_to_dt(T2040), secret)

    def secret(self, ring, kid):
        return self.sdk_key(ring, kid).secret

    # -- recording ----------------------------------------------------------------------------
    def add(self, *, name, token, keys_ref, now_s=None, now_ms=None, mode=None, domain=None, made_by, note):
        if name in self.names:
            raise ValueError("duplicate case name " + name)
        self.names.add(name)
        ring = self.rings[keys_ref]
        mode = mode or ring.mode
        now_ms = now_ms if now_ms is not None else now_s * 1000
        py, raised = ui.sdk_decrypt(self.clients, keys_ref, token, mode, domain, now_ms)
        ref, info = ui.reference_decrypt(self.keysets[keys_ref], token, mode, domain, now_ms)
        devs, unexplained = ui.explain(py, ref, info)
        if unexplained:
            self.problems.append("%s: %s" % (name, "; ".join(unexplained)))
        case = {"name": name, "token": token, "mode": mode, "domain": domain, "now_ms": now_ms,
                "keys_ref": keys_ref, "made_by": made_by, "expected": py, "python_raised": raised, "note": note}
        if devs:
            case["python_deviation"] = "+".join(devs)
            case["java_expected"] = ref["status"]
            case["java_expected_result"] = ref
        self.cases.append(case)
        return case

    def gen(self, *, name, keys_ref, version, uid, master_id, site_key_id, site_id, now_s, expires_s,
            generated_s, established_s, scope=None, domain=None, mode=None, tamper=None, note=""):
        """Token made by UID2TokenGenerator, optionally post-processed by `tamper(token) -> token`."""
        from uid2_client import Params, UID2TokenGenerator
        ring = self.rings[keys_ref]
        scope = ring.scope if scope is None else scope
        params = Params(expiry=ui.s_to_dt(expires_s), identity_scope=scope,
                        token_generated=ui.s_to_dt(generated_s), identity_established=ui.s_to_dt(established_s))
        mk, sk = self.sdk_key(ring, master_id), self.sdk_key(ring, site_key_id)
        if version == 2:
            token = UID2TokenGenerator.generate_uid2_token_v2(uid, mk, site_id, sk, params)
        elif version == 3:
            token = UID2TokenGenerator.generate_uid2_token_v3(uid, mk, site_id, sk, params)
        else:
            token = UID2TokenGenerator.generate_uid2_token_v4(uid, mk, site_id, sk, params)
        if tamper is not None:
            token = tamper(token)
        return self.add(name=name, token=token, keys_ref=keys_ref, now_s=now_s, mode=mode, domain=domain,
                        made_by="sdk_generator", note=note)

    def hand(self, *, name, keys_ref, now_s, mode=None, domain=None, note, version=4, uid=SPEC_RAW_UIDS[0],
             master_id=164, site_key_id=165, site_id=9000, expires_s=None, generated_s=None,
             established_s=None, **kw):
        ring = self.rings[keys_ref]
        expires_s = now_s + 3600 if expires_s is None else expires_s
        generated_s = now_s - 60 if generated_s is None else generated_s
        established_s = now_s - DAY if established_s is None else established_s
        exp_ms = kw.pop("expires_ms", expires_s * 1000)
        est_ms = kw.pop("established_ms", established_s * 1000)
        if version == 2:
            token = ui.build_v2(uid_str=uid, master_id=master_id, master_secret=self.secret(ring, master_id),
                                site_key_id=site_key_id, site_secret=self.secret(ring, site_key_id),
                                site_id=site_id, expires_ms=exp_ms, established_ms=est_ms,
                                master_iv=self.rng.randbytes(16), site_iv=self.rng.randbytes(16), **kw)
        else:
            kw.setdefault("scope", ring.scope)
            token = ui.build_v3v4(version=version, raw_uid_bytes=base64.b64decode(uid), master_id=master_id,
                                  master_secret=self.secret(ring, master_id), site_key_id=site_key_id,
                                  site_secret=self.secret(ring, site_key_id), site_id=site_id,
                                  expires_ms=exp_ms, generated_ms=generated_s * 1000,
                                  established_ms=est_ms, master_nonce=self.rng.randbytes(12),
                                  site_nonce=self.rng.randbytes(12), **kw)
        return self.add(name=name, token=token, keys_ref=keys_ref, now_s=now_s, mode=mode, domain=domain,
                        made_by="hand_built", note=note)

    # -- case families ------------------------------------------------------------------------
    def random_cases(self, count):
        rng = self.rng
        refs = ["keys"] * 2 + ["sharing_keys", "euid_keys"]
        for i in range(count):
            keys_ref = rng.choice(refs)
            ring = self.rings[keys_ref]
            version = rng.choice([2, 3, 4])
            now = rng.randrange(T2023, T2030)
            if rng.random() < 0.1:
                generated = now + rng.randrange(0, ring.skew_s + 1)       # a little in the future, within skew
            else:
                generated = now - rng.randrange(0, 2 * DAY)
            cap = ring.max_s if ring.max_s is not None else 400 * DAY
            cap = min(cap, rng.choice([3 * DAY + 10, 30 * DAY, 400 * DAY]))
            if version == 2:          # v2: only the remaining lifetime (expires - now) is bounded
                expires = now + rng.randrange(0, cap + 1)
            else:                     # expires >= now and expires - generated <= cap
                lo = max(now - generated, 0)
                expires = generated + rng.randrange(lo, cap + 1)
            established = generated - rng.randrange(0, 3 * YEAR)
            if ring.mode == "bidstream":
                domain = rng.choice([None, "example.com", "EXAMPLE.org", "foo.com", "com.123.Game.App.android",
                                     "123456789", "example.net", ""])
            else:
                domain = None
            site_id = rng.choice([9000, 2, CALLER_SITE, rng.randrange(1, 2 ** 31 - 1)])
            uid = rng.choice(self.raw_uids)
            self.gen(name="gen-%04d-v%d-%s" % (i, version, keys_ref), keys_ref=keys_ref, version=version, uid=uid,
                     master_id=rng.choice(ring.masters), site_key_id=rng.choice(ring.sites), site_id=site_id,
                     now_s=now, expires_s=expires, generated_s=generated, established_s=established,
                     domain=domain, note="random SDK-generator token, expected from SDK decrypt")

    def negative_cases(self):
        rng = self.rng
        for keys_ref, ring in self.rings.items():
            m0, s0 = ring.masters[-1], ring.sites[0]
            for v in (2, 3, 4):
                p = "neg-v%d-%s-" % (v, keys_ref)
                now = rng.randrange(T2023, T2030)
                uid = rng.choice(self.raw_uids)
                base = dict(keys_ref=keys_ref, version=v, uid=uid, master_id=m0, site_key_id=s0, site_id=9000,
                            established_s=now - 10 * DAY)
                g = lambda name, note, **kw: self.gen(name=p + name, note=note, **{**base, **kw})  # noqa: E731

                g("expired-1s", "expires = now - 1 s", now_s=now, generated_s=now - 3600, expires_s=now - 1)
                g("expired-1d", "expires = now - 1 day", now_s=now, generated_s=now - 2 * DAY, expires_s=now - DAY)
                g("expires-eq-now", "expires == now is still valid", now_s=now, generated_s=now - 3600,
                  expires_s=now)
                if ring.max_s is not None:
                    start = now if v == 2 else now - 3600
                    g("lifetime-eq-max", "expires - generated (v2: now) == max lifetime: valid", now_s=now,
                      generated_s=start, expires_s=start + ring.max_s)
                    g("lifetime-max-plus-1s", "expires - generated (v2: now) == max + 1 s: invalid lifetime",
                      now_s=now, generated_s=start, expires_s=start + ring.max_s + 1)
                    g("lifetime-huge", "lifetime far above max", now_s=now, generated_s=now,
                      expires_s=now + ring.max_s + 10 * YEAR if ring.max_s < 10 * YEAR else now + 30 * YEAR)
                else:
                    g("lifetime-unlimited-30y", "no max in key JSON: any lifetime is accepted", now_s=now,
                      generated_s=now, expires_s=now + 30 * YEAR)
                if keys_ref == "keys":
                    g("sdk-test-5.3-total-lifetime", "generated = now - 1 d, expiry = generated + 3 d + 1 min: "
                      "v3/v4 invalid lifetime, v2 success (remaining lifetime only)", now_s=now,
                      generated_s=now - DAY, expires_s=now - DAY + 3 * DAY + 60)
                g("generated-future-eq-skew", "generated = now + allow_clock_skew: valid", now_s=now,
                  generated_s=now + ring.skew_s, expires_s=now + ring.skew_s + 3600)
                g("generated-future-skew-plus-1s", "generated = now + allow_clock_skew + 1 s: invalid lifetime "
                  "(v2 has no generated field: valid)", now_s=now, generated_s=now + ring.skew_s + 1,
                  expires_s=now + ring.skew_s + 3600)
                g("unknown-master-key", "master key id 999 is not in the key JSON", now_s=now,
                  generated_s=now - 60, expires_s=now + 3600, master_id=UNKNOWN_MASTER_ID)
                g("unknown-site-key", "site key id 998 is not in the key JSON", now_s=now,
                  generated_s=now - 60, expires_s=now + 3600, site_key_id=UNKNOWN_SITE_KEY_ID)
                g("expired-and-unknown-site-key", "expired token whose site key is unknown", now_s=now,
                  generated_s=now - 7200, expires_s=now - 3600, site_key_id=UNKNOWN_SITE_KEY_ID)
                g("expired-key-still-decrypts" if 101 in ring.masters else "key-rotation-master-%d" % ring.masters[0],
                  "master key lookup is by id only, whatever the key's own activation/expiry", now_s=now,
                  generated_s=now - 60, expires_s=now + 3600, master_id=ring.masters[0])
                fresh = dict(now_s=now, generated_s=now - 60, expires_s=now + 3600)
                if v == 2:
                    g("tampered-truncated", "last 4 base64 chars removed: CBC length error", tamper=lambda t: t[:-4],
                      **fresh)
                    g("tampered-iv-site-key-id", "master IV byte 8 flipped: decrypted site key id unknown",
                      tamper=lambda t: flip_byte(t, 5 + 8, 0x01, 2), **fresh)
                    g("tampered-iv-expires", "master IV byte 2 flipped: expires moves by 2^40 ms",
                      tamper=lambda t: flip_byte(t, 5 + 2, 0x01, 2), **fresh)
                else:
                    g("tampered-master-nonce", "byte in master nonce flipped: GCM tag fails",
                      tamper=lambda t, v=v: flip_byte(t, 9, 0x20, v), **fresh)
                    g("tampered-master-ciphertext", "byte in master ciphertext flipped: GCM tag fails",
                      tamper=lambda t, v=v: flip_byte(t, 60, 0x01, v), **fresh)
                    g("tampered-tag", "last tag byte flipped: GCM tag fails",
                      tamper=lambda t, v=v: flip_byte(t, -1, 0x80, v), **fresh)
                    g("tampered-char", "one base64 character in the middle replaced",
                      tamper=lambda t: flip_char(t, 100), **fresh)
                    g("tampered-truncated", "token cut to 150 characters", tamper=lambda t: t[:150], **fresh)
                    g("tampered-scope-bit", "prefix scope bit flipped (byte 0 is not authenticated)",
                      tamper=lambda t, v=v: flip_byte(t, 0, 0x10, v), **fresh)
                    g("tampered-type-bit", "prefix identity-type bit flipped (byte 0 is not authenticated)",
                      tamper=lambda t, v=v: flip_byte(t, 0, 0x04, v), **fresh)
                    g("version-byte-0x71", "byte 1 = 0x71: version not supported",
                      tamper=lambda t, v=v: set_byte(t, 1, 0x71, v), **fresh)
                    g("lenient-base64-star", "a '*' inserted at char 50", tamper=lambda t: t[:50] + "*" + t[50:],
                      **fresh)
                    g("lenient-base64-4stars", "'****' inserted at char 50",
                      tamper=lambda t: t[:50] + "****" + t[50:], **fresh)
                    g("other-scope-token", "token scope differs from the key JSON scope", scope=1 - ring.scope,
                      **fresh)
                    g("other-scope-and-unknown-master", "scope mismatch and unknown master key",
                      scope=1 - ring.scope, master_id=UNKNOWN_MASTER_ID, **fresh)
                g("keys-not-synced", "now after every key in the JSON has expired", now_s=T2041,
                  generated_s=T2041 - 60, expires_s=T2041 + 3600)

    def handbuilt_cases(self):
        rng = self.rng
        now = rng.randrange(T2023, T2030)
        h = self.hand
        for dom in ("example.com", "EXAMPLE.COM", "com.123.Game.App.android", "123456789", "example.org"):
            h(name="hand-cstg-domain-ok-%s" % dom, keys_ref="keys", now_s=now, domain=dom, privacy_bits=0x2,
              note="CSTG (privacy 0x2), name allowed for site 9000")
        for dom in (None, "", "example.net", "foo.com", "www.example.com", "example.com."):
            h(name="hand-cstg-domain-bad-%s" % dom, keys_ref="keys", now_s=now, domain=dom, privacy_bits=0x2,
              note="CSTG (privacy 0x2), name not allowed for site 9000")
        h(name="hand-cstg-site-2-ok", keys_ref="keys", now_s=now, domain="example.edu", site_id=2,
          privacy_bits=0x2, note="CSTG for site 2 with a site-2 name")
        h(name="hand-cstg-site-not-in-site-data", keys_ref="keys", now_s=now, domain="example.com", site_id=77,
          privacy_bits=0x2, note="CSTG for a site absent from site_data")
        h(name="hand-cstg-v3-domain-bad", keys_ref="keys", now_s=now, domain="foo.com", privacy_bits=0x2,
          version=3, note="v3 CSTG with a wrong domain")
        h(name="hand-cstg-sharing-no-domain", keys_ref="sharing_keys", now_s=now, domain=None, privacy_bits=0x2,
          note="CSTG token in sharing mode: never domain-checked")
        h(name="hand-cstg-euid-ok", keys_ref="euid_keys", now_s=now, domain="example.org", privacy_bits=0x2,
          note="EUID CSTG token, allowed name")
        h(name="hand-cstg-euid-bad", keys_ref="euid_keys", now_s=now, domain="example.net", privacy_bits=0x2,
          note="EUID CSTG token, name of another site")
        h(name="hand-cstg-expired-bad-domain", keys_ref="keys", now_s=now, domain="foo.com", privacy_bits=0x2,
          expires_s=now - 10, generated_s=now - 3600, note="CSTG, expired and wrong domain: expiry first")
        h(name="hand-cstg-bad-domain-bad-lifetime", keys_ref="keys", now_s=now, domain="foo.com",
          privacy_bits=0x2, generated_s=now - 60, expires_s=now + 10 * DAY,
          note="CSTG, wrong domain and lifetime too long: domain check comes first in Java")
        h(name="hand-cstg-ok-bad-lifetime", keys_ref="keys", now_s=now, domain="example.com", privacy_bits=0x2,
          generated_s=now - 60, expires_s=now + 10 * DAY, note="CSTG, allowed domain, lifetime too long")
        h(name="hand-privacy-0x40000000", keys_ref="keys", now_s=now, domain="foo.com", privacy_bits=0x40000000,
          note="bit 30 set only: Python reports CSTG, Java does not (and does no domain check)")
        for bits in (0x1, 0x4, 0x6, 0x8):
            h(name="hand-privacy-0x%x" % bits, keys_ref="keys", now_s=now, domain="example.com",
              privacy_bits=bits, note="privacy bits 0x%x (0x4 = CSTG opt-out, .NET UserOptedOut)" % bits)
        for prefix in (0x00, 0x01, 0x0F, 0x13, 0x07):
            for v in (3, 4):
                h(name="hand-prefix-0x%02x-v%d" % (prefix, v), keys_ref="keys" if prefix < 0x10 else "euid_keys",
                  now_s=now, version=v, prefix=prefix,
                  note="raw prefix byte 0x%02x (low bits not 0b11 are accepted)" % prefix)
        h(name="hand-v4-std-base64-padded", keys_ref="keys", now_s=now, std_base64_for_v4=True,
          note="v4 token written in standard base64 with padding")
        h(name="hand-v4-33-byte-uid", keys_ref="keys", now_s=now, uid=SPEC_RAW_UIDS[1],
          note="33-byte raw UID: 164-byte token, 219 chars")
        h(name="hand-v3-33-byte-uid", keys_ref="keys", now_s=now, uid=SPEC_RAW_UIDS[2], version=3,
          note="33-byte raw UID, v3")
        h(name="hand-ms-precision", keys_ref="keys", now_s=now, expires_ms=now * 1000 + 3600_500,
          established_ms=1672531261123, note="expires and established with millisecond precision")
        h(name="hand-operator-fields", keys_ref="keys", now_s=now, operator_site_id=5, operator_type=17,
          operator_version=12345, operator_key_id=7, publisher_id=42, client_key_id=9,
          refreshed_ms=(now - 30) * 1000, note="non-zero operator/publisher/client-key fields are ignored")
        h(name="hand-site-tag-corrupt", keys_ref="keys", now_s=now, corrupt_site_tag=True,
          note="inner (site) GCM tag corrupted")
        h(name="hand-site-tag-corrupt-expired", keys_ref="keys", now_s=now, corrupt_site_tag=True,
          expires_s=now - 60, generated_s=now - 3600, note="expired, and inner GCM tag corrupted")
        # v2 CBC padding that is not PKCS#7 (last byte right, the other pad bytes zero).
        h(name="hand-v2-bad-master-padding", keys_ref="keys", now_s=now, version=2, bad_master_padding=True,
          note="v2 master payload padded 00 00 00 04 instead of 04 04 04 04")
        h(name="hand-v2-bad-site-padding", keys_ref="keys", now_s=now, version=2, bad_site_padding=True,
          note="v2 identity payload with non-PKCS#7 padding")
        h(name="hand-v2-bad-site-padding-expired", keys_ref="keys", now_s=now, version=2, bad_site_padding=True,
          expires_s=now - 60, note="v2 expired and identity payload with non-PKCS#7 padding")
        h(name="hand-v2-ok", keys_ref="keys", now_s=now, version=2, note="hand-built v2 control")
        h(name="hand-v2-long-uid-string", keys_ref="keys", now_s=now, version=2,
          uid="not-base64 but any UTF-8 text: \u00e9\u4e2d", note="v2 carries the id as text, returned as-is")

    def literal_cases(self):
        now = 1700000000
        for keys_ref, note in (("sharing_keys", "cross-SDK v4 vector under large max_sharing_lifetime: success"),
                               ("keys", "cross-SDK v4 vector under a 3-day bidstream max: ~20-year lifetime"),
                               ("euid_keys", "cross-SDK v4 vector (UID2 scope) against EUID keys")):
            self.add(name="fixed-cross-sdk-v4-%s" % keys_ref, token=CROSS_SDK_V4, keys_ref=keys_ref, now_s=now,
                     made_by="fixed_vector", note=note + " (spec 7)")
        lits = [("empty", "", "len < 4: status, no raise"), ("three-chars", "A4A", "len < 4"),
                ("v2-header-only", "AgAA", "v2 header, nothing else"),
                ("v3-header-zero-key", "AXAAAAAAAAAAAAAA", "bytes 01 70 00..: v3, master key id 0 unknown"),
                ("version-0x10", "ABAAAAAAAAAAAAAA", "byte 0 = 0, byte 1 = 0x10: version not supported"),
                ("not-base64", "!!!!!!!!!!!!!!!!", "not base64 at all"),
                ("whitespace", "    ", "four spaces")]
        for name, tok, note in lits:
            self.add(name="lit-" + name, token=tok, keys_ref="keys", now_s=now, made_by="literal", note=note)


def _decode_any(token, version):
    if version == 4:
        return base64.urlsafe_b64decode(token + "=" * ((4 - len(token) % 4) % 4))
    return base64.b64decode(token)


def _encode_any(data, version):
    return ui.b64url_nopad(data) if version == 4 else ui.b64std(data)


def flip_byte(token, offset, mask, version):
    b = bytearray(_decode_any(token, version))
    b[offset] ^= mask
    return _encode_any(bytes(b), version)


def set_byte(token, offset, value, version):
    b = bytearray(_decode_any(token, version))
    b[offset] = value
    return _encode_any(bytes(b), version)


def flip_char(token, i):
    c = token[i]
    return token[:i] + ("B" if c != "B" else "C") + token[i + 1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=20250101)
    ap.add_argument("--count", type=int, default=1200, help="random SDK-generator tokens (default 1200)")
    args = ap.parse_args()

    m = Maker(args.seed)
    m.literal_cases()
    m.random_cases(args.count)
    m.negative_cases()
    m.handbuilt_cases()
    if m.problems:
        for p in m.problems:
            print("UNEXPLAINED python/reference difference: " + p, file=sys.stderr)
        sys.exit(2)

    counts = {
        "cases": len(m.cases),
        "sdk_generator": sum(1 for c in m.cases if c["made_by"] == "sdk_generator"),
        "by_status": dict(sorted(Counter(c["expected"]["status"] for c in m.cases).items())),
        "by_version": dict(sorted(Counter(str(c["expected"]["token_version"]) for c in m.cases).items())),
        "python_raised": sum(1 for c in m.cases if c["python_raised"]),
        "deviations": dict(sorted(Counter(c["python_deviation"] for c in m.cases if "python_deviation" in c).items())),
    }
    doc = {
        "format": "uid2-interop-cases/1",
        "sdk": "uid2-client 2.9.0",
        "seed": args.seed,
        "keys": m.rings["keys"].json,
        "sharing_keys": m.rings["sharing_keys"].json,
        "euid_keys": m.rings["euid_keys"].json,
        "deviations": ui.DEVIATIONS,
        "counts": counts,
        "cases": m.cases,
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, args.out)
    print("sdk_make_tokens: wrote %d cases (%d from the SDK generator, %d with a python_deviation) to %s"
          % (counts["cases"], counts["sdk_generator"], sum(counts["deviations"].values()), args.out))


if __name__ == "__main__":
    main()
