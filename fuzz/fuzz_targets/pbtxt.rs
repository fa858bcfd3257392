//! config.pbtxt: the text-format parser and the typed mapping must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = inferd_core::config::pbtxt::parse(text);
        if let Ok(p) = inferd_core::config::parse_config(text, std::path::Path::new("config.pbtxt")) {
            let _ = inferd_core::config::validate_config(&p.config);
        }
    }
});
