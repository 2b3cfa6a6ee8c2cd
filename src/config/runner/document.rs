//! The runner's file and its `[[runners]]`: which entries are custom runners, their
//! labels and lines, and their `[runners.custom]` table.

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::hook::INSTALLED_AUTH;
use super::{Checker, RunnerSummary};

type Value<'i> = Spanned<DeValue<'i>>;

/// One `[[runners]]` entry being checked.
pub(super) struct Runner<'t, 'i> {
    /// For messages: `"name"` or `#N`.
    pub(super) label: String,
    /// The `[[runners]]` table itself.
    pub(super) table: &'t DeTable<'i>,
    /// Line of its first key (or of the entry).
    pub(super) line: usize,
    pub(super) custom: Option<&'t DeTable<'i>>,
    /// `custom` is there but is not a table (already reported as such).
    pub(super) custom_mistyped: bool,
    /// Line of the `[runners.custom]` header (or of the runner, when absent).
    pub(super) custom_line: usize,
}

/// A custom runner whose `[runners.custom]` is a table: what the checks of its hooks read.
pub(super) struct Custom<'a> {
    /// The `[[runners]]` entry.
    pub(super) r: &'a Runner<'a, 'a>,
    /// Its `[runners.custom]` table.
    pub(super) table: &'a DeTable<'a>,
    /// Some hook's arguments start with `--no-auth`: the hooks run `jacamar` without
    /// authorization (then every hook's must).
    pub(super) no_auth: bool,
}

impl Checker<'_> {
    /// The whole file: every `[[runners]]` entry with `executor = "custom"` checked; the
    /// summaries of those whose wiring is clean.
    pub(super) fn document(&mut self, doc: &DeTable<'_>) -> Vec<RunnerSummary> {
        let Some((key, value)) = doc.get_key_value("runners") else {
            self.push(
                None,
                None,
                "runners",
                "no [[runners]] entry: register a runner with executor = \"custom\" first"
                    .to_string(),
            );
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            let found = value.get_ref().type_str();
            let message = format!("expected an array of tables ([[runners]]), found {found}");
            self.runners_problem(key.span().start, message);
            return Vec::new();
        };
        let mut summaries = Vec::new();
        let mut customs = 0;
        for (index, item) in items.iter().enumerate() {
            let DeValue::Table(table) = item.get_ref() else {
                let message = format!(
                    "entry #{} is {}, not a table: write it as a [[runners]] table",
                    index + 1,
                    item.get_ref().type_str()
                );
                self.runners_problem(item.span().start, message);
                continue;
            };
            if !self.is_custom(table, index) {
                continue;
            }
            customs += 1;
            let runner = self.runner(table, item, index);
            if let Some(summary) = self.custom_runner(&runner) {
                summaries.push(summary);
            }
        }
        if customs == 0 && self.problems.is_empty() {
            self.push(
                None,
                None,
                "runners.executor",
                "no [[runners]] entry has executor = \"custom\": nothing runs jacamar-auth"
                    .to_string(),
            );
        }
        summaries
    }

    /// A problem of the `runners` key itself, at the line of `offset`.
    fn runners_problem(&mut self, offset: usize, message: String) {
        let line = self.line(offset);
        self.push(Some(line), None, "runners", message);
    }

    /// `executor = "custom"`? A wrong type is reported and counts as no.
    fn is_custom(&mut self, table: &DeTable<'_>, index: usize) -> bool {
        match table.get_key_value("executor") {
            Some((_, v)) => match v.get_ref() {
                DeValue::String(s) => s.as_ref() == "custom",
                other => {
                    let line = self.line(v.span().start);
                    self.push(
                        Some(line),
                        Some(&format!("#{}", index + 1)),
                        "runners.executor",
                        format!("expected a string, found {}", other.type_str()),
                    );
                    false
                }
            },
            None => false,
        }
    }

    fn runner<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        item: &Value<'i>,
        index: usize,
    ) -> Runner<'t, 'i> {
        let label = match table.get("name").map(|v| v.get_ref()) {
            Some(DeValue::String(s)) if !s.is_empty() => format!("{:?}", s.as_ref()),
            _ => format!("#{}", index + 1),
        };
        let line = table
            .iter()
            .map(|(k, _)| k.span().start)
            .min()
            .map(|o| self.line(o))
            .unwrap_or_else(|| self.line(item.span().start));
        let (custom, custom_line) = match table.get_key_value("custom") {
            Some((k, v)) => match v.get_ref() {
                DeValue::Table(t) => (Some(t), self.line(k.span().start)),
                other => {
                    let l = self.line(k.span().start);
                    self.push(
                        Some(l),
                        Some(&label),
                        "runners.custom",
                        format!(
                            "expected a table ([runners.custom]), found {}",
                            other.type_str()
                        ),
                    );
                    (None, l)
                }
            },
            None => (None, line),
        };
        Runner {
            label,
            table,
            line,
            custom,
            custom_mistyped: custom.is_none() && table.contains_key("custom"),
            custom_line,
        }
    }

    /// Report a custom runner without a `[runners.custom]` table.
    pub(super) fn missing_custom(&mut self, r: &Runner<'_, '_>) {
        self.problem(
            r,
            r.line,
            "runners.custom",
            format!(
                "executor = \"custom\" without a [runners.custom] table: add one with the \
                 four hooks config_exec, prepare_exec, run_exec and cleanup_exec = \
                 \"{INSTALLED_AUTH}\" and their *_args"
            ),
        );
    }
}
