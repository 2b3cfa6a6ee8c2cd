//! Text from the job's side made safe for the runner's logs and the audit log.
//!
//! Whatever the job can influence (a failure message `jacamar` relays, a scheduler's
//! answer, a line of a record the job can write) may hold terminal escape sequences, a
//! carriage return that rewrites the line it is on, or bidirectional overrides that reorder
//! what a reader sees. [`sanitize`] shows them as escapes instead.

use std::borrow::Cow;

/// Whether `c` must not reach a log as is: a control character other than the line
/// structure `\n` and `\t` (C0, DEL, C1: `\x1b`, `\r`, `\x08`, `\u{9b}`, ...), or a
/// bidirectional formatting character (U+061C, U+200E, U+200F, U+202A to U+202E,
/// U+2066 to U+2069).
fn unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character of [`unsafe_char`] replaced by its Rust escape (`\u{1b}`),
/// so it stays visible and cannot act on a terminal or a log viewer; borrowed unchanged
/// when there is none.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn control_characters_are_shown_escaped_lines_and_tabs_kept() {
        assert!(matches!(
            sanitize("plain text, ünïcode\tand\nlines"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            sanitize("job \x1b[31mred\x1b[0m\rERROR\x08\x7f\u{9b}2J"),
            "job \\u{1b}[31mred\\u{1b}[0m\\u{d}ERROR\\u{8}\\u{7f}\\u{9b}2J"
        );
        assert_eq!(sanitize("a\u{202e}b\u{2066}c"), "a\\u{202e}b\\u{2066}c");
        assert_eq!(sanitize("one\ntwo\tthree"), "one\ntwo\tthree");
    }
}
