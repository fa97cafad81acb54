//! The offline and test commands: `replay`, `capture`, `verify`, `demo`, `gen` and `decrypt`, each owning
//! its command-line arguments, and the capture-file format they share.

pub mod capture;
pub mod capture_file;
pub mod demo;
pub mod replay;
pub mod traffic;
pub mod verify;
