//! Keeping the job token out of the runner's stage scripts, and so off command lines.
//!
//! The runner's bash writer puts the job token literally into several places of a stage
//! script: the job's variables (`export CI_JOB_TOKEN=<tok>`, and `CI_REPOSITORY_URL`,
//! `CI_REGISTRY_PASSWORD`, `CI_DEPENDENCY_PROXY_PASSWORD`, ... whose values hold it), the
//! clone URL of its git commands (`https://gitlab-ci-token:<tok>@host/...`), and the
//! `--token <tok>` argument of the `gitlab-runner artifacts-uploader`/`artifacts-downloader`
//! (and possibly `cache-archiver`/`cache-extractor`) helper commands. Every argument of a
//! running process is readable by every local user in `/proc/<pid>/cmdline`.
//!
//! [`hide`] rewrites a script so that the only literal copy of the token left is the
//! `CI_JOB_TOKEN` variable's own export:
//! * `--token <tok>` / `--token=<tok>` of a helper command is dropped: the helpers read the
//!   token from `CI_JOB_TOKEN` in their environment (gitlab-runner's job credentials take
//!   `--token` or the `CI_JOB_TOKEN` variable);
//! * `gitlab-ci-token:<tok>@` in a command's words loses the token (`gitlab-ci-token@`);
//!   git then asks `GIT_ASKPASS` (see [`super::env::askpass`]);
//! * any other occurrence, in particular in a variable's value, becomes a reference to
//!   `${CI_JOB_TOKEN}` in the same quoting, so the variable keeps its value;
//! * a comment holding the token has it replaced by `[MASKED]`.
//!
//! The script is tokenized, not pattern-matched: words in every bash quoting (bare with
//! backslash escapes, `'...'`, `"..."`, `$'...'`), one logical line at a time, and the
//! argument of `eval` (the runner wraps the whole stage in `: | eval $'...'`, or a
//! double-quoted string with its POSIX escaping) is decoded, rewritten the same way and
//! quoted again in its own style. A line the tokenizer does not follow (command
//! substitution, here-documents, `${...}`, backquotes) is left as it is when it does not hold
//! the token; when it does, only the `gitlab-ci-token:<tok>@` form is removed there, and if
//! the token is still there [`hide`] refuses ([`HideError`]) rather than run a script that
//! shows it. The runner never writes the token into such a line; a user's own line that
//! spans several physical lines (a here-document body, a multi-line string around a command
//! substitution) is read line by line after its first line, which can misread a token that
//! a user wrote literally into it.
//!
//! References need `CI_JOB_TOKEN` exported before them: when a rewritten line comes before
//! the script's first `export CI_JOB_TOKEN=<tok>` line, that line (unindented, alone) is
//! moved to the top of the script (after a `#!` line), or one is added there when the
//! script has none; a reference after an assignment of another value to `CI_JOB_TOKEN` is
//! refused.

use super::env::TOKEN_USER;

/// gitlab-runner's helper commands that take the job token as `--token`.
pub const HELPERS: &[&str] = &[
    "artifacts-uploader",
    "artifacts-downloader",
    "cache-archiver",
    "cache-extractor",
];

/// The variable every rewritten occurrence refers to.
pub const TOKEN_VAR: &str = "CI_JOB_TOKEN";

/// What a comment's copy of the token becomes.
const MASK: &[u8] = b"[MASKED]";

/// A script that holds the job token where it cannot be removed safely.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HideError {
    #[error(
        "the stage's script holds the job token at line {line}{inner} {why}; it cannot be \
         kept off the command line there, so the stage is refused"
    )]
    Unsafe {
        line: usize,
        /// ` (line N of its eval string)` when inside an eval argument.
        inner: String,
        why: &'static str,
    },
    #[error("rewriting the stage's script produced invalid UTF-8")]
    NotUtf8,
}

/// The job token of a runner clone URL `scheme://gitlab-ci-token:<token>@host/...`.
pub fn token_in_clone_url(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (user, token) = userinfo.split_once(':')?;
    (user == TOKEN_USER && !token.is_empty() && !token.contains('%')).then(|| token.to_string())
}

/// Rewrite `script` so that `token` appears only in `CI_JOB_TOKEN`'s own export (see the
/// module documentation). An empty `token` returns the script unchanged.
pub fn hide(script: &str, token: &str) -> Result<String, HideError> {
    if token.is_empty() {
        return Ok(script.to_string());
    }
    let out = hide_text(script.as_bytes(), token.as_bytes()).map_err(|e| match e {
        Fail::Unsafe { lines, why } => HideError::Unsafe {
            line: lines[0],
            inner: match lines.get(1) {
                Some(l) => format!(" (line {l} of its eval string)"),
                None => String::new(),
            },
            why,
        },
    })?;
    String::from_utf8(out).map_err(|_| HideError::NotUtf8)
}

/// An internal failure: the line numbers from the outermost text inwards.
#[derive(Debug)]
enum Fail {
    Unsafe {
        lines: Vec<usize>,
        why: &'static str,
    },
}

fn unsafe_at(line: usize, why: &'static str) -> Fail {
    Fail::Unsafe {
        lines: vec![line],
        why,
    }
}

// ---------------------------------------------------------------------------------------
// Tokenizer

/// The quoting a byte of a word is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    Bare,
    Single,
    AnsiC,
    Double,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnitKind {
    /// One byte of the word's value.
    Lit(u8),
    /// Not a fixed byte: an expansion, a glob or brace character, an escape we do not
    /// decode. A word with one has no known value.
    Special,
    /// A quote opening or closing a segment, or a line continuation: no value.
    Delim,
}

/// A piece of a word's text with what it contributes to the word's value.
#[derive(Debug, Clone, Copy)]
struct Unit {
    start: usize,
    end: usize,
    quote: Quote,
    /// Which quoted (or bare) segment of the word the unit is in.
    seg: usize,
    kind: UnitKind,
}

#[derive(Debug, Clone)]
struct Word {
    start: usize,
    end: usize,
    units: Vec<Unit>,
}

impl Word {
    /// The word's value, when every unit is a known byte.
    fn value(&self) -> Option<Vec<u8>> {
        let mut v = Vec::new();
        for u in &self.units {
            match u.kind {
                UnitKind::Lit(b) => v.push(b),
                UnitKind::Special => return None,
                UnitKind::Delim => {}
            }
        }
        Some(v)
    }

