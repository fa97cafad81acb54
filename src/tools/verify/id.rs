//! The request id `verify` matches records by, read from a record's payload, key or coordinates (the rules
//! and their order are in the `verify` module's docs). Pure: no I/O.

use crate::engine::openrtb::proto;

/// The request id of a record (see the `verify` module docs for the order of the rules).
pub fn record_id(
    payload: Option<&[u8]>,
    key: Option<&[u8]>,
    id_pointer: &str,
    coordinates: impl FnOnce() -> String,
) -> String {
    if let Some(payload) = payload {
        if let Some(id) = json_id(payload, id_pointer) {
            return id;
        }
        if let Some(id) = protobuf_id(payload) {
            return id;
        }
    }
    if let Some(key) = key {
        return String::from_utf8_lossy(key).into_owned();
    }
    coordinates()
}

fn json_id(payload: &[u8], pointer: &str) -> Option<String> {
    let start = payload.iter().position(|b| !b.is_ascii_whitespace())?;
    if payload.get(start) != Some(&b'{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match value.pointer(pointer)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Field 1 of a protobuf message (OpenRTB's `BidRequest.id`) when it is length-delimited and UTF-8,
/// with the whole message valid wire format.
fn protobuf_id(payload: &[u8]) -> Option<String> {
    let bytes = proto::first_len_field(payload, 1).ok()??;
    std::str::from_utf8(bytes).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_json_then_protobuf_then_key_then_coordinates() {
        let at = || "t/0@5".to_string();
        assert_eq!(
            record_id(Some(br#" {"id":"r1","x":[1]}"#), Some(b"k"), "/id", at),
            "r1"
        );
        assert_eq!(record_id(Some(br#"{"id":42}"#), None, "/id", at), "42");
        assert_eq!(
            record_id(
                Some(br#"{"imp":[{"id":"i"}]}"#),
                Some(b"k"),
                "/imp/0/id",
                at
            ),
            "i"
        );
        // BidRequest { id: "p1" (field 1), at: 2 (field 7 varint) }
        assert_eq!(
            record_id(Some(b"\x0a\x02p1\x38\x02"), None, "/id", at),
            "p1"
        );
        // Truncated JSON, random bytes: the key, then the coordinates.
        assert_eq!(
            record_id(Some(br#"{"id":"r1","imp"#), Some(b"key"), "/id", at),
            "key"
        );
        assert_eq!(
            record_id(Some(b"\xff\xfe\x00garbage"), None, "/id", at),
            "t/0@5"
        );
        assert_eq!(record_id(None, None, "/id", at), "t/0@5");
    }
}
