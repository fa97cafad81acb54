//! Input formats beside OpenRTB bid requests, for tokens that arrive outside the bid stream
//! (`../shared/seed/tokenized-sharing-in-pixels.md`): tracking-pixel hits ([`pixel`]) and arbitrary JSON
//! events with tokens at JSON pointers ([`event`]). Each module finds the token(s) and writes the result
//! back without touching any other byte; decrypting and rendering the result stay in `enrich`.
//!
//! Pure: no I/O, no clock.

pub mod event;
pub mod pixel;