    fn is(&self, s: &str) -> bool {
        self.value().as_deref() == Some(s.as_bytes())
    }

    /// For `NAME=...` with a bare name: the name and the index of the first unit after `=`.
    fn assignment(&self) -> Option<(String, usize)> {
        let mut name = Vec::new();
        for (i, u) in self.units.iter().enumerate() {
            match (u.quote, u.kind, u.end - u.start) {
                (Quote::Bare, UnitKind::Lit(b'='), 1) if !name.is_empty() => {
                    return Some((String::from_utf8(name).ok()?, i + 1));
                }
                (Quote::Bare, UnitKind::Lit(b), 1)
                    if b == b'_'
                        || b.is_ascii_alphabetic()
                        || (b.is_ascii_digit() && !name.is_empty()) =>
                {
                    name.push(b)
                }
                _ => return None,
            }
        }
        None
    }
}

#[derive(Debug, Clone)]
enum Tok {
    Word(Word),
    Op { start: usize, end: usize },
    Blank { start: usize, end: usize },
    Comment { start: usize, end: usize },
}

impl Tok {
    fn span(&self) -> (usize, usize) {
        match self {
            Tok::Word(w) => (w.start, w.end),
            Tok::Op { start, end } | Tok::Blank { start, end } | Tok::Comment { start, end } => {
                (*start, *end)
            }
        }
    }
}

/// A construct the tokenizer does not follow.
#[derive(Debug)]
struct Opaque;

fn is_meta(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\n' | b'|' | b'&' | b';' | b'(' | b')' | b'<' | b'>'
    )
}

fn is_name_start(b: u8) -> bool {
    b == b'_' || b.is_ascii_alphabetic()
}

/// The end of `$name`, `$1`, `$@`, ... starting at `i` (the `$`), if it is one.
fn param_end(t: &[u8], i: usize) -> Option<usize> {
    let next = *t.get(i + 1)?;
    if is_name_start(next) {
        let mut j = i + 2;
        while j < t.len() && (t[j] == b'_' || t[j].is_ascii_alphanumeric()) {
            j += 1;
        }
        Some(j)
    } else if next.is_ascii_digit() || b"@*#?$!-".contains(&next) {
        Some(i + 2)
    } else {
        None
    }
}

/// Tokenize one logical line from `start`: up to and including the first newline that is
/// not inside quotes. Returns the tokens and where the next line starts.
fn lex_line(t: &[u8], start: usize) -> Result<(Vec<Tok>, usize), Opaque> {
    let mut toks = Vec::new();
    let mut i = start;
    while i < t.len() {
        let b = t[i];
        match b {
            b'\n' => return Ok((toks, i + 1)),
            b' ' | b'\t' => {
                let s = i;
                while i < t.len() && matches!(t[i], b' ' | b'\t') {
                    i += 1;
                }
                toks.push(Tok::Blank { start: s, end: i });
            }
            b'\\' if t.get(i + 1) == Some(&b'\n') => {
                toks.push(Tok::Blank {
                    start: i,
                    end: i + 2,
                });
                i += 2;
            }
            b'#' => {
                let s = i;
                while i < t.len() && t[i] != b'\n' {
                    i += 1;
                }
                toks.push(Tok::Comment { start: s, end: i });
            }
            b'|' | b'&' | b';' | b'(' | b')' | b'<' | b'>' => {
                let next = t.get(i + 1).copied();
                if b == b'<' && next == Some(b'<') {
                    return Err(Opaque); // here-document or here-string
                }
                if matches!(b, b'<' | b'>') && next == Some(b'(') {
                    return Err(Opaque); // process substitution
                }
                let two = matches!(
                    (b, next),
                    (b'|', Some(b'|' | b'&'))
                        | (b'&', Some(b'&' | b'>'))
                        | (b';', Some(b';' | b'&'))
                        | (b'>', Some(b'>' | b'&' | b'|'))
                        | (b'<', Some(b'&' | b'>'))
                );
                let end = if two { i + 2 } else { i + 1 };
                toks.push(Tok::Op { start: i, end });
                i = end;
            }
            _ => {
                let w = lex_word(t, i)?;
                i = w.end;
                toks.push(Tok::Word(w));
            }
        }
    }
    Ok((toks, t.len()))
}

/// Tokenize the word starting at `start` (not a blank, newline, operator or comment).
fn lex_word(t: &[u8], start: usize) -> Result<Word, Opaque> {
    let mut units = Vec::new();
    let mut seg = 0;
    let mut i = start;
    let bare = |units: &mut Vec<Unit>, s: usize, e: usize, seg: usize, kind: UnitKind| {
        units.push(Unit {
            start: s,
            end: e,
            quote: Quote::Bare,
            seg,
            kind,
        })
    };
    while i < t.len() && !is_meta(t[i]) {
        match t[i] {
            b'\'' => {
                seg += 1;
                i = lex_single(t, i, seg, &mut units)?;
                seg += 1;
            }
            b'"' => {
                seg += 1;
                i = lex_double(t, i, seg, &mut units)?;
                seg += 1;
            }
            b'`' => return Err(Opaque),
            b'$' => match t.get(i + 1) {
                Some(b'\'') => {
                    seg += 1;
                    i = lex_ansi_c(t, i, seg, &mut units)?;
                    seg += 1;
                }
                Some(b'"' | b'(' | b'{' | b'[') => return Err(Opaque),
                _ => match param_end(t, i) {
                    Some(e) => {
                        bare(&mut units, i, e, seg, UnitKind::Special);
                        i = e;
                    }
                    None => {
                        bare(&mut units, i, i + 1, seg, UnitKind::Lit(b'$'));
                        i += 1;
                    }
                },
            },
            b'\\' => match t.get(i + 1) {
                None => return Err(Opaque),
                Some(b'\n') => {
                    bare(&mut units, i, i + 2, seg, UnitKind::Delim);
                    i += 2;
                }
                Some(&c) => {
                    bare(&mut units, i, i + 2, seg, UnitKind::Lit(c));
                    i += 2;
                }
            },
            b'*' | b'?' | b'[' | b'~' | b'{' | b'}' => {
                bare(&mut units, i, i + 1, seg, UnitKind::Special);
                i += 1;
            }
            c => {
                bare(&mut units, i, i + 1, seg, UnitKind::Lit(c));
                i += 1;
            }
        }
    }
    Ok(Word {
        start,
        end: i,
        units,
    })
}

