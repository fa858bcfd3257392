//! SafeTensors header checks on hostile bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = inferd_core::artifact::headers::check_safetensors(data, data.len() as u64);
});
