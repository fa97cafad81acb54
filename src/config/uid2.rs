//! The `[uid2]` table checked and turned into [`Uid2Settings`]: the client mode, the key sources (each a
//! keys file or an operator, with its credentials from the environment) and the refresh timing.
//!
//! Two forms: the single source in `[uid2]` itself (`keys_file` or `base_url` with `UID2_API_KEY` and
//! `UID2_SECRET_KEY`), or one `[[uid2.key_sources]]` entry per operator, each naming its scope and the
//! environment variables that hold its credentials.
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
use super::raw::{Field, RawKeySource, RawUid2};
use super::settings::{KeySourceSettings, KeysFrom, RefreshSettings, Uid2Settings};
use super::{ENV_API_KEY, ENV_SECRET_KEY, Redacted};
use crate::engine::uid2::cipher::Secret;
use crate::engine::uid2::{ClientMode, IdentityScope, wire};

/// The name of the single `[uid2]` source.
const SINGLE_SOURCE_NAME: &str = "uid2";

/// Where a key source is written and where its credentials come from, for the checks and their messages.
struct SourceAt<'a> {
    /// `[uid2]` or ``[[uid2.key_sources]] `euid` ``.
    table: &'a str,
    /// The operator's name and an origin for examples: UID2 and `https://prod.uidapi.com`.
    operator: &'a str,
    example_url: &'a str,
    api_key_var: &'a str,
    secret_var: &'a str,
}

const SINGLE: SourceAt<'static> = SourceAt {
    table: "[uid2]",
    operator: "UID2",
    example_url: "https://prod.uidapi.com",
    api_key_var: ENV_API_KEY,
    secret_var: ENV_SECRET_KEY,
};

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
    let sources = match &raw.key_sources {
        None => vec![KeySourceSettings {
            name: SINGLE_SOURCE_NAME.to_string(),
            scope: None,
            from: key_source(cx, &raw, table_span, env)?,
        }],
        Some(list) => {
            if let Some(line) = raw.keys_file.as_ref().or(raw.base_url.as_ref()) {
                return Err(cx.at(
                    line.span(),
                    "[uid2] has its own key source and lists [[uid2.key_sources]] too",
                    "use one form: the single source in [uid2] (keys_file or base_url), or one [[uid2.key_sources]] entry per operator; move this line into an entry with scope = \"UID2\"",
                ));
            }
            key_sources(cx, list, env)?
        }
    };
    let refresh = refresh_settings(cx, &raw)?;
    Ok(Uid2Settings {
        mode,
        sources,
        refresh,
    })
}

