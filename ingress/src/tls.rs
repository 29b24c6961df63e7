//! TLS identity of the QUIC endpoint: a generated self-signed certificate kept in the state
//! directory, or a certificate the operator supplies.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// Certificate chain and key of the QUIC endpoint.
pub(crate) struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Lower-case hex SHA-256 of the end-entity certificate, which agents pin.
    pub(crate) fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|cert| hex::encode(Sha256::digest(cert.as_ref())))
            .unwrap_or_default()
    }
}

const CERT_FILE: &str = "quic-cert.pem";
const KEY_FILE: &str = "quic-key.pem";

/// Loads the operator's certificate, or the generated one from the state directory, making it
/// on first start.
///
/// # Errors
///
/// Returns an error naming the file that could not be read, parsed or written.
pub(crate) fn load_identity(config: &Config) -> anyhow::Result<Identity> {
    if let Some((cert, key)) = &config.quic_identity {
        return read_identity(cert, key);
    }
    let dir = &config.state_dir;
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        return read_identity(&cert_path, &key_path);
    }

    fs::create_dir_all(dir)
        .with_context(|| format!("failed to create state directory {}", dir.display()))?;
    let names = vec!["ingress-tunnel".to_string(), config.domain.clone()];
    let generated =
        rcgen::generate_simple_self_signed(names).context("failed to generate QUIC certificate")?;
    write_private(&key_path, generated.key_pair.serialize_pem().as_bytes())?;
    fs::write(&cert_path, generated.cert.pem())
        .with_context(|| format!("failed to write {}", cert_path.display()))?;
    tracing::info!(path = %cert_path.display(), "generated QUIC certificate");
    read_identity(&cert_path, &key_path)
}

/// Builds the quinn server configuration for agents.
///
/// # Errors
///
/// Returns an error when the key does not match the certificate.
pub(crate) fn server_config(
    identity: Identity,
    config: &Config,
) -> anyhow::Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not available in the crypto provider")?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .context("QUIC certificate and key do not match")?;
    tls.alpn_protocols = vec![protocol::ALPN.to_vec()];
    tls.max_early_data_size = 0;

    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("TLS configuration is not usable for QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport::transport_config(&config.transport)?;
    // Agents open exactly one stream, the control stream; every request stream is opened by
    // this side. One spare allows a reconnecting agent's stream to overlap a closing one.
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(2));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Builds the TLS acceptor for HTTPS on the public listener, offering HTTP/2 and HTTP/1.1.
///
/// # Errors
///
/// Returns an error naming the file that could not be read, or when key and certificate do not
/// match.
pub(crate) fn public_acceptor(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let identity = read_identity(cert, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS version available in the crypto provider")?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .with_context(|| format!("{} and {} do not match", cert.display(), key.display()))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

const RESET_KEY_FILE: &str = "quic-reset-key";

/// Builds the endpoint configuration from a secret kept in the state directory. A restarted
/// ingress derives the same stateless reset key and connection-ID key from it, so it can tell
/// the connection IDs of the old process as its own and reset the connections agents still
/// hold to that process. The agents then reconnect at once instead of after their idle
/// timeout.
///
/// # Errors
///
/// Returns an error when the key file cannot be read or written.
pub(crate) fn endpoint_config(config: &Config) -> anyhow::Result<quinn::EndpointConfig> {
    let path = config.state_dir.join(RESET_KEY_FILE);
    let key = match fs::read(&path) {
        Ok(key) if key.len() == 32 => key,
        Ok(_) => bail!(
            "{} is not a 32-byte key; delete it to make a new one",
            path.display()
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(&config.state_dir).with_context(|| {
                format!(
                    "failed to create state directory {}",
                    config.state_dir.display()
                )
            })?;
            let key: [u8; 32] = rand::random();
            write_private(&path, &key)?;
            key.to_vec()
        }
        Err(err) => return Err(err).with_context(|| format!("failed to read {}", path.display())),
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    let cid_tag = ring::hmac::sign(&key, b"connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid_tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);

    let mut endpoint = quinn::EndpointConfig::new(Arc::new(key));
    endpoint.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok(endpoint)
}

fn read_identity(cert_path: &Path, key_path: &Path) -> anyhow::Result<Identity> {
    let cert_pem =
        fs::read(cert_path).with_context(|| format!("failed to read {}", cert_path.display()))?;
    let chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid PEM in {}", cert_path.display()))?;
    if chain.is_empty() {
        bail!("no certificate found in {}", cert_path.display());
    }

    let key_pem =
        fs::read(key_path).with_context(|| format!("failed to read {}", key_path.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("invalid PEM in {}", key_path.display()))?
        .with_context(|| format!("no private key found in {}", key_path.display()))?;
    Ok(Identity { chain, key })
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
