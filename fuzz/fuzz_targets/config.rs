//! `Config::from_str_named` on arbitrary text: a configuration is either valid or an error
//! naming its origin, never a panic.
#![no_main]

use jacamar::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The binaries read the file with read_to_string: invalid UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_str_named(text, "fuzz.toml") {
        Ok(config) => {
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("fuzz.toml"), "error without its origin: {msg}");
        }
    }
});
