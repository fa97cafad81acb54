//! The offline and test commands: `replay`, `capture`, `verify`, `demo`, `gen` and `decrypt`, each owning
//! its command-line arguments, and the capture-file format they share.

use clap::ValueEnum;

use crate::engine::uid2::ClientMode;

pub(crate) mod capture;
pub mod capture_file;
pub(crate) mod decrypt;
pub(crate) mod demo;
pub(crate) mod generate;
pub(crate) mod replay;
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