fn push(units: &mut Vec<Unit>, start: usize, end: usize, quote: Quote, seg: usize, kind: UnitKind) {
    units.push(Unit {
        start,
        end,
        quote,
        seg,
        kind,
    });
}

/// `'...'` at `i`; returns the index after the closing quote.
fn lex_single(t: &[u8], i: usize, seg: usize, units: &mut Vec<Unit>) -> Result<usize, Opaque> {
    let q = Quote::Single;
    push(units, i, i + 1, q, seg, UnitKind::Delim);
    let mut j = i + 1;
    while j < t.len() && t[j] != b'\'' {
        push(units, j, j + 1, q, seg, UnitKind::Lit(t[j]));
        j += 1;
    }
    if j >= t.len() {
        return Err(Opaque);
    }
    push(units, j, j + 1, q, seg, UnitKind::Delim);
    Ok(j + 1)
}

/// `"..."` at `i`; returns the index after the closing quote.
fn lex_double(t: &[u8], i: usize, seg: usize, units: &mut Vec<Unit>) -> Result<usize, Opaque> {
    let q = Quote::Double;
    push(units, i, i + 1, q, seg, UnitKind::Delim);
    let mut j = i + 1;
    loop {
        match t.get(j) {
            None => return Err(Opaque),
            Some(b'"') => break,
            Some(b'`') => return Err(Opaque),
            Some(b'\\') => match t.get(j + 1) {
                None => return Err(Opaque),
                Some(b'\n') => {
                    push(units, j, j + 2, q, seg, UnitKind::Delim);
                    j += 2;
                }
                Some(&c @ (b'$' | b'`' | b'"' | b'\\')) => {
                    push(units, j, j + 2, q, seg, UnitKind::Lit(c));
                    j += 2;
                }
                Some(_) => {
                    push(units, j, j + 1, q, seg, UnitKind::Lit(b'\\'));
                    j += 1;
                }
            },
            Some(b'$') => match t.get(j + 1) {
                Some(b'(' | b'{' | b'[') => return Err(Opaque),
                _ => match param_end(t, j) {
                    Some(e) => {
                        push(units, j, e, q, seg, UnitKind::Special);
                        j = e;
                    }
                    None => {
                        push(units, j, j + 1, q, seg, UnitKind::Lit(b'$'));
                        j += 1;
                    }
                },
            },
            Some(&c) => {
                push(units, j, j + 1, q, seg, UnitKind::Lit(c));
                j += 1;
            }
        }
    }
    push(units, j, j + 1, q, seg, UnitKind::Delim);
    Ok(j + 1)
}

/// `$'...'` at `i` (the `$`); returns the index after the closing quote.
fn lex_ansi_c(t: &[u8], i: usize, seg: usize, units: &mut Vec<Unit>) -> Result<usize, Opaque> {
    let q = Quote::AnsiC;
    push(units, i, i + 2, q, seg, UnitKind::Delim);
    let mut j = i + 2;
    loop {
        match t.get(j) {
            None => return Err(Opaque),
            Some(b'\'') => break,
            Some(b'\\') => {
                let (end, kind) = ansi_c_escape(t, j)?;
                push(units, j, end, q, seg, kind);
                j = end;
            }
            Some(&c) => {
                push(units, j, j + 1, q, seg, UnitKind::Lit(c));
                j += 1;
            }
        }
    }
    push(units, j, j + 1, q, seg, UnitKind::Delim);
    Ok(j + 1)
}

/// The escape at `j` (a backslash) inside `$'...'`: where it ends and the byte it stands
/// for. Escapes that do not stand for exactly one non-NUL byte are `Special`.
fn ansi_c_escape(t: &[u8], j: usize) -> Result<(usize, UnitKind), Opaque> {
    let c = *t.get(j + 1).ok_or(Opaque)?;
    let simple = match c {
        b'a' => Some(0x07),
        b'b' => Some(0x08),
        b'e' | b'E' => Some(0x1b),
        b'f' => Some(0x0c),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'v' => Some(0x0b),
        b'\\' | b'\'' | b'"' | b'?' => Some(c),
        _ => None,
    };
    if let Some(b) = simple {
        return Ok((j + 2, UnitKind::Lit(b)));
    }
    let digits = |from: usize, max: usize, ok: fn(u8) -> bool| {
        let mut e = from;
        while e < t.len() && e - from < max && ok(t[e]) {
            e += 1;
        }
        e
    };
    let number = |from: usize, to: usize, radix: u32| {
        std::str::from_utf8(&t[from..to])
            .ok()
            .and_then(|s| u32::from_str_radix(s, radix).ok())
    };
    let byte = |v: Option<u32>| match v {
        Some(v @ 1..=255) => UnitKind::Lit(v as u8),
        _ => UnitKind::Special,
    };
    Ok(match c {
        b'0'..=b'7' => {
            let e = digits(j + 1, 3, |b| (b'0'..=b'7').contains(&b));
            (e, byte(number(j + 1, e, 8)))
        }
        b'x' => {
            let e = digits(j + 2, 2, |b| b.is_ascii_hexdigit());
            if e == j + 2 {
                (j + 2, UnitKind::Special)
            } else {
                (e, byte(number(j + 2, e, 16)))
            }
        }
        b'u' => (
            digits(j + 2, 4, |b| b.is_ascii_hexdigit()),
            UnitKind::Special,
        ),
        b'U' => (
            digits(j + 2, 8, |b| b.is_ascii_hexdigit()),
            UnitKind::Special,
        ),
        b'c' => ((j + 3).min(t.len()), UnitKind::Special),
        _ => (j + 2, UnitKind::Special),
    })
}

// ---------------------------------------------------------------------------------------
// Quoting

/// `$'...'` holding exactly `v` (every byte that is not printable ASCII as an escape).
pub fn ansi_c_quote(v: &[u8]) -> Vec<u8> {
    let mut out = b"$'".to_vec();
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\'' => out.extend_from_slice(b"\\'"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b' '..=b'~' => out.push(b),
            other => out.extend_from_slice(format!("\\x{other:02x}").as_bytes()),
        }
    }
    out.push(b'\'');
    out
}

