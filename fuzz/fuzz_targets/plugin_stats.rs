//! libFuzzer entry point for `ipam_fuzz::plugin_stats`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ipam_fuzz::plugin_stats(data);
});
