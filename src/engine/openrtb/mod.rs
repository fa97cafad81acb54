//! Reading UID2/EUID tokens out of OpenRTB bid requests and writing the enrichment result back in,
//! without re-serialising anything the enricher did not add. Pure: depends only on std, serde_json,
//! memchr, prost (for the result message) and psl.

pub mod domain;
pub mod json;
pub mod proto;
