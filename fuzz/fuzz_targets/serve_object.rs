//! libFuzzer entry point for `ipam_fuzz::serve_object`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ipam_fuzz::serve_object(data);
});
