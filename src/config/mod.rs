//! The stage's configuration: a TOML file turned into validated, typed [`Settings`].
//!
//! Two stages, as in ripgrep: the text is deserialized into private `Raw*` structs that mirror the file
//! (every table `deny_unknown_fields`, every value wrapped in [`toml::Spanned`] so it keeps its position),
//! then [`Settings`] is built from them, checking every value. Every error names the file, line and
//! column, says what is wrong and how to fix it; an unknown key gets a "did you mean" from an edit
//! distance (`../shared/ARCHITECTURE.md`, "Configuration"). `config/enricher.toml` documents every option
//! with its default.
//!
//! Secrets never come from the file: `UID2_API_KEY` and `UID2_SECRET_KEY` (operator credentials, required
//! when `[uid2] base_url` is set) and `UID2_OPTOUT_TOKEN` (the opt-out webhook's bearer token, optional)
//! are read from the environment and held in [`Redacted`], which prints `<redacted>`. A secret-looking key
//! in the file (`api_key`, `secret_key`, `secret`, `token`, …) is rejected with the variable to use.
//!
//! `[kafka.client]` (every Kafka client), `[kafka.consumer]` and `[kafka.producer]` are librdkafka
//! properties passed through as strings (string, integer, float or boolean values; dotted keys may be
//! quoted or bare), except the properties the stage owns and sets itself. A property that carries a
//! secret (`sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`, `ssl.key.pem`, any name
//! with password or secret in it) must come from the environment: a literal value is refused.
//!
//! Any string value may be, or contain, `${NAME}` or `${NAME:-default}`: the environment variable, or the
//! default when it is unset or empty (the convention of Vector, Redpanda Connect and Kafka's config
//! providers). `$${` writes a literal `${`. An unset variable without a default is an error naming the
//! file, line and column and the variable. References are replaced before anything else is checked, so
//! every value is validated as the stage will use it.
//!
//! Relative paths (`[uid2] keys_file`) resolve against the current directory of the process, and are
//! stored absolute, so a later change of directory does not move them.
//!
//! Shell code: it reads files, the environment and the current directory; the pure core gets only the
//! typed values.

mod build;
mod diagnostics;
mod env;
mod keys;
mod raw;
mod settings;
#[cfg(test)]
mod tests;
mod uid2;

use std::path::Path;

use serde::Deserialize;
use toml::de::DeTable;

pub use crate::support::secret::Redacted;
pub use crate::support::telemetry::LogFormat;
pub use diagnostics::{ConfigError, closest, edit_distance};
pub use env::{EnvError, expand_env};
pub use keys::{ENV_API_KEY, ENV_OPTOUT_TOKEN, ENV_SECRET_KEY, KNOWN_KEYS, defaults};
pub use settings::{
    Delivery, KafkaProps, KafkaSettings, KeySourceSettings, KeysFrom, LogSettings, OptOutSettings,
    PipelineSettings, RefreshSettings, ServerSettings, Settings, TransactionSettings, Uid2Settings,
    is_secret_property,
};

use build::build;
use diagnostics::Cx;
use env::{check_no_secrets, interpolate_table};
use raw::RawConfig;

/// Reads and validates the configuration file at `path`, with secrets from the process environment.
///
/// # Errors
/// The file cannot be read, is not TOML, or holds an unknown key or a bad value; a required environment
/// variable is missing or malformed. The message says where and how to fix it.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load`] with the environment supplied by the caller (tests must not mutate the process environment).
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let text = read_config(path)?;
    parse_with_env(&text, &path.display().to_string(), env)
}

fn read_config(path: &Path) -> Result<String, ConfigError> {
    let origin = path.display().to_string();
    std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "check the --config path; config/enricher.toml documents every option"
        } else {
            "check the file's permissions and that it is UTF-8 text"
        };
        ConfigError {
            message: format!("cannot read config file {origin}: {e}; {hint}"),
            origin: origin.clone(),
            position: None,
        }
    })
}

/// [`load`] for a command that takes everything from the file but the operators' credentials: `replay`
/// given `--keys`, or writing into a topic (no decryption at all). The file is validated whole, `[uid2]`
/// included, but the key sources' credential variables ([`ENV_API_KEY`], [`ENV_SECRET_KEY`] or those a
/// `[[uid2.key_sources]]` entry names) need not be set, so a production config can be used on a machine
/// without the production secrets. When one is not set, the `KeysFrom::Operator` returned carries a
/// placeholder: the caller must not fetch keys with it (replay never does).
pub fn load_without_operator_credentials(path: &Path) -> Result<Settings, ConfigError> {
    // Valid as both: standard base64 of 32 bytes (a client secret) and a printable API key.
    const PLACEHOLDER: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let env = |name: &str| std::env::var(name).ok();
    let text = read_config(path)?;
    parse_checked(&text, &path.display().to_string(), &env, &|name| {
        env(name).or_else(|| Some(PLACEHOLDER.to_string()))
    })
}

/// Parses and validates configuration `text`; `origin` names it in messages (usually the path).
/// Secrets come from the process environment.
pub fn parse(text: &str, origin: &str) -> Result<Settings, ConfigError> {
    parse_with_env(text, origin, &|name| std::env::var(name).ok())
}

/// [`parse`] with the environment supplied by the caller.
pub fn parse_with_env(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    parse_checked(text, origin, env, env)
}

/// [`parse_with_env`] with the key sources' credentials looked up in `credentials` (`env` expands the
/// file's `${NAME}` references and gives the other secrets).
fn parse_checked(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
    credentials: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let cx = Cx { text, origin };
    // Syntax first, with spans for every key and value.
    let mut doc = DeTable::parse(text).map_err(|e| cx.syntax_error(&e))?;
    // A secret in the file is reported before anything else, whatever else is wrong.
    check_no_secrets(&cx, doc.get_ref(), &mut Vec::new())?;
    interpolate_table(&cx, doc.get_mut(), &mut Vec::new(), env)?;
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(doc.clone()))
        .map_err(|e| cx.serde_error(doc.get_ref(), &e))?;
    build(&cx, doc.get_ref(), raw, env, credentials)
}