/// `"..."` holding exactly `v` (`\`, `"`, `$` and backquote escaped).
fn double_quote(v: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for &b in v {
        if matches!(b, b'\\' | b'"' | b'$' | b'`') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

// ---------------------------------------------------------------------------------------
// Rewriting

/// What a run of units of a word becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edit {
    /// A reference to `${CI_JOB_TOKEN}`.
    Reference,
    /// Nothing.
    Delete,
}

/// The state of `CI_JOB_TOKEN` at a point of a text, as far as its assignments tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenVar {
    /// No assignment seen yet.
    Unset,
    /// Exported with the token.
    Token,
    /// Assigned something else (or not exported).
    Other,
}

/// One text (the script, or an eval string) being rewritten.
struct Pass<'a> {
    t: &'a [u8],
    tok: &'a [u8],
    state: TokenVar,
    /// A rewritten line needs `CI_JOB_TOKEN` before the first assignment of it.
    needs_top: bool,
    /// The index in `lines` of the first assignment when it is a movable export line.
    first_export: Option<usize>,
    seen_assignment: bool,
    lines: Vec<Vec<u8>>,
    line_no: usize,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Rewrite one text (see [`hide`]).
fn hide_text(t: &[u8], tok: &[u8]) -> Result<Vec<u8>, Fail> {
    let mut p = Pass {
        t,
        tok,
        state: TokenVar::Unset,
        needs_top: false,
        first_export: None,
        seen_assignment: false,
        lines: Vec::new(),
        line_no: 0,
    };
    let mut i = 0;
    let mut line_no = 1;
    while i < t.len() {
        p.line_no = line_no;
        match lex_line(t, i) {
            Ok((toks, next)) => {
                let line = p.line(&toks, i, next)?;
                p.lines.push(line);
                line_no += count_newlines(&t[i..next]);
                i = next;
            }
            Err(Opaque) => {
                let next = t[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(t.len(), |n| i + n + 1);
                let line = p.opaque(&t[i..next])?;
                p.lines.push(line);
                line_no += count_newlines(&t[i..next]);
                i = next;
            }
        }
    }
    Ok(p.finish())
}

fn count_newlines(s: &[u8]) -> usize {
    s.iter().filter(|&&b| b == b'\n').count()
}

impl Pass<'_> {
    /// A line the tokenizer does not follow: only the URL form may be removed.
    fn opaque(&mut self, raw: &[u8]) -> Result<Vec<u8>, Fail> {
        if find(raw, self.tok).is_none() {
            return Ok(raw.to_vec());
        }
        let plain = self
            .tok
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        let mut with = TOKEN_USER.as_bytes().to_vec();
        with.push(b':');
        with.extend_from_slice(self.tok);
        with.push(b'@');
        let mut out = raw.to_vec();
        if plain {
            while let Some(at) = find(&out, &with) {
                out.drain(at + TOKEN_USER.len()..at + with.len() - 1);
                self.need_token(self.line_no)?;
            }
        }
        if find(&out, self.tok).is_some() {
            return Err(unsafe_at(
                self.line_no,
                "inside a construct jacamar does not parse (command substitution, \
                 here-document, ${...} or backquotes)",
            ));
        }
        Ok(out)
    }

    /// A rewritten occurrence at `line` relies on `CI_JOB_TOKEN` being exported.
    fn need_token(&mut self, line: usize) -> Result<(), Fail> {
        match self.state {
            TokenVar::Token => Ok(()),
            TokenVar::Unset => {
                self.needs_top = true;
                Ok(())
            }
            TokenVar::Other => Err(unsafe_at(
                line,
                "after CI_JOB_TOKEN was set to another value",
            )),
        }
    }

    /// Rewrite one tokenized line `t[start..end]`.
    fn line(&mut self, toks: &[Tok], start: usize, end: usize) -> Result<Vec<u8>, Fail> {
        let mut replace: Vec<Option<Vec<u8>>> = vec![None; toks.len()];
        let movable = self.movable_export(toks, start);
        for cmd in commands(self.t, toks) {
            self.command(toks, &cmd, movable, &mut replace)?;
        }
        let mut out = Vec::new();
        let mut pos = start;
        for (tok, rep) in toks.iter().zip(replace) {
            let (s, e) = tok.span();
            out.extend_from_slice(&self.t[pos..s]);
            match rep {
                Some(r) => out.extend_from_slice(&r),
                None => out.extend_from_slice(&self.t[s..e]),
            }
            pos = e;
        }
        out.extend_from_slice(&self.t[pos..end]);
        Ok(out)
    }

    /// Whether the line is `export CI_JOB_TOKEN=<token>` alone and unindented.
    fn movable_export(&self, toks: &[Tok], start: usize) -> bool {
        let sig: Vec<&Tok> = toks
            .iter()
            .filter(|t| !matches!(t, Tok::Comment { .. }))
            .collect();
        let sig: Vec<&Tok> = match sig.last() {
            Some(Tok::Blank { .. }) => sig[..sig.len() - 1].to_vec(),
            _ => sig,
        };
        match sig.as_slice() {
            [Tok::Word(e), Tok::Blank { .. }, Tok::Word(a)]
                if e.start == start && e.is("export") =>
            {
                a.assignment().is_some_and(|(name, from)| {
                    name == TOKEN_VAR && value_of(&a.units[from..]).as_deref() == Some(self.tok)
                })
            }
            _ => false,
        }
    }

    /// Rewrite the simple command `cmd` (token indices into `toks`) into `replace`.
    fn command(
        &mut self,
        toks: &[Tok],
        cmd: &Command,
        movable: bool,
        replace: &mut [Option<Vec<u8>>],
    ) -> Result<(), Fail> {
        let line = self.line_no;
        for &i in &cmd.comments {
            let (s, e) = toks[i].span();
            let raw = &self.t[s..e];
            if find(raw, self.tok).is_some() {
                replace[i] = Some(mask(raw, self.tok));
            }
        }
        let words: Vec<(usize, &Word)> = cmd
            .words
            .iter()
            .filter_map(|&i| match &toks[i] {
                Tok::Word(w) => Some((i, w)),
                _ => None,
            })
            .collect();
        let program = cmd.program;
        let named = |k: usize, names: &[&str]| {
            words
                .get(k)
                .is_some_and(|(_, w)| names.iter().any(|n| w.is(n)))
        };
        if named(program, &["eval"]) {
            // The argument of eval: decoded, rewritten, quoted again.
            for &(i, w) in &words[program + 1..] {
                if let Some(r) = self.eval_argument(w)? {
                    replace[i] = Some(r);
                }
            }
            return Ok(());
        }
        let exporting = named(program, &["export", "declare", "typeset"]);
        let skip = if named(program + 1, HELPERS) {
            self.drop_token_options(toks, &words, program + 2, replace)?
        } else {
            vec![false; words.len()]
        };
        for (k, &(i, w)) in words.iter().enumerate() {
            let edits = match w.assignment() {
                _ if skip[k] => continue,
                Some((name, from)) if name == TOKEN_VAR => {
                    self.assign_token_var(w, from, exporting && k > program, movable, line)?;
                    continue;
                }
                Some((_, from)) => self.occurrences(&w.units, from, false),
                None => self.occurrences(&w.units, 0, true),
            };
            if !edits.is_empty() {
                self.need_token(line)?;
                replace[i] = Some(regenerate(self.t, w, &edits));
            }
        }
        Ok(())
    }

    /// A helper command's `--token <token>` and `--token=<token>` among `words[from..]`
    /// are dropped (with the blank before them); returns which words are gone.
    fn drop_token_options(
        &mut self,
        toks: &[Tok],
        words: &[(usize, &Word)],
        from: usize,
        replace: &mut [Option<Vec<u8>>],
    ) -> Result<Vec<bool>, Fail> {
        let mut gone = vec![false; words.len()];
        let mut eq = b"--token=".to_vec();
        eq.extend_from_slice(self.tok);
        let mut k = from;
        while k < words.len() {
            let (i, w) = words[k];
            let pair = w.is("--token")
                && words
                    .get(k + 1)
                    .is_some_and(|(_, n)| n.value().as_deref() == Some(self.tok));
            if pair || w.value().as_deref() == Some(eq.as_slice()) {
                self.need_token(self.line_no)?;
                let last = if pair { words[k + 1].0 } else { i };
                let first = if i > 0 && matches!(toks[i - 1], Tok::Blank { .. }) {
                    i - 1
                } else {
                    i
                };
                for r in &mut replace[first..=last] {
                    *r = Some(Vec::new());
                }
                gone[k] = true;
                if pair {
                    gone[k + 1] = true;
                    k += 1;
                }
            }
            k += 1;
        }
        Ok(gone)
    }

    /// An assignment to `CI_JOB_TOKEN` itself (kept as it is) updates the variable's state.
    fn assign_token_var(
        &mut self,
        w: &Word,
        from: usize,
        exported: bool,
        movable: bool,
        line: usize,
    ) -> Result<(), Fail> {
        let value = value_of(&w.units[from..]);
        let first = !self.seen_assignment;
        self.seen_assignment = true;
        match value {
            Some(v) if v == self.tok => {
                if exported {
                    self.state = TokenVar::Token;
                    if first && movable {
                        self.first_export = Some(self.lines.len());
                    }
                } else if self.state != TokenVar::Token {
                    self.state = TokenVar::Other;
                }
                Ok(())
            }
            Some(v) if find(&v, self.tok).is_some() => Err(unsafe_at(
                line,
                "in a value of CI_JOB_TOKEN that is not the token alone",
            )),
            None if find(&self.t[w.start..w.end], self.tok).is_some() => Err(unsafe_at(
                line,
                "in a value of CI_JOB_TOKEN with expansions",
            )),
            _ => {
                self.state = TokenVar::Other;
                Ok(())
            }
        }
    }

    /// The token's occurrences among `units[from..]` (runs of known bytes, not across an
    /// expansion): with `strip_url`, `gitlab-ci-token:<token>@` loses `:<token>`; the others
    /// become references. Returned as unit index ranges, in order.
    fn occurrences(
        &self,
        units: &[Unit],
        from: usize,
        strip_url: bool,
    ) -> Vec<(usize, usize, Edit)> {
        let mut edits = Vec::new();
        let mut run: Vec<(u8, usize)> = Vec::new();
        let flush = |run: &mut Vec<(u8, usize)>, edits: &mut Vec<(usize, usize, Edit)>| {
            let bytes: Vec<u8> = run.iter().map(|(b, _)| *b).collect();
            let mut at = 0;
            while let Some(rel) = find(&bytes[at..], self.tok) {
                let s = at + rel;
                let e = s + self.tok.len();
                let url = strip_url
                    && s > TOKEN_USER.len()
                    && &bytes[s - TOKEN_USER.len() - 1..s - 1] == TOKEN_USER.as_bytes()
                    && bytes[s - 1] == b':'
                    && bytes.get(e) == Some(&b'@');
                if url {
                    edits.push((run[s - 1].1, run[e - 1].1, Edit::Delete));
                } else {
                    edits.push((run[s].1, run[e - 1].1, Edit::Reference));
                }
                at = e;
            }
            run.clear();
        };
        for (i, u) in units.iter().enumerate().skip(from) {
            match u.kind {
                UnitKind::Lit(b) => run.push((b, i)),
                UnitKind::Delim => {}
                UnitKind::Special => flush(&mut run, &mut edits),
            }
        }
        flush(&mut run, &mut edits);
        edits
    }

    /// The rewritten `eval` argument `w`, if it holds the token.
    fn eval_argument(&mut self, w: &Word) -> Result<Option<Vec<u8>>, Fail> {
        let quote = match w.units.first() {
            Some(u) if w.units.iter().all(|v| v.seg == u.seg) => u.quote,
            _ => Quote::Bare,
        };
        let value = w.value();
        let inner = match (quote, &value) {
            (Quote::Single | Quote::AnsiC | Quote::Double, Some(v)) => v,
            _ => {
                if find(&self.t[w.start..w.end], self.tok).is_some() {
                    return Err(unsafe_at(
                        self.line_no,
                        "in an eval argument that is not one quoted string",
                    ));
                }
                return Ok(None);
            }
        };
        let rewritten = hide_text(inner, self.tok).map_err(|Fail::Unsafe { mut lines, why }| {
            lines.insert(0, self.line_no);
            Fail::Unsafe { lines, why }
        })?;
        if &rewritten == inner {
            return Ok(None);
        }
        Ok(Some(match quote {
            Quote::Double => double_quote(&rewritten),
            _ => ansi_c_quote(&rewritten),
        }))
    }

    /// The text, with `export CI_JOB_TOKEN=...` moved (or added) to the top when a
    /// rewritten line needs it earlier.
    fn finish(mut self) -> Vec<u8> {
        if self.needs_top {
            let at = usize::from(self.lines.first().is_some_and(|l| l.starts_with(b"#!")));
            let mut export = match self.first_export {
                Some(k) => self.lines.remove(k),
                None => {
                    let mut e = format!("export {TOKEN_VAR}=").into_bytes();
                    e.extend_from_slice(&ansi_c_quote(self.tok));
                    e
                }
            };
            if !export.ends_with(b"\n") {
                export.push(b'\n');
            }
            self.lines.insert(at.min(self.lines.len()), export);
        }
        self.lines.concat()
    }
}

