//! A TLS front for the fixture: terminates TLS with a self-signed certificate made by rcgen,
//! offering HTTP/2 and HTTP/1.1 by ALPN (or only HTTP/1.1), and copies the plain bytes to the
//! fixture, which speaks both. It plays the part of an `https://` upstream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};

use crate::TempDir;

/// A running TLS front.
pub struct TlsFront {
    pub addr: SocketAddr,
    /// PEM file of the front's certificate, which is its own CA.
    pub ca_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Starts a front for `backend` on an ephemeral loopback port, with a self-signed
    /// certificate for `localhost` and 127.0.0.1, written to `dir`. `alpn` lists the protocols
    /// it offers. With `marked_ca` the certificate is marked as a CA, as the ones that
    /// `openssl req -x509` makes do.
    ///
    /// # Panics
    ///
    /// Panics when the certificate cannot be made or the port bound.
    pub async fn start(
        backend: SocketAddr,
        dir: &TempDir,
        alpn: &[&[u8]],
        marked_ca: bool,
    ) -> TlsFront {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = rcgen::CertificateParams::new(names).expect("certificate names");
        if marked_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let key_pair = rcgen::KeyPair::generate().expect("generate key");
        let generated = params.self_signed(&key_pair).expect("sign certificate");
        let ca_file = dir.path.join("upstream-cert.pem");
        std::fs::write(&ca_file, generated.pem()).expect("write certificate");
        let cert = CertificateDer::from(generated.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
        let addr = listener.local_addr().expect("front address");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            addr,
            ca_file,
            task,
        }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
