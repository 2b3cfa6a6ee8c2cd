//! The channel across the privilege boundary (src/protocol.rs), on arbitrary bytes. The
//! first byte picks the reader:
//!
//! - 0: `parse_status` and `verdict`, what `jacamar-auth` (privileged) makes of the status
//!   pipe that `jacamar` (the job's account: the side a job can tamper with) wrote. A parsed
//!   status written again with `write_status` parses to the same status; it is `Reported`
//!   only with the exit code that goes with it.
//! - 1: `parse_control`, one control line. A parsed request written again with
//!   `control_line` parses to the same request.
//! - 2: `read_handoff` on a memfd holding the bytes. A parsed handoff written again with
//!   `handoff_bytes` reads back equal; the bytes after it (control lines) stay unread.
//! - 3: `read_bounded` (the status pipe's reader) with a bound the next byte picks: the
//!   whole input when it fits, `TooLong` when it does not.
//! - 4: `read_line_bounded` (the control pipe's reader) with a bound and a buffer size the
//!   next bytes pick: exactly the input's lines, each longer one `TooLong`, then `Eof`.
//!
//! Allocation is bounded: scripts/fuzz.sh runs this target with `-malloc_limit_mb=300`
//! (above `MAX_HANDOFF`, 256 MiB), so any larger allocation is a finding.
#![no_main]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::sync::OnceLock;

use jacamar::protocol::{
    control_line, exit_code_of, handoff_bytes, parse_control, parse_status, read_bounded,
    read_handoff, read_line_bounded, verdict, write_status, Bounded, LineRead, StatusVerdict,
    MAX_STATUS,
};
use jacamar::supervisor::Exit;
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

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok((status, category)) = parse_status(rest) {
                let mut f = memfd(b"");
                write_status(&mut f, &status, category).unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                let mut line = Vec::new();
                f.read_to_end(&mut line).unwrap();
                assert!(line.len() <= MAX_STATUS, "a status line past MAX_STATUS");
                let (again, _) = parse_status(&line).expect("a written status parses");
                if line.len() < MAX_STATUS / 2 {
                    assert_eq!(again, status);
                }
                let code = exit_code_of(&status);
                let read = Bounded::Complete(rest.to_vec());
                assert!(matches!(
                    verdict(&read, Exit::Code(code)),
                    StatusVerdict::Reported(s, _) if s == status
                ));
                assert!(matches!(
                    verdict(&read, Exit::Code(code.wrapping_add(1))),
                    StatusVerdict::Inconsistent(_)
                ));
                assert!(matches!(
                    verdict(&read, Exit::Signal(9)),
                    StatusVerdict::Inconsistent(_)
                ));
            } else if !rest.is_empty() {
                let read = Bounded::Complete(rest.to_vec());
                assert!(matches!(
                    verdict(&read, Exit::Code(0)),
                    StatusVerdict::Inconsistent(_)
                ));
            }
        }
        1 => {
            let line = String::from_utf8_lossy(rest);
            if let Some(req) = parse_control(&line) {
                let again = parse_control(&control_line(req)).expect("a written line parses");
                assert_eq!(again, req);
            }
        }
        2 => {
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
        3 => {
            let Some((&m, input)) = rest.split_first() else {
                return;
            };
            let max = usize::from(m) * 16;
            let got = runtime().block_on(read_bounded(input, max)).unwrap();
            if input.len() <= max {
                assert_eq!(got, Bounded::Complete(input.to_vec()));
            } else {
                assert_eq!(got, Bounded::TooLong);
            }
        }
        _ => {
            let [m, cap, input @ ..] = rest else {
                return;
            };
            let max = usize::from(*m);
            let mut r = tokio::io::BufReader::with_capacity(usize::from(*cap).max(1), input);
            let mut want: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            if want.last().is_some_and(|l| l.is_empty()) {
                want.pop();
            }
            let mut line = Vec::new();
            runtime().block_on(async {
                for w in want {
                    let got = read_line_bounded(&mut r, max, &mut line).await.unwrap();
                    if w.len() <= max {
                        assert_eq!((got, line.as_slice()), (LineRead::Line, w));
                    } else {
                        assert_eq!((got, line.len()), (LineRead::TooLong, 0));
                    }
                }
                let end = read_line_bounded(&mut r, max, &mut line).await.unwrap();
                assert_eq!(end, LineRead::Eof);
            });
        }
    }
});
