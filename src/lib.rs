//! uid2-enricher: a DSP bid-pipeline stage that decrypts UID2/EUID tokens in OpenRTB requests exactly as
//! the official UID2 SDKs do, and splices the result into the request without changing any other byte.

pub mod cli;
pub mod config;
pub mod engine;
pub mod stage;
pub mod support;
pub mod tools;

pub use engine::{cache, enrich, formats, openrtb, optout, tokenize, uid2};
