//! TLS client configuration for the agent's outgoing connections (the relay's `wss://` websocket).
//!
//! The agent trusts what the host trusts (the operating system's root store, read with
//! `rustls-native-certs`) plus, optionally, one extra PEM file of CA certificates for centrals that
//! run behind a private CA. Everything uses the `ring` provider, which the design names, so the
//! binary carries exactly one crypto implementation.
//!
//! What this module does NOT do: client certificates, certificate pinning, or any server-side TLS.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};

/// Why a TLS client configuration could not be built. Every variant that concerns a file names it,
/// because the operator has to find and fix that file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The extra CA file could not be opened or read.
    #[error("cannot read CA file {}: {source}", path.display())]
    ReadCaFile {
        /// The file named in the configuration.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The extra CA file was read but holds no usable `CERTIFICATE` block.
    #[error(
        "CA file {} contains no PEM certificate (expected '-----BEGIN CERTIFICATE-----' blocks)",
        path.display()
    )]
    NoCertificates {
        /// The file named in the configuration.
        path: PathBuf,
    },
    /// A certificate in the extra CA file is not a valid trust anchor.
    #[error("CA file {}: certificate #{index} cannot be used as a trust anchor: {reason}", path.display())]
    BadCertificate {
        /// The file named in the configuration.
        path: PathBuf,
        /// 1-based position of the certificate in the file.
        index: usize,
        /// What rustls/webpki objected to.
        reason: String,
    },
    /// Neither the system store nor an extra CA file supplied a single root: no server could ever
    /// be verified, so fail at start-up instead of on every connection attempt.
    #[error(
        "no trusted root certificates: the system certificate store is empty or unreadable and no \
         ca_file is configured"
    )]
    NoRoots,
    /// rustls refused the configuration (for example no protocol version in common with the
    /// provider).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every agent TLS object uses. Kept in one place so the relay, the HTTP
/// client of scripts and tests cannot drift to different providers.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Install the `ring` provider as the process-wide rustls default.
///
/// Libraries that call `ClientConfig::builder()` (rather than taking a provider explicitly) need a
/// process default; installing it once at start-up avoids a panic deep inside such a library. It
/// is idempotent: a second call (or a default someone else installed) is left alone.
pub fn install_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing the race to another thread installing a provider is fine: some default exists.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Build the client configuration for connections to the central.
///
/// Roots are the system store (certificates it cannot parse are skipped with a warning, because
/// one odd certificate in `/etc/ssl/certs` must not take the agent down) plus every certificate of
/// `extra_ca_file`, where a bad certificate IS an error: the operator named that file on purpose.
pub fn client_config(extra_ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    add_system_roots(&mut roots);
    if let Some(path) = extra_ca_file {
        let added = add_pem_file(&mut roots, path)?;
        tracing::debug!(file = %path.display(), added, "loaded extra CA certificates");
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    client_config_with_roots(roots)
}

/// Build a client configuration that trusts exactly `roots` (no system store). Used where the
/// trust set is fully known, such as tests against a private CA.
pub fn client_config_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Add the operating system's roots, warning about (and skipping) whatever cannot be used.
fn add_system_roots(roots: &mut RootCertStore) {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(%error, "could not load part of the system certificate store");
    }
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            added,
            "skipped unparsable certificates in the system store"
        );
    }
    tracing::debug!(added, "loaded system root certificates");
}

/// Add every certificate of the PEM file at `path`; returns how many were added.
fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<usize, TlsError> {
    let read_error = |source| TlsError::ReadCaFile {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut reader = BufReader::new(file);
    let mut added = 0;
    for (i, cert) in rustls_pemfile::certs(&mut reader).enumerate() {
        let cert = cert.map_err(read_error)?;
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            index: i + 1,
            reason: e.to_string(),
        })?;
        added += 1;
    }
    if added == 0 {
        return Err(TlsError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_CA: &str = include_str!("relay/testdata/ca.pem");

    #[test]
    fn missing_ca_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-ca.pem");
        let err = client_config(Some(&path)).unwrap_err();
        assert!(matches!(err, TlsError::ReadCaFile { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("no-such-ca.pem"), "{text}");
    }

    #[test]
    fn ca_file_without_certificates_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.pem");
        std::fs::write(&path, "this is not a certificate\n").unwrap();
        let err = client_config(Some(&path)).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificates { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.pem"));
    }

    #[test]
    fn ca_file_with_a_corrupt_certificate_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.pem");
        // Valid PEM framing around bytes that are not a certificate.
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = client_config(Some(&path)).unwrap_err();
        assert!(
            matches!(err, TlsError::BadCertificate { index: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn valid_extra_ca_file_builds_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, TEST_CA).unwrap();
        let mut roots = RootCertStore::empty();
        assert_eq!(add_pem_file(&mut roots, &path).unwrap(), 1);
        assert_eq!(roots.len(), 1);
        assert!(client_config(Some(&path)).is_ok());
    }

    #[test]
    fn install_crypto_provider_is_idempotent() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(CryptoProvider::get_default().is_some());
    }
}
