//! libFuzzer entry point for `ipam_fuzz::cni_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ipam_fuzz::cni_config(data);
});
