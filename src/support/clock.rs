//! The shell's clock and randomness, one of each: the wall clock the stage and the tools pass to the
//! engine as `now`, the operating system's random bytes that every GCM nonce comes from, and the `--now`
//! argument's parser.

use anyhow::bail;

/// The wall clock in milliseconds since the Unix epoch: the `now` of every record and key refresh.
pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Fills `buf` from the operating system's generator.
///
/// # Panics
/// When the operating system's generator fails: GCM nonces must never repeat under a key, so a seeded or
/// predictable fallback would be worse than stopping.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// The 24 random bytes that [`crate::engine::tokenize::tokenize`] asks for per token.
pub fn token_nonce() -> [u8; 24] {
    let mut n = [0u8; 24];
    fill_random(&mut n);
    n
}

/// Parses `--now`: integer milliseconds since the epoch, or an RFC 3339 timestamp.
///
/// Ten- and eleven-digit numbers are refused: as milliseconds they fall in 1970–1973, and they are nearly
/// always seconds given by mistake, which would decrypt every token as of January 1970 and report a
/// misleading lifetime status.
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        if (1_000_000_000..100_000_000_000).contains(&ms) {
            bail!(
                "--now {text}: this looks like seconds since the Unix epoch; give milliseconds ({ms}000) or RFC 3339 (2026-01-01T00:00:00Z)"
            );
        }
        return Ok(ms);
    }
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => Ok(t.timestamp_millis()),
        Err(_) => bail!(
            "--now {text:?}: expected milliseconds since the Unix epoch (1767225600000) or RFC 3339 (2026-01-01T00:00:00Z)"
        ),
    }
}
