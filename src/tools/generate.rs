//! `uid2-enricher gen`: synthetic bid requests, pixels or events (JSON Lines) and the key set that
//! decrypts their tokens. The module is not called `gen`: that word is reserved in Rust 2024.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::support::clock::{parse_time, wall_clock_ms};

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// How many requests.
    #[arg(long)]
    pub count: u64,
    /// Where to write them, one request per line (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Where to write the key set, in the key-endpoint JSON shape (`{"body":…,"status":"success"}`).
    #[arg(long, value_name = "KEYS.json")]
    pub keys_out: PathBuf,
    /// Also write the EUID operator's key set (`"identity_scope":"EUID"`), which decrypts the `euid-valid`
    /// tokens: `--mix v4=1,euid-valid=1` makes a stream that needs both key sets
    /// (`replay --keys UID2.json --keys EUID.json`).
    #[arg(long, value_name = "KEYS.json")]
    pub euid_keys_out: Option<PathBuf>,
    /// Approximate request size in bytes, or a range `MIN-MAX` to draw each request's size from (real
    /// traffic: about 1000-10000).
    #[arg(long, default_value = "2000", value_name = "BYTES|MIN-MAX")]
    pub size: String,
    /// Token mix as case=weight pairs (see `demo --help`).
    #[arg(long)]
    pub mix: Option<String>,
    /// Same seed, same requests and tokens.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Distinct users the tokens are drawn from (skewed, so tokens repeat as in real traffic).
    #[arg(long, default_value_t = 100_000)]
    pub users: u32,
    /// Token times are relative to this instant (ms or RFC 3339). Default: now.
    #[arg(long, value_name = "MS|RFC3339")]
    pub now: Option<String>,
    /// What to write: OpenRTB bid requests, tracking-pixel URLs (token in `uid2_token`) or JSON events
    /// (token at `/uid2_token`).
    #[arg(long, default_value = "openrtb", value_parser = ["openrtb", "pixel", "json"])]
    pub format: String,
    /// With `--format json`: events carrying raw UID2s at `/uid2` instead of tokens, the input of a
    /// `tokenize` stage (`none` and `malformed` cases: no raw UID2, or one that is invalid).
    #[arg(long)]
    pub raw_uid2: bool,
}

/// Writes the records and the key set, and a one-line summary on standard error.
pub fn command(args: &GenArgs) -> anyhow::Result<()> {
    let mix = match &args.mix {
        Some(text) => {
            crate::tools::traffic::Mix::parse(text).map_err(|e| anyhow::anyhow!("--mix: {e}"))?
        }
        None => crate::tools::traffic::Mix::default(),
    };
    let now_ms = match &args.now {
        Some(text) => parse_time(text)?,
        None => wall_clock_ms(),
    };
    if args.euid_keys_out.is_none()
        && mix
            .0
            .iter()
            .any(|(case, _)| *case == crate::tools::traffic::Case::EuidValid)
    {
        bail!(
            "--mix euid-valid makes EUID tokens sealed with an EUID key set: add --euid-keys-out FILE to write it, or no key file could decrypt them"
        );
    }
    let (min_size, max_size) = parse_size_range(&args.size)?;
    let mut generator =
        crate::tools::traffic::Generator::new(args.seed, mix, now_ms, args.users, min_size);
    // Its own stream, so a fixed size gives the same requests as before sizes could vary.
    let mut sizes = fastrand::Rng::with_seed(args.seed ^ 0x51ce);
    std::fs::write(&args.keys_out, generator.keys_json())
        .with_context(|| format!("writing {}", args.keys_out.display()))?;
    if let Some(path) = &args.euid_keys_out {
        std::fs::write(path, generator.euid_keys_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.raw_uid2 && args.format != "json" {
        anyhow::bail!(
            "--raw-uid2 needs --format json (raw UID2s never travel in pixels or bid requests)"
        );
    }
    let mut out = crate::tools::capture_file::Output::create(&args.output)?;
    let mut by_case: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut line = Vec::with_capacity(16 * 1024);
    for _ in 0..args.count {
        if max_size > min_size {
            generator.target_size = sizes.usize(min_size..=max_size);
        }
        let request = match (args.format.as_str(), args.raw_uid2) {
            ("json", true) => generator.next_raw_event().0,
            ("json", false) => generator.next_event(),
            ("pixel", _) => generator.next_pixel(),
            _ => generator.next_request(),
        };
        *by_case.entry(request.case.name()).or_default() += 1;
        line.clear();
        // A record with a newline cannot be one line; it is written escaped as a JSON string instead
        // (still malformed as a request). Other bytes, invalid UTF-8 included, are written as they are.
        if request.bytes.contains(&b'\n') {
            serde_json::to_writer(&mut line, &String::from_utf8_lossy(&request.bytes))?;
        } else {
            line.extend_from_slice(&request.bytes);
        }
        line.push(b'\n');
        out.write_lines(&line, 1)?;
    }
    out.finish()?;
    let euid_keys = args
        .euid_keys_out
        .as_ref()
        .map(|p| format!(", EUID keys to {}", p.display()))
        .unwrap_or_default();
    eprintln!(
        "gen: {} {} records to {}, keys to {}{euid_keys}; cases: {by_case:?}",
        args.count,
        if args.raw_uid2 {
            "raw-UID2 json"
        } else {
            args.format.as_str()
        },
        args.output.display(),
        args.keys_out.display()
    );
    Ok(())
}

/// `--size`: `BYTES` or `MIN-MAX`.
fn parse_size_range(text: &str) -> anyhow::Result<(usize, usize)> {
    let parse = |t: &str| {
        t.trim().parse::<usize>().map_err(|_| {
            anyhow::anyhow!(
                "--size {text:?}: expected a size in bytes (2000) or a range (1000-10000)"
            )
        })
    };
    let (min, max) = match text.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(text)?, parse(text)?),
    };
    if min > max || max > 1 << 20 {
        bail!("--size {text:?}: the range must be MIN-MAX with MIN ≤ MAX ≤ 1 MiB");
    }
    Ok((min, max))
}
