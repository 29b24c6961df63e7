//! Protocol version and the ALPN identifier that carries it in the TLS handshake.

use crate::error::VersionError;

/// Version of the frame layout described in this crate.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN protocol identifier. A peer speaking another version fails the TLS handshake with
/// "no application protocol" instead of exchanging frames it cannot read.
pub const ALPN: &[u8] = b"ingress-tunnel/1";

/// Checks the version an agent announced in its hello against [`PROTOCOL_VERSION`].
///
/// # Errors
///
/// Returns [`VersionError`] with both numbers when they differ.
pub fn check_version(peer: u16) -> Result<(), VersionError> {
    if peer == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(VersionError {
            supported: PROTOCOL_VERSION,
            received: peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_version_accepted() {
        assert_eq!(check_version(PROTOCOL_VERSION), Ok(()));
    }

    #[test]
    fn other_versions_rejected() {
        for peer in [0, 2, u16::MAX] {
            let err = check_version(peer).unwrap_err();
            assert_eq!(err.received, peer);
            assert_eq!(err.supported, PROTOCOL_VERSION);
        }
    }

    #[test]
    fn alpn_names_the_version() {
        let alpn = std::str::from_utf8(ALPN).unwrap();
        assert!(alpn.ends_with(&format!("/{PROTOCOL_VERSION}")));
    }
}
