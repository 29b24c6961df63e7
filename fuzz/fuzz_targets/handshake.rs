#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _outcomes = ingress_tunnel_fuzz::handshake::run(data);
});
