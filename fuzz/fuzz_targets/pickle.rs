//! The pickle detector walks hostile bytes without panicking or interpreting them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = inferd_core::artifact::pickle::detect("model.pkl", &data[..data.len().min(65536)], Some(data));
    let _ = inferd_core::artifact::pickle::detect_stream(data, false);
    let _ = inferd_core::artifact::pickle::detect_zip(data);
});
