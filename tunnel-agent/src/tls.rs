//! TLS client configurations. The ingress certificate is checked against a pinned SHA-256
//! fingerprint or a CA file, with no mode that skips the check. An `https://` upstream's
//! certificate is checked against the Mozilla roots or `--upstream-ca`, unless
//! `--upstream-insecure` turns the check off.

use std::fs;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::{Config, TrustAnchor};

/// Builds the quinn client configuration for `config`.
///
/// # Errors
///
/// Returns an error when the CA file cannot be read or contains no certificate.
pub(crate) fn client_config(config: &Config) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available in the crypto provider")?;
    let mut tls = match &config.trust {
        TrustAnchor::Pinned(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChosenCert {
                accept: Accept::Fingerprint(*fingerprint),
                provider,
            }))
            .with_no_client_auth(),
        TrustAnchor::CaFile(path) => builder
            .with_root_certificates(read_roots(path)?)
            .with_no_client_auth(),
    };
    tls.alpn_protocols = vec![protocol::ALPN.to_vec()];

    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("TLS configuration is not usable for QUIC")?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport::transport_config(&config.transport)?));
    Ok(client)
}

/// TLS client configurations for `https://` upstreams.
pub(crate) struct UpstreamTls {
    /// For the pooled client: offers HTTP/2 and HTTP/1.1 by ALPN.
    pub(crate) pooled: Arc<rustls::ClientConfig>,
    /// For upgrades, which are HTTP/1.1 only.
    pub(crate) upgrade: Arc<rustls::ClientConfig>,
}

/// Builds the TLS configurations for `https://` upstreams.
///
/// # Errors
///
/// Returns an error when `--upstream-ca` cannot be read or contains no certificate.
pub(crate) fn upstream_tls(config: &Config) -> anyhow::Result<UpstreamTls> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions are not available in the crypto provider")?;
    let tls = match (&config.upstream_ca, config.upstream_insecure) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChosenCert {
                accept: Accept::Any,
                provider,
            }))
            .with_no_client_auth(),
        (Some(path), false) => {
            let listed = read_certs(path)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in &listed {
                roots
                    .add(cert.clone())
                    .with_context(|| format!("invalid CA certificate in {}", path.display()))?;
            }
            let chains =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .with_context(|| format!("unusable CA certificates in {}", path.display()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChosenCert {
                    accept: Accept::ListedOrChained { listed, chains },
                    provider,
                }))
                .with_no_client_auth()
        }
        (None, false) => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    let mut pooled = tls.clone();
    pooled.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut upgrade = tls;
    upgrade.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(UpstreamTls {
        pooled: Arc::new(pooled),
        upgrade: Arc::new(upgrade),
    })
}

/// Reads the CA certificates of a PEM file.
fn read_roots(path: &std::path::Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("invalid CA certificate in {}", path.display()))?;
    }
    Ok(roots)
}

/// Reads the certificates of a PEM file; there must be at least one.
fn read_certs(path: &std::path::Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no CA certificate found in {}", path.display());
    }
    Ok(certs)
}

/// Certificates that [`ChosenCert`] accepts.
#[derive(Debug)]
enum Accept {
    /// Exactly one, named by its SHA-256: the pinned ingress certificate.
    Fingerprint([u8; 32]),
    /// Any: an upstream run with `--upstream-insecure`.
    Any,
    /// An upstream certificate chained to one of `--upstream-ca`, or one of them itself. The
    /// second case is a development server's self-signed certificate, which
    /// `openssl req -x509` marks as a CA, so a chain check alone rejects it for a server.
    ListedOrChained {
        listed: Vec<CertificateDer<'static>>,
        chains: Arc<WebPkiServerVerifier>,
    },
}

/// Accepts the certificates that [`Accept`] names, and checks that the server has the
/// certificate's private key through the handshake signature.
#[derive(Debug)]
struct ChosenCert {
    accept: Accept,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChosenCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = match &self.accept {
            Accept::Fingerprint(fingerprint) => fingerprint,
            Accept::Any => return Ok(ServerCertVerified::assertion()),
            Accept::ListedOrChained { listed, chains } => {
                let chained = chains.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                );
                return match chained {
                    Ok(verified) => Ok(verified),
                    Err(_) if listed.iter().any(|cert| cert == end_entity) => {
                        Ok(ServerCertVerified::assertion())
                    }
                    Err(err) => Err(rustls::Error::General(format!(
                        "{err}: the certificate is neither in --upstream-ca nor issued by one \
                         there"
                    ))),
                };
            }
        };
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen == *fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "ingress certificate SHA-256 is {}, expected {} (--cert-sha256)",
                hex::encode(seen),
                hex::encode(fingerprint)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
