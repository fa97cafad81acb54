//! uid2-enricher: a DSP bid-pipeline stage that decrypts UID2/EUID tokens in OpenRTB requests exactly as
//! the official UID2 SDKs do, and splices the result into the request without changing any other byte.
//!
//! # Layout
//!
//! Dependencies point one way, `cli → tools → stage → config → support, engine`, and never back;
//! `scripts/test.sh` checks that by path.
//!
//! - [`engine`] — pure: no I/O, no clock, no environment; time, keys and opt-outs are arguments.
//!   - [`engine::uid2`]: the token engine. Byte layouts and base64 variants (`wire`), AES-GCM/CBC
//!     (`cipher`), key-endpoint JSON (`keys`), the SDKs' validation order and statuses (`decrypt`), the
//!     sharing sender and a token generator (`encrypt`), and the operator API envelope (`envelope`).
//!   - [`engine::openrtb`]: finding tokens in a bid request and splicing a result into it, for JSON
//!     (`json`, no DOM of the whole request) and protobuf (`proto`, a wire-level walk, never a
//!     decode/re-encode), plus the domain-or-app name used by the CSTG check (`domain`).
//!   - [`engine::formats`]: tokens outside the bid stream — tracking-pixel hits and JSON events at JSON
//!     pointers — found and written back as losslessly as bid requests.
//!   - [`engine::enrich`]: the one function the stage, `replay` and the benchmarks call: bytes in, bytes
//!     out, for every payload format.
//!   - [`engine::tokenize`]: the sharing sender's direction: raw UID2s at JSON pointers become v4 tokens.
//!   - [`engine::optout`]: the opt-out rule, the lookup it needs, the compact opt-out set and the parsers
//!     of opt-out records.
//!   - [`engine::cache`]: a bounded decrypt-result cache shared across threads (moka).
//! - [`support`] — shell leaves that know nothing of the stage or the tools: the one wall clock and
//!   nonce source (`clock`), values kept out of logs (`secret`), logging (`telemetry`), signals
//!   (`shutdown`), the Prometheus registry (`metrics`) and what this build is (`build_info`).
//! - [`config`] — the TOML file turned into validated, typed settings, with errors that point at the
//!   file, line and column.
//! - [`stage`] — the `run` command: wiring (`stage::run`), the consume loop and partition tasks
//!   (`pipeline`), what a record becomes and where it goes (`route`), producing with backpressure
//!   (`produce`), the record headers (`headers`), every Kafka client (`kafka`), the key source
//!   (`keysource`), the opt-out feed (`optout_feed`), the HTTP endpoints (`server`) and `validate`.
//! - [`tools`] — the offline and test commands, each owning its arguments: `replay`, `capture`,
//!   `verify`, `demo`, `gen` (`generate`, with the synthetic traffic in `traffic`), `decrypt`, and the
//!   capture-file format they share (`capture_file`).
//! - [`cli`] — the command enum, dispatch, and the one tokio runtime builder.
//!
//! The engine's modules are also at the crate root (`uid2_enricher::uid2`, `uid2_enricher::enrich`, …),
//! the paths the benchmarks and tests use.

pub mod cli;
pub mod config;
pub mod engine;
pub mod stage;
pub mod support;
pub mod tools;

pub use engine::{cache, enrich, formats, openrtb, optout, tokenize, uid2};
