"""Shared helpers for the UID2 interop scripts (sdk_make_tokens.py, sdk_check_tokens.py).

Three things live here:

* ``sdk_decrypt``: drive the official Python SDK (uid2-client 2.9.0) and turn its answer into our
  result schema (snake_case status, ms timestamps, token_version 2/3/4).
* ``reference_decrypt``: an independent, Java/.NET-ordered reading of the token with pycryptodome
  (spec/uid2-tokens.md sections 2, 3.6, 5.2). It is *not* trusted on its own: every case is also
  decrypted by the SDK, and ``explain`` must account for every difference between the two with one of
  the documented Python 2.9.0 deviations (spec section 5.4, plus the lenient-base64 one found here).
  A difference that no rule explains is reported as a harness failure.
* ``compare``: the field comparison rule shared by both scripts (and described in the report for the
  Rust test):
    - ``status`` must be equal;
    - ``raw_uid2`` must be equal (on every non-success status Java semantics say null);
    - on ``success`` every other field must be equal (null == null);
    - on any other status the remaining fields are compared only when both sides are non-null, because
      the SDKs fill different subsets of fields on errors.

Result schema (one dict per decrypted token)::

    {"status": str, "raw_uid2": str|None, "established": int ms|None, "site_id": int|None,
     "identity_type": "email"|"phone"|None, "token_version": 2|3|4|None, "cstg": bool|None,
     "expires": int ms|None}
"""

import base64
import binascii
import datetime as dt
import json

from Crypto.Cipher import AES

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

FIELDS = ("raw_uid2", "established", "site_id", "identity_type", "token_version", "cstg", "expires")

# Python DecryptionStatus member name -> our snake_case status.
STATUS_FROM_PY = {
    "SUCCESS": "success",
    "NOT_AUTHORIZED_FOR_MASTER_KEY": "not_authorized_for_master_key",
    "NOT_AUTHORIZED_FOR_KEY": "not_authorized_for_key",
    "NOT_INITIALIZED": "not_initialized",
    "INVALID_PAYLOAD": "invalid_payload",
    "EXPIRED_TOKEN": "expired_token",
    "KEYS_NOT_SYNCED": "keys_not_synced",
    "VERSION_NOT_SUPPORTED": "version_not_supported",
    "INVALID_TOKEN_LIFETIME": "invalid_token_lifetime",
    # Defined in 2.9.0 but never returned (the domain check is a stub).
    "DOMAIN_NAME_CHECK_FAILED": "domain_or_app_name_check_failed",
}

ALL_STATUSES = {
    "success", "not_authorized_for_master_key", "not_authorized_for_key", "not_initialized",
    "invalid_payload", "expired_token", "keys_not_synced", "version_not_supported",
    "invalid_identity_scope", "invalid_token_lifetime", "domain_or_app_name_check_failed",
}

# Documented Python 2.9.0 deviations from Java/.NET (spec 5.4). Values are one-line explanations.
DEVIATIONS = {
    "expiry_checked_before_site_key":
        "Python checks expiry right after the master payload, before the site-key lookup and the "
        "site-payload decrypt: Python expired_token, Java not_authorized_for_key / invalid_payload",
    "no_identity_scope_check":
        "Python never compares the token scope with the key container scope: "
        "Java invalid_identity_scope",
    "no_domain_check":
        "Python's domain/app-name check is a stub returning True: "
        "Java domain_or_app_name_check_failed for CSTG tokens in bidstream mode",
    "cstg_wrong_bit":
        "Python reads the CSTG flag from mask 0x40000000 (bitarray big-endian index 1) and never "
        "from v2 tokens; Java/.NET/operator use mask 0x2",
    "v2_lifetime_keeps_uid":
        "Python's v2 invalid_token_lifetime result still carries the raw UID; Java returns null",
    "v2_no_padding_check":
        "Python strips CBC padding without checking it (v2); Java/.NET reject bad PKCS#7 padding "
        "with invalid_payload",
    "python_short_read":
        "Python reads ids from short slices (int.from_bytes of fewer than 4 bytes) instead of failing "
        "on a truncated token; Java/.NET fail with invalid_payload",
    "python_lenient_base64":
        "Python's base64.b64decode silently drops characters outside the alphabet; Java and .NET "
        "reject them (invalid_payload)",
    "python_strict_utf8":
        "Python decodes a v2 identity string strictly and raises on bytes that are not UTF-8 (only a "
        "tampered v2 token, whose CBC layer is unauthenticated, has them); Java's new String(bytes, "
        "UTF_8) replaces them and goes on",
    "python_timestamp_range":
        "Python raises when a timestamp is outside datetime's range (a garbled v2 master payload); "
        "Java's Instant takes any long and goes on to the key lookup",
}

