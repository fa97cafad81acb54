//! The pass over the parsed document before it is deserialized: secret-looking keys are refused and
//! `${NAME}` references are replaced, so every later check sees the values the stage will use.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diagnostics::{ConfigError, Cx, table_label};
use super::is_secret_property;
use super::keys::{ENV_API_KEY, SECRET_KEYS};

/// Replaces `${NAME}` / `${NAME:-default}` in every string value of `table`, and refuses a literal
/// secret in the librdkafka pass-through tables.
pub(super) fn interpolate_table(
    cx: &Cx<'_>,
    table: &mut DeTable<'_>,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        path.push(key.get_ref().to_string());
        interpolate_value(cx, value, path, env)?;
        path.pop();
    }
    Ok(())
}

fn interpolate_value(
    cx: &Cx<'_>,
    value: &mut Spanned<DeValue<'_>>,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let span = value.span();
    if let Some(property) = pass_through_property(path)
        && is_secret_property(&property)
    {
        // Only references, and none with a default: anything else is a secret written in the file.
        let from_env_only = match value.get_ref() {
            DeValue::String(text) => {
                text.contains("${")
                    && expand_env(text, &|_| Some(String::new())).as_deref() == Ok("")
            }
            _ => false,
        };
        if !from_env_only {
            return Err(cx.at(
                    span,
                    &format!(
                        "librdkafka property `{property}` in [{}] is a secret written in the file",
                        path[..2].join(".")
                    ),
                    &format!(
                        "secrets come from the environment: write \"{property}\" = \"${{{}}}\" and set that variable (from a Kubernetes Secret or a systemd EnvironmentFile)",
                    suggested_variable(&property)
                ),
            ));
        }
    }
    match value.get_mut() {
        DeValue::String(text) if text.contains('$') => {
            let expanded = expand_env(text, env).map_err(|e| {
                let at = match pass_through_property(path) {
                    Some(p) => format!("`{p}` in [{}]", path[..2].join(".")),
                    None => format!("`{}`", path.join(".")),
                };
                cx.at(span.clone(), &format!("{at}: {}", e.problem), &e.hint)
            })?;
            *text = expanded.into();
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                interpolate_value(cx, item, path, env)?;
            }
        }
        DeValue::Table(inner) => interpolate_table(cx, inner, path, env)?,
        _ => {}
    }
    Ok(())
}

/// The librdkafka property a value at `path` sets, when `path` is inside a pass-through table.
fn pass_through_property(path: &[String]) -> Option<String> {
    match path {
        [kafka, table, rest @ ..]
            if kafka == "kafka"
                && !rest.is_empty()
                && matches!(table.as_str(), "client" | "consumer" | "producer") =>
        {
            Some(rest.join("."))
        }
        _ => None,
    }
}

/// `sasl.password` → `KAFKA_SASL_PASSWORD`.
fn suggested_variable(property: &str) -> String {
    let mut name = String::from("KAFKA_");
    name.extend(property.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

/// Why a string's environment references cannot be expanded.
#[derive(Debug, PartialEq, Eq)]
pub struct EnvError {
    pub problem: String,
    pub hint: String,
}

/// Expands `${NAME}` and `${NAME:-default}` in `text` (`$${` is a literal `${`; any other `$` is kept).
/// An unset or empty variable takes the default; without one, an unset variable is an error (an empty one
/// expands to nothing). The error never contains a variable's value.
///
/// # Errors
/// An unset variable without a default, an unterminated `${`, or a name that is not
/// `[A-Za-z_][A-Za-z0-9_]*`.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, EnvError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body_start) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(EnvError {
                problem: "`${` without a closing `}`".to_string(),
                hint: "write ${NAME} or ${NAME:-default}; $${ writes a literal ${".to_string(),
            });
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        let valid_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(EnvError {
                problem: format!("`${{{body}}}` is not an environment reference"),
                hint: "names are letters, digits and _, not starting with a digit: ${KAFKA_PASSWORD} or ${KAFKA_PASSWORD:-default}".to_string(),
            });
        }
        match (env(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(EnvError {
                    problem: format!("environment variable {name} is not set"),
                    hint: format!(
                        "set {name} in the stage's environment, or give a default: ${{{name}:-value}}"
                    ),
                });
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The secret-looking keys check: anywhere outside the librdkafka pass-through tables.
pub(super) fn check_no_secrets(
    cx: &Cx<'_>,
    table: &DeTable<'_>,
    path: &mut Vec<String>,
) -> Result<(), ConfigError> {
    if path.len() == 2
        && path[0] == "kafka"
        && matches!(path[1].as_str(), "client" | "consumer" | "producer")
    {
        return Ok(());
    }
    for (key, value) in table {
        let name = key.get_ref().as_ref();
        if let Some((_, var)) = SECRET_KEYS
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            return Err(cx.at(
                key.span(),
                &format!(
                    "`{name}` in {} looks like a secret, and secrets are never read from the config file",
                    table_label(path)
                ),
                &if path.first().is_some_and(|t| t == "uid2")
                    && path.get(1).is_some_and(|t| t == "key_sources")
                {
                    let key = if *var == ENV_API_KEY {
                        "api_key_env"
                    } else {
                        "secret_key_env"
                    };
                    format!(
                        "remove this line; write {key} = \"NAME\" (the environment variable that holds it) and set that variable"
                    )
                } else {
                    format!("remove this line and set the environment variable {var} instead")
                },
            ));
        }
        path.push(name.to_string());
        match value.get_ref() {
            DeValue::Table(inner) => check_no_secrets(cx, inner, path)?,
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        check_no_secrets(cx, inner, path)?;
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
    Ok(())
}