/// The value of `units` when all are known bytes.
fn value_of(units: &[Unit]) -> Option<Vec<u8>> {
    Word {
        start: 0,
        end: 0,
        units: units.to_vec(),
    }
    .value()
}

fn mask(raw: &[u8], tok: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(rel) = find(&raw[at..], tok) {
        out.extend_from_slice(&raw[at..at + rel]);
        out.extend_from_slice(MASK);
        at += rel + tok.len();
    }
    out.extend_from_slice(&raw[at..]);
    out
}

/// The closing quote of a segment in `quote`.
fn close(quote: Quote) -> &'static [u8] {
    match quote {
        Quote::Bare => b"",
        Quote::Single | Quote::AnsiC => b"'",
        Quote::Double => b"\"",
    }
}

/// The opening quote of a segment in `quote`.
fn reopen(quote: Quote) -> &'static [u8] {
    match quote {
        Quote::Bare => b"",
        Quote::Single => b"'",
        Quote::AnsiC => b"$'",
        Quote::Double => b"\"",
    }
}

/// `w` with `edits` (unit index ranges, in order) applied, every other unit as written
/// (except a lone `$` or `\`, written so that what follows cannot join it).
fn regenerate(t: &[u8], w: &Word, edits: &[(usize, usize, Edit)]) -> Vec<u8> {
    let reference = format!("${{{TOKEN_VAR}}}");
    let mut out = Vec::new();
    let mut i = 0;
    let mut e = edits.iter().peekable();
    while i < w.units.len() {
        if let Some(&&(a, b, edit)) = e.peek().filter(|(a, _, _)| *a == i) {
            e.next();
            let (ua, ub) = (w.units[a], w.units[b]);
            let same = ua.seg == ub.seg;
            match edit {
                Edit::Reference if same && ua.quote == Quote::Double => {
                    out.extend_from_slice(reference.as_bytes())
                }
                Edit::Reference => {
                    out.extend_from_slice(close(ua.quote));
                    out.push(b'"');
                    out.extend_from_slice(reference.as_bytes());
                    out.push(b'"');
                    out.extend_from_slice(reopen(ub.quote));
                }
                Edit::Delete if same => {}
                Edit::Delete => {
                    out.extend_from_slice(close(ua.quote));
                    out.extend_from_slice(reopen(ub.quote));
                }
            }
            i = b + 1;
            continue;
        }
        let u = w.units[i];
        match (u.quote, u.kind, u.end - u.start) {
            (Quote::Bare | Quote::Double, UnitKind::Lit(b'$'), 1) => out.extend_from_slice(b"\\$"),
            (Quote::Double, UnitKind::Lit(b'\\'), 1) => out.extend_from_slice(b"\\\\"),
            _ => out.extend_from_slice(&t[u.start..u.end]),
        }
        i += 1;
    }
    out
}