# Python's datetime covers years 1..9999.
_PY_MIN_MS = -62135596800000
_PY_MAX_MS = 253402300799999

# ---------------------------------------------------------------------------------------------
# small helpers


def ms_to_dt(ms):
    return EPOCH + dt.timedelta(milliseconds=ms)


def dt_to_ms(value):
    if value is None:
        return None
    return (value - EPOCH) // dt.timedelta(milliseconds=1)


def s_to_dt(seconds):
    return EPOCH + dt.timedelta(seconds=seconds)


def empty_result(status):
    r = {"status": status}
    for f in FIELDS:
        r[f] = None
    return r


def b64url_nopad(data):
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64std(data):
    return base64.b64encode(data).decode("ascii")


def wrap_body(body):
    """Key-endpoint response as the SDK's _refresh_json expects it."""
    return json.dumps({"body": body, "status": "success"}, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# key JSON (reference side)


class KeySet:
    """The parts of a key-endpoint JSON the reference decoder needs (Java parsing defaults, 3.5)."""

    def __init__(self, json_str):
        doc = json.loads(json_str) if isinstance(json_str, str) else json_str
        body = doc["body"] if isinstance(doc, dict) and "body" in doc else doc
        if not isinstance(body, dict):
            raise ValueError("key JSON body is not an object (legacy /v2/key/latest arrays are unsupported)")
        self.scope = 1 if body.get("identity_scope") == "EUID" else 0
        self.skew_s = body.get("allow_clock_skew_seconds")
        if self.skew_s is None:
            self.skew_s = 1800
        self.max_bidstream_s = body.get("max_bidstream_lifetime_seconds")  # None = unlimited
        self.max_sharing_s = body.get("max_sharing_lifetime_seconds")
        self.keys = {}
        self.latest_expires_ms = None
        for k in body.get("keys") or []:
            self.keys[int(k["id"])] = base64.b64decode(k["secret"])
            exp_ms = int(k["expires"]) * 1000
            if self.latest_expires_ms is None or exp_ms > self.latest_expires_ms:
                self.latest_expires_ms = exp_ms
        self.site_data = {}
        for s in body.get("site_data") or []:
            if s.get("id"):
                self.site_data[int(s["id"])] = {n.lower() for n in (s.get("domain_names") or [])}

    def max_lifetime_s(self, mode):
        return self.max_bidstream_s if mode == "bidstream" else self.max_sharing_s


# ---------------------------------------------------------------------------------------------
# hand-built tokens (spec 2.2 / 2.3) with pycryptodome


def gcm_seal(secret, nonce, plaintext):
    cipher = AES.new(secret, AES.MODE_GCM, nonce=nonce)
    ct, tag = cipher.encrypt_and_digest(plaintext)
    return nonce + ct + tag


def pkcs7(data, block=16):
    n = block - len(data) % block
    return data + bytes([n]) * n


def build_v3v4(*, version, raw_uid_bytes, master_id, master_secret, site_key_id, site_secret,
               site_id, expires_ms, generated_ms, established_ms, refreshed_ms=None,
               privacy_bits=0, prefix=None, scope=0, identity_type=0,
               master_nonce, site_nonce, corrupt_site_tag=False, operator_site_id=0,
               operator_type=1, operator_version=0, operator_key_id=0, publisher_id=0,
               client_key_id=0, std_base64_for_v4=False):
    """Build a v3 (version=3) or v4 (version=4) token byte for byte per spec 2.3."""
    if refreshed_ms is None:
        refreshed_ms = generated_ms
    site_payload = (site_id.to_bytes(4, "big") + publisher_id.to_bytes(8, "big")
                    + client_key_id.to_bytes(4, "big") + (privacy_bits & 0xFFFFFFFF).to_bytes(4, "big")
                    + established_ms.to_bytes(8, "big") + refreshed_ms.to_bytes(8, "big") + raw_uid_bytes)
    site_blob = gcm_seal(site_secret, site_nonce, site_payload)
    if corrupt_site_tag:
        site_blob = site_blob[:-1] + bytes([site_blob[-1] ^ 0x01])
    master_payload = (expires_ms.to_bytes(8, "big") + generated_ms.to_bytes(8, "big")
                      + operator_site_id.to_bytes(4, "big") + bytes([operator_type])
                      + operator_version.to_bytes(4, "big") + operator_key_id.to_bytes(4, "big")
                      + site_key_id.to_bytes(4, "big") + site_blob)
    if prefix is None:
        prefix = (scope << 4) | (identity_type << 2) | 3
    token = (bytes([prefix, 112 if version == 3 else 128]) + master_id.to_bytes(4, "big")
             + gcm_seal(master_secret, master_nonce, master_payload))
    if version == 4 and not std_base64_for_v4:
        return b64url_nopad(token)
    return b64std(token)


def build_v2(*, uid_str, master_id, master_secret, site_key_id, site_secret, site_id, expires_ms,
             established_ms, privacy_bits=0, master_iv, site_iv, bad_master_padding=False,
             bad_site_padding=False):
    """Build a v2 token per spec 2.2, optionally with a non-PKCS#7 padding (last byte right, others 0)."""
    uid = uid_str.encode("utf-8")
    identity = (site_id.to_bytes(4, "big") + len(uid).to_bytes(4, "big") + uid
                + (privacy_bits & 0xFFFFFFFF).to_bytes(4, "big") + established_ms.to_bytes(8, "big"))

    def pad(data, bad):
        padded = pkcs7(data)
        n = padded[-1]
        if bad:
            if n < 2:
                raise ValueError("bad padding needs at least 2 pad bytes")
            padded = padded[:-n] + bytes(n - 1) + bytes([n])
        return padded

    site_ct = AES.new(site_secret, AES.MODE_CBC, iv=site_iv).encrypt(pad(identity, bad_site_padding))
    master_payload = expires_ms.to_bytes(8, "big") + site_key_id.to_bytes(4, "big") + site_iv + site_ct
    master_ct = AES.new(master_secret, AES.MODE_CBC, iv=master_iv).encrypt(pad(master_payload, bad_master_padding))
    return b64std(bytes([2]) + master_id.to_bytes(4, "big") + master_iv + master_ct)


# ---------------------------------------------------------------------------------------------
# reference decoder (Java/.NET order and semantics, spec 5.2)


class _Fail(Exception):
    pass


def _strict_b64(text):
    return base64.b64decode(text, validate=True)


def _python_lenient_decode(token, version):
    """Decode the whole token the way Python 2.9.0 does; None if that raises too."""
    try:
        if version == 4:
            v = token.replace("-", "+").replace("_", "/")
            m = len(v) % 4
            if m == 1:
                return None
            v += "=" * ((4 - m) % 4)
            return base64.b64decode(v)
        return base64.b64decode(token)
    except (binascii.Error, ValueError):
        return None


def _unpad_strict(data):
    if not data:
        return None
    n = data[-1]
    if n < 1 or n > 16 or n > len(data) or data[-n:] != bytes([n]) * n:
        return None
    return data[:-n]


def _unpad_python(data):
    n = data[-1]
    return data[:-n]


def _i64(b):
    return int.from_bytes(b, "big", signed=True)


def reference_decrypt(keyset, token, mode, domain, now_ms):
    """Decrypt like Java/.NET. Returns (result, info); info records what the explainer needs."""
    info = {"version": None, "stage": None, "padding_bad": False, "lenient_b64": False,
            "privacy_bits": None, "site_key_known": None, "expires_ms": None, "token_scope": None}
    if keyset is None:
        return empty_result("not_initialized"), info
    if keyset.latest_expires_ms is None or not now_ms < keyset.latest_expires_ms:
        return empty_result("keys_not_synced"), info
    if len(token) < 4:
        return empty_result("invalid_payload"), info
    header = token[:4]
    try:
        if "-" in header or "_" in header:
            hb = base64.urlsafe_b64decode(header)
        else:
            hb = _strict_b64(header)
        if len(hb) < 2:
            raise _Fail()
    except (binascii.Error, ValueError, _Fail):
        return empty_result("invalid_payload"), info
    if hb[0] == 2:
        version = 2
    elif hb[1] == 112:
        version = 3
    elif hb[1] == 128:
        version = 4
    else:
        return empty_result("version_not_supported"), info
    info["version"] = version

    try:
        if version == 4:
            v = token.replace("-", "+").replace("_", "/")
            if len(v) % 4 == 1:
                raise binascii.Error("bad length")
            full = _strict_b64(v + "=" * ((4 - len(v) % 4) % 4))
        else:
            full = _strict_b64(token)
    except (binascii.Error, ValueError):
        info["lenient_b64"] = _python_lenient_decode(token, version) is not None
        return empty_result("invalid_payload"), info

    if version == 2:
        return _ref_v2(keyset, full, mode, domain, now_ms, info)
    return _ref_v3(keyset, full, version, mode, domain, now_ms, info)


def _lifetime_ok(keyset, mode, generated_ms, expires_ms, now_ms):
    max_s = keyset.max_lifetime_s(mode)
    if max_s is not None and (expires_ms - generated_ms) > max_s * 1000:
        return False
    if generated_ms > now_ms and (generated_ms - now_ms) > keyset.skew_s * 1000:
        return False
    return True


def _domain_ok(keyset, site_id, domain):
    names = keyset.site_data.get(site_id)
    if names is None or domain is None:
        return False
    return domain.lower() in names


def _finish(keyset, r, mode, domain, now_ms, generated_ms, privacy_bits, uid, info):
    """Steps 8-12 of spec 5.2, shared by v2 and v3/v4. r already holds every field but raw_uid2."""
    info["stage"] = "checks"
    if r["expires"] < now_ms:
        r["status"] = "expired_token"
        return r, info
    if mode == "bidstream" and (privacy_bits & 0x2) and not _domain_ok(keyset, r["site_id"], domain):
        r["status"] = "domain_or_app_name_check_failed"
        return r, info
    if not _lifetime_ok(keyset, mode, generated_ms, r["expires"], now_ms):
        r["status"] = "invalid_token_lifetime"
        return r, info
    r["status"] = "success"
    r["raw_uid2"] = uid
    return r, info


def _ref_v2(keyset, full, mode, domain, now_ms, info):
    r = empty_result("invalid_payload")
    r["token_version"] = 2
    if len(full) < 5:
        info["short"] = True
        return r, info
    master_id = int.from_bytes(full[1:5], "big")
    master = keyset.keys.get(master_id)
    if master is None:
        r["status"] = "not_authorized_for_master_key"
        return r, info
    info["stage"] = "master"
    iv, ct = full[5:21], full[21:]
    if len(iv) != 16 or not ct or len(ct) % 16:
        return r, info
    raw = AES.new(master, AES.MODE_CBC, iv=iv).decrypt(ct)
    mp = _unpad_strict(raw)
    if mp is None:
        info["padding_bad"] = True
        return r, info
    if len(mp) < 28:
        return r, info
    r["expires"] = _i64(mp[0:8])
    info["expires_ms"] = r["expires"]
    if not _PY_MIN_MS <= r["expires"] <= _PY_MAX_MS:
        info["timestamp_out_of_range"] = True
    site_key_id = int.from_bytes(mp[8:12], "big")
    site = keyset.keys.get(site_key_id)
    info["site_key_known"] = site is not None
    info["stage"] = "site"
    if site is None:
        r["status"] = "not_authorized_for_key"
        return r, info
    sct = mp[28:]
    if not sct or len(sct) % 16:
        return r, info
    ip = _unpad_strict(AES.new(site, AES.MODE_CBC, iv=mp[12:28]).decrypt(sct))
    if ip is None:
        info["padding_bad"] = True
        return r, info
    if len(ip) < 8:
        return r, info
    site_id = _i64(ip[0:4])
    id_len = _i64(ip[4:8])
    if id_len < 0 or len(ip) < 8 + id_len + 12:
        return r, info
    try:
        uid = ip[8:8 + id_len].decode("utf-8")
    except UnicodeDecodeError:
        # Java: new String(bytes, UTF_8) replaces malformed input and carries on.
        info["uid_not_utf8"] = True
        uid = ip[8:8 + id_len].decode("utf-8", errors="replace")
    privacy_bits = int.from_bytes(ip[8 + id_len:12 + id_len], "big")
    info["privacy_bits"] = privacy_bits
    r["site_id"] = site_id
    r["established"] = _i64(ip[12 + id_len:20 + id_len])
    if not _PY_MIN_MS <= r["established"] <= _PY_MAX_MS:
        info["timestamp_out_of_range"] = True
    r["cstg"] = bool(privacy_bits & 0x2)
    # v2 has no "generated" field: the lifetime check uses now (remaining lifetime).
    return _finish(keyset, r, mode, domain, now_ms, now_ms, privacy_bits, uid, info)


def _gcm_open(secret, blob):
    if len(blob) < 28:
        return None
    try:
        return AES.new(secret, AES.MODE_GCM, nonce=blob[:12]).decrypt_and_verify(blob[12:-16], blob[-16:])
    except ValueError:
        return None


def _ref_v3(keyset, full, version, mode, domain, now_ms, info):
    r = empty_result("invalid_payload")
    r["token_version"] = version
    if len(full) < 6:
        info["short"] = True
        return r, info
    b0 = full[0]
    scope = (b0 >> 4) & 1
    info["token_scope"] = scope
    r["identity_type"] = "email" if ((b0 & 0x0F) >> 2) == 0 else "phone"
    if scope != keyset.scope:
        r["status"] = "invalid_identity_scope"
        return r, info
    master = keyset.keys.get(int.from_bytes(full[2:6], "big"))
    if master is None:
        r["status"] = "not_authorized_for_master_key"
        return r, info
    info["stage"] = "master"
    mp = _gcm_open(master, full[6:])
    if mp is None or len(mp) < 33:
        return r, info
    r["expires"] = _i64(mp[0:8])
    info["expires_ms"] = r["expires"]
    generated_ms = _i64(mp[8:16])
    site = keyset.keys.get(int.from_bytes(mp[29:33], "big"))
    info["site_key_known"] = site is not None
    info["stage"] = "site"
    if site is None:
        r["status"] = "not_authorized_for_key"
        return r, info
    sp = _gcm_open(site, mp[33:])
    if sp is None or len(sp) < 36:
        return r, info
    privacy_bits = int.from_bytes(sp[16:20], "big")
    info["privacy_bits"] = privacy_bits
    r["site_id"] = _i64(sp[0:4])
    r["established"] = _i64(sp[20:28])
    r["cstg"] = bool(privacy_bits & 0x2)
    uid = b64std(sp[36:])
    return _finish(keyset, r, mode, domain, now_ms, generated_ms, privacy_bits, uid, info)


# ---------------------------------------------------------------------------------------------
# the SDK side


class SdkClients:
    """One SDK client per (keys_ref, mode), loaded through the private _refresh_json."""

    def __init__(self, key_docs):
        self._key_docs = key_docs
        self._clients = {}

    def get(self, keys_ref, mode):
        from uid2_client import BidstreamClient, SharingClient
        k = (keys_ref, mode)
        if k not in self._clients:
            cls = BidstreamClient if mode == "bidstream" else SharingClient
            client = cls("http://127.0.0.1:9", "interop-unused-api-key",
                         "ioG3wKxAokmp+rERx6A4kM/13qhyolUXIu14WN16Spo=")
            doc = self._key_docs.get(keys_ref) if keys_ref is not None else None
            if doc is not None:
                resp = client._refresh_json(doc)
                if not resp.success:
                    raise ValueError("SDK rejected key JSON %r: %r" % (keys_ref, resp.reason))
            self._clients[k] = client
        return self._clients[k]


def py_view(decrypted):
    """SDK DecryptedToken -> our schema (Python semantics, no corrections)."""
    r = {"status": STATUS_FROM_PY[decrypted.status.name], "raw_uid2": decrypted.uid,
         "established": dt_to_ms(decrypted.established), "site_id": decrypted.site_id}
    it = decrypted.identity_type
    r["identity_type"] = None if it is None else ("email" if int(it) == 0 else "phone")
    v = decrypted.advertising_token_version
    r["token_version"] = None if v is None else {2: 2, 112: 3, 128: 4}[int(v)]
    c = decrypted.is_client_side_generated
    r["cstg"] = None if c is None else bool(c)
    r["expires"] = dt_to_ms(decrypted.expiry)
    return r


def sdk_decrypt(clients, keys_ref, token, mode, domain, now_ms):
    """Returns (python_view, python_raised)."""
    from uid2_client import EncryptionError
    client = clients.get(keys_ref, mode)
    now = ms_to_dt(now_ms)
    try:
        if mode == "bidstream":
            res = client._decrypt_token_into_raw_uid(token, domain, now)
        else:
            res = client._decrypt_token_into_raw_uid(token, now)
    except EncryptionError:
        return empty_result("invalid_payload"), True
    return py_view(res), False


# ---------------------------------------------------------------------------------------------
# explain + compare


def explain(py, ref, info):
    """Account for every difference between the SDK answer (py) and the Java-semantics reference (ref).

    Returns (deviations, unexplained): deviation names (keys of DEVIATIONS) and human-readable
    differences no documented rule covers.
    """
    devs = []
    ps, rs = py["status"], ref["status"]
    if ps != rs:
        if rs == "invalid_identity_scope":
            devs.append("no_identity_scope_check")
        elif ps == "expired_token" and info.get("stage") == "site" and rs in ("not_authorized_for_key", "invalid_payload"):
            devs.append("expiry_checked_before_site_key")
        elif rs == "invalid_payload" and info.get("padding_bad"):
            devs.append("v2_no_padding_check")
        elif rs == "invalid_payload" and info.get("short"):
            devs.append("python_short_read")
        elif rs == "invalid_payload" and info.get("lenient_b64"):
            devs.append("python_lenient_base64")
        elif ps == "invalid_payload" and info.get("timestamp_out_of_range"):
            devs.append("python_timestamp_range")
        elif ps == "invalid_payload" and info.get("uid_not_utf8"):
            devs.append("python_strict_utf8")
        elif rs == "domain_or_app_name_check_failed" and ps in ("success", "invalid_token_lifetime"):
            devs.append("no_domain_check")
        else:
            return devs, ["status: python %s, reference %s" % (ps, rs)]
        # After a status-level deviation the SDK's fields describe a different outcome: nothing to compare.
        return devs, []

    unexplained = []
    if ps == "invalid_token_lifetime" and ref["token_version"] == 2 and py["raw_uid2"] is not None \
            and ref["raw_uid2"] is None:
        devs.append("v2_lifetime_keeps_uid")
    elif py["raw_uid2"] != ref["raw_uid2"]:
        unexplained.append("raw_uid2: python %r, reference %r" % (py["raw_uid2"], ref["raw_uid2"]))
    for f in FIELDS[1:]:
        a, b = py[f], ref[f]
        if ps != "success" and (a is None or b is None):
            continue
        if a == b:
            continue
        bits = info.get("privacy_bits")
        if f == "cstg" and bits is not None and (
                ref["token_version"] == 2 or bool(bits & 0x2) != bool(bits & 0x40000000)):
            if "cstg_wrong_bit" not in devs:
                devs.append("cstg_wrong_bit")
            continue
        unexplained.append("%s: python %r, reference %r" % (f, a, b))
    return devs, unexplained


def compare(want, got):
    """Mismatch strings between two results in our schema (rule in the module docstring)."""
    out = []
    if want.get("status") != got.get("status"):
        out.append("status: want %s, got %s" % (want.get("status"), got.get("status")))
        return out
    if want.get("raw_uid2") != got.get("raw_uid2"):
        out.append("raw_uid2: want %r, got %r" % (want.get("raw_uid2"), got.get("raw_uid2")))
    for f in FIELDS[1:]:
        a, b = want.get(f), got.get(f)
        if want["status"] != "success" and (a is None or b is None):
            continue
        if a != b:
            out.append("%s: want %r, got %r" % (f, a, b))
    return out
