//! libFuzzer entry point for `ipam_fuzz::block`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ipam_fuzz::block(data);
});
