//! The two logs the emulator writes: the job log (stdout, what a user sees in GitLab) and the
//! runner's own log (stderr, lines prefixed with `[runner log]`).

use std::io::Write;

/// Prefix of every runner-log line on stderr.
pub const RUNNER_LOG_PREFIX: &str = "[runner log] ";

/// Writes `prefix` and `line` (one line, its newline added when missing) to `out` and
/// flushes; a log that cannot be written loses the line.
fn write_line(mut out: impl Write, prefix: &[u8], line: &[u8]) {
    let _ = out.write_all(prefix);
    let _ = out.write_all(line);
    if !line.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Writes raw bytes (one line including its newline) to the job log and flushes.
pub fn job_log_bytes(line: &[u8]) {
    write_line(std::io::stdout().lock(), b"", line);
}

/// Writes one line of text to the job log.
pub fn job_log(line: &str) {
    job_log_bytes(line.as_bytes());
}

/// A section header, coloured like the runner's.
pub fn job_section(title: &str) {
    job_log(&format!("\x1b[36;1m{title}\x1b[0;m"));
}

/// A red error line in the job log.
pub fn job_error(text: &str) {
    job_log(&format!("\x1b[31;1m{text}\x1b[0;m"));
}

/// A yellow warning line in the job log.
pub fn job_warning(text: &str) {
    job_log(&format!("\x1b[0;33m{text}\x1b[0;m"));
}

/// Writes one line (raw bytes) to the runner log on stderr, with the prefix.
pub fn runner_log_bytes(line: &[u8]) {
    write_line(std::io::stderr().lock(), RUNNER_LOG_PREFIX.as_bytes(), line);
}

/// Writes one line of text to the runner log.
pub fn runner_log(line: &str) {
    runner_log_bytes(line.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_gets_its_prefix_and_one_newline() {
        let mut out = Vec::new();
        write_line(&mut out, b"[runner log] ", b"one");
        write_line(&mut out, b"", b"two\n");
        assert_eq!(out, b"[runner log] one\ntwo\n");
    }
}
