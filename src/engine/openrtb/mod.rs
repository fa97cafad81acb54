//! Reading UID2/EUID tokens out of OpenRTB bid requests and writing the enrichment result back in,
//! without re-serialising anything the enricher did not add. Pure. Besides std, `json` depends on memchr,
//! smallvec, serde/serde_json and thiserror, `proto` on prost (for the result message) and thiserror, and
//! `domain` on psl.

pub mod domain;
pub mod json;
pub mod proto;
