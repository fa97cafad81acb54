//! `uid2-enricher decrypt`: one token, decrypted as the SDKs do, printed as a JSON object.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::engine::enrich::{Keys, KeysFor};
use crate::engine::uid2::{Decryption, IdentityScope, Status, decrypt, wire};
use crate::stage::keysource::load_keys_files;
use crate::support::clock::{parse_time, wall_clock_ms};
use crate::tools::ModeArg;

#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// Key-endpoint JSON: the decrypted response of /v2/key/bidstream, /v2/key/sharing or /v2/key/latest,
    /// either whole ({"body":…,"status":"success"}) or just the body. Give it once per operator (UID2
    /// and EUID): a v3/v4 token is decrypted with the set of the scope it declares, a v2 token with the
    /// UID2 set.
    #[arg(long, value_name = "KEYS.json", required = true)]
    pub keys: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = ModeArg::Bidstream)]
    pub mode: ModeArg,
    /// Registrable domain or app name of the request, for client-side-generated tokens (bidstream mode).
    /// Passed to the check as given, as the SDKs take it.
    #[arg(long, value_name = "D")]
    pub domain: Option<String>,
    /// The request's `site.domain` or `site.page` (a host or URL): reduced to its registrable domain,
    /// lower-cased, as the enricher does before the check (`https://News.Example.co.uk/a` gives
    /// `example.co.uk`). Instead of `--domain`.
    #[arg(long, value_name = "HOST|URL", conflicts_with = "domain")]
    pub site: Option<String>,
    /// Decrypt as of this time: milliseconds since the Unix epoch, or RFC 3339 (2026-01-01T00:00:00Z).
    /// Default: now.
    #[arg(long, value_name = "MS|RFC3339")]
    pub now: Option<String>,
    /// The token (v2, v3 or v4; base64 or base64url). `-` reads it from standard input.
    pub token: String,
}

/// Prints the decryption and exits 0 on `success`, 1 on any other status.
pub fn command(args: &DecryptArgs) -> anyhow::Result<ExitCode> {
    let key_sets = load_keys_files(&args.keys)?;
    let keys = Keys::of_sets(&key_sets);
    let now_ms = match &args.now {
        Some(text) => parse_time(text)?,
        None => wall_clock_ms(),
    };
    let token = if args.token == "-" {
        std::io::read_to_string(std::io::stdin())
            .context("reading the token from standard input")?
    } else {
        args.token.clone()
    };
    let site_name = args.site.as_deref().and_then(|site| {
        crate::engine::openrtb::domain::domain_or_app_name(Some(site), None, None)
    });
    let token = token.trim();
    let scope = wire::declared_scope(token).unwrap_or(IdentityScope::Uid2);
    let result = match keys.lookup(scope) {
        KeysFor::Set(set) => decrypt(
            token,
            set,
            args.mode.into(),
            site_name.as_deref().or(args.domain.as_deref()),
            now_ms,
        ),
        KeysFor::NoSource => Decryption::error(Status::InvalidIdentityScope),
    };
    println!("{}", decryption_json(&result));
    Ok(if result.status == Status::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The `decrypt` output: the enrichment member's field names plus `site_key_site_id` and `scope`; fields
/// the decryption did not reach are null. A struct, so the field order is fixed.
#[derive(Debug, serde::Serialize)]
pub struct DecryptOutput<'a> {
    pub status: &'static str,
    pub raw_uid2: Option<&'a str>,
    pub site_id: Option<i32>,
    pub established: Option<i64>,
    pub expires: Option<i64>,
    pub identity_type: Option<&'static str>,
    pub token_version: Option<u8>,
    pub cstg: Option<bool>,
    pub site_key_site_id: Option<i32>,
    pub scope: Option<&'static str>,
}

pub fn decryption_json(d: &Decryption) -> String {
    let out = DecryptOutput {
        status: d.status.as_str(),
        raw_uid2: d.raw_uid2.as_deref(),
        site_id: d.site_id,
        established: d.established_ms,
        expires: d.expires_ms,
        identity_type: d.identity_type.map(|t| t.as_str()),
        token_version: d.token_version.map(|v| v.number()),
        cstg: d.cstg,
        site_key_site_id: d.site_key_site_id,
        scope: d.scope.map(|s| s.as_str()),
    };
    serde_json::to_string(&out).unwrap_or_default()
}
