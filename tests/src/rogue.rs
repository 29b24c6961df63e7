//! A hand-driven agent for tests of hostile or broken agents: it completes the hello like a real
//! agent and then writes whatever bytes the test chooses on the request streams it receives.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use protocol::{Frame, Hello, HelloReply, RequestHead};
use quinn::{Connection, RecvStream, SendStream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use transport::FrameReader;

/// A connected rogue agent.
pub struct RogueAgent {
    pub connection: Connection,
    pub reply: HelloReply,
    _endpoint: quinn::Endpoint,
    _control: (SendStream, FrameReader),
}

impl RogueAgent {
    /// Connects to `ingress` and sends a hello for `tunnels` with `token`.
    pub async fn connect(
        ingress: SocketAddr,
        token: &str,
        tunnels: &[&str],
    ) -> anyhow::Result<RogueAgent> {
        let hello = Hello {
            protocol_version: protocol::PROTOCOL_VERSION,
            agent_version: "rogue".into(),
            token: token.into(),
            tunnels: tunnels.iter().map(|name| name.to_string()).collect(),
        };
        let mut encoded = BytesMut::new();
        protocol::encode(&Frame::Hello(hello), protocol::MAX_FRAME_LEN, &mut encoded)?;
        Self::connect_raw(ingress, &encoded).await
    }

    /// Connects to `ingress` and sends `opening` as the first bytes of the control stream.
    pub async fn connect_raw(ingress: SocketAddr, opening: &[u8]) -> anyhow::Result<RogueAgent> {
        let endpoint = transport::bind_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), None)?;
        let connection = endpoint
            .connect_with(client_config()?, ingress, "ingress-tunnel")?
            .await?;
        let (mut send, recv) = connection.open_bi().await?;
        send.write_all(opening).await?;
        let mut reader = FrameReader::new(recv, protocol::MAX_FRAME_LEN);
        let reply = match reader.next().await? {
            Some(Frame::HelloReply(reply)) => reply,
            other => anyhow::bail!("expected a hello reply, got {other:?}"),
        };
        Ok(RogueAgent {
            connection,
            reply,
            _endpoint: endpoint,
            _control: (send, reader),
        })
    }

    /// Waits for the next request stream and reads its head.
    pub async fn next_request(&self) -> anyhow::Result<(SendStream, RequestHead, RecvStream)> {
        let (send, recv) = self.connection.accept_bi().await?;
        let mut reader = FrameReader::new(recv, protocol::MAX_FRAME_LEN);
        let head = match reader.next().await? {
            Some(Frame::RequestHead(head)) => head,
            other => anyhow::bail!("expected a request head, got {other:?}"),
        };
        let (recv, _) = reader.into_parts();
        Ok((send, head, recv))
    }
}

/// Encodes `frame` with the default limit.
pub fn encoded(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    protocol::encode(frame, u32::MAX, &mut buf).expect("test frames encode");
    buf.to_vec()
}

fn client_config() -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Accepts any server certificate. Only this test-side rogue agent uses it: the point of the
/// tests is what the ingress does with a peer, not who the ingress is.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
