//! The channel across the privilege boundary (src/protocol.rs), on arbitrary bytes. The
//! first byte picks the reader:
//!
//! - 0: `parse_status`, what `jacamar-auth` (privileged) reads from `jacamar` (the job's
//!   account: the side a job can tamper with). A parsed status written again with
//!   `write_status` parses to the same status.
//! - 1: `parse_control`, one control line. A parsed request written again with
//!   `control_line` parses to the same request.
//! - 2: `read_handoff` on a memfd holding the bytes. A parsed handoff written again with
//!   `handoff_bytes` reads back equal; the bytes after it (control lines) stay unread.
//!
//! Allocation is bounded by `MAX_HANDOFF` (256 MiB): scripts/fuzz.sh runs this target with
//! `-malloc_limit_mb` just above it, so any larger allocation is a finding.
#![no_main]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

use jacamar::protocol::{
    control_line, handoff_bytes, parse_control, parse_status, read_handoff, write_status,
};
use libfuzzer_sys::fuzz_target;

/// An anonymous in-memory file holding `bytes`, positioned at its start.
fn memfd(bytes: &[u8]) -> File {
    // SAFETY: a NUL-terminated name and no flags; the result is checked before use.
    let fd = unsafe { libc::memfd_create(c"jacamar-fuzz".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a new descriptor owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok((status, category)) = parse_status(rest) {
                let mut f = memfd(b"");
                write_status(&mut f, &status, category).unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                let mut line = Vec::new();
                f.read_to_end(&mut line).unwrap();
                let (again, _) = parse_status(&line).expect("a written status parses");
                assert_eq!(again, status);
            }
        }
        1 => {
            let line = String::from_utf8_lossy(rest);
            if let Some(req) = parse_control(&line) {
                let again = parse_control(&control_line(req)).expect("a written line parses");
                assert_eq!(again, req);
            }
        }
        _ => {
            let mut f = memfd(rest);
            if let Ok(h) = read_handoff(&mut f) {
                // Exactly the handoff was read: the header line and its body.
                let pos = f.stream_position().unwrap() as usize;
                let header_end = rest.iter().position(|&b| b == b'\n').unwrap() + 1;
                assert!(pos >= header_end && pos <= rest.len());
                let bytes = handoff_bytes(&h).unwrap();
                let again = read_handoff(&mut memfd(&bytes)).expect("a written handoff reads");
                assert_eq!(again, h);
            }
        }
    }
});
