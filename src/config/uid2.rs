//! The `[uid2]` table checked and turned into [`Uid2Settings`]: the client mode, the key source (a keys
//! file or the operator, with its credentials from the environment) and the refresh timing.
//!
//! `base_url` is parsed with `reqwest::Url`, the parser the key source will use, so a URL accepted here is
//! one it accepts.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::build::positive_ms;
use super::diagnostics::{ConfigError, Cx, choice_hint};
use super::keys::defaults;
use super::raw::{Field, RawUid2};
use super::settings::{KeysFrom, RefreshSettings, Uid2Settings};
use super::{ENV_API_KEY, ENV_SECRET_KEY, Redacted};
use crate::engine::uid2::cipher::Secret;
use crate::engine::uid2::{ClientMode, wire};

pub(super) fn build_uid2(
    cx: &Cx<'_>,
    raw: Option<Spanned<RawUid2>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Uid2Settings, ConfigError> {
    let Some(raw_spanned) = raw else {
        return Err(cx.plain(
            "there is no [uid2] table, so the stage has no key source",
            "add\n  [uid2]\n  keys_file = \"config/demo-keys.json\"\nor\n  [uid2]\n  base_url = \"https://prod.uidapi.com\"   # with UID2_API_KEY and UID2_SECRET_KEY in the environment",
        ));
    };
    let table_span = raw_spanned.span();
    let raw = raw_spanned.into_inner();
    let mode = client_mode(cx, &raw.mode)?;
    let keys = key_source(cx, &raw, table_span, env)?;
    let refresh = refresh_settings(cx, &raw)?;
    Ok(Uid2Settings {
        mode,
        keys,
        refresh,
    })
}

fn client_mode(cx: &Cx<'_>, mode: &Field<String>) -> Result<ClientMode, ConfigError> {
    Ok(match mode {
        None => ClientMode::Bidstream,
        Some(m) => match m.get_ref().as_str() {
            "bidstream" => ClientMode::Bidstream,
            "sharing" => ClientMode::Sharing,
            other => {
                return Err(cx.at(
                    m.span(),
                    &format!("`mode` in [uid2] is `{other}`, which is not a client mode"),
                    &choice_hint(other, &["bidstream", "sharing"]),
                ));
            }
        },
    })
}

/// `keys_file` or `base_url`: exactly one of them.
fn key_source(
    cx: &Cx<'_>,
    raw: &RawUid2,
    table_span: Range<usize>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<KeysFrom, ConfigError> {
    Ok(match (&raw.keys_file, &raw.base_url) {
        (Some(file), Some(url)) => {
            let (first, second) = if file.span().start < url.span().start {
                (file, url)
            } else {
                (url, file)
            };
            let name = |f: &Spanned<String>| {
                if std::ptr::eq(f, file) {
                    "keys_file"
                } else {
                    "base_url"
                }
            };
            return Err(cx.at(
                second.span(),
                &format!(
                    "[uid2] sets both `{}` (at {}) and `{}`",
                    name(first),
                    cx.location(first.span().start),
                    name(second)
                ),
                "choose one key source: keys_file for a file, or base_url for the UID2 operator; remove the other line",
            ));
        }
        (None, None) => {
            return Err(cx.at(
                table_span,
                "[uid2] has no key source",
                "set keys_file = \"config/demo-keys.json\" (a keys file) or base_url = \"https://prod.uidapi.com\" (the UID2 operator, with UID2_API_KEY and UID2_SECRET_KEY in the environment)",
            ));
        }
        (Some(file), None) => KeysFrom::File(check_keys_file(cx, file)?),
        (None, Some(url)) => operator_keys(cx, url, env)?,
    })
}

fn refresh_settings(cx: &Cx<'_>, raw: &RawUid2) -> Result<RefreshSettings, ConfigError> {
    let interval = raw
        .refresh_interval_secs
        .as_ref()
        .map_or(defaults::REFRESH_INTERVAL_SECS, |v| *v.get_ref());
    if let Some(v) = &raw.refresh_interval_secs
        && *v.get_ref() == 0
    {
        return Err(cx.at(
            v.span(),
            "`refresh_interval_secs` in [uid2] is 0",
            "keys must be refreshed periodically; use at least 1 (the SDKs refresh hourly: 3600)",
        ));
    }
    let jitter = raw
        .refresh_jitter_secs
        .as_ref()
        .map_or(defaults::REFRESH_JITTER_SECS.min(interval / 2), |v| {
            *v.get_ref()
        });
    if let Some(v) = &raw.refresh_jitter_secs
        && *v.get_ref() >= interval
    {
        return Err(cx.at(
            v.span(),
            &format!(
                "`refresh_jitter_secs` in [uid2] is {}, not less than refresh_interval_secs ({interval})",
                v.get_ref()
            ),
            "the wait is refresh_interval_secs ± refresh_jitter_secs, so the jitter must be smaller; e.g. a tenth of the interval",
        ));
    }
    let initial = positive_ms(
        cx,
        &raw.retry_initial_backoff_ms,
        defaults::RETRY_INITIAL_BACKOFF_MS,
        "retry_initial_backoff_ms",
        "[uid2]",
    )?;
    let max = positive_ms(
        cx,
        &raw.retry_max_backoff_ms,
        defaults::RETRY_MAX_BACKOFF_MS.max(initial),
        "retry_max_backoff_ms",
        "[uid2]",
    )?;
    if max < initial {
        let span = raw
            .retry_max_backoff_ms
            .as_ref()
            .or(raw.retry_initial_backoff_ms.as_ref())
            .map(Spanned::span);
        return Err(cx.at_opt(
            span,
            &format!(
                "`retry_max_backoff_ms` in [uid2] ({max}) is less than retry_initial_backoff_ms ({initial})"
            ),
            "the backoff doubles from the initial value up to the maximum; make the maximum at least the initial value",
        ));
    }
    let timeout = positive_ms(
        cx,
        &raw.request_timeout_ms,
        defaults::REQUEST_TIMEOUT_MS,
        "request_timeout_ms",
        "[uid2]",
    )?;
    Ok(RefreshSettings {
        interval: Duration::from_secs(interval),
        jitter: Duration::from_secs(jitter),
        retry_initial_backoff: Duration::from_millis(initial),
        retry_max_backoff: Duration::from_millis(max),
        request_timeout: Duration::from_millis(timeout),
    })
}

fn check_keys_file(cx: &Cx<'_>, file: &Spanned<String>) -> Result<PathBuf, ConfigError> {
    let given = file.get_ref();
    if given.trim().is_empty() {
        return Err(cx.at(
            file.span(),
            "`keys_file` in [uid2] is empty",
            "name the keys file, e.g. keys_file = \"config/demo-keys.json\"",
        ));
    }
    let path = Path::new(given);
    let cwd = std::env::current_dir().unwrap_or_default();
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    match std::fs::metadata(&absolute) {
        Ok(meta) if meta.is_file() => Ok(absolute),
        Ok(_) => Err(cx.at(
            file.span(),
            &format!(
                "`keys_file` in [uid2] is `{given}`, which is not a regular file ({})",
                absolute.display()
            ),
            "point it at the JSON a key endpoint returns, e.g. config/demo-keys.json",
        )),
        Err(e) => Err(cx.at(
            file.span(),
            &format!(
                "`keys_file` in [uid2] is `{given}`, which cannot be read: {e} (looked for {}; relative paths resolve against the current directory {})",
                absolute.display(),
                cwd.display()
            ),
            "fix the path or run from the directory it is relative to; `uid2-enricher gen --keys-out FILE` writes a keys file",
        )),
    }
}

fn operator_keys(
    cx: &Cx<'_>,
    url: &Spanned<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<KeysFrom, ConfigError> {
    let base_url = operator_base_url(cx, url)?;
    let where_ = cx.location(url.span().start);
    let api_key = api_key(cx, &where_, env)?;
    let secret = client_secret(cx, &where_, env)?;
    Ok(KeysFrom::Operator {
        base_url,
        api_key: Redacted::new(api_key),
        secret: Redacted::new(secret),
    })
}

/// The operator's origin without a trailing slash: https (plain http only to a loopback address, where
/// the API key cannot be overheard), with no query or fragment.
fn operator_base_url(cx: &Cx<'_>, url: &Spanned<String>) -> Result<String, ConfigError> {
    let given = url.get_ref().trim();
    let parsed = match reqwest::Url::parse(given) {
        Ok(u) => u,
        Err(e) => {
            return Err(cx.at(
                url.span(),
                &format!("`base_url` in [uid2] is `{given}`, which is not a URL ({e})"),
                "use the operator's origin, e.g. base_url = \"https://prod.uidapi.com\"",
            ));
        }
    };
    let loopback = parsed.host_str().is_some_and(|host| {
        host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    match parsed.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(cx.at(
                url.span(),
                &format!("`base_url` in [uid2] is `{given}`: plain http would send the API key in clear"),
                "use https:// (http:// is accepted only for a local test operator on localhost/127.0.0.1)",
            ));
        }
        other => {
            return Err(cx.at(
                url.span(),
                &format!("`base_url` in [uid2] has scheme `{other}`"),
                "use https://, e.g. base_url = \"https://prod.uidapi.com\"",
            ));
        }
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || parsed.host().is_none() {
        return Err(cx.at(
            url.span(),
            &format!("`base_url` in [uid2] is `{given}`; it must be just the operator's origin"),
            "drop any query or fragment; the stage appends /v2/key/bidstream or /v2/key/sharing, e.g. base_url = \"https://prod.uidapi.com\"",
        ));
    }
    Ok(given.trim_end_matches('/').to_string())
}

/// `UID2_API_KEY`; `where_` is the `base_url` line that makes it required.
fn api_key(
    cx: &Cx<'_>,
    where_: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    Ok(match env(ENV_API_KEY) {
        None => {
            return Err(cx.plain(
                &format!("`base_url` is set in [uid2] at {where_}, but the environment variable {ENV_API_KEY} is not set"),
                &format!("export {ENV_API_KEY}=<the API key from the UID2 portal>; secrets are read only from the environment, never from the file"),
            ));
        }
        Some(k) if k.trim().is_empty() => {
            return Err(cx.plain(
                &format!("{ENV_API_KEY} is set but empty (needed because `base_url` is set in [uid2] at {where_})"),
                &format!("export {ENV_API_KEY}=<the API key from the UID2 portal>"),
            ));
        }
        Some(k) if k.trim() != k || k.chars().any(char::is_control) => {
            return Err(cx.plain(
                &format!("{ENV_API_KEY} has leading/trailing whitespace or control characters"),
                "set it to the API key exactly, without a trailing newline or spaces",
            ));
        }
        Some(k) => k,
    })
}

/// `UID2_SECRET_KEY`; `where_` is the `base_url` line that makes it required.
fn client_secret(
    cx: &Cx<'_>,
    where_: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    Ok(match env(ENV_SECRET_KEY) {
        None => {
            return Err(cx.plain(
                &format!("`base_url` is set in [uid2] at {where_}, but the environment variable {ENV_SECRET_KEY} is not set"),
                &format!("export {ENV_SECRET_KEY}=<the client secret from the UID2 portal: standard base64 of 32 bytes>; secrets are read only from the environment, never from the file"),
            ));
        }
        Some(s) => match wire::decode_standard(s.trim()).map(<[u8; 32]>::try_from) {
            Some(Ok(bytes)) => Secret::new(bytes),
            Some(Err(bytes)) => {
                return Err(cx.plain(
                    &format!(
                        "{ENV_SECRET_KEY} decodes to {} bytes, but a UID2 client secret is 32 bytes",
                        bytes.len()
                    ),
                    "copy the client secret exactly as the UID2 portal shows it (standard base64 of 32 bytes, 44 characters ending in '=')",
                ));
            }
            None => {
                return Err(cx.plain(
                    &format!("{ENV_SECRET_KEY} is not standard base64"),
                    "copy the client secret exactly as the UID2 portal shows it (standard base64 of 32 bytes, 44 characters ending in '=')",
                ));
            }
        },
    })
}
