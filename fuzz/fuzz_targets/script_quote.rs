//! `shell::sh_quote` on arbitrary strings without NUL: bash reads the quoted word back as
//! exactly the string (`bash -c "printf %s $(sh_quote s)"` prints `s`). One bash per input:
//! slow, so scripts/fuzz.sh keeps its time short in CI.
#![no_main]

use std::process::Command;

use jacamar::shell::sh_quote;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if s.contains('\0') {
        return;
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("printf %s {}", sh_quote(s)))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        // Both byte-wise and multibyte reading of the word.
        .env("LC_ALL", if s.len() % 2 == 0 { "C" } else { "C.UTF-8" })
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "bash failed: {out:?}");
    assert_eq!(
        out.stdout,
        s.as_bytes(),
        "bash read the quoted word back differently (stderr {:?})",
        String::from_utf8_lossy(&out.stderr)
    );
});
