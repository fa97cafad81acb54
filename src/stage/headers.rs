//! The headers the stage adds to the records it writes: their names, which `replay` writes too and
//! `verify` reads back, and the set a dead letter carries.

/// The outcome of an output record: a decryption status, `no_token`, `tokenized` or `no_raw_uid2`.
pub const STATUS: &str = "uid2-status";
/// The enrichment member's JSON, on output records that have one.
pub const ENRICHMENT: &str = "uid2-enrichment";
/// Why a record was dead-lettered (`malformed_json`, `no_payload`, `too_large`, …).
pub const ERROR: &str = "uid2-error";
/// Where a dead letter's original is: its topic, partition and offset.
pub const SOURCE_TOPIC: &str = "uid2-source-topic";
pub const SOURCE_PARTITION: &str = "uid2-source-partition";
pub const SOURCE_OFFSET: &str = "uid2-source-offset";
/// `replay` only: the line of the input file a dead letter came from.
pub const SOURCE_LINE: &str = "uid2-source-line";

/// The headers of a dead letter, after the input's own: why, and where the original is.
pub fn dead_letter(
    reason: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> [(&'static str, Vec<u8>); 4] {
    [
        (ERROR, reason.as_bytes().to_vec()),
        (SOURCE_TOPIC, topic.as_bytes().to_vec()),
        (SOURCE_PARTITION, partition.to_string().into_bytes()),
        (SOURCE_OFFSET, offset.to_string().into_bytes()),
    ]
}
