//! Hellos with many tunnel names, beyond what libFuzzer's default 4096-byte inputs reach.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::BytesMut;
use ingress::fuzzing::HelloChecker;
use ingress::Config;
use protocol::{encode, Frame, Hello, HelloReply, RefuseReason, MAX_FRAME_LEN, PROTOCOL_VERSION};

// 40,000 names of up to 4 characters fit in a 196 KB hello, but a reply with one URL per name
// would be over the 1 MiB frame limit; the ingress used to register such an agent and then
// fail to send the reply. It now rejects hellos with more than `MAX_TUNNELS_PER_HELLO` names.
#[test]
fn many_names_refused_or_answered() {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 8080));
    let token = "wildcard-token";
    let checker = HelloChecker::new(Config::new(loopback, loopback, token)).expect("config loads");
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "0.1.0".into(),
        token: token.into(),
        tunnels: (0..40_000).map(|i| format!("{i:x}")).collect(),
    };
    let mut wire = BytesMut::new();
    encode(&Frame::Hello(hello.clone()), MAX_FRAME_LEN, &mut wire).expect("the hello fits");

    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    match checker.check(&hello, peer) {
        Err(refused) => assert_eq!(refused.reason, RefuseReason::InvalidName, "{refused:?}"),
        Ok(accepted) => {
            // The URLs as `State::public_url` writes them for plain HTTP on port 8080.
            let urls = accepted
                .names
                .iter()
                .map(|name| format!("http://{name}.localhost:8080"))
                .collect();
            let reply = Frame::HelloReply(HelloReply::Accepted {
                ingress_version: "0.1.0".into(),
                urls,
            });
            let encoded = encode(&reply, MAX_FRAME_LEN, &mut BytesMut::new());
            assert!(
                encoded.is_ok(),
                "accepted, but the reply does not fit: {encoded:?}"
            );
        }
    }
}
