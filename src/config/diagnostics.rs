//! Error messages: positions as `file:line:column`, "did you mean" suggestions for unknown keys and
//! values, and an example for a value of the wrong type.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::KNOWN_KEYS;
use super::keys::example_for;

/// A configuration that cannot be used. `Display` is the whole message: what is wrong, where
/// (`file:line:column`) and the fix. It never contains a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub(super) message: String,
    /// The file (as given to [`load`](super::load)) or the `origin` given to [`parse`](super::parse).
    pub origin: String,
    /// 1-based line and column (in characters) of the offending key or value, when there is one.
    pub position: Option<(usize, usize)>,
}

impl ConfigError {
    /// The full message (same as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }
}

pub(super) fn choice_hint(given: &str, choices: &[&str]) -> String {
    let valid = choices
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    match closest(given, choices) {
        Some(c) => format!("did you mean \"{c}\"? (valid values: {valid})"),
        None => format!("valid values: {valid}"),
    }
}

/// The candidate nearest to `given` by edit distance (case-insensitive), if it is close enough to be a
/// plausible typo.
pub fn closest<'a>(given: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let given_lower = given.to_lowercase();
    let (best, distance) = candidates
        .iter()
        .map(|c| (*c, edit_distance(&given_lower, &c.to_lowercase())))
        .min_by_key(|(_, d)| *d)?;
    let limit = (given.chars().count().max(best.chars().count()) / 3).max(1);
    (distance <= limit).then_some(best)
}

/// Edit distance over characters: insertions, deletions, substitutions and swaps of adjacent characters
/// (optimal string alignment), so `kafak` is one edit from `kafka`.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

pub(super) fn table_label(path: &[String]) -> String {
    if path.is_empty() {
        "the top level".to_string()
    } else {
        format!("[{}]", path.join("."))
    }
}

/// The span of the key at `path` (table names, then the key), following arrays of tables to their last
/// element that has the key.
pub(super) fn span_of_key(table: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *first)?;
    if rest.is_empty() {
        return Some(key.span());
    }
    match value.get_ref() {
        DeValue::Table(inner) => span_of_key(inner, rest),
        _ => None,
    }
}

