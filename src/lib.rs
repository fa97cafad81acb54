//! uid2-enricher: a DSP bid-pipeline stage that decrypts UID2/EUID tokens in OpenRTB requests exactly as
//! the official UID2 SDKs do, and splices the result into the request without changing any other byte.
//!
//! # Layout
//!
//! Pure core — no I/O, no clock, no environment; time, keys and opt-outs are arguments:
//! - [`uid2`]: the token engine. Byte layouts and base64 variants (`wire`), AES-GCM/CBC (`cipher`),
//!   key-endpoint JSON (`keys`), the SDKs' validation order and statuses (`decrypt`), the sharing sender and
//!   a token generator (`encrypt`), and the operator API envelope (`envelope`).
//! - [`openrtb`]: finding tokens in a bid request and splicing a result into it, for JSON (`json`, no DOM of
//!   the whole request) and protobuf (`proto`, a wire-level walk, never a decode/re-encode), plus the
//!   domain-or-app name used by the CSTG check (`domain`).
//! - [`formats`]: tokens outside the bid stream — tracking-pixel hits (`pixel`) and JSON events at JSON
//!   pointers (`event`) — found and written back as losslessly as bid requests.
//! - [`enrich`]: the one function the pipeline, replay and benchmarks call: bytes in, bytes out, for every
//!   payload format.
//! - [`tokenize`]: the sharing sender's direction: raw UID2s at JSON pointers become v4 tokens.
//! - [`optout`]: the opt-out rule, the lookup interface it needs, the compact opt-out set and the parsers
//!   of opt-out records.
//! - [`cache`]: a bounded decrypt-result cache shared across threads (moka); it reads no clock either.
//!
//! Shell — wiring and I/O only, depends on the core and never the reverse: [`cli`]; [`optout_feed`]
//! loads opt-out files, follows the opt-out topic and publishes the webhook's opt-outs.

pub mod cache;
pub mod capture;
pub mod cli;
pub mod config;
pub mod demo;
pub mod enrich;
pub mod formats;
pub mod jsonl;
pub mod kafka;
pub mod keysource;
pub mod metrics;
pub mod openrtb;
pub mod optout;
pub mod optout_feed;
pub mod pipeline;
pub mod replay;
pub mod server;
pub mod shutdown;
pub mod stage;
pub mod telemetry;
pub mod tokenize;
pub mod traffic;
pub mod uid2;
pub mod verify;
