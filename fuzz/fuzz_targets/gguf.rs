//! GGUF: the structural check and the loader's header parser on hostile bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = inferd_core::artifact::headers::check_gguf(data, data.len() as u64);
    let _ = inferd_gguf::GgufFile::from_reader(data, data.len() as u64, std::path::Path::new("fuzz.gguf"));
});
