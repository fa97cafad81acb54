#!/usr/bin/env python3
"""Check tokens made by the Rust side against the official Python SDK (uid2-client 2.9.0).

Usage: sdk_check_tokens.py CASES.json [-v]

Run it with the venv python ($UID2_PYTHON, see scripts/lib/python-venv.sh).

Input (written by the Rust test; extra fields are ignored):
{
  "keys": "<key-endpoint JSON string: {"body": {...}, "status": "success"}>",   (an object is accepted too)
  "sharing_keys": "...", "euid_keys": "...",              (any other top-level string/object works as a keys_ref)
  "cases": [ {"name": str, "token": str, "mode": "bidstream"|"sharing", "domain": str|null, "now_ms": int,
              "keys_ref": "keys"|"sharing_keys"|"euid_keys"|null  (default "keys"; null = no keys loaded),
              "expected": {"status", "raw_uid2", "established", "site_id", "identity_type",
                           "token_version", "cstg", "expires"},      (Java/.NET semantics)
              "python_deviation": str (optional, informational),
              "java_expected_result": {...} (optional; if present it is used instead of "expected": this is
                                             how sdk_make_tokens.py output is laid out, so that file checks too)
            } ... ]
}

For every case the token is decrypted twice: by the SDK (BidstreamClient/SharingClient loaded with
_refresh_json, _decrypt_token_into_raw_uid with now = now_ms) and by the Java-ordered reference reader in
uid2_interop.py. Every difference between those two must be explained by a documented Python deviation
(spec 5.4; the names are in uid2_interop.DEVIATIONS), otherwise the case fails ("python/reference
disagree"). The expectation is then compared with the Java-semantics answer:
  status and raw_uid2 always; on success every field; on other statuses a field only when both are non-null.

Prints one line per mismatch, then exactly `interop: N passed, M failed`. Exit 0 iff M == 0
(exit 2 if the input cannot be read at all).
"""

import argparse
import json
import os
import sys

sys.dont_write_bytecode = True   # keep scripts/interop free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import uid2_interop as ui  # noqa: E402


def load_key_docs(doc):
    keys = {}
    for k, v in doc.items():
        if k == "cases":
            continue
        if isinstance(v, dict) and "body" in v:
            keys[k] = json.dumps(v)
        elif isinstance(v, str) and v.lstrip().startswith("{") and '"body"' in v:
            keys[k] = v
    return keys


def check_case(case, clients, keysets, verbose):
    """Returns a list of failure lines for this case (empty = passed)."""
    name = case.get("name", "<unnamed>")
    try:
        token = case["token"]
        mode = case["mode"]
        now_ms = int(case["now_ms"])
        domain = case.get("domain")
        keys_ref = case.get("keys_ref", "keys")
        want = case.get("java_expected_result") or case["expected"]
        if mode not in ("bidstream", "sharing"):
            raise ValueError("mode must be bidstream or sharing, not %r" % (mode,))
        if keys_ref is not None and keys_ref not in keysets:
            raise ValueError("keys_ref %r names no key JSON in the file" % (keys_ref,))
        if want.get("status") not in ui.ALL_STATUSES:
            raise ValueError("unknown expected status %r" % (want.get("status"),))
        if not isinstance(token, str):
            raise ValueError("token must be a string")
    except (KeyError, TypeError, ValueError) as e:
        return ["FAIL %s: malformed case: %s" % (name, e)]

    try:
        py, raised = ui.sdk_decrypt(clients, keys_ref, token, mode, domain, now_ms)
    except Exception as e:  # e.g. the SDK rejected the key JSON; EncryptionError is handled inside
        return ["FAIL %s: harness error in the SDK call: %r" % (name, e)]
    try:
        ref, info = ui.reference_decrypt(keysets.get(keys_ref) if keys_ref is not None else None,
                                         token, mode, domain, now_ms)
    except Exception as e:
        return ["FAIL %s: harness error in the reference reader: %r" % (name, e)]
    devs, unexplained = ui.explain(py, ref, info)
    out = ["FAIL %s: python/reference disagree (harness): %s" % (name, u) for u in unexplained]
    for m in ui.compare(want, ref):
        out.append("FAIL %s: %s [python-sdk %s%s%s]" % (
            name, m, py["status"], " (raised EncryptionError)" if raised else "",
            ", deviation " + "+".join(devs) if devs else ""))
    declared = case.get("python_deviation")
    if declared:
        for d in str(declared).split("+"):
            if d not in ui.DEVIATIONS:
                print("note %s: python_deviation %r is not a known deviation name" % (name, d))
            elif d not in devs:
                print("note %s: declared python_deviation %r not observed (observed: %s)"
                      % (name, d, "+".join(devs) or "none"))
    if verbose:
        print("%s %s: python %s%s -> java %s%s" % (
            "ok  " if not out else "BAD ", name, py["status"], " (raised)" if raised else "",
            ref["status"], " [%s]" % "+".join(devs) if devs else ""))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = ap.parse_args()

    try:
        with open(args.cases) as f:
            doc = json.load(f)
        cases = doc["cases"]
        key_docs = load_key_docs(doc)
        keysets = {k: ui.KeySet(v) for k, v in key_docs.items()}
        clients = ui.SdkClients(key_docs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print("sdk_check_tokens: cannot read %s: %s" % (args.cases, e), file=sys.stderr)
        sys.exit(2)

    passed = failed = 0
    for case in cases:
        lines = check_case(case, clients, keysets, args.verbose)
        for line in lines:
            print(line)
        if lines:
            failed += 1
        else:
            passed += 1
    print("interop: %d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
