//! Step one: TOML text -> a spanned document tree, or one syntax [`Problem`]
//! naming the line and the last key parsed before it.

use toml::de::{DeTable, DeValue};

use super::error::Problem;

/// Byte offset -> 1-based line number.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset).max(1)
    }
}

/// Parse the whole document. On a syntax error, only the first error is
/// reported: what a TOML parser finds after one is mostly echoes of it.
pub(crate) fn parse(text: &str) -> Result<DeTable<'_>, Problem> {
    match DeTable::parse(text) {
        Ok(table) => Ok(table.into_inner()),
        Err(err) => Err(syntax_problem(text, &err)),
    }
}

fn syntax_problem(text: &str, err: &toml::de::Error) -> Problem {
    let lines = LineIndex::new(text);
    let message = format!("invalid TOML: {}", err.message().trim().replace('\n', " "));
    let Some(span) = err.span() else {
        return Problem::new(None, None, message);
    };
    let offset = span.start.min(text.len());
    // An empty span marks a place where something is missing (a comma, a
    // closing bracket). The parser finds that out at the next token, which
    // may be lines later; the admin's mistake is where the previous token
    // ended, so report that line.
    let report_at = if span.is_empty() {
        text[..offset]
            .trim_end()
            .len()
            .checked_sub(1)
            .unwrap_or(offset)
    } else {
        offset
    };
    let (recovered, _) = DeTable::parse_recoverable(text);
    let mut keys = Vec::new();
    collect_keys(recovered.get_ref(), "", &mut keys);
    let last_key = keys
        .into_iter()
        .filter(|(_, start)| *start <= offset)
        .max_by_key(|(_, start)| *start)
        .map(|(key, _)| key);
    Problem::new(Some(lines.line(report_at)), last_key, message)
}

/// Every dotted key of a (partial) document with the offset where it starts.
fn collect_keys(table: &DeTable<'_>, prefix: &str, out: &mut Vec<(String, usize)>) {
    for (key, value) in table.iter() {
        let dotted = join(prefix, key.get_ref());
        out.push((dotted.clone(), key.span().start));
        collect_value_keys(value.get_ref(), &dotted, out);
    }
}

fn collect_value_keys(value: &DeValue<'_>, dotted: &str, out: &mut Vec<(String, usize)>) {
    match value {
        DeValue::Table(inner) => collect_keys(inner, dotted, out),
        DeValue::Array(items) => {
            for item in items.iter() {
                collect_value_keys(item.get_ref(), dotted, out);
            }
        }
        _ => {}
    }
}

/// `prefix.key`, or `key` at the top level.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_numbers_are_one_based() {
        let idx = LineIndex::new("a\nbc\n\nd");
        let cases = [(0, 1), (1, 1), (2, 2), (4, 2), (5, 3), (6, 4), (100, 4)];
        for (offset, line) in cases {
            assert_eq!(idx.line(offset), line, "offset {offset}");
        }
    }

    #[test]
    fn syntax_errors_point_at_their_line() {
        let cases: &[(&str, usize, Option<&str>)] = &[
            ("[general]\nexecutor = shell\n", 2, Some("general.executor")),
            ("[general\nexecutor = \"shell\"\n", 1, None),
            (
                "[general]\nname = \"a\"\nname = \"b\"\n",
                3,
                Some("general.name"),
            ),
            (
                "[general]\nname = \"unterminated\n",
                2,
                Some("general.name"),
            ),
            (
                "[general]\nretain_logs = ture\n",
                2,
                Some("general.retain_logs"),
            ),
        ];
        for (text, line, key) in cases {
            let problem = parse(text).expect_err(text);
            assert_eq!(problem.line, Some(*line), "{text:?}: {problem:?}");
            assert_eq!(problem.key.as_deref(), *key, "{text:?}: {problem:?}");
        }
    }
}
