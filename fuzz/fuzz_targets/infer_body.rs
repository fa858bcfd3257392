//! The KServe v2 HTTP inference body (JSON header + binary tensors) decoder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = u16::from_le_bytes([data[0], data[1]]) as usize;
    let body = bytes::Bytes::copy_from_slice(&data[2..]);
    let header_len = (split % 3 != 0).then_some(split % (body.len() + 2));
    let _ = inferd_server::http::codec::decode_request(&body, header_len, &Default::default());
});
