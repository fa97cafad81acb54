//! The offline and test commands: `replay`, `capture`, `verify`, `demo`, `gen` and `decrypt`, each owning
//! its command-line arguments, and the capture-file format they share.

use std::path::Path;

use anyhow::Context as _;
use clap::ValueEnum;

use crate::engine::uid2::{ClientMode, KeySet};

pub mod capture;
pub mod capture_file;
pub mod decrypt;
pub mod demo;
pub mod generate;
pub mod replay;
pub mod traffic;
pub mod verify;

/// Which SDK client's checks apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A DSP in the bid stream: CSTG domain/app check, `max_bidstream_lifetime_seconds`.
    Bidstream,
    /// A sharing receiver: no domain check, `max_sharing_lifetime_seconds`.
    Sharing,
}

impl From<ModeArg> for ClientMode {
    fn from(m: ModeArg) -> ClientMode {
        match m {
            ModeArg::Bidstream => ClientMode::Bidstream,
            ModeArg::Sharing => ClientMode::Sharing,
        }
    }
}

/// Reads and parses a keys file, naming the file and the fix in the error.
pub fn load_keys(path: &Path) -> anyhow::Result<KeySet> {
    let text = std::fs::read(path).with_context(|| {
        format!(
            "reading keys file {}: give the decrypted response of /v2/key/bidstream or \
             /v2/key/sharing (`uid2-enricher gen --keys-out FILE` writes a test key set)",
            path.display()
        )
    })?;
    KeySet::parse_json(&text).with_context(|| {
        format!(
            "parsing keys file {}: it must hold what a key endpoint returns once decrypted, \
             {{\"body\":{{\"keys\":[…],…}},\"status\":\"success\"}} or just the body",
            path.display()
        )
    })
}
