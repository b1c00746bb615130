//! libFuzzer entry point for `ipam_fuzz::selector`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ipam_fuzz::selector(data);
});