/// The key path of the key or value that starts at `offset`: where a serde error happened.
fn path_at(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if key.span().start == offset || value.span().start == offset {
            // A table value's span may start where a key inside it starts; prefer the deeper match
            // (on no match, the recursion leaves `path` as it was).
            if let DeValue::Table(inner) = value.get_ref() {
                path_at(inner, offset, path);
            }
            return true;
        }
        match value.get_ref() {
            DeValue::Table(inner) if path_at(inner, offset, path) => return true,
            DeValue::Table(_) => {}
            DeValue::Array(items) => {
                for item in items.iter() {
                    if item.span().start == offset {
                        return true;
                    }
                    if let DeValue::Table(inner) = item.get_ref()
                        && path_at(inner, offset, path)
                    {
                        return true;
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
    false
}

/// The text being parsed and its name: turns spans into `file:line:column`.
pub(super) struct Cx<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
}

impl Cx<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let mut offset = offset;
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub(super) fn location(&self, offset: usize) -> String {
        let (l, c) = self.line_col(offset);
        format!("{}:{l}:{c}", self.origin)
    }

    pub(super) fn at(&self, span: Range<usize>, problem: &str, hint: &str) -> ConfigError {
        ConfigError {
            message: format!("{problem} at {}; {hint}", self.location(span.start)),
            origin: self.origin.to_string(),
            position: Some(self.line_col(span.start)),
        }
    }

    pub(super) fn at_opt(
        &self,
        span: Option<Range<usize>>,
        problem: &str,
        hint: &str,
    ) -> ConfigError {
        match span {
            Some(span) => self.at(span, problem, hint),
            None => ConfigError {
                message: format!("{problem} (by default, in {}); {hint}", self.origin),
                origin: self.origin.to_string(),
                position: None,
            },
        }
    }

    pub(super) fn plain(&self, problem: &str, hint: &str) -> ConfigError {
        ConfigError {
            message: format!("{}: {problem}; {hint}", self.origin),
            origin: self.origin.to_string(),
            position: None,
        }
    }

    pub(super) fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let problem = format!("TOML syntax error: {}", e.message().trim());
        let hint = "strings need double quotes (mode = \"bidstream\"), tables are [name] on their own line, and each key appears once; config/enricher.toml shows every option";
        match e.span() {
            Some(span) => self.at(span, &problem, hint),
            None => self.plain(&problem, hint),
        }
    }

    /// A serde error from stage 1: an unknown key, a wrong type, a missing key in a source entry.
    pub(super) fn serde_error(&self, doc: &DeTable<'_>, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim();
        let Some(span) = e.span() else {
            return self.plain(message, "config/enricher.toml shows every option");
        };
        let mut path = Vec::new();
        path_at(doc, span.start, &mut path);
        if let Some(unknown) = parse_unknown_field(message) {
            // `path` ends with the unknown key itself.
            let table_path: Vec<String> = path
                .iter()
                .take(path.len().saturating_sub(1))
                .cloned()
                .collect();
            return self.unknown_key(span, &unknown, &table_path);
        }
        let what = match path.as_slice() {
            [] => String::new(),
            [only] => format!(" for `{only}`"),
            [table @ .., key] => format!(" for `{key}` in [{}]", table.join(".")),
        };
        let hint = type_hint(message, path.last().map(String::as_str));
        self.at(span, &format!("{message}{what}"), &hint)
    }

    fn unknown_key(
        &self,
        span: Range<usize>,
        unknown: &UnknownField,
        table_path: &[String],
    ) -> ConfigError {
        // Array-of-tables entries are named without an index: pipeline.sources.
        let table_name = table_path.join(".");
        let known: Vec<&str> = KNOWN_KEYS
            .iter()
            .find(|(t, _)| *t == table_name)
            .map_or_else(
                || unknown.expected.iter().map(String::as_str).collect(),
                |(_, k)| k.to_vec(),
            );
        let is_top = table_path.is_empty();
        let label = format!("[{table_name}]");
        let mut hint = match closest(&unknown.name, &known) {
            Some(s) if is_top => format!("did you mean [{s}]?"),
            Some(s) => format!("did you mean `{s}`?"),
            None => {
                // The right key in the wrong table?
                match KNOWN_KEYS.iter().find(|(t, keys)| {
                    *t != table_name && !t.is_empty() && keys.contains(&unknown.name.as_str())
                }) {
                    Some((t, _)) => format!("`{}` belongs in [{t}]", unknown.name),
                    None => "remove it or check the spelling".to_string(),
                }
            }
        };
        hint.push_str(&format!(
            " (valid {}s: {})",
            if is_top { "table" } else { "key" },
            known.join(", ")
        ));
        let problem = if is_top {
            format!("unknown top-level key `{}`", unknown.name)
        } else {
            format!("unknown key `{}` in {label}", unknown.name)
        };
        self.at(span, &problem, &hint)
    }
}

pub(super) struct UnknownField {
    pub(super) name: String,
    pub(super) expected: Vec<String>,
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`", "there are no fields").
pub(super) fn parse_unknown_field(message: &str) -> Option<UnknownField> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let name = rest[..end].to_string();
    let expected = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some(UnknownField { name, expected })
}

fn type_hint(message: &str, key: Option<&str>) -> String {
    let example = key.and_then(example_for);
    let base = if message.contains("expected u64") || message.contains("expected usize") {
        "use a whole number without quotes"
    } else if message.contains("expected a boolean") {
        "use true or false without quotes"
    } else if message.contains("expected a string") {
        "use a double-quoted string"
    } else if message.contains("expected a sequence") {
        "use an array of strings"
    } else if message.starts_with("missing field") {
        "each [[pipeline.sources]] entry needs both name and scope"
    } else {
        "config/enricher.toml shows every option with its type"
    };
    match example {
        Some(ex) if !base.contains("e.g.") => format!("{base}, e.g. {ex}"),
        _ => base.to_string(),
    }
}
