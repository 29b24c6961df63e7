#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ingress_tunnel_fuzz::headers::run(data);
});
