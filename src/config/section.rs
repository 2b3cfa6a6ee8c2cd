//! A cursor over one TOML table that reads typed values, records every
//! problem it meets instead of stopping at the first, and at the end reports
//! the keys nobody asked for (unknown keys, with a suggestion).

use std::path::PathBuf;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::duration::parse_duration;
use super::error::Problem;
use super::raw::{join, LineIndex};
use super::schema;

type Value<'i> = Spanned<DeValue<'i>>;

pub(crate) struct Section<'t, 'i> {
    /// Dotted table name; `""` for the document itself.
    name: String,
    table: Option<&'t DeTable<'i>>,
    /// Line of the table's header, when it has one.
    line: Option<usize>,
    lines: &'t LineIndex,
    seen: Vec<&'static str>,
    problems: Vec<Problem>,
}

impl<'t, 'i> Section<'t, 'i> {
    /// The whole document.
    pub(crate) fn top(doc: &'t DeTable<'i>, lines: &'t LineIndex) -> Section<'t, 'i> {
        Section {
            name: String::new(),
            table: Some(doc),
            line: None,
            lines,
            seen: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// True when the table exists in the file and holds at least one key.
    pub(crate) fn has_keys(&self) -> bool {
        self.table.is_some_and(|t| !t.is_empty())
    }

    pub(crate) fn dotted(&self, key: &str) -> String {
        join(&self.name, key)
    }

    pub(crate) fn push(&mut self, line: Option<usize>, key: &str, message: impl Into<String>) {
        let dotted = self.dotted(key);
        self.problems
            .push(Problem::new(line, Some(dotted), message));
    }

    /// Look a key up and remember it was asked for.
    fn entry(&mut self, key: &'static str) -> Option<(&'t Value<'i>, usize)> {
        debug_assert!(
            schema::lookup(&self.name, key).is_some()
                || schema::child_tables(&self.name).any(|t| t.rsplit('.').next() == Some(key)),
            "{}.{key} read but missing from the schema",
            self.name
        );
        if !self.seen.contains(&key) {
            self.seen.push(key);
        }
        let table = self.table?;
        let (k, v) = table.get_key_value(key)?;
        Some((v, self.lines.line(k.span().start)))
    }

    fn line_of(&self, value: &Value<'_>) -> usize {
        self.lines.line(value.span().start)
    }

    fn type_error(&mut self, key: &str, line: usize, expected: &str, found: &DeValue<'_>) {
        self.push(
            Some(line),
            key,
            format!("expected {expected}, found {}", found.type_str()),
        );
    }

    /// Report `key` as missing; `hint` says what to write.
    pub(crate) fn missing(&mut self, key: &str, hint: &str) {
        let table = if self.name.is_empty() {
            key
        } else {
            &self.name
        };
        let message = if self.table.is_some() {
            format!("missing required key '{key}' in [{table}]{hint}")
        } else {
            format!("missing required key '{key}': there is no [{table}] table{hint}")
        };
        self.push(self.line, key, message);
    }

    pub(crate) fn bool(&mut self, key: &'static str) -> bool {
        let Some((value, line)) = self.entry(key) else {
            return false;
        };
        match value.get_ref() {
            DeValue::Boolean(b) => *b,
            other => {
                self.type_error(key, line, "a boolean (true or false)", other);
                false
            }
        }
    }

    /// A string with the line it is on. An empty string counts as unset,
    /// as it does upstream.
    pub(crate) fn string_at(&mut self, key: &'static str) -> Option<(String, usize)> {
        let (value, line) = self.entry(key)?;
        match value.get_ref() {
            DeValue::String(s) if s.is_empty() => None,
            DeValue::String(s) => Some((s.to_string(), line)),
            other => {
                self.type_error(key, line, "a string", other);
                None
            }
        }
    }

    /// A string that must be present and non-empty; `hint` follows the
    /// "missing" message.
    pub(crate) fn required_string(
        &mut self,
        key: &'static str,
        hint: &str,
    ) -> Option<(String, usize)> {
        let Some((value, line)) = self.entry(key) else {
            self.missing(key, hint);
            return None;
        };
        match value.get_ref() {
            DeValue::String(s) if s.trim().is_empty() => {
                self.push(Some(line), key, format!("{key} must not be empty"));
                None
            }
            DeValue::String(s) => Some((s.to_string(), line)),
            other => {
                self.type_error(key, line, "a string", other);
                None
            }
        }
    }

    pub(crate) fn string(&mut self, key: &'static str) -> Option<String> {
        self.string_at(key).map(|(s, _)| s)
    }

    /// Whether `key` is written in the table at all (whatever its value).
    pub(crate) fn is_present(&self, key: &str) -> bool {
        self.table.is_some_and(|t| t.contains_key(key))
    }

    pub(crate) fn duration(&mut self, key: &'static str, default: Duration) -> Duration {
        let Some((value, line)) = self.entry(key) else {
            return default;
        };
        match value.get_ref() {
            DeValue::String(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.push(Some(line), key, format!("{key}: {e}"));
                    default
                }
            },
            other => {
                self.type_error(key, line, "a duration string such as \"30s\"", other);
                default
            }
        }
    }

    /// A non-negative integer in `min..=max`.
    pub(crate) fn uint(&mut self, key: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let Some((value, line)) = self.entry(key) else {
            return default;
        };
        let DeValue::Integer(int) = value.get_ref() else {
            self.type_error(key, line, "an integer", value.get_ref());
            return default;
        };
        let parsed = i128::from_str_radix(int.as_str(), int.radix()).ok();
        match parsed {
            Some(n) if n >= i128::from(min) && n <= i128::from(max) => {
                u64::try_from(n).unwrap_or(default)
            }
            Some(n) if n < i128::from(min) => {
                self.push(
                    Some(line),
                    key,
                    format!("{key} must be >= {min}, found {n}"),
                );
                default
            }
            _ => {
                self.push(
                    Some(line),
                    key,
                    format!("{key} is too large (at most {max}), found {int}"),
                );
                default
            }
        }
    }

    /// An array of strings, each with its line. Wrong items are reported
    /// and left out.
    pub(crate) fn strings_at(&mut self, key: &'static str) -> Option<Vec<(String, usize)>> {
        let (value, line) = self.entry(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            self.type_error(key, line, "an array of strings", value.get_ref());
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_line = self.line_of(item);
            match item.get_ref() {
                DeValue::String(s) => out.push((s.to_string(), item_line)),
                other => self.push(
                    Some(item_line),
                    key,
                    format!(
                        "expected an array of strings, found {} at index {i}",
                        other.type_str()
                    ),
                ),
            }
        }
        Some(out)
    }

    pub(crate) fn strings(&mut self, key: &'static str) -> Vec<String> {
        self.strings_at(key)
            .unwrap_or_default()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    /// One of a fixed set of names; the error lists them.
    pub(crate) fn choice<T: Copy>(
        &mut self,
        key: &'static str,
        names: &[(&'static str, T)],
    ) -> Option<T> {
        let (value, line) = self.entry(key)?;
        let value = match value.get_ref() {
            DeValue::String(s) => s.to_string(),
            other => {
                self.type_error(key, line, "a string", other);
                return None;
            }
        };
        if let Some((_, v)) = names.iter().find(|(n, _)| *n == value) {
            return Some(*v);
        }
        let allowed: Vec<String> = names.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let mut message = format!(
            "invalid value \"{value}\" for {key}: expected one of {}",
            allowed.join(", ")
        );
        if names.iter().any(|(n, _)| n.eq_ignore_ascii_case(&value)) {
            message.push_str(" (values are lowercase)");
        }
        self.push(Some(line), key, message);
        None
    }

    /// A path; `absolute` demands it start with `/`.
    pub(crate) fn path(&mut self, key: &'static str, absolute: bool) -> Option<PathBuf> {
        let (value, line) = self.string_at(key)?;
        if absolute && !value.starts_with('/') {
            self.push(
                Some(line),
                key,
                format!("{key} must be an absolute path, found \"{value}\""),
            );
            return None;
        }
        Some(PathBuf::from(value))
    }

    /// Line where `key` is written, if it is.
    pub(crate) fn line_of_key(&self, key: &str) -> Option<usize> {
        let (k, _) = self.table?.get_key_value(key)?;
        Some(self.lines.line(k.span().start))
    }

    /// The child table `key`; absent (and reported if not a table) otherwise.
    pub(crate) fn subtable(&mut self, key: &'static str) -> Section<'t, 'i> {
        let name = self.dotted(key);
        let mut child = Section {
            name,
            table: None,
            line: None,
            lines: self.lines,
            seen: Vec::new(),
            problems: Vec::new(),
        };
        let Some((value, line)) = self.entry(key) else {
            return child;
        };
        match value.get_ref() {
            DeValue::Table(table) => {
                child.table = Some(table);
                child.line = Some(line);
            }
            DeValue::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.get_ref().is_table()) =>
            {
                let dotted = self.dotted(key);
                self.push(
                    Some(line),
                    key,
                    format!("[[{dotted}]] declares an array of tables; write [{dotted}] (single brackets)"),
                );
            }
            other => self.type_error(key, line, "a table", other),
        }
        child
    }

    /// Report every key nobody asked for, then hand back all problems.
    pub(crate) fn finish(mut self) -> Vec<Problem> {
        let Some(table) = self.table else {
            return self.problems;
        };
        let mut extra = Vec::new();
        for (k, v) in table.iter() {
            let key: &str = k.get_ref();
            if self.seen.contains(&key) {
                continue;
            }
            let line = self.lines.line(k.span().start);
            let message = self.unknown_message(key, v.get_ref());
            extra.push(Problem::new(Some(line), Some(self.dotted(key)), message));
        }
        self.problems.extend(extra);
        self.problems
    }

    fn unknown_message(&self, key: &str, value: &DeValue<'_>) -> String {
        let dotted = self.dotted(key);
        if let Some((_, _, why)) = schema::UNSUPPORTED
            .iter()
            .find(|(t, k, _)| *t == self.name && *k == key)
        {
            return format!("'{dotted}' is not supported: {why}");
        }
        let tables: Vec<&str> = schema::child_tables(&self.name)
            .filter_map(|t| t.rsplit('.').next())
            .collect();
        if value.is_table() {
            let mut message = format!("unknown table [{dotted}]");
            if let Some(t) = tables.iter().find(|t| t.eq_ignore_ascii_case(key)) {
                message.push_str(&format!(
                    ": table names are lowercase: did you mean [{}]?",
                    self.dotted(t)
                ));
            } else if let Some(t) = closest(key, tables.iter().copied()) {
                message.push_str(&format!(" (did you mean [{}]?)", self.dotted(t)));
            } else if self.name.is_empty() {
                message.push_str(" (known tables: [general], [auth], [batch])");
            }
            return message;
        }
        let mut message = format!("unknown key '{dotted}'");
        let here = schema::keys_of(&self.name).map(|k| k.key);
        if let Some(best) = closest(key, here) {
            message.push_str(&format!(" (did you mean '{best}'?)"));
        } else if let Some(home) = schema::KEYS.iter().find(|k| k.key == key) {
            if self.name.is_empty() {
                message.push_str(&format!(
                    " (keys belong in a table: did you mean [{}] {}?)",
                    home.table, home.key
                ));
            } else {
                message.push_str(&format!(" (it belongs in [{}])", home.table));
            }
        } else if let Some(t) = tables.iter().find(|t| t.eq_ignore_ascii_case(key)) {
            message.push_str(&format!(" ([{}] must be a table)", self.dotted(t)));
        }
        message
    }
}

/// The candidate nearest to `word`, if near enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_lc = word.to_ascii_lowercase().replace('-', "_");
    let limit = match word.chars().count() {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    candidates
        .map(|c| {
            (
                edit_distance(&word_lc, &c.to_ascii_lowercase().replace('-', "_")),
                c,
            )
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        let cases = [
            ("", "", 0),
            ("abc", "", 3),
            ("user_blocklst", "user_blocklist", 1),
            ("kitten", "sitting", 3),
            ("genral", "general", 1),
        ];
        for (a, b, d) in cases {
            assert_eq!(edit_distance(a, b), d, "{a} {b}");
        }
    }

    #[test]
    fn suggestions_only_when_close() {
        let keys = ["user_blocklist", "user_allowlist", "downscope"];
        assert_eq!(
            closest("user_blocklst", keys.iter().copied()),
            Some("user_blocklist")
        );
        assert_eq!(closest("downscop", keys.iter().copied()), Some("downscope"));
        assert_eq!(closest("wholly_unrelated", keys.iter().copied()), None);
        assert_eq!(
            closest("tls_ca_file", ["tls-ca-file"].iter().copied()),
            Some("tls-ca-file")
        );
    }
}