/// A simple command of a line: its word token indices (redirection targets left out), the
/// index among them of the program (after reserved words and assignments), its comments.
#[derive(Debug, Default)]
struct Command {
    words: Vec<usize>,
    program: usize,
    comments: Vec<usize>,
}

/// Reserved words that may start a command before the program.
const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}", "time",
];

/// The simple commands of a tokenized line of `t`.
fn commands(t: &[u8], toks: &[Tok]) -> Vec<Command> {
    let mut out = Vec::new();
    let mut cur = Command::default();
    let mut target = false;
    for (i, tok) in toks.iter().enumerate() {
        match tok {
            Tok::Blank { .. } => {}
            Tok::Comment { .. } => cur.comments.push(i),
            Tok::Op { start, end } => {
                let op = &t[*start..*end];
                if matches!(
                    op,
                    b"<" | b">" | b">>" | b">&" | b"<&" | b"&>" | b">|" | b"<>"
                ) {
                    target = true;
                } else {
                    target = false;
                    out.push(std::mem::take(&mut cur));
                }
            }
            Tok::Word(_) if target => target = false,
            Tok::Word(_) => cur.words.push(i),
        }
    }
    out.push(cur);
    for c in &mut out {
        c.program = c
            .words
            .iter()
            .position(|&i| match &toks[i] {
                Tok::Word(w) => w.assignment().is_none() && !KEYWORDS.iter().any(|k| w.is(k)),
                _ => false,
            })
            .unwrap_or(c.words.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOK: &str = "glcbt-64_AbC9-x_yZ";

    /// The runner's default quoting of a word (bare when only `[A-Za-z0-9,./@_-]`, else
    /// ANSI-C with `\a \b \t \n \v \f \r \' \\` and `\xHH` escapes).
    fn rq(s: &str) -> String {
        let lit = |b: u8| b.is_ascii_alphanumeric() || b",-./@_".contains(&b);
        if s.is_empty() {
            return "''".into();
        }
        if s.bytes().all(lit) {
            return s.into();
        }
        let mut out = String::from("$'");
        for b in s.bytes() {
            match b {
                0x07 => out.push_str("\\a"),
                0x08 => out.push_str("\\b"),
                b'\t' => out.push_str("\\t"),
                b'\n' => out.push_str("\\n"),
                0x0b => out.push_str("\\v"),
                0x0c => out.push_str("\\f"),
                b'\r' => out.push_str("\\r"),
                b'\'' => out.push_str("\\'"),
                b'\\' => out.push_str("\\\\"),
                b' '..=b'~' => out.push(b as char),
                o => out.push_str(&format!("\\x{o:02x}")),
            }
        }
        out.push('\'');
        out
    }

    /// The runner's POSIX escaping (FF_POSIXLY_CORRECT_ESCAPES): double quotes when needed.
    fn pq(s: &str) -> String {
        let mut out = String::new();
        let mut quote = false;
        for c in s.chars() {
            match c {
                '`' | '"' | '\\' | '$' => {
                    out.push('\\');
                    out.push(c);
                    quote = true;
                }
                ' ' | '!' | '#' | '%' | '&' | '(' | ')' | '*' | '<' | '=' | '>' | '?' | '['
                | '|' => {
                    out.push(c);
                    quote = true;
                }
                c => out.push(c),
            }
        }
        if quote {
            format!("\"{out}\"")
        } else {
            out
        }
    }

    fn exports(q: fn(&str) -> String) -> String {
        let mut s = String::new();
        for (k, v) in [
            ("CI_JOB_TOKEN", TOK.to_string()),
            (
                "CI_REPOSITORY_URL",
                format!("https://gitlab-ci-token:{TOK}@gl.example:8443/g/p.git"),
            ),
            ("CI_REGISTRY_PASSWORD", TOK.to_string()),
            ("CI_DEPENDENCY_PROXY_PASSWORD", TOK.to_string()),
            ("ODD", format!("it's a \"{TOK}\" $HOME\\n\t\u{e9}")),
        ] {
            s += &format!("export {k}={}\n", q(&v));
        }
        s
    }

    fn upload_body(q: fn(&str) -> String) -> String {
        let mut s = exports(q);
        s += "cd /tmp\n";
        s += "if gitlab-runner --version >/dev/null 2>&1; then\n";
        s += &format!("  echo {}\n", q("\x1b[32;1mUploading artifacts...\x1b[0;m"));
        s += &format!(
            "  gitlab-runner artifacts-uploader --url {} --token {TOK} --id 42 --path {} --expire-in {}\n",
            q("https://gl.example:8443/"),
            q("out dir"),
            q("1 week")
        );
        s += &format!(
            "  gitlab-runner artifacts-downloader --url {} --token {TOK} --id 41\n",
            q("https://gl.example:8443/")
        );
        s += &format!("  gitlab-runner cache-archiver --file x --token={TOK} --path y\n");
        s += &format!(
            "  git remote set-url origin {}\n",
            q(&format!(
                "https://gitlab-ci-token:{TOK}@gl.example:8443/g/p.git"
            ))
        );
        s += "else\n  echo missing\nfi\n";
        s
    }

    fn wrap(eval_arg: &str, subshell: bool) -> String {
        let eval = if subshell {
            format!(": | (eval {eval_arg})\n")
        } else {
            format!(": | eval {eval_arg}\n")
        };
        format!(
            "#!/usr/bin/env bash\n\ntrap exit 1 TERM\n\n\
             if set -o | grep pipefail > /dev/null; then set -o pipefail; fi; set -o errexit\n\
             set +o noclobber\n{eval}exit 0\n"
        )
    }

    /// Run `script` with bash, a fake `gitlab-runner` and `git` first on PATH that print
    /// their arguments and the variables that hold the token.
    fn run(script: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let fake = "#!/bin/bash\n[ \"$1\" = --version ] && exit 0\n\
                    printf '%s|' \"$(basename \"$0\")\" \"$@\"; echo\n\
                    printf 'JOB=%s\\nURL=%s\\nREG=%s\\nPROXY=%s\\nODD=%s\\n' \"$CI_JOB_TOKEN\" \
                    \"$CI_REPOSITORY_URL\" \"$CI_REGISTRY_PASSWORD\" \"$CI_DEPENDENCY_PROXY_PASSWORD\" \"$ODD\"\n";
        for name in ["gitlab-runner", "git"] {
            let p = dir.path().join(name);
            std::fs::write(&p, fake).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let file = dir.path().join("script");
        std::fs::write(&file, script).unwrap();
        let out = std::process::Command::new("bash")
            .arg(&file)
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .env("HOME", "/home/x")
            .env("LC_ALL", "C")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}\n{script}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The output of the original script as the rewrite must make it: no token arguments,
    /// git's URL without the token.
    fn expected(original_output: &str) -> String {
        original_output
            .replace(&format!("|--token|{TOK}|"), "|")
            .replace(&format!("|--token={TOK}|"), "|")
            .replace(
                &format!("git|remote|set-url|origin|https://gitlab-ci-token:{TOK}@"),
                "git|remote|set-url|origin|https://gitlab-ci-token@",
            )
    }

    fn assert_only_the_export(script: &str, export: &str) {
        assert_eq!(script.matches(TOK).count(), 1, "{script}");
        assert!(script.contains(&format!("{export}{TOK}")), "{script}");
    }

    #[test]
    fn runner_upload_script_keeps_only_the_token_export_and_the_same_behaviour() {
        for subshell in [true, false] {
            let script = wrap(&rq(&upload_body(rq)), subshell);
            let out = hide(&script, TOK).unwrap();
            assert_only_the_export(&out, "export CI_JOB_TOKEN=");
            let before = run(&script);
            assert!(before.contains(&format!("--token|{TOK}|")), "{before}");
            assert_eq!(run(&out), expected(&before), "{out}");
            assert!(run(&out).contains("|--id|42|--path|out dir|--expire-in|1 week|"));
        }
    }

    #[test]
    fn posix_escaped_runner_script_is_handled_the_same() {
        let script = wrap(&pq(&upload_body(pq)), true);
        let out = hide(&script, TOK).unwrap();
        assert_only_the_export(&out, "export CI_JOB_TOKEN=");
        assert_eq!(run(&out), expected(&run(&script)), "{out}");
    }

    #[test]
    fn bare_script_bodies_are_rewritten_in_place() {
        let script = format!(
            "export CI_JOB_TOKEN={TOK}\nexport URL='https://gitlab-ci-token:{TOK}@h/p.git'\n\
             gitlab-runner artifacts-uploader --token \"{TOK}\" --id 1 # uses {TOK}\n\
             printf '%s' {TOK} > /dev/null\nX=\"$HOME:{TOK}:$\" gitlab-runner cache-extractor --token '{TOK}'\n"
        );
        let out = hide(&script, TOK).unwrap();
        assert_only_the_export(&out, "export CI_JOB_TOKEN=");
        assert!(out.contains("# uses [MASKED]"), "{out}");
        assert!(
            out.contains("URL='https://gitlab-ci-token:'\"${CI_JOB_TOKEN}\"'@h/p.git'"),
            "{out}"
        );
        assert!(
            out.contains("X=\"$HOME:${CI_JOB_TOKEN}:\\$\" gitlab-runner cache-extractor\n"),
            "{out}"
        );
        assert!(
            out.contains("printf '%s' \"${CI_JOB_TOKEN}\" > /dev/null"),
            "{out}"
        );
        assert!(out.contains("artifacts-uploader --id 1"), "{out}");
    }

    #[test]
    fn a_reference_before_the_token_export_moves_the_export_up() {
        let body = format!(
            "export CI_REPOSITORY_URL={}\nexport A=1\nexport CI_JOB_TOKEN={TOK}\necho \"$CI_REPOSITORY_URL\"\n",
            rq(&format!("https://gitlab-ci-token:{TOK}@h/p.git"))
        );
        let script = wrap(&rq(&body), true);
        let out = hide(&script, TOK).unwrap();
        assert_only_the_export(&out, "export CI_JOB_TOKEN=");
        assert!(
            out.contains(&format!(
                "eval $'export CI_JOB_TOKEN={TOK}\\nexport CI_REPOSITORY_URL="
            )),
            "{out}"
        );
        assert_eq!(run(&out), run(&script));
        // No export at all: one is added at the top (after a #! line).
        let script = format!("#!/bin/bash\nexport P={TOK}\necho \"$P\"\n");
        let out = hide(&script, TOK).unwrap();
        assert!(
            out.starts_with(&format!(
                "#!/bin/bash\nexport CI_JOB_TOKEN=$'{TOK}'\nexport P=\"${{CI_JOB_TOKEN}}\"\n"
            )),
            "{out}"
        );
        assert_eq!(run(&out), format!("{TOK}\n"));
    }

    #[test]
    fn every_quoting_of_the_token_is_found() {
        let split = format!("'{}'{}", &TOK[..5], &TOK[5..]);
        for word in [
            TOK.to_string(),
            format!("'{TOK}'"),
            format!("\"{TOK}\""),
            format!("$'{TOK}'"),
            format!("$'\\x{:02x}{}'", TOK.as_bytes()[0], &TOK[1..]),
            split,
            format!("\\{TOK}"),
        ] {
            let script = format!("export CI_JOB_TOKEN={TOK}\nexport V=a{word}b\necho \"$V\"\n");
            let out = hide(&script, TOK).unwrap();
            assert_only_the_export(&out, "export CI_JOB_TOKEN=");
            assert_eq!(run(&out), format!("a{TOK}b\n"), "{word}: {out}");
        }
    }

    #[test]
    fn lone_dollars_and_backslashes_do_not_join_the_reference() {
        let script = format!("export CI_JOB_TOKEN={TOK}\nexport A=$\\{TOK} B=\"\\{TOK}\" C=\"$\"{TOK}\necho \"$A|$B|$C\"\n");
        let orig = run(&script);
        let out = hide(&script, TOK).unwrap();
        assert_only_the_export(&out, "export CI_JOB_TOKEN=");
        assert_eq!(run(&out), orig, "{out}");
    }

    #[test]
    fn scripts_without_the_token_are_left_byte_for_byte() {
        let script = wrap(
            &rq("cat <<EOF\n$(date) `id`\nEOF\necho ${HOME} $((1+2)) <(true)\nfoo() { bar; }\n"),
            true,
        );
        assert_eq!(hide(&script, TOK).unwrap(), script);
        let odd = "echo \"unterminated\ncat <<'X'\n'\nX\n$'\\u00e9' `x` \\";
        assert_eq!(hide(odd, TOK).unwrap(), odd);
        assert_eq!(
            hide(&format!("echo {TOK}"), "").unwrap(),
            format!("echo {TOK}")
        );
    }

    #[test]
    fn unparsed_constructs_holding_the_token_are_refused_or_only_lose_the_url_form() {
        let url = format!("echo $(git fetch https://gitlab-ci-token:{TOK}@h/p.git)\n");
        let out = hide(&format!("export CI_JOB_TOKEN={TOK}\n{url}"), TOK).unwrap();
        assert!(
            out.contains("$(git fetch https://gitlab-ci-token@h/p.git)"),
            "{out}"
        );
        let e = hide(&format!("echo $(curl -H 'JOB-TOKEN: {TOK}' x)\n"), TOK).unwrap_err();
        assert!(matches!(e, HideError::Unsafe { line: 1, .. }), "{e}");
        assert!(!e.to_string().contains(TOK), "{e}");
        let inner = rq(&format!("export A=1\necho `echo {TOK}`\n"));
        let e = hide(&wrap(&inner, true), TOK).unwrap_err();
        assert!(
            e.to_string().contains("line 7 (line 2 of its eval string)"),
            "{e}"
        );
        let e = hide(&format!("export CI_JOB_TOKEN=other\necho {TOK}\n"), TOK).unwrap_err();
        assert!(e.to_string().contains("another value"), "{e}");
        let e = hide(&format!("eval \"a\"$'{TOK}'\n"), TOK).unwrap_err();
        assert!(e.to_string().contains("eval argument"), "{e}");
    }

    #[test]
    fn ansi_c_quoting_round_trips_every_byte() {
        let all: Vec<u8> = (1..=255u8).collect();
        let q = ansi_c_quote(&all);
        assert!(q.is_ascii());
        let w = lex_word(&q, 0).unwrap();
        assert_eq!(w.end, q.len());
        assert_eq!(w.value().unwrap(), all);
        let d = double_quote(b"a\"b$c`d\\e\n");
        let w = lex_word(&d, 0).unwrap();
        assert_eq!(w.value().unwrap(), b"a\"b$c`d\\e\n");
        // Octal, short hex and bash's other escapes decode as bash does.
        let w = lex_word(b"$'\\101\\x41\\x4g\\e\\?'", 0).unwrap();
        assert_eq!(w.value().unwrap(), b"AA\x04g\x1b?");
        assert!(lex_word(b"$'\\u00e9'", 0).unwrap().value().is_none());
    }

    #[test]
    fn clone_url_token() {
        assert_eq!(
            token_in_clone_url(&format!("https://gitlab-ci-token:{TOK}@gl.example/g/p.git"))
                .as_deref(),
            Some(TOK)
        );
        assert_eq!(token_in_clone_url("https://gl.example/g/p.git"), None);
        assert_eq!(
            token_in_clone_url("https://other:x@gl.example/g/p.git"),
            None
        );
    }
}