/// `[[uid2.key_sources]]`: at least one entry, one per scope, names unique.
fn key_sources(
    cx: &Cx<'_>,
    list: &Spanned<Vec<Spanned<RawKeySource>>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<KeySourceSettings>, ConfigError> {
    if list.get_ref().is_empty() {
        return Err(cx.at(
            list.span(),
            "`key_sources` in [uid2] is empty, so the stage has no key source",
            "add one [[uid2.key_sources]] entry per operator, e.g. scope = \"UID2\" base_url = \"https://prod.uidapi.com\"",
        ));
    }
    let mut out: Vec<KeySourceSettings> = Vec::new();
    for entry in list.get_ref() {
        let source = key_source_entry(cx, entry, env)?;
        if let Some(other) = out.iter().find(|o| o.scope == source.scope) {
            return Err(cx.at(
                entry.get_ref().scope.span(),
                &format!(
                    "two [[uid2.key_sources]] entries serve {}: `{}` and `{}`",
                    entry.get_ref().scope.get_ref(),
                    other.name,
                    source.name
                ),
                "a token is decrypted with the one key set of its scope: keep one entry per scope",
            ));
        }
        if out.iter().any(|o| o.name == source.name) {
            let at = entry.get_ref().name.as_ref().map(Spanned::span);
            return Err(cx.at_opt(
                at,
                &format!(
                    "two [[uid2.key_sources]] entries are named `{}`",
                    source.name
                ),
                "give each entry its own name (it labels the key metrics and the logs)",
            ));
        }
        out.push(source);
    }
    Ok(out)
}

/// One `[[uid2.key_sources]]` entry.
fn key_source_entry(
    cx: &Cx<'_>,
    entry: &Spanned<RawKeySource>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<KeySourceSettings, ConfigError> {
    let raw = entry.get_ref();
    let scope = match raw.scope.get_ref().as_str() {
        "UID2" => IdentityScope::Uid2,
        "EUID" => IdentityScope::Euid,
        other => {
            return Err(cx.at(
                raw.scope.span(),
                &format!("`scope` in [[uid2.key_sources]] is `{other}`"),
                &choice_hint(other, &["UID2", "EUID"]),
            ));
        }
    };
    let name = match &raw.name {
        None => scope.as_str().to_ascii_lowercase(),
        Some(n) => {
            let text = n.get_ref();
            let valid = !text.is_empty()
                && text.len() <= 64
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(cx.at(
                    n.span(),
                    &format!("`name` in [[uid2.key_sources]] is `{text}`"),
                    "use letters, digits, '-' and '_' (at most 64), e.g. name = \"euid\"; it labels the key metrics",
                ));
            }
            text.clone()
        }
    };
    let (example_url, default_prefix) = match scope {
        IdentityScope::Uid2 => ("https://prod.uidapi.com", "UID2"),
        IdentityScope::Euid => ("https://prod.euid.eu", "EUID"),
    };
    let var = |field: &Field<String>, suffix: &str| -> Result<String, ConfigError> {
        let Some(given) = field else {
            return Ok(format!("{default_prefix}_{suffix}"));
        };
        let text = given.get_ref();
        let valid = text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            // Not echoed: a value that is no variable name is most often the credential itself (pasted,
            // or a `${NAME}` reference the environment expanded).
            let key = if suffix == "API_KEY" {
                "api_key_env"
            } else {
                "secret_key_env"
            };
            return Err(cx.at(
                given.span(),
                &format!(
                    "`{key}` in [[uid2.key_sources]] is not an environment variable name (its value is not shown: it may be the credential itself)"
                ),
                &format!(
                    "write the variable's name, not its value or a ${{…}} reference: {key} = \"{default_prefix}_{suffix}\" (letters, digits and '_')"
                ),
            ));
        }
        Ok(text.clone())
    };
    let api_key_var = var(&raw.api_key_env, "API_KEY")?;
    let secret_var = var(&raw.secret_key_env, "SECRET_KEY")?;
    let table = format!("[[uid2.key_sources]] `{name}`");
    let at = SourceAt {
        table: &table,
        operator: scope.as_str(),
        example_url,
        api_key_var: &api_key_var,
        secret_var: &secret_var,
    };
    let from = match (&raw.keys_file, &raw.base_url) {
        (Some(file), Some(_)) => {
            return Err(cx.at(
                file.span(),
                &format!("{table} sets both `keys_file` and `base_url`"),
                "choose one: keys_file for a file, or base_url for the operator; remove the other line",
            ));
        }
        (None, None) => {
            return Err(cx.at(
                entry.span(),
                &format!("{table} has no `keys_file` or `base_url`"),
                &format!(
                    "set base_url = \"{example_url}\" (the {} operator, with {api_key_var} and {secret_var} in the environment) or keys_file = \"…\"",
                    scope.as_str()
                ),
            ));
        }
        (Some(file), None) => {
            if let Some(v) = raw.api_key_env.as_ref().or(raw.secret_key_env.as_ref()) {
                return Err(cx.at(
                    v.span(),
                    &format!("{table} reads a keys file, which needs no credentials"),
                    "remove api_key_env and secret_key_env, or use base_url for the operator",
                ));
            }
            KeysFrom::File(check_keys_file(cx, file, &at)?)
        }
        (None, Some(url)) => operator_keys(cx, url, env, &at)?,
    };
    Ok(KeySourceSettings {
        name,
        scope: Some(scope),
        from,
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
        (Some(file), None) => KeysFrom::File(check_keys_file(cx, file, &SINGLE)?),
        (None, Some(url)) => operator_keys(cx, url, env, &SINGLE)?,
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

fn check_keys_file(
    cx: &Cx<'_>,
    file: &Spanned<String>,
    at: &SourceAt<'_>,
) -> Result<PathBuf, ConfigError> {
    let table = at.table;
    let given = file.get_ref();
    if given.trim().is_empty() {
        return Err(cx.at(
            file.span(),
            &format!("`keys_file` in {table} is empty"),
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
                "`keys_file` in {table} is `{given}`, which is not a regular file ({})",
                absolute.display()
            ),
            "point it at the JSON a key endpoint returns, e.g. config/demo-keys.json",
        )),
        Err(e) => Err(cx.at(
            file.span(),
            &format!(
                "`keys_file` in {table} is `{given}`, which cannot be read: {e} (looked for {}; relative paths resolve against the current directory {})",
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
    at: &SourceAt<'_>,
) -> Result<KeysFrom, ConfigError> {
    let base_url = operator_base_url(cx, url, at)?;
    let where_ = cx.location(url.span().start);
    let api_key = api_key(cx, &where_, env, at)?;
    let secret = client_secret(cx, &where_, env, at)?;
    Ok(KeysFrom::Operator {
        base_url,
        api_key: Redacted::new(api_key),
        secret: Redacted::new(secret),
    })
}

/// The operator's origin without a trailing slash: https (plain http only to a loopback address, where
/// the API key cannot be overheard), with no query or fragment.
fn operator_base_url(
    cx: &Cx<'_>,
    url: &Spanned<String>,
    at: &SourceAt<'_>,
) -> Result<String, ConfigError> {
    let (table, example) = (at.table, at.example_url);
    let given = url.get_ref().trim();
    let parsed = match reqwest::Url::parse(given) {
        Ok(u) => u,
        Err(e) => {
            return Err(cx.at(
                url.span(),
                &format!("`base_url` in {table} is `{given}`, which is not a URL ({e})"),
                &format!("use the operator's origin, e.g. base_url = \"{example}\""),
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
                &format!("`base_url` in {table} is `{given}`: plain http would send the API key in clear"),
                "use https:// (http:// is accepted only for a local test operator on localhost/127.0.0.1)",
            ));
        }
        other => {
            return Err(cx.at(
                url.span(),
                &format!("`base_url` in {table} has scheme `{other}`"),
                &format!("use https://, e.g. base_url = \"{example}\""),
            ));
        }
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || parsed.host().is_none() {
        return Err(cx.at(
            url.span(),
            &format!("`base_url` in {table} is `{given}`; it must be just the operator's origin"),
            &format!("drop any query or fragment; the stage appends /v2/key/bidstream or /v2/key/sharing, e.g. base_url = \"{example}\""),
        ));
    }
    Ok(given.trim_end_matches('/').to_string())
}

/// The API key from the source's variable (`UID2_API_KEY` for `[uid2]`); `where_` is the `base_url`
/// line that makes it required.
fn api_key(
    cx: &Cx<'_>,
    where_: &str,
    env: &dyn Fn(&str) -> Option<String>,
    at: &SourceAt<'_>,
) -> Result<String, ConfigError> {
    let (var, table, operator) = (at.api_key_var, at.table, at.operator);
    Ok(match env(var) {
        None => {
            return Err(cx.plain(
                &format!("`base_url` is set in {table} at {where_}, but the environment variable {var} is not set"),
                &format!("export {var}=<the API key from the {operator} portal>; secrets are read only from the environment, never from the file"),
            ));
        }
        Some(k) if k.trim().is_empty() => {
            return Err(cx.plain(
                &format!("{var} is set but empty (needed because `base_url` is set in {table} at {where_})"),
                &format!("export {var}=<the API key from the {operator} portal>"),
            ));
        }
        Some(k) if k.trim() != k || k.chars().any(char::is_control) => {
            return Err(cx.plain(
                &format!("{var} has leading/trailing whitespace or control characters"),
                "set it to the API key exactly, without a trailing newline or spaces",
            ));
        }
        Some(k) => k,
    })
}

/// The client secret from the source's variable (`UID2_SECRET_KEY` for `[uid2]`); `where_` is the
/// `base_url` line that makes it required.
fn client_secret(
    cx: &Cx<'_>,
    where_: &str,
    env: &dyn Fn(&str) -> Option<String>,
    at: &SourceAt<'_>,
) -> Result<Secret, ConfigError> {
    let (var, table, operator) = (at.secret_var, at.table, at.operator);
    let copy_hint = format!(
        "copy the client secret exactly as the {operator} portal shows it (standard base64 of 32 bytes, 44 characters ending in '=')"
    );
    Ok(match env(var) {
        None => {
            return Err(cx.plain(
                &format!("`base_url` is set in {table} at {where_}, but the environment variable {var} is not set"),
                &format!("export {var}=<the client secret from the {operator} portal: standard base64 of 32 bytes>; secrets are read only from the environment, never from the file"),
            ));
        }
        Some(s) => match wire::decode_standard(s.trim()).map(<[u8; 32]>::try_from) {
            Some(Ok(bytes)) => Secret::new(bytes),
            Some(Err(bytes)) => {
                return Err(cx.plain(
                    &format!(
                        "{var} decodes to {} bytes, but a {operator} client secret is 32 bytes",
                        bytes.len()
                    ),
                    &copy_hint,
                ));
            }
            None => {
                return Err(cx.plain(&format!("{var} is not standard base64"), &copy_hint));
            }
        },
    })
}
