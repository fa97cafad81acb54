//! The pure engine: no I/O, no clock, no environment. Time, keys and opt-outs are arguments, so every
//! function here gives the same bytes for the same inputs, in the stage, in `replay` and in the benchmarks.
//! Nothing in this folder imports from outside it (`scripts/test.sh` checks that by path).

pub mod cache;
pub mod enrich;
pub mod formats;
pub mod openrtb;
pub mod optout;
pub mod tokenize;
pub mod uid2;
