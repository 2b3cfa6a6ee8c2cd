//! The two logs the emulator writes: the job log (stdout, what a user sees in GitLab) and the
//! runner's own log (stderr, lines prefixed with `[runner log]`).

use std::io::Write;

/// Prefix of every runner-log line on stderr.
pub const RUNNER_LOG_PREFIX: &str = "[runner log] ";

/// Writes raw bytes (one line including its newline) to the job log and flushes.
pub fn job_log_bytes(line: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line);
    if !line.ends_with(b"\n") {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
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
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(RUNNER_LOG_PREFIX.as_bytes());
    let _ = err.write_all(line);
    if !line.ends_with(b"\n") {
        let _ = err.write_all(b"\n");
    }
    let _ = err.flush();
}

/// Writes one line of text to the runner log.
pub fn runner_log(line: &str) {
    runner_log_bytes(line.as_bytes());
}
