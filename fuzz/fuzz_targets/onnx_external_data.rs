//! The ONNX protobuf walker that finds external-data locations.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(locs) = inferd_core::artifact::headers::onnx_external_locations(data) {
        for l in locs {
            let _ = inferd_core::artifact::headers::unsafe_location(&l);
        }
    }
});
